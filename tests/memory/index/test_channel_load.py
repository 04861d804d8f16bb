"""How a channel's vectors are read into memory (see :mod:`memory.index.chroma`): by the uids
the store lists for the channel, the first search of a large channel answered by Chroma while
a thread reads it, and the order of reads that keeps the copy exact (this process's write
count, or a Chroma server's mark, before the listing)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memory.engine import MemoryEngine
from memory.index import chroma
from memory.index.base import Member, VectorItem
from memory.index.chroma import ChromaIndex, open_chroma
from memory.model import Scope
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, episode


def in_channel(**narrower: str) -> Scope:
    return Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL, **narrower)


async def vector_hits(engine: MemoryEngine, text: str, scope: Scope) -> list[str]:
    return [h.episode.uid for h in (await engine.search(text, scope, mode="vector")).hits]


async def test_a_channel_is_read_by_the_uids_its_store_lists(engine: MemoryEngine) -> None:
    """The copy holds the channel's stored rows that have vectors, not a vector tagged with the
    channel whose row is gone; producer and thread filters work on the copy (their tokens are
    computed from the store's rows, not read from Chroma)."""
    uids = await engine.add(
        [
            episode("the backup rota starts monday"),
            episode("the backup keys are with ops", producer=BOB),
            episode("backup at three", producer=BOB, thread_id="1700000000.000001"),
        ]
    )
    other = await engine.add([episode("the backup disk is full", produced_for=RANDOM)])
    await engine.wait_indexed()
    index = engine.index
    assert isinstance(index, ChromaIndex)
    [orphan] = engine.embedder.embed(["the backup rota starts monday"])
    index.upsert([VectorItem("orphan", ORG, PROJECT, GENERAL, ALICE, None)], orphan[None, :])

    assert set(await vector_hits(engine, "backup", in_channel())) == set(uids)
    assert index.cached_uids(ORG, PROJECT, GENERAL) == set(uids)  # no orphan, nothing of RANDOM
    assert set(await vector_hits(engine, "backup", in_channel(producer=BOB))) == set(uids[1:])
    threaded = in_channel(thread_id="1700000000.000001")
    assert await vector_hits(engine, "backup", threaded) == [uids[2]]
    assert index.cached_uids(ORG, PROJECT, GENERAL) == set(uids)  # answered from the copy
    assert other[0] not in await vector_hits(engine, "backup", in_channel())


async def test_a_large_channel_is_answered_by_chroma_while_a_thread_reads_it(
    engine: MemoryEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel of more rows than EAGER_LOAD: its first search gets Chroma's filtered answer
    (rows of the channel only, best first), and a thread reads the channel into memory, from
    which later searches are answered exactly."""
    monkeypatch.setattr(chroma, "EAGER_LOAD", 4)
    texts = [f"the backup rota for week {i} starts monday" for i in range(8)]
    uids = await engine.add([episode(t) for t in texts])
    await engine.add([episode("the backup rota starts monday", produced_for=RANDOM)])
    await engine.wait_indexed()
    index = engine.index
    assert isinstance(index, ChromaIndex)

    first = await vector_hits(engine, "backup rota week 3", in_channel())
    assert first and set(first) <= set(uids)
    index.wait_loads()
    assert index.cached_uids(ORG, PROJECT, GENERAL) == set(uids)
    found = await vector_hits(engine, "backup rota week 3", in_channel())
    assert set(found) == set(uids) and found[0] == uids[3]


@pytest.mark.parametrize("eager_load", [2, 100], ids=["by-a-thread", "by-the-search"])
def test_a_write_while_a_channel_is_listed_keeps_the_load_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eager_load: int
) -> None:
    """This process writes a vector to the channel after the store listed it (the listing
    misses the row): the load does not go into memory, and the next search reads the channel
    again, finding the new vector. Had the write count been read after the listing, the copy
    would have been kept without it for good."""
    monkeypatch.setattr(chroma, "EAGER_LOAD", eager_load)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((7, 8)).astype(np.float32)
    items = [VectorItem(f"u{i}", ORG, PROJECT, GENERAL, BOB, None) for i in range(7)]
    folder = tmp_path / "chroma"  # embedded: this process is the only writer
    index = ChromaIndex(functools.partial(open_chroma, str(folder)), bytes(32), folder)
    try:
        index.upsert(items[:6], vectors[:6])
        before: list[Member] = [(f"u{i}", BOB, None) for i in range(6)]

        def listing_then_a_write() -> Sequence[Member]:
            index.upsert(items[6:], vectors[6:])
            return before

        query = vectors[6:7]
        index.query_many(ORG, PROJECT, GENERAL, query, 3, members=listing_then_a_write)
        index.wait_loads()
        held = index.cached_uids(ORG, PROJECT, GENERAL)
        assert not held  # nothing held, or the thread's stand-in (no rows)
        every = [*before, ("u6", BOB, None)]
        [found] = index.query_many(ORG, PROJECT, GENERAL, query, 3, members=lambda: every)
        index.wait_loads()
        [found] = index.query_many(ORG, PROJECT, GENERAL, query, 3, members=lambda: every)
        assert found[0][0] == "u6"
        assert index.cached_uids(ORG, PROJECT, GENERAL) == {f"u{i}" for i in range(7)}
    finally:
        index.close()


def test_a_replicas_write_after_the_mark_is_read_is_followed(chroma_url: str) -> None:
    """Two replicas on a Chroma server: B writes a vector to the channel (and marks it) after A
    read the channel's mark but before A's store listing would have shown it. A's copy is
    cached under the mark it read first, so B's mark sends A's later searches back to Chroma
    and then to a fresh read that includes the vector. Had A read the mark after the listing,
    it would have held the copy without the vector under B's mark for good."""
    key = bytes(range(32))
    opened = functools.partial(open_chroma, None, chroma_url)
    a, b = ChromaIndex(opened, key), ChromaIndex(opened, key)
    try:
        rng = np.random.default_rng(9)
        vectors = rng.standard_normal((7, 8)).astype(np.float32)
        items = [VectorItem(f"u{i}", ORG, PROJECT, GENERAL, BOB, None) for i in range(7)]
        b.upsert(items[:6], vectors[:6])
        before: list[Member] = [(f"u{i}", BOB, None) for i in range(6)]

        def listing_then_a_write() -> Sequence[Member]:
            b.upsert(items[6:], vectors[6:])
            return before

        query = vectors[6:7]
        a.query_many(ORG, PROJECT, GENERAL, query, 3, members=listing_then_a_write)
        every = [*before, ("u6", BOB, None)]
        for _ in range(3):  # the copy is out of date: Chroma answers, then a reload
            [found] = a.query_many(ORG, PROJECT, GENERAL, query, 3, members=lambda: every)
        assert found[0][0] == "u6"
        assert a.cached_uids(ORG, PROJECT, GENERAL) == {f"u{i}" for i in range(7)}
    finally:
        a.reset()
        a.close()
        b.close()


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_a_large_channels_first_answer_is_among_the_rows_its_store_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, where: str
) -> None:
    """While a thread reads a large channel, the search that listed it asks Chroma among the
    listed uids: a vector tagged with the channel whose row the store no longer has (the
    nearest one here) is not in the answer, nor is anything of another channel."""
    monkeypatch.setattr(chroma, "EAGER_LOAD", 3)
    rng = np.random.default_rng(13)
    vectors = rng.standard_normal((12, 8)).astype(np.float32)
    items = [
        VectorItem(f"u{i}", ORG, PROJECT, GENERAL if i < 8 else RANDOM, BOB, None)
        for i in range(12)
    ]
    if where == "server":
        url = request.getfixturevalue("chroma_url")
        index = ChromaIndex(functools.partial(open_chroma, None, url), bytes(32))
    else:
        folder = tmp_path / "chroma"
        index = ChromaIndex(functools.partial(open_chroma, str(folder)), bytes(32), folder)
    try:
        index.upsert(items, vectors)
        listed: list[Member] = [(f"u{i}", BOB, None) for i in range(1, 8)]  # u0: an orphan
        [found] = index.query_many(ORG, PROJECT, GENERAL, vectors[0:1], 20, members=lambda: listed)
        assert found and {u for u, _ in found} <= {f"u{i}" for i in range(1, 8)}
        index.wait_loads()
        [found] = index.query_many(ORG, PROJECT, GENERAL, vectors[0:1], 20, members=lambda: listed)
        assert {u for u, _ in found} == {f"u{i}" for i in range(1, 8)}
    finally:
        index.reset()
        index.close()
