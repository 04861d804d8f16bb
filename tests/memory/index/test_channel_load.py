"""How a channel's vectors are read into memory (see :mod:`memory.index.chroma`): by the uids
the store lists for the channel, the first search of a large channel answered by Chroma while
a thread reads it, and the order of reads that keeps the copy exact (this process's write
count, or a Chroma server's mark, before the listing)."""

from __future__ import annotations

import functools
import threading
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from memory.engine import MemoryEngine
from memory.index import chroma
from memory.index.base import Member, VectorItem
from memory.index.chroma import ChromaIndex, open_chroma
from memory.model import Scope
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, episode


@pytest.fixture(autouse=True)
def thread_above_eager_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests set EAGER_LOAD to a few rows to drive the loading thread: a channel larger
    than that is left to it, whatever the size of the collection (FIRST_READ_RATIO 0; the
    tests that read such a channel in the search itself set it again)."""
    monkeypatch.setattr(chroma, "FIRST_READ_RATIO", 0)


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


def test_the_first_search_reads_a_channel_itself_up_to_a_limit_set_by_the_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel larger than EAGER_LOAD but within first_read_limit (which grows with the
    collection and the number of query vectors) is read by the search that first needs it:
    that search is answered exactly from memory and no thread is started. A larger channel
    is still left to the loading thread."""
    monkeypatch.setattr(chroma, "EAGER_LOAD", 2)
    monkeypatch.setattr(chroma, "FIRST_READ_RATIO", 1)
    assert chroma.first_read_limit(16) == 4 and chroma.first_read_limit(16, queries=4) == 8
    assert chroma.first_read_limit(1) == 2  # never below EAGER_LOAD
    monkeypatch.setattr(chroma, "FIRST_READ_MAX", 6)
    assert chroma.first_read_limit(10**6) == 6
    rng = np.random.default_rng(29)
    vectors = rng.standard_normal((16, 8)).astype(np.float32)
    # 16 vectors: GENERAL holds 4 (the limit for one query vector), RANDOM 12 (above it).
    items = [
        VectorItem(f"u{i}", ORG, PROJECT, GENERAL if i < 4 else RANDOM, BOB, None)
        for i in range(16)
    ]
    folder = tmp_path / "chroma"
    index = ChromaIndex(functools.partial(open_chroma, str(folder)), bytes(32), folder)
    release = threading.Event()
    try:
        index.upsert(items, vectors)
        before = loading_threads()
        general: list[Member] = [(f"u{i}", BOB, None) for i in range(4)]
        [found] = index.query_many(ORG, PROJECT, GENERAL, vectors[2:3], 4, members=lambda: general)
        assert found[0][0] == "u2"
        assert {u for u, _ in found} == {"u0", "u1", "u2", "u3"}
        assert index.cached_uids(ORG, PROJECT, GENERAL) == {"u0", "u1", "u2", "u3"}
        assert loading_threads() == before
        listed = HeldListing([(f"u{i}", BOB, None) for i in range(4, 16)], release)
        index.query_many(ORG, PROJECT, RANDOM, vectors[5:6], 2, members=lambda: listed)
        assert loading_threads() - before == 1
        assert not index.cached_uids(ORG, PROJECT, RANDOM)  # the thread's stand-in, no rows
        release.set()
        index.wait_loads()
        assert index.cached_uids(ORG, PROJECT, RANDOM) == {f"u{i}" for i in range(4, 16)}
    finally:
        release.set()
        index.close()


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


