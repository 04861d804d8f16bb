"""The real local embedding model (all-MiniLM-L6-v2, shipped as a package): it loads with no
network at all, and vector search finds meaning where keywords find nothing."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory.embedders import LocalEmbedder
from memory.engine import MemoryEngine
from memory.model import Scope
from tests.conftest import ORG, PROJECT, episode

SCOPE = Scope(org_id=ORG, project_id=PROJECT)


class NetworkAttempt(RuntimeError):
    pass


@pytest.fixture(scope="module")
def network_attempts() -> list[Any]:
    return []


@pytest.fixture(scope="module")
def local_embedder(network_attempts: list[Any]) -> Iterator[LocalEmbedder]:
    """Loaded once for the module, offline, with every internet socket refused meanwhile."""
    original_connect = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            network_attempts.append(address)
            raise NetworkAttempt(f"network access during model load: {address!r}")
        original_connect(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        with pytest.raises(NetworkAttempt):  # the guard really is in place
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        network_attempts.clear()
        embedder = LocalEmbedder()
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    yield embedder


def test_the_model_loads_offline(
    local_embedder: LocalEmbedder, network_attempts: list[Any]
) -> None:
    assert network_attempts == []
    assert local_embedder.dim == 384
    assert local_embedder.fingerprint.startswith("local:")
    vectors = local_embedder.embed(["hello there", "general kenobi"])
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


async def test_semantic_query_without_keyword_overlap(
    local_embedder: LocalEmbedder, data_dir: Path
) -> None:
    messages = [
        "Lunch is at noon on Fridays in the big room",
        "The deploy pipeline runs on GitHub Actions",
        "Our records are stored in a PostgreSQL database on the main server",
        "Alice is on vacation until Monday",
        "Please review my pull request before the release",
        "The office plants need watering twice a week",
    ]
    engine = await MemoryEngine.open(data_dir, local_embedder)
    try:
        uids = await engine.add([episode(m) for m in messages])
        target = uids[2]
        await engine.wait_indexed()
        question = "Where does the team keep its data?"
        # No keyword overlap at all: bm25 finds nothing...
        assert (await engine.search(question, SCOPE, mode="keyword")).hits == []
        # ...and the vectors find the database message first.
        by_vector = await engine.search(question, SCOPE, mode="vector", top_k=3)
        assert by_vector.hits[0].episode.uid == target
        assert by_vector.hits[0].score > by_vector.hits[1].score
        hybrid = await engine.search(question, SCOPE, top_k=3)
        assert hybrid.hits[0].episode.uid == target
        assert (await engine.stats()).embedder == local_embedder.fingerprint
    finally:
        await engine.close()
