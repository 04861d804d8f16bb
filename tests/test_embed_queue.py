"""Every model call of an engine goes through one queue (memory.embed_queue): concurrent
searches are embedded together, at most two calls run at once (a search's, the indexer's), a
query the model cannot take in a shared call fails only its own search, and the indexer embeds
a burst of new messages in one call. Driven through the real server with concurrent clients;
seen on the embedder's own calls (a gate holds the first call while the others arrive)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from memory.embedders import HashEmbedder, Vectors
from memory.engine import MemoryEngine
from tests.conftest import ORG, PROJECT
from tests.server_harness import running

POISON = "\u2620"
WORDS = [f"topic{n}x" for n in range(12)]


class RecordingEmbedder:
    """The hashing embedder, recording each call's texts and how many calls ran at once;
    ``hold()`` closes a gate that the next call waits at until ``release()``. It fails on any
    text with a skull in it (a row no model takes)."""

    name = "hash"

    def __init__(self) -> None:
        self.inner = HashEmbedder()
        self.dim = self.inner.dim
        self.batches: list[list[str]] = []
        self.pause = 0.0  # seconds each call takes at least, so that calls can overlap
        self.running = self.most_at_once = 0
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._gate.set()
        self.entered = threading.Event()

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def hold(self) -> None:
        self.entered.clear()
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def embed(self, texts: list[str]) -> Vectors:
        with self._lock:
            self.batches.append(list(texts))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.entered.set()
            assert self._gate.wait(60), "the test never opened the gate"
            time.sleep(self.pause)
            if any(POISON in t for t in texts):
                raise ValueError("the model cannot take this text")
            return self.inner.embed(texts)
        finally:
            with self._lock:
                self.running -= 1


async def vector_search(http: httpx.AsyncClient, word: str) -> list[str]:
    """Contents found by meaning alone (mode vector): nothing if the query got no vector."""
    body = {"query": word, "scope": {"org_id": ORG, "project_id": PROJECT}, "mode": "vector"}
    reply = await http.post("/api/cm/search", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return [h["episode"]["content"] for h in reply.json()["hits"]]


async def add(http: httpx.AsyncClient, *contents: str) -> None:
    body = {"org_id": ORG, "project_id": PROJECT, "messages": [{"content": c} for c in contents]}
    reply = await http.post("/api/v2/memories", json=body, timeout=60)
    assert reply.status_code == 200, reply.text


async def until(condition: Callable[[], bool]) -> None:
    """Wait (a bounded while) for ``condition()``; the assertions that follow say if it failed."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_concurrent_searches_share_one_model_call(data_dir: Path) -> None:
    model = RecordingEmbedder()
    engine = await MemoryEngine.open(data_dir, model)
    try:
        async with running(engine) as server, httpx.AsyncClient(base_url=server.url) as http:
            await add(http, *(f"we talked about {w} today" for w in WORDS))
            await engine.wait_indexed()
            model.batches.clear()
            model.hold()
            first = asyncio.create_task(vector_search(http, WORDS[0]))
            assert await asyncio.to_thread(model.entered.wait, 60)
            rest = [asyncio.create_task(vector_search(http, w)) for w in WORDS[1:]]
            await until(lambda: engine.embedding.waiting == len(WORDS) - 1)
            model.release()
            found = await asyncio.gather(first, *rest)
    finally:
        model.release()
        await engine.close()

    # each search found its own message by its own vector: none were mixed up in the batch
    for word, contents in zip(WORDS, found, strict=True):
        assert contents[0] == f"we talked about {word} today", (word, contents)
    # the first query alone (it was running), then the eleven that waited, in one call
    assert [len(b) for b in model.batches] == [1, len(WORDS) - 1], model.batches
    assert sorted(model.batches[1]) == sorted(WORDS[1:])
    assert model.most_at_once == 1


async def test_adds_and_searches_at_once_run_at_most_two_model_calls(data_dir: Path) -> None:
    """Forty clients adding and searching at once: the model never runs more than two calls
    together (one for searches, one for the indexer; it ran up to six), and it is called fewer
    times than it was given texts."""
    model = RecordingEmbedder()
    model.pause = 0.01
    engine = await MemoryEngine.open(data_dir, model)
    try:
        async with running(engine) as server, httpx.AsyncClient(base_url=server.url) as http:

            async def client(n: int) -> None:
                await add(http, f"client {n} says {WORDS[n % len(WORDS)]} again")
                await vector_search(http, WORDS[n % len(WORDS)])

            await asyncio.gather(*(client(n) for n in range(40)))
            await engine.wait_indexed()
    finally:
        await engine.close()
    assert model.most_at_once <= 2
    texts = sum(len(b) for b in model.batches)
    assert texts >= 80 and len(model.batches) < texts, [len(b) for b in model.batches]


