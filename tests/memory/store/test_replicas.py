"""Several servers, one memory: two ``channelmind serve`` processes on one PostgreSQL database
and one Chroma server (``chroma run``), driven as a client would, with memmachine-client.

A write acknowledged by one replica is found through the other once indexed; a delete through
one is gone through the other when the call returns (rows, keyword index and vectors); and the
embedding work is shared through the store's claims (``FOR UPDATE SKIP LOCKED``): every message
is embedded exactly once, however the two replicas' indexers interleave. The embedder is the
fake OpenAI endpoint, which records what it was asked to embed.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import chromadb
import httpx
import pytest
from memmachine_client import MemMachineClient

from memory.index.chroma import MARKS_PREFIX, long_id
from tests.fakes.openai.server import FakeOpenAI
from tests.server_harness import channelmind_serve

pytestmark = pytest.mark.timeout(300)

T = TypeVar("T")
ORG, PROJECT = "acme", "ops"
SCOPE = {"org_id": ORG, "project_id": PROJECT}
#: How a message reaches the embedder: ``author: "text"`` (memory.model.embed_text).
EMBEDDED_NOTE = re.compile(r': "(note \d+ .*)"$')


async def sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def vector_search(url: str, query: str) -> list[str]:
    found = httpx.post(
        f"{url}/api/cm/search",
        json={"query": query, "scope": SCOPE, "mode": "vector", "top_k": 5},
        timeout=60,
    )
    assert found.status_code == 200, found.text
    return [h["episode"]["content"] for h in found.json()["hits"]]


def wait_indexed(url: str) -> None:
    done = httpx.post(f"{url}/api/cm/index/wait", json={"timeout": 120}, timeout=180)
    assert done.status_code == 200 and done.json()["done"], done.text


def contents(result: Any) -> list[str]:
    episodic = result.content.episodic_memory
    return [e.content for e in episodic.long_term_memory.episodes]


async def test_two_replicas_share_one_memory(tmp_path: Path, pg_url: str, chroma_url: str) -> None:
    with ExitStack() as stack:
        fake = stack.enter_context(FakeOpenAI.in_thread())
        env = {
            "CHANNELMIND_DATABASE_URL": pg_url,
            "CHANNELMIND_CHROMA_URL": chroma_url,
            "CHANNELMIND_EMBEDDER": "openai",
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "test-key",
        }
        log = stack.enter_context((tmp_path / "replicas.log").open("w"))
        replicas = [
            stack.enter_context(channelmind_serve(tmp_path / name, log, **env))[1]
            for name in ("replica-a", "replica-b")
        ]
        a, b = (MemMachineClient(base_url=url, max_retries=0, timeout=60) for url in replicas)
        project_a = await sync(a.get_or_create_project, org_id=ORG, project_id=PROJECT)
        project_b = await sync(b.get_or_create_project, org_id=ORG, project_id=PROJECT)
        on_a, on_b = project_a.memory(), project_b.memory()

        # Writes through both replicas; each one's indexer and the other's share the queue.
        notes = [f"note {i} deploy window for service s{i}" for i in range(40)]
        uids: dict[str, str] = {}
        for i, note in enumerate(notes):
            added = await sync((on_a, on_b)[i % 2].add, note, producer="alice")
            uids[note] = str(added[0].uid)
        await asyncio.gather(*(sync(wait_indexed, url) for url in replicas))

        # Every message embedded exactly once, by whichever replica claimed it.
        embedded = Counter(
            m.group(1)
            for request in fake.embedding_requests
            for text in request["input"]
            if (m := EMBEDDED_NOTE.search(text))
        )
        assert set(embedded) == set(notes)
        assert max(embedded.values()) == 1, embedded.most_common(3)

        # Written through A, found through B by its vector alone, and the other way round.
        assert vector_search(replicas[1], notes[0])[0] == notes[0]
        assert vector_search(replicas[0], notes[1])[0] == notes[1]
        found_on_b = contents(await sync(on_b.search, "deploy window for service s6", limit=3))
        assert found_on_b[0] == notes[6]

        # Deleted through B: gone through A when the call returns, vectors included.
        gone = [notes[2], notes[3]]
        assert await sync(on_b.delete_episodic, episodic_ids=[uids[n] for n in gone]) is True
        for query in gone:
            assert query not in vector_search(replicas[0], query)
            assert query not in contents(await sync(on_a.search, query, limit=10))
        listed = await sync(on_a.list, page_size=100)
        assert {e.content for e in listed.content.episodic_memory or []} == set(notes) - set(gone)
        server = urlsplit(chroma_url)
        chroma = chromadb.HttpClient(host=server.hostname or "", port=server.port or 8000)
        names = [getattr(entry, "name", entry) for entry in chroma.list_collections()]
        names = [name for name in names if not name.startswith(MARKS_PREFIX)]  # no vectors
        stored_ids = {
            long_id(stored)
            for name in names
            for stored in chroma.get_collection(name, embedding_function=None).get(include=[])[
                "ids"
            ]
        }
        assert stored_ids == {uids[n] for n in notes} - {uids[n] for n in gone}
        assert await sync(project_a.get_episode_count) == len(notes) - len(gone)
