"""A search's query vectors go to Chroma together: one ``collection.query`` for the query as
asked and the query without the words that name authors (ranking stage 0), when those can be
guessed before the search, and each of them finds what it would find alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from chromadb.api.models.Collection import Collection

from memory.engine import MemoryEngine
from memory.model import Scope
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, episode


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


async def test_a_hybrid_search_asks_chroma_once(
    engine: MemoryEngine, chroma_queries: list[int]
) -> None:
    await engine.add(
        [
            episode("the backup rota starts monday", metadata={"display_name": "Alice"}),
            episode("Carol moved the backup disk", producer=BOB, metadata={"display_name": "Bob"}),
            episode("lunch is at noon", producer=ALICE, metadata={"display_name": "Alice"}),
        ]
    )
    await engine.wait_indexed()
    project = Scope(org_id=ORG, project_id=PROJECT)
    chroma_queries.clear()
    # "Carol" looks like a name, so the vector search also runs without it; nobody here is
    # called Carol, so no third search follows.
    found = await engine.search("what did Carol say about the backup", project)
    assert found.hits
    assert chroma_queries == [2]


async def test_authors_met_before_are_searched_without_at_once(
    engine: MemoryEngine, chroma_queries: list[int]
) -> None:
    """Lower-case names give no guess the first time: the search without them waits for the
    first one's candidates. Their authors met, the next search asks for both at once and
    ranks the same."""
    await engine.add(
        [
            episode("the backup rota starts monday", metadata={"display_name": "Alice"}),
            episode("moved the backup disk", producer=BOB, metadata={"display_name": "Bob"}),
            episode("lunch is at noon", metadata={"display_name": "Alice"}),
        ]
    )
    await engine.wait_indexed()
    project = Scope(org_id=ORG, project_id=PROJECT)
    chroma_queries.clear()
    first = await engine.search("what did bob say about the backup", project)
    assert chroma_queries == [1, 1]
    chroma_queries.clear()
    again = await engine.search("what did bob say about the backup", project)
    assert chroma_queries == [2]
    # The same candidates in the same order (scores move by the recency of a few ms).
    assert list(again.scores) == list(first.scores) and len(first.scores) == 3
    assert again.scores == pytest.approx(first.scores)

    await engine.forget(ORG, producer=ALICE)  # names met are not kept past a forget
    chroma_queries.clear()
    await engine.search("what did bob say about the backup", project)
    assert chroma_queries == [1, 1]


async def test_vectors_asked_together_find_what_each_finds_alone(engine: MemoryEngine) -> None:
    await engine.add([episode(f"note {i} about topic {i % 7}") for i in range(60)])
    await engine.wait_indexed()
    index = engine.index
    assert index is not None
    queries = engine.embedder.embed(["topic 3", "note 12", "nothing alike"])
    for channel in (None, GENERAL):  # Chroma's filtered search; the channel in memory
        together = index.query_many(ORG, PROJECT, channel, queries, 10)
        alone = [index.query(ORG, PROJECT, channel, q, 10) for q in queries]
        assert together == alone
        assert all(len(found) == 10 for found in together)
        assert together[0] != together[1]
    assert index.query_many(ORG, PROJECT, None, np.empty((0, engine.embedder.dim)), 10) == []
