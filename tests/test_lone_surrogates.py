"""Defect 3 of issue 9: a lone surrogate (``"a\\ud800b"`` as a JSON escape) in content,
producer, produced_for, role, metadata, filter literals or uids answered 500
(``UnicodeEncodeError`` when SQLite bound the text). Every text field now refuses it with 422,
and nothing is stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from memory.engine import MemoryEngine

from .server_harness import running

BAD = "a\ud800b"
ORG, PROJECT = "acme", "support"
SCOPE = {"org_id": ORG, "project_id": PROJECT}


def message(**fields: Any) -> dict[str, Any]:
    return {"content": "hello", **fields}


def episode(**fields: Any) -> dict[str, Any]:
    return {**SCOPE, "producer": "slack:U1", "produced_for": "slack:C1", "content": "hi", **fields}


def fact(**fields: Any) -> dict[str, Any]:
    return {**SCOPE, "subject": "slack:U1", "feature": "city", "value": "Lisbon", **fields}


CASES: list[tuple[str, dict[str, Any]]] = [
    ("/api/v2/memories", {**SCOPE, "messages": [message(content=BAD)]}),
    ("/api/v2/memories", {**SCOPE, "messages": [message(producer=BAD)]}),
    ("/api/v2/memories", {**SCOPE, "messages": [message(produced_for=BAD)]}),
    ("/api/v2/memories", {**SCOPE, "messages": [message(role=BAD)]}),
    ("/api/v2/memories", {**SCOPE, "messages": [message(metadata={"k": BAD})]}),
    ("/api/v2/memories", {**SCOPE, "messages": [message(metadata={BAD: "v"})]}),
    ("/api/v2/memories/search", {**SCOPE, "query": BAD}),
    ("/api/v2/memories/search", {**SCOPE, "query": "x", "filter": f"producer = '{BAD}'"}),
    ("/api/v2/memories/search", {**SCOPE, "query": "x", "set_metadata": {"user_id": BAD}}),
    ("/api/v2/memories/list", {**SCOPE, "filter": f"m.k IN ('{BAD}')"}),
    ("/api/v2/memories/list", {**SCOPE, "set_metadata": {"a": [BAD]}}),
    ("/api/v2/memories/episodic/delete", {**SCOPE, "episodic_ids": [BAD]}),
    ("/api/v2/memories/semantic/delete", {**SCOPE, "semantic_id": BAD}),
    ("/api/v2/projects", {**SCOPE, "description": BAD}),
    ("/api/cm/episodes/add", {"episodes": [episode(content=BAD)]}),
    ("/api/cm/episodes/add", {"episodes": [episode(producer=BAD)]}),
    ("/api/cm/episodes/add", {"episodes": [episode(thread_id=BAD)]}),
    ("/api/cm/episodes/add", {"episodes": [episode(source_id=BAD)]}),
    ("/api/cm/episodes/add", {"episodes": [episode(metadata={"n": {"deep": [BAD]}})]}),
    ("/api/cm/search", {"query": BAD, "scope": SCOPE}),
    ("/api/cm/search", {"query": "x", "scope": {**SCOPE, "producer": BAD}}),
    ("/api/cm/search", {"query": "x", "scope": SCOPE, "filters": f"thread_id = '{BAD}'"}),
    ("/api/cm/episodes/list", {"scope": {**SCOPE, "produced_for": BAD}}),
    ("/api/cm/episodes/get", {**SCOPE, "uids": [BAD]}),
    ("/api/cm/episodes/delete", {**SCOPE, "uids": [BAD]}),
    ("/api/cm/forget", {"org_id": ORG, "producer": BAD}),
    ("/api/cm/episodes/edit", {**SCOPE, "uid": "u1", "content": BAD}),
    ("/api/cm/episodes/by_source", {**SCOPE, "platform": "slack", "source_id": BAD}),
    ("/api/cm/facts/add", {"fact": fact(value=BAD)}),
    ("/api/cm/facts/add", {"fact": fact(subject=BAD)}),
    ("/api/cm/facts/add", {"fact": fact(metadata={"k": BAD})}),
    ("/api/cm/facts/list", {**SCOPE, "subject": BAD}),
    ("/api/cm/settings/set", {**SCOPE, "subject": "u", "key": "k", "value": BAD}),
    ("/api/cm/settings/get", {**SCOPE, "subject": BAD, "key": "k"}),
    ("/api/cm/similarity", {"query": "x", "texts": [BAD]}),
]


@pytest.fixture
async def http(engine: MemoryEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize(
    ("route", "body"), CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(CASES)]
)
async def test_lone_surrogate_in_any_text_field_is_422(
    http: httpx.AsyncClient, engine: MemoryEngine, route: str, body: dict[str, Any]
) -> None:
    # As a JSON escape, the way a client sends it (httpx's json= would refuse to encode it).
    raw = json.dumps(body).encode("ascii")
    assert b"\\ud800" in raw
    response = await http.post(route, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "Traceback" not in response.text
    stats = await engine.stats()
    assert (stats.episodes, stats.facts) == (0, 0)
    # The server is fine afterwards.
    ok = await http.post("/api/v2/memories", json={**SCOPE, "messages": [message()]})
    assert ok.status_code == 200
