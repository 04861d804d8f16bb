"""Project-wide searches that wait for the vector index at the same moment share one Chroma
query (memory.vector_queue), and each finds exactly what it finds alone: the same vector
candidates with the same cosines, the same hits in the same order. Real engine, real SQLite,
real embedded Chroma; Chroma's ``Collection.query`` is only counted."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest
from chromadb.api.models.Collection import Collection

from memory.engine import MemoryEngine
from memory.model import Scope
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, episode

WORDS = [f"w{n}" for n in range(40)]
QUERIES = [
    "w1 w2 about w3",
    "what did Bob say about w7",
    "w10 w11",
    "anything on w20 or w21 w22",
    "w5",
    "where is w30",
    "w33 w34 w35 w36",
    "did Alice mention w12",
]


@pytest.fixture
def chroma_queries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many query vectors each call of Chroma's ``Collection.query`` carried (the real
    method still answers)."""
    calls: list[int] = []
    real = Collection.query

    def counted(self: Collection, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(kwargs["query_embeddings"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "query", counted)
    return calls


async def _filled(engine: MemoryEngine) -> Scope:
    rng = random.Random(5)
    people = [(ALICE, "Alice"), (BOB, "Bob")]
    await engine.add(
        [
            episode(
                " ".join(rng.sample(WORDS, 5)),
                producer=people[i % 2][0],
                produced_for=(GENERAL, RANDOM)[i % 3 == 0],
                metadata={"display_name": people[i % 2][1]},
            )
            for i in range(120)
        ]
    )
    await engine.wait_indexed()
    return Scope(org_id=ORG, project_id=PROJECT)


def _vector_features(found: tuple[dict[int, Any], Any]) -> dict[int, tuple[Any, Any]]:
    candidates, _ = found
    return {rid: (c.keyword, c.vector) for rid, c in candidates.items()}


async def test_concurrent_searches_share_a_query_and_find_what_they_find_alone(
    engine: MemoryEngine, chroma_queries: list[int]
) -> None:
    project = await _filled(engine)
    await engine.search(QUERIES[0], project)  # authors met: later guesses are the same
    alone = [_vector_features(await engine.candidates(q, project)) for q in QUERIES]
    alone_hits = [await engine.search(q, project) for q in QUERIES]
    chroma_queries.clear()

    together = await asyncio.gather(*(engine.candidates(q, project) for q in QUERIES))
    assert len(chroma_queries) < len(QUERIES)  # one call each before the queue
    assert [_vector_features(f) for f in together] == alone  # the cosines exactly

    hits = await asyncio.gather(*(engine.search(q, project) for q in QUERIES))
    for mine, reference in zip(hits, alone_hits, strict=True):
        assert [h.episode.uid for h in mine.hits] == [h.episode.uid for h in reference.hits]
        assert list(mine.scores) == list(reference.scores)
        # Scores differ only by the recency of the moments the two searches ran.
        assert mine.scores == pytest.approx(reference.scores, rel=1e-6)
    assert engine.vector_queries.calls < engine.vector_queries.rows


async def test_one_index_call_answers_each_row_as_alone(engine: MemoryEngine) -> None:
    """What the queue relies on: Chroma answers each row of a query on its own."""
    project = await _filled(engine)
    vectors = np.asarray(await engine.embedding.embed(QUERIES), dtype=np.float32)
    index = engine._vectors()
    each = [index.query_many(ORG, PROJECT, None, vectors[i : i + 1], 50)[0] for i in range(8)]
    assert index.query_many(ORG, PROJECT, None, vectors, 50) == each
    shared = await asyncio.gather(
        *(
            engine.vector_queries.query(index, ORG, PROJECT, vectors[i : i + 1], 50)
            for i in range(8)
        )
    )
    assert [found[0] for found in shared] == each
    assert project.produced_for is None


async def test_channel_searches_and_narrowed_shapes_stay_apart(
    engine: MemoryEngine, chroma_queries: list[int]
) -> None:
    """Searches of different shapes (a producer, a channel) never share a call: each keeps
    its own scope."""
    project = await _filled(engine)
    by_bob = Scope(org_id=ORG, project_id=PROJECT, producer=BOB)
    in_random = Scope(org_id=ORG, project_id=PROJECT, produced_for=RANDOM)
    found = await asyncio.gather(
        engine.search("w1 w2", project),
        engine.search("w1 w2", by_bob),
        engine.search("w1 w2", in_random),
    )
    assert all(h.episode.producer == BOB for h in found[1].hits)
    assert all(h.episode.produced_for == RANDOM for h in found[2].hits)
    assert len(found[0].hits) == 10
