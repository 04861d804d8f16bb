"""Issue 12 noted that the id rule diverged: memory/model.py accepted ``"abc\\n"`` (its regex
ended in ``$``, which matches before a final newline) while the v2 API refused it. There is now
one definition (memory.model.check_safe_id), used by the engine, the v2 and ChannelMind routes
and the MCP tools, and the OpenAPI schema states it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from memory.engine import MemoryEngine
from memory.model import ID_PATTERN, InvalidInput, check_safe_id

from .server_harness import running

BAD_IDS = ["abc\n", "a/b", "", "has space", "x" * 257, "tab\there", "dot.ted"]
GOOD_IDS = [
    "abc",
    "équipe_1",
    "slack:T024BE7LH",
    "discord:81384788765712384",
    "日本-語_2",
    "x" * 256,
]


@pytest.fixture
async def http(engine: MemoryEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
        yield c


def v2_add(org: str) -> tuple[str, dict[str, Any]]:
    return "/api/v2/memories", {"org_id": org, "project_id": "p", "messages": [{"content": "hi"}]}


def cm_add(org: str) -> tuple[str, dict[str, Any]]:
    episode = {"org_id": org, "project_id": "p", "producer": "u", "content": "hi"}
    return "/api/cm/episodes/add", {"episodes": [episode]}


@pytest.mark.parametrize("org", BAD_IDS)
async def test_an_id_the_v2_api_refuses_is_refused_everywhere(
    http: httpx.AsyncClient, org: str
) -> None:
    with pytest.raises(InvalidInput, match="ID can only contain"):
        check_safe_id(org, "org_id")
    for route, body in (v2_add(org), cm_add(org)):
        response = await http.post(route, json=body)
        assert response.status_code == 422, (route, response.text)
        assert "ID can only contain" in response.text
    mcp_add = await http.post("/api/cm/forget", json={"org_id": org})
    assert mcp_add.status_code == 422
    assert not re.search(ID_PATTERN, org) or len(org) > 256  # the schema's pattern agrees


@pytest.mark.parametrize("org", GOOD_IDS)
async def test_an_id_the_v2_api_accepts_is_accepted_everywhere(
    http: httpx.AsyncClient, org: str
) -> None:
    assert check_safe_id(org, "org_id") == org
    for route, body in (v2_add(org), cm_add(org)):
        response = await http.post(route, json=body)
        assert response.status_code == 200, (route, response.text)
    assert re.search(ID_PATTERN, org)


async def test_the_schema_states_the_id_pattern(http: httpx.AsyncClient) -> None:
    schema = (await http.get("/openapi.json")).json()
    found = {
        (name, prop.get("pattern"), prop.get("maxLength"))
        for name, model in schema["components"]["schemas"].items()
        for prop_name, prop in model.get("properties", {}).items()
        if prop_name in ("org_id", "project_id") and name in ("AddMemoriesSpec", "Episode")
    }
    assert found == {
        ("AddMemoriesSpec", ID_PATTERN, 256),
        ("Episode", ID_PATTERN, 256),
    }
