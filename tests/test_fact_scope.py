"""Defect 5 of issue 9: ``/api/cm/facts/add`` with a fact uid that already existed answered 500
(UNIQUE constraint), and, answered differently from an unknown uid, that told one org whether
another org's uid exists. And a fact could cite another org's episode (globex's fact citing an
acme message died when acme deleted it). Uids are now the server's to assign (the same 422 for
any uid a caller picks), and a fact may cite only episodes of its own org and project."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from memory.engine import MemoryEngine

from .server_harness import running

ACME = {"org_id": "acme", "project_id": "support"}
GLOBEX = {"org_id": "globex", "project_id": "support"}


@pytest.fixture
async def http(engine: MemoryEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
        yield c


async def add_message(http: httpx.AsyncClient, where: dict[str, str], content: str) -> str:
    body = {**where, "messages": [{"content": content, "producer": "alice"}]}
    response = await http.post("/api/v2/memories", json=body)
    assert response.status_code == 200
    uid: str = response.json()["results"][0]["uid"]
    return uid


def fact(where: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {**where, "subject": "alice", "feature": "city", "value": "Lisbon", **fields}


async def test_a_taken_fact_uid_gets_the_same_answer_as_an_unknown_one(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/api/cm/facts/add", json={"fact": fact(ACME)})
    assert response.status_code == 200
    acme_uid = response.json()["uid"]
    taken = await http.post("/api/cm/facts/add", json={"fact": fact(GLOBEX, uid=acme_uid)})
    unknown = await http.post(
        "/api/cm/facts/add", json={"fact": fact(GLOBEX, uid=str(uuid.uuid4()))}
    )
    assert taken.status_code == unknown.status_code == 422
    assert taken.json() == unknown.json()
    # Same for episodes on the ChannelMind route.
    acme_episode = await add_message(http, ACME, "acme's message")
    body = {
        "episodes": [
            {**GLOBEX, "producer": "bob", "content": "globex message", "uid": acme_episode}
        ]
    }
    taken = await http.post("/api/cm/episodes/add", json=body)
    body["episodes"][0]["uid"] = str(uuid.uuid4())
    unknown = await http.post("/api/cm/episodes/add", json=body)
    assert taken.status_code == unknown.status_code == 422
    assert taken.json() == unknown.json()
    # Superseding by another org's fact is "not found", as for a uid nobody has.
    own = (await http.post("/api/cm/facts/add", json={"fact": fact(GLOBEX)})).json()["uid"]
    answers = []
    for by in (acme_uid, str(uuid.uuid4())):
        body = {**GLOBEX, "uid": own, "by": by}
        response = await http.post("/api/cm/facts/supersede", json=body)
        assert response.status_code == 404
        answers.append(response.json()["detail"].replace(by, "<uid>"))
    assert answers[0] == answers[1]


async def test_a_fact_may_cite_only_its_own_org_and_project(
    http: httpx.AsyncClient, engine: MemoryEngine
) -> None:
    acme_episode = await add_message(http, ACME, "acme says the launch is on Monday")
    globex_episode = await add_message(http, GLOBEX, "globex says Lisbon")
    other_project = await add_message(
        http, {**GLOBEX, "project_id": "sales"}, "globex sales says Porto"
    )
    for citations in ([acme_episode], [globex_episode, acme_episode], [other_project]):
        response = await http.post(
            "/api/cm/facts/add", json={"fact": fact(GLOBEX, citations=citations)}
        )
        assert response.status_code == 404, response.text
        assert "citations not found in globex/support" in response.json()["detail"]
    ok = await http.post(
        "/api/cm/facts/add", json={"fact": fact(GLOBEX, citations=[globex_episode])}
    )
    assert ok.status_code == 200
    # Acme deleting its message touches nothing of globex.
    body = {**ACME, "episodic_id": acme_episode}
    assert (await http.post("/api/v2/memories/episodic/delete", json=body)).status_code == 204
    facts = await http.post("/api/cm/facts/list", json=GLOBEX)
    assert [(f["uid"], f["citations"]) for f in facts.json()] == [
        (ok.json()["uid"], [globex_episode])
    ]
    assert (await engine.stats()).facts == 1