@pytest.mark.parametrize("how", ["unfiltered", "restricted"])
@pytest.mark.parametrize("where", ["embedded", "server"])
def test_a_large_channels_first_answer_is_among_the_rows_its_store_lists(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    where: str,
    how: str,
) -> None:
    """While a thread reads a large channel, the search that listed it asks Chroma among the
    listed uids (its query restricted to the uids, or, for more uids than MAX_QUERY_IDS, its
    unfiltered query, of which the listed rows are kept): a vector tagged with the channel
    whose row the store no longer has (the nearest one here) is not in the answer, nor is
    anything of another channel; the rows come best first."""
    monkeypatch.setattr(chroma, "EAGER_LOAD", 3)
    if how == "unfiltered":
        monkeypatch.setattr(chroma, "MAX_QUERY_IDS", 3)
    asked: list[dict[str, object]] = []
    query = chroma._ShortIdCollection.query

    def spy(self: chroma._ShortIdCollection, ids: object = None, **kwargs: object) -> object:
        asked.append({"ids": ids, **kwargs})
        return query(self, ids, **kwargs)

    monkeypatch.setattr(chroma._ShortIdCollection, "query", spy)
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
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        exact = sorted(range(1, 8), key=lambda i: -float(unit[i] @ unit[0]))
        assert [u for u, _ in found][:3] == [f"u{i}" for i in exact[:3]]
        # The restricted query goes through the short-id wrapper with the uids; the
        # unfiltered one asks the collection itself.
        assert bool(asked) == (how == "restricted")
        index.wait_loads()
        [found] = index.query_many(ORG, PROJECT, GENERAL, vectors[0:1], 20, members=lambda: listed)
        assert {u for u, _ in found} == {f"u{i}" for i in range(1, 8)}
    finally:
        index.reset()
        index.close()


class HeldListing(list[Member]):
    """A store's listing of a channel whose rows the loading thread cannot go through until
    ``release`` is set: the test holds channels in the loading queue (a search's own thread
    goes through it at once)."""

    def __init__(self, rows: Sequence[Member], release: threading.Event) -> None:
        super().__init__(rows)
        self.release = release

    def __iter__(self) -> Iterator[Member]:
        if threading.current_thread().name == "channelmind-channel-load":
            self.release.wait(60)  # a safety net for a failing test only
        return super().__iter__()


def loading_threads() -> int:
    return sum(t.name == "channelmind-channel-load" for t in threading.enumerate())


