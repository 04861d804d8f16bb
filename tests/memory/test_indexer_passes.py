"""The background indexer writes the vectors of rows that arrive while it works in its next
pass, after the embedding queue's gathering, instead of stepping again at once for them.

Embedded Chroma's upsert holds the GIL for its whole call, most of it a fixed cost per call,
so under steady adds each extra upsert stops the whole server for tens of milliseconds
(README "Many clients"). Real engine, real SQLite, real embedded Chroma; the index's
``upsert`` is only counted (and the first one held until the test lets it go).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from memory.engine import MemoryEngine
from tests.conftest import episode
from tests.polling import eventually


class CountedUpserts:
    """Counts the index's upserts; the first one waits until ``release`` is set."""

    def __init__(self, engine: MemoryEngine) -> None:
        index = engine.index
        assert index is not None
        self.real = index.upsert
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        index.upsert = self  # type: ignore[method-assign]

    def __call__(self, items: list[Any], vectors: Any) -> None:
        self.calls.append(len(items))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(60), "the test never let the first upsert go"
        self.real(items, vectors)


async def test_rows_added_during_a_pass_wait_for_the_next_gathering(tmp_path: Path) -> None:
    engine = await MemoryEngine.open(tmp_path, "hash", index_batch=4096)
    try:
        queue = engine.embedding
        queue.gather_s, queue.max_defer_s = 3.0, 3600.0  # defer while adds keep coming
        upserts = CountedUpserts(engine)
        await engine.add([episode("the first message")])
        assert await asyncio.to_thread(upserts.entered.wait, 60)  # its pass is writing it

        added = 0
        stop = asyncio.Event()

        async def traffic() -> None:
            nonlocal added
            while not stop.is_set():
                await engine.add([episode(f"steady traffic {added}")])
                added += 1

        adder = asyncio.create_task(traffic())
        await eventually(lambda: added >= 5)
        upserts.release.set()
        await eventually(engine.store.count_indexed, within=60)  # the first pass is done
        done_at = added
        # Adds keep coming: the rows that arrived meanwhile wait for the gathering to end.
        await eventually(lambda: added >= done_at + 200 or len(upserts.calls) > 1, within=60)
        assert upserts.calls == [1]
        stop.set()
        await adder
        await engine.wait_indexed()
        # Once the adds stopped: one more pass, one upsert for all of them.
        assert upserts.calls == [1, added]
        assert await engine.store.count_indexed() == added + 1
    finally:
        await engine.close()


async def test_a_backlog_is_indexed_batch_after_batch_from_one_wake(tmp_path: Path) -> None:
    """Full batches follow each other without waiting for another wake."""
    engine = await MemoryEngine.open(tmp_path, "hash", index_batch=4)
    try:
        upserts = CountedUpserts(engine)
        upserts.release.set()
        await engine.add([episode(f"backlog {n}") for n in range(10)])

        # No wait_indexed here: it wakes the indexer itself. One add, one wake.
        async def all_indexed() -> bool:
            return await engine.store.count_indexed() == 10

        await eventually(all_indexed, within=60)
        assert upserts.calls == [4, 4, 2]
    finally:
        await engine.close()
