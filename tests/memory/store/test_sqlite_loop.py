"""The SQLite store reads, and writes groups of adds, on the event loop's thread, and gives way
to a thread when that would hold the loop: a read past its time budget is answered from the
reader thread, and an add that would wait for another connection's write lock waits on a
thread while the loop serves other requests (memory/store/sqlite/connections.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from memory.model import Scope
from memory.store.sqlite import SQLiteStore, connections
from tests.conftest import GENERAL, ORG, PROJECT, episode

CHANNEL = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)


async def _listing(store: SQLiteStore) -> list[str]:
    return [e.uid for e in await store.list_episodes(CHANNEL, None, None, 5000, 0)]


async def test_a_read_past_its_budget_is_answered_from_the_reader_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "memory.sqlite3")
    await store.open()
    try:
        added = await store.add([episode(f"message number {i}") for i in range(3000)])
        within_budget = await _listing(store)
        assert within_budget == [a.uid for a in added]

        on_loop: list[str] = []
        on_thread: list[str] = []
        store.reader.conn.set_trace_callback(on_loop.append)
        await store.reader.thread.conn.set_trace_callback(on_thread.append)
        monkeypatch.setattr(connections, "LOOP_READ_BUDGET_S", 0.0)
        # A long listing reaches the clock, finds no time left and is run on the thread ...
        assert await _listing(store) == within_budget
        assert [s for s in on_loop if "ORDER BY e.created_at" in s]
        assert [s for s in on_thread if "ORDER BY e.created_at" in s]
        # ... and a read by uid ends before the clock is looked at: it stays on the loop.
        on_loop.clear()
        on_thread.clear()
        (found,) = await store.get(ORG, PROJECT, [added[7].uid])
        assert found.content == "message number 7"
        assert on_loop
        assert not on_thread
    finally:
        await store.close()


async def test_an_add_waits_for_another_writer_on_a_thread_not_on_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "memory.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    try:
        (first,) = await store.add([episode("before the other writer")])
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
            adding = asyncio.create_task(store.add([episode("while it writes")]))
            await asyncio.sleep(0.3)
            # The loop is free meanwhile: this read is served, the add is still waiting.
            (found,) = await store.get(ORG, PROJECT, [first.uid])
            assert found.content == "before the other writer"
            assert not adding.done()
            other.execute("COMMIT")
            (second,) = await asyncio.wait_for(adding, 30)
        assert second.new
        (stored,) = await store.get(ORG, PROJECT, [second.uid])
        assert stored.content == "while it writes"
    finally:
        await store.close()


async def test_a_group_too_large_for_the_loop_is_written_on_a_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "memory.sqlite3")
    await store.open()
    written: list[tuple[int, str]] = []
    try:
        store.loop_writer.set_trace_callback(
            lambda statement: written.append((threading.get_ident(), statement))
        )
        large = connections.LOOP_WRITE_ROWS + 1
        await store.add([episode(f"small group {i}") for i in range(3)])
        await store.add([episode(f"large group {i}") for i in range(large)])
        inserts = [(t, s) for t, s in written if s.startswith("INSERT OR IGNORE INTO episodes ")]
        loop = threading.get_ident()
        assert {t for t, s in inserts if "small group" in s} == {loop}
        assert loop not in {t for t, s in inserts if "large group" in s}
        assert len([s for _, s in inserts if "large group" in s]) == large
        assert await store.count(CHANNEL) == 3 + large
    finally:
        await store.close()
