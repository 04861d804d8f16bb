"""SQLite's write transactions when a writer is cancelled: the bot cancels work on shutdown and
on timeouts, and a write cancelled while it waits for another process's lock must not leave a
transaction open on the shared connection (every later write then failed with "cannot start a
transaction within a transaction", seen once in CI)."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from memory.store.sqlite import SQLiteStore
from tests.conftest import episode


async def test_a_write_cancelled_while_waiting_for_the_lock_leaves_no_transaction(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "memory.sqlite3")
    await store.open()
    try:
        # A second process holds the database's write lock.
        with closing(sqlite3.connect(store.path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            waiting = asyncio.create_task(store.set_meta("probe", "1"))
            await asyncio.sleep(0.3)  # the BEGIN is now waiting on the busy handler
            assert not waiting.done()
            waiting.cancel()
            await asyncio.sleep(0.1)
            other.execute("COMMIT")
        try:
            await waiting
        except asyncio.CancelledError:
            pass
        # The next writes work, and what they wrote is committed for other connections.
        await store.set_meta("after", "2")
        added = await store.add([episode("the deploy is at noon", source_id="1.1")])
        assert [a.new for a in added] == [True]
        with closing(sqlite3.connect(store.path)) as reader:
            assert reader.execute("SELECT value FROM meta WHERE key='after'").fetchone() == ("2",)
            assert reader.execute("SELECT count(*) FROM episodes").fetchone() == (1,)
    finally:
        await store.close()