async def test_a_query_the_model_refuses_fails_only_its_own_search(data_dir: Path) -> None:
    """Three searches share a model call with a query no model takes: the call fails, each
    query is embedded alone, the two others find their messages by meaning and the third gets
    no vector (an empty answer in vector mode, not an error)."""
    model = RecordingEmbedder()
    engine = await MemoryEngine.open(data_dir, model)
    try:
        async with running(engine) as server, httpx.AsyncClient(base_url=server.url) as http:
            await add(http, *(f"we talked about {w} today" for w in WORDS[:4]))
            await engine.wait_indexed()
            model.batches.clear()
            model.hold()
            first = asyncio.create_task(vector_search(http, WORDS[0]))
            assert await asyncio.to_thread(model.entered.wait, 60)
            queries = [WORDS[1], f"{POISON} {WORDS[2]}", WORDS[3]]
            rest = [asyncio.create_task(vector_search(http, q)) for q in queries]
            await until(lambda: engine.embedding.waiting == 3)
            model.release()
            found = await asyncio.gather(first, *rest)
    finally:
        model.release()
        await engine.close()

    assert found[0][0] == f"we talked about {WORDS[0]} today"
    assert found[1][0] == f"we talked about {WORDS[1]} today"
    assert found[2] == []
    assert found[3][0] == f"we talked about {WORDS[3]} today"
    assert model.batches[1] == queries, model.batches  # the shared call that failed
    assert sorted(map(tuple, model.batches[2:])) == sorted((q,) for q in queries)


async def test_messages_added_while_the_model_runs_are_embedded_in_one_call(
    data_dir: Path,
) -> None:
    """One client adds ten messages, one request each, while a search's model call runs: the
    indexer, woken by the first, waits for that call to end and embeds all ten in one call
    (it used to embed the first alone, then the rest)."""
    model = RecordingEmbedder()
    engine = await MemoryEngine.open(data_dir, model)
    try:
        async with running(engine) as server, httpx.AsyncClient(base_url=server.url) as http:
            await add(http, "we talked about topic0x today")
            await engine.wait_indexed()
            model.batches.clear()
            model.hold()
            search = asyncio.create_task(vector_search(http, WORDS[0]))
            assert await asyncio.to_thread(model.entered.wait, 60)
            for n in range(10):
                await add(http, f"message {n} about {WORDS[n + 1]}")
            model.release()
            await search
            await engine.wait_indexed()
            stats = (await http.get("/api/cm/stats")).json()
    finally:
        model.release()
        await engine.close()

    assert model.batches[0] == [WORDS[0]]
    assert [len(b) for b in model.batches[1:]] == [10], model.batches
    assert stats["vectors"] == stats["episodes"] == 11, stats


async def stats(http: httpx.AsyncClient) -> dict[str, int]:
    reply = await http.get("/api/cm/stats")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def test_the_indexer_defers_its_pass_while_adds_keep_coming(data_dir: Path) -> None:
    """One client adds thirty messages, one request each, a little apart (each well inside
    the indexer's gather time): the indexer waits while they keep coming and embeds all thirty
    in one call (it used to run a pass each gather time, several calls). Once they stop, it
    indexes at once, not at the end of its longest deferral (far beyond the wait below)."""
    model = RecordingEmbedder()
    engine = await MemoryEngine.open(data_dir, model)
    engine.embedding.gather_s = 0.3
    engine.embedding.max_defer_s = 120.0
    try:
        async with running(engine) as server, httpx.AsyncClient(base_url=server.url) as http:
            for n in range(30):
                await add(http, f"message {n} about {WORDS[n % len(WORDS)]}")
                await asyncio.sleep(0.05)
            await engine.wait_indexed(timeout=60)
            counts = await stats(http)
    finally:
        await engine.close()

    assert [len(b) for b in model.batches] == [30], model.batches
    assert counts["vectors"] == counts["episodes"] == 30, counts


async def test_the_indexer_still_indexes_while_adds_never_stop(data_dir: Path) -> None:
    """One client adds messages back to back without end: the indexer defers its pass at most
    ``max_defer_s``, so messages become searchable by meaning while the adds go on, and once
    they stop every one of them is indexed."""
    model = RecordingEmbedder()
    engine = await MemoryEngine.open(data_dir, model)
    engine.embedding.gather_s = 0.2  # far longer than one add: the adds never leave a gap
    engine.embedding.max_defer_s = 0.5
    adds_while_unindexed = 0
    try:
        async with running(engine) as server, httpx.AsyncClient(base_url=server.url) as http:
            while adds_while_unindexed < 3000 and (await stats(http))["vectors"] == 0:
                await add(http, f"message {adds_while_unindexed} about {WORDS[0]}")
                adds_while_unindexed += 1
            await engine.wait_indexed(timeout=60)
            counts = await stats(http)
            found = await vector_search(http, WORDS[0])
    finally:
        await engine.close()

    assert adds_while_unindexed < 3000  # an endless stream of adds did not starve the index
    assert counts["vectors"] == counts["episodes"] == adds_while_unindexed, counts
    assert found and all(WORDS[0] in text for text in found)
