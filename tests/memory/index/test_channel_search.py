"""Channel-scoped vector search in the one-copy layout: one Chroma collection per project, a
channel found by its token, its vectors compared in memory once searched (see
:mod:`memory.index.chroma`). What a channel search returns must follow every later write."""

from __future__ import annotations

import numpy as np

from memory.engine import MemoryEngine
from memory.index.base import VectorItem
from memory.model import Scope
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, episode


async def vector_hits(engine: MemoryEngine, text: str, channel: str) -> list[str]:
    scope = Scope(org_id=ORG, project_id=PROJECT, produced_for=channel)
    return [h.episode.uid for h in (await engine.search(text, scope, mode="vector")).hits]


async def test_a_searched_channel_follows_adds_edits_and_forgets(engine: MemoryEngine) -> None:
    first = await engine.add([episode("the backup rota starts monday")])
    elsewhere = await engine.add([episode("the backup disk is full", produced_for=RANDOM)])
    await engine.wait_indexed()
    assert await vector_hits(engine, "backup", GENERAL) == first  # loads the channel

    later = await engine.add(
        [episode("who owns the backup keys", producer=BOB), episode("backup at three")]
    )
    await engine.wait_indexed()
    found = await vector_hits(engine, "backup", GENERAL)
    assert set(found) == {*first, *later} and not set(found) & set(elsewhere)

    edited = await engine.edit(later[1], "lunch is at noon", org_id=ORG, project_id=PROJECT)
    assert edited is not None
    await engine.wait_indexed()
    assert (await vector_hits(engine, "lunch noon", GENERAL))[0] == later[1]

    await engine.forget(ORG, producer=BOB)
    assert later[0] not in await vector_hits(engine, "who owns the backup keys", GENERAL)
    assert engine.index is not None  # the index itself no longer finds it (not only the store)
    anything = np.ones(engine.embedder.dim, dtype=np.float32)
    reached = [uid for uid, _ in engine.index.query(ORG, PROJECT, GENERAL, anything, 10)]
    assert sorted(reached) == sorted([*first, later[1]])
    assert await vector_hits(engine, "backup", RANDOM) == elsewhere


async def test_channel_and_project_searches_score_alike(engine: MemoryEngine) -> None:
    """The in-memory comparison gives the cosine similarity Chroma gives (small collections
    are searched exactly by both)."""
    index = engine.index
    assert index is not None
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 16)).astype(np.float32) * 3
    items = [
        VectorItem(
            f"u{i}",
            ORG,
            PROJECT,
            GENERAL if i % 2 else RANDOM,
            BOB if i % 3 else ALICE,
            "t1" if i % 5 == 0 else None,
        )
        for i in range(40)
    ]
    index.upsert(items, vectors)
    query = rng.standard_normal(16).astype(np.float32)
    in_channel = index.query(ORG, PROJECT, GENERAL, query, 5)
    everywhere = dict(index.query(ORG, PROJECT, None, query, 40))
    assert [uid for uid, _ in in_channel] == sorted(
        (u for u in everywhere if int(u[1:]) % 2), key=lambda u: -everywhere[u]
    )[:5]
    for uid, similarity in in_channel:
        assert abs(similarity - everywhere[uid]) < 1e-4
    assert index.ids(ORG, PROJECT, GENERAL) == {f"u{i}" for i in range(1, 40, 2)}

    # Narrower filters inside a channel: the same rows, scores and order as Chroma's own
    # filtered query over the project, restricted to the channel.
    for producer, thread in ((ALICE, None), (None, "t1"), (BOB, "t1")):
        mine = index.query(ORG, PROJECT, GENERAL, query, 40, producer=producer, thread_id=thread)
        chroma = index.query(ORG, PROJECT, None, query, 40, producer=producer, thread_id=thread)
        expected = [(u, s) for u, s in chroma if int(u[1:]) % 2]
        assert mine and [u for u, _ in mine] == [u for u, _ in expected], (producer, thread)
        assert np.allclose([s for _, s in mine], [s for _, s in expected], atol=1e-4)
