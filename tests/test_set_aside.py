"""Defect 1 of issue 9, second half: one row that could not be read (a time an older version
stored past year 9999) made every search and list of its project answer 500, made the v2
delete of that row answer 500, and stopped the background indexer for every org, across
restarts. A row that cannot be read or embedded is now set aside: skipped, counted in stats and
metrics, logged once, deletable, and it never blocks other rows or orgs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from memory.embedders import HashEmbedder, Vectors
from memory.engine import MemoryEngine
from memory.store.sqlite.store import uid_key

from .conftest import raw_db, raw_write
from .server_harness import running

ORG, PROJECT, OTHER_ORG = "acme", "support", "globex"
#: What an older version stored for "9999-12-31T23:59:59.999999": it reads back as year 10000.
YEAR_10000 = 253402300800.0
POISON = "\u2620"


class PoisonEmbedder:
    """The hashing embedder, failing on any text with a skull in it (a row no model takes);
    ``down`` makes it fail on everything (a dead embedding service)."""

    name = "hash"

    def __init__(self) -> None:
        self.inner = HashEmbedder()
        self.dim = self.inner.dim
        self.down = False

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def embed(self, texts: list[str]) -> Vectors:
        if self.down or any(POISON in t for t in texts):
            raise ValueError("the model cannot take this text")
        return self.inner.embed(texts)


async def add(http: httpx.AsyncClient, org: str, *contents: str) -> list[str]:
    body = {
        "org_id": org,
        "project_id": PROJECT,
        "messages": [{"content": c, "producer": "alice"} for c in contents],
    }
    response = await http.post("/api/v2/memories", json=body)
    assert response.status_code == 200, response.text
    return [r["uid"] for r in response.json()["results"]]


async def search(http: httpx.AsyncClient, org: str, query: str) -> list[str]:
    body = {"org_id": org, "project_id": PROJECT, "query": query, "types": ["episodic"]}
    response = await http.post("/api/v2/memories/search", json=body)
    assert response.status_code == 200, response.text
    episodic = response.json()["content"]["episodic_memory"]
    found = episodic["long_term_memory"]["episodes"] + episodic["short_term_memory"]["episodes"]
    return [e["content"] for e in found]


async def listed(http: httpx.AsyncClient, org: str) -> list[str]:
    body = {"org_id": org, "project_id": PROJECT, "type": "episodic"}
    response = await http.post("/api/v2/memories/list", json=body)
    assert response.status_code == 200, response.text
    return [e["content"] for e in response.json()["content"]["episodic_memory"]]


async def stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/api/cm/stats")
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


async def metric(http: httpx.AsyncClient) -> float:
    text = (await http.get("/api/v2/metrics")).text
    [line] = [ln for ln in text.splitlines() if ln.startswith("channelmind_records_set_aside ")]
    return float(line.split()[1])


async def indexed(http: httpx.AsyncClient) -> bool:
    done: bool = (await http.post("/api/cm/index/wait", json={"timeout": 60})).json()["done"]
    return done


def set_aside_logs(caplog: pytest.LogCaptureFixture, uid: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == logging.WARNING and uid in r.getMessage())


@pytest.fixture
async def http(engine: MemoryEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
        yield c


async def test_a_row_that_cannot_be_read_is_set_aside_not_500(
    http: httpx.AsyncClient, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    [broken, fine] = await add(http, ORG, "the year ten thousand message", "an ordinary message")
    # An older version stored this row's time past 9999-12-31: put it back that way, and let
    # the indexer meet it again.
    await raw_write(
        data_dir,
        "UPDATE episodes SET created_at = ?, indexed = 0 WHERE uid = ?",
        (YEAR_10000, uid_key(broken)),
    )

    # Reads of the project answer, without the broken row; other orgs are not blocked.
    for _ in range(3):
        assert await listed(http, ORG) == ["an ordinary message"]
        assert "an ordinary message" in await search(http, ORG, "ordinary message")
    await add(http, OTHER_ORG, "globex keeps indexing")
    assert await indexed(http)
    assert await search(http, OTHER_ORG, "globex indexing") == ["globex keeps indexing"]

    # Counted, in stats and metrics, and logged once however often it is met.
    assert (await stats(http))["set_aside"] == 1
    assert await metric(http) == 1.0
    assert set_aside_logs(caplog, broken) == 1

    # Deletable through the v2 API, like any other row.
    body = {"org_id": ORG, "project_id": PROJECT, "episodic_id": broken}
    response = await http.post("/api/v2/memories/episodic/delete", json=body)
    assert response.status_code == 204, response.text
    assert (await stats(http))["set_aside"] == 0
    assert await metric(http) == 0.0
    with raw_db(data_dir) as conn:
        left = {
            r[0]
            for r in conn.execute(
                "SELECT uid FROM episodes JOIN scopes ON key = project_key WHERE org_id = ?",
                (ORG,),
            )
        }
    assert left == {uid_key(fine)}


async def test_a_row_that_cannot_be_read_does_not_block_the_indexer_after_a_restart(
    data_dir: Path,
) -> None:
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url, timeout=120) as http:
            [broken] = await add(http, ORG, "stored by an older version")
    finally:
        await engine.close()
    with raw_db(data_dir) as conn:
        conn.execute(
            "UPDATE episodes SET created_at = ?, indexed = 0 WHERE uid = ?",
            (YEAR_10000, uid_key(broken)),
        )
        conn.commit()
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url, timeout=120) as http:
            await add(http, OTHER_ORG, *(f"globex note {i}" for i in range(5)))
            assert await indexed(http)
            assert (await stats(http))["vectors"] == 5
            assert (await stats(http))["set_aside"] == 1
    finally:
        await engine.close()


async def test_a_fact_that_cannot_be_read_is_set_aside_and_deletable(
    http: httpx.AsyncClient, data_dir: Path
) -> None:
    [cited] = await add(http, ORG, "I moved to Lisbon")
    fact = {
        "org_id": ORG,
        "project_id": PROJECT,
        "subject": "alice",
        "feature": "city",
        "value": "Lisbon",
        "citations": [cited],
    }
    uids = [(await http.post("/api/cm/facts/add", json={"fact": fact})).json()["uid"]]
    uids.append((await http.post("/api/cm/facts/add", json={"fact": fact})).json()["uid"])
    await raw_write(
        data_dir, "UPDATE facts SET created_at = ? WHERE uid = ?", (YEAR_10000, uids[0])
    )
    listed_facts = await http.post(
        "/api/cm/facts/list", json={"org_id": ORG, "project_id": PROJECT}
    )
    assert [f["uid"] for f in listed_facts.json()] == [uids[1]]
    body = {"org_id": ORG, "project_id": PROJECT, "query": "where does alice live"}
    assert (await http.post("/api/v2/memories/search", json=body)).status_code == 200
    assert (await stats(http))["set_aside"] == 1
    body = {"org_id": ORG, "project_id": PROJECT, "semantic_id": uids[0]}
    assert (await http.post("/api/v2/memories/semantic/delete", json=body)).status_code == 204


@pytest.mark.usefixtures("each_store")
async def test_a_row_that_cannot_be_embedded_is_set_aside(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    embedder = PoisonEmbedder()
    engine = await MemoryEngine.open(data_dir, embedder)
    try:
        async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url, timeout=120) as http:
            uids = await add(http, ORG, "first note", f"poisoned {POISON} note", "third note")
            await add(http, OTHER_ORG, "globex note")
            assert await indexed(http)
            assert (await stats(http))["vectors"] == 3
            assert (await stats(http))["set_aside"] == 1
            assert set_aside_logs(caplog, uids[1]) == 1
            # Still stored and found by its words; deletable.
            assert f"poisoned {POISON} note" in await search(http, ORG, "poisoned note")
            body = {"org_id": ORG, "project_id": PROJECT, "episodic_ids": [uids[1]]}
            response = await http.post("/api/v2/memories/episodic/delete", json=body)
            assert response.status_code == 204
            assert (await stats(http))["set_aside"] == 0
    finally:
        await engine.close()


@pytest.mark.usefixtures("each_store")
async def test_a_dead_embedder_sets_nothing_aside(data_dir: Path) -> None:
    """The control: when the embedder fails on everything, rows wait (the indexer retries);
    they are not mistaken for bad rows."""
    embedder = PoisonEmbedder()
    engine = await MemoryEngine.open(data_dir, embedder, background=False)
    try:
        async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url, timeout=120) as http:
            await add(http, ORG, "first note", "second note")
            embedder.down = True
            with pytest.raises(ValueError, match="cannot take"):
                await engine.index_step()
            assert (await stats(http))["set_aside"] == 0
            assert (await stats(http))["pending_index"] == 2
            embedder.down = False
            assert await engine.index_step()
            assert (await stats(http))["vectors"] == 2
    finally:
        await engine.close()