def test_one_thread_reads_the_large_channels_one_after_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three large channels searched while none is read yet: one thread reads them, in turn
    (a thread each read them all at once: the 1M run's peak RSS), and each is then searched
    in memory."""
    monkeypatch.setattr(chroma, "EAGER_LOAD", 2)
    rng = np.random.default_rng(17)
    channels = [f"slack:CBIG{i}" for i in range(3)]
    vectors = rng.standard_normal((12, 8)).astype(np.float32)
    items = [VectorItem(f"u{i}", ORG, PROJECT, channels[i % 3], BOB, None) for i in range(12)]
    folder = tmp_path / "chroma"
    index = ChromaIndex(functools.partial(open_chroma, str(folder)), bytes(32), folder)
    release = threading.Event()
    try:
        index.upsert(items, vectors)
        before = loading_threads()
        for c, channel in enumerate(channels):
            listed = HeldListing([(f"u{i}", BOB, None) for i in range(c, 12, 3)], release)
            [found] = index.query_many(
                ORG, PROJECT, channel, vectors[c : c + 1], 2, members=lambda rows=listed: rows
            )
            assert found[0][0] == f"u{c}"
        assert loading_threads() - before == 1
        release.set()
        index.wait_loads()
        assert loading_threads() == before
        for c, channel in enumerate(channels):
            assert index.cached_uids(ORG, PROJECT, channel) == {f"u{i}" for i in range(c, 12, 3)}
    finally:
        release.set()
        index.close()


def test_a_queued_channel_is_searched_among_its_listed_rows_until_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large channel waiting for the loading thread: its searches ask Chroma among the uids
    its listing holds (an orphan vector tagged with the channel, the nearest one, is not
    found, as the filtered query would find it), for as long as no write has changed the
    collection since the listing; after a write, Chroma's filtered query answers (the
    listing may miss the new row), and the queued read is not kept: the next one is."""
    monkeypatch.setattr(chroma, "EAGER_LOAD", 3)
    rng = np.random.default_rng(19)
    vectors = rng.standard_normal((14, 8)).astype(np.float32)
    items = [
        VectorItem(f"u{i}", ORG, PROJECT, GENERAL if i < 8 else RANDOM, BOB, None)
        for i in range(12)
    ]
    folder = tmp_path / "chroma"
    index = ChromaIndex(functools.partial(open_chroma, str(folder)), bytes(32), folder)
    release = threading.Event()
    try:
        index.upsert(items, vectors[:12])
        # RANDOM goes first and holds the loading thread; GENERAL waits behind it.
        held = HeldListing([(f"u{i}", BOB, None) for i in range(8, 12)], release)
        index.query_many(ORG, PROJECT, RANDOM, vectors[8:9], 2, members=lambda: held)
        listed = HeldListing([(f"u{i}", BOB, None) for i in range(1, 8)], release)  # u0: orphan
        general = {f"u{i}" for i in range(1, 8)}
        for _ in range(2):  # the search that queues it, then one while it waits
            [found] = index.query_many(
                ORG, PROJECT, GENERAL, vectors[0:1], 20, members=lambda: listed
            )
            assert {u for u, _ in found} == general
        newer = VectorItem("u12", ORG, PROJECT, GENERAL, BOB, None)
        index.upsert([newer], vectors[12:13])
        [found] = index.query_many(ORG, PROJECT, GENERAL, vectors[12:13], 1, members=lambda: listed)
        assert found[0][0] == "u12"
        release.set()
        index.wait_loads()
        # The read listed before u12 is not kept (the stand-in may hold u12: writes go on it).
        assert not (index.cached_uids(ORG, PROJECT, GENERAL) or set()) & general
        every = [*listed, ("u12", BOB, None)]
        index.query_many(ORG, PROJECT, GENERAL, vectors[0:1], 1, members=lambda: every)
        index.wait_loads()
        assert index.cached_uids(ORG, PROJECT, GENERAL) == {*general, "u12"}
    finally:
        release.set()
        index.close()


def test_a_channel_is_read_into_one_buffer_without_further_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a channel into memory allocates its matrix once, plus one page of Chroma's
    answer at a time (traced by tracemalloc, which numpy reports to): keeping every page, then
    stacking them, then normalising a copy peaked above three times the channel's size. The
    copy answers as one normalised whole did."""
    monkeypatch.setattr(chroma, "THREAD_PAGE", 100)
    monkeypatch.setattr(chroma, "EAGER_LOAD", 2)
    rows, width = 4000, 384
    vectors = np.random.default_rng(23).standard_normal((rows, width)).astype(np.float32)
    vectors[5] = 0.0  # a zero vector stays zero
    items = [VectorItem(f"u{i}", ORG, PROJECT, GENERAL, BOB, None) for i in range(rows)]
    folder = tmp_path / "chroma"
    index = ChromaIndex(functools.partial(open_chroma, str(folder)), bytes(32), folder)
    try:
        index.upsert(items, vectors)
        listed: list[Member] = [(f"u{i}", BOB, None) for i in range(rows)]
        tracemalloc.start()
        try:
            index.query_many(ORG, PROJECT, GENERAL, vectors[:1], 1, members=lambda: listed)
            index.wait_loads()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert index.cached_uids(ORG, PROJECT, GENERAL) == {uid for uid, _, _ in listed}
        assert peak < 2 * vectors.nbytes
        found = index.query_many(ORG, PROJECT, GENERAL, vectors[:3], 1, members=lambda: listed)
        assert [nearest[0][0] for nearest in found] == ["u0", "u1", "u2"]
        [zero] = index.query_many(ORG, PROJECT, GENERAL, vectors[5:6], 3, members=lambda: listed)
        assert [score for _, score in zero] == [0.0, 0.0, 0.0]
        [[(_, score)]] = index.query_many(
            ORG, PROJECT, GENERAL, vectors[7:8], 1, members=lambda: listed
        )
        assert score == pytest.approx(1.0, abs=1e-6)
    finally:
        index.close()
