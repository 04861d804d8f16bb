"""Many coroutines on one engine at once: writers, readers, editors and deleters interleave
without "database is locked", and every acknowledged write is there afterwards."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

from memory.embedders import HashEmbedder, Vectors
from memory.engine import MemoryEngine
from memory.model import Scope, SourceRef
from tests.conftest import ORG, PROJECT, episode

WORKERS = 20  # writers, and as many readers
EDITORS = 4
DELETERS = 4
ROUNDS = 4
CHANNELS = ["slack:C1", "slack:C2", "slack:C3", "slack:C4"]
SCOPE = Scope(org_id=ORG, project_id=PROJECT)


async def test_concurrent_writers_and_readers(engine: MemoryEngine) -> None:
    added: dict[str, str] = {}  # uid -> unique word, acknowledged
    edited: dict[str, str] = {}  # uid -> unique word of the new content
    deleted: set[str] = set()
    duplicates: dict[str, str] = {}  # source_id -> uid, added by several workers at once
    errors: list[BaseException] = []

    async def writer(w: int) -> None:
        rnd = random.Random(w)
        for r in range(ROUNDS):
            words = [f"cw{w}r{r}n{i}z" for i in range(5)]
            eps = [
                episode(
                    f"worker {w} round {r} says {word}",
                    produced_for=rnd.choice(CHANNELS),
                    producer=f"slack:U{w}",
                )
                for word in words
            ]
            # Every writer also re-sends one shared message: stored once for all of them.
            shared = episode("a message everyone retries", source_id=f"shared.{r}")
            uids = await engine.add([*eps, shared])
            added.update(zip(uids, words, strict=False))
            assert duplicates.setdefault(f"shared.{r}", uids[-1]) == uids[-1]
            await asyncio.sleep(0)

    async def reader(w: int) -> None:
        rnd = random.Random(100 + w)
        for _ in range(ROUNDS * 2):
            channel = rnd.choice(CHANNELS)
            scope = Scope(org_id=ORG, project_id=PROJECT, produced_for=channel)
            mode = rnd.choice(["hybrid", "keyword", "vector"])
            result = await engine.search("worker round says", scope, top_k=20, mode=mode)
            assert all(h.episode.produced_for == channel for h in result.hits)
            page = await engine.list(scope, page_size=50, page_num=rnd.randint(0, 2))
            assert all(e.produced_for == channel for e in page)
            await engine.recent(scope, 10)
            await engine.stats()

    async def editor(w: int) -> None:
        for r in range(ROUNDS):
            ep = episode(f"editable {w} {r}")
            [uid] = await engine.add([ep])
            word = f"ed{w}r{r}z"
            assert ep.source_id is not None
            ref = SourceRef(
                org_id=ORG, project_id=PROJECT, platform="slack", source_id=ep.source_id
            )
            assert await engine.edit(ref, f"edited to {word}") is not None
            added[uid] = word
            edited[uid] = word

    async def deleter(w: int) -> None:
        for r in range(ROUNDS):
            uids = await engine.add([episode(f"doomed {w} {r} {i}") for i in range(3)])
            assert sorted(await engine.delete(ORG, PROJECT, uids[:2])) == sorted(uids[:2])
            deleted.update(uids[:2])
            added[uids[2]] = f"doomed {w} {r} 2"
            if r % 3 == 2:
                report = await engine.forget(
                    ORG, project_id=PROJECT, filters=f"source_id = '{episode('x').source_id}'"
                )
                assert report.episodes == 0

    async def guarded(coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except BaseException as e:  # collect, so one failure does not hide the others
            errors.append(e)

    tasks = [guarded(writer(w)) for w in range(WORKERS)]
    tasks += [guarded(reader(w)) for w in range(WORKERS)]
    tasks += [guarded(editor(w)) for w in range(EDITORS)]
    tasks += [guarded(deleter(w)) for w in range(DELETERS)]
    random.Random(0).shuffle(tasks)
    await asyncio.gather(*tasks)
    assert not errors, [repr(e) for e in errors]
    assert not any("locked" in repr(e) for e in errors)

    # Every acknowledged write is there, every acknowledged delete is not.
    kept = set(added) - deleted
    got = {e.uid: e for e in await engine.get(ORG, PROJECT, sorted(kept))}
    assert set(got) == kept
    assert await engine.get(ORG, PROJECT, sorted(deleted)) == []
    for uid, word in edited.items():
        assert got[uid].content == f"edited to {word}"
    expected_rows = len(kept) + len(duplicates)
    assert await engine.count(SCOPE) == expected_rows
    assert set(duplicates.values()) <= kept | set(duplicates.values())
    for source_id, uid in duplicates.items():
        ref = SourceRef(org_id=ORG, project_id=PROJECT, platform="slack", source_id=source_id)
        found = await engine.get_by_source(ref)
        assert found is not None and found.uid == uid

    # The index catches up with all of it: one vector per row, none for deleted rows.
    await engine.wait_indexed()
    stats = await engine.stats()
    assert stats.pending_index == 0
    assert stats.vectors == stats.episodes == expected_rows
    assert engine.index is not None
    all_vectors = engine.index.vector_ids()
    assert not all_vectors & deleted
    for uid, word in list(edited.items())[:5]:
        hits = await engine.search(word, SCOPE, mode="keyword")
        assert [h.episode.uid for h in hits.hits] == [uid]
    assert engine.index_errors == 0


class GatedEmbedder:
    """The hashing embedder, held at a gate: lets a test act while a batch is embedding."""

    name = "hash"

    def __init__(self) -> None:
        self.inner = HashEmbedder()
        self.dim = self.inner.dim
        self.entered = threading.Event()
        self.release = threading.Event()

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def embed(self, texts: list[str]) -> Vectors:
        self.entered.set()
        assert self.release.wait(30), "the test never opened the gate"
        return self.inner.embed(texts)


async def test_delete_while_its_row_is_embedding_leaves_no_vector(data_dir: Path) -> None:
    """The indexer read a row and is embedding it when the row is deleted (and the delete's
    tombstone applied): the vector written after that must not outlive the row."""
    gate = GatedEmbedder()
    engine = await MemoryEngine.open(data_dir, gate, background=False)
    try:
        [doomed] = await engine.add([episode("deleted mid-embedding")])
        step = asyncio.create_task(engine.index_step())
        assert await asyncio.to_thread(gate.entered.wait, 30)
        # The delete commits at once; it then waits for the step to finish before it drops
        # the vectors and scrubs the index, so it returns only after the step's upsert.
        deleting = asyncio.create_task(engine.delete(ORG, PROJECT, [doomed]))
        for _ in range(3000):
            if not await engine.existing(ORG, PROJECT, [doomed]):
                break
            await asyncio.sleep(0.01)
        gate.release.set()
        assert await step is True
        assert await deleting == [doomed]
        await engine.wait_indexed()
        assert engine.index is not None
        assert doomed not in engine.index.vector_ids()
        stats = await engine.stats()
        assert (stats.episodes, stats.vectors) == (0, 0)
    finally:
        gate.release.set()
        await engine.close()
