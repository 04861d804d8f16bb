"""The MCP endpoint driven by the official ``mcp`` client over streamable HTTP (and stdio):
MemMachine's hospital demo, identity precedence, deletes, and channel recall."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

from memory.engine import MemoryEngine
from memory.model import Episode, Fact, Scope
from tests.conftest import GENERAL, ORG, PROJECT, RANDOM, episode
from tests.server_harness import Running, running

pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client`:DeprecationWarning")

PATIENT = "patient-001"


@pytest.fixture
async def server(engine: MemoryEngine) -> AsyncIterator[Running]:
    async with running(engine) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _no_mm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MM_USER_ID", "MM_ORG_ID", "MM_PROJ_ID"):
        monkeypatch.delenv(name, raising=False)


@asynccontextmanager
async def session(
    server: Running, headers: dict[str, str] | None = None, path: str = "/mcp/"
) -> AsyncIterator[ClientSession]:
    async with (
        streamablehttp_client(server.url + path, headers=headers) as (read, write, _),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        yield client


async def call(client: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.isError, result.content
    assert isinstance(result.structuredContent, dict)
    return result.structuredContent


def contents(result: dict[str, Any]) -> list[str]:
    episodic = result["content"]["episodic_memory"]
    found = episodic["long_term_memory"]["episodes"] + episodic["short_term_memory"]["episodes"]
    return [e["content"] for e in found]


def space(user: str) -> Scope:
    return Scope(org_id="mcp-universal", project_id=f"mcp-{user}")


async def test_tools_are_listed_with_memmachine_parameters(server: Running) -> None:
    async with session(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"add_memory", "search_memory", "delete_memory", "recall_channel"}
    params = {name: set(t.inputSchema["properties"]) for name, t in tools.items()}
    assert params["add_memory"] == {"content", "org_id", "proj_id", "user_id", "channel_id"}
    assert params["search_memory"] == {"query", "org_id", "proj_id", "user_id", "top_k"}
    assert params["delete_memory"] == {
        "org_id",
        "proj_id",
        "episodic_memory_uids",
        "semantic_memory_uids",
    }
    assert params["recall_channel"] == {"channel_id", "query", "org_id", "proj_id", "top_k"}
    assert tools["add_memory"].inputSchema["required"] == ["content"]


async def test_hospital_flow_shares_one_patient_memory(server: Running) -> None:
    patient = {"user-id": PATIENT}
    async with session(server, patient) as front_desk:
        added = await call(
            front_desk,
            "add_memory",
            content="Patient John Doe, age 45, contact: 555-1234, chief complaint: headache",
        )
        assert added == {"status": 200, "message": "Success"}

    async with session(server, patient) as doctor:
        found = await call(
            doctor, "search_memory", query="What is the patient's chief complaint and basic info?"
        )
        assert any("chief complaint: headache" in c for c in contents(found))
        assert found["content"]["semantic_memory"] == []
        await call(
            doctor,
            "add_memory",
            content="Diagnosis: Migraine. Prescription: Ibuprofen 400mg, three times daily."
            " Follow-up: in 2 weeks",
        )

    async with session(server, patient) as patients_own_client:
        record = await call(
            patients_own_client,
            "search_memory",
            query="What was my diagnosis and what should I take?",
        )
    text = " ".join(contents(record))
    for needle in ("John Doe", "headache", "Migraine", "Ibuprofen 400mg", "2 weeks"):
        assert needle in text

    stored = await server.engine.list(space(PATIENT))
    assert [e.producer for e in stored] == [PATIENT, PATIENT]
    assert all(e.metadata == {"user_id": PATIENT} and e.role == "user" for e in stored)
    assert all(e.produced_for == "unknown" and e.platform == "api" for e in stored)


async def test_header_beats_tool_arguments(server: Running) -> None:
    """The header's identity is used; an argument naming someone else is refused (403), not
    silently replaced (tests/memory/server/test_mcp_identity.py checks every argument of every
    tool)."""
    async with session(server, {"user-id": PATIENT}) as client:
        await call(client, "add_memory", content="blood type is O negative", user_id=PATIENT)
        mine = await call(client, "search_memory", query="blood type")
        switched = await call(client, "search_memory", query="blood type", user_id="someone-else")
    assert any("O negative" in c for c in contents(mine))
    assert switched["status"] == 403 and "user-id header" in switched["message"]
    assert await server.engine.count(space(PATIENT)) == 1
    assert await server.engine.count(space("someone-else")) == 0

    async with session(server) as other:  # no header: the argument is used
        theirs = await call(other, "search_memory", query="blood type", user_id="someone-else")
    assert contents(theirs) == []


async def test_env_beats_arguments_and_header_beats_env(
    server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_USER_ID", "env-user")
    monkeypatch.setenv("MM_ORG_ID", "clinic")
    async with session(server) as client:
        await call(client, "add_memory", content="from the env user")
        refused = await call(client, "add_memory", content="not stored", user_id="arg-user")
    assert refused["status"] == 403 and "MM_USER_ID" in refused["message"]
    async with session(server, {"user-id": "header-user", "org-id": "hq"}) as client:
        await call(client, "add_memory", content="from the header user")
    env_scope = Scope(org_id="clinic", project_id="mcp-env-user")
    header_scope = Scope(org_id="hq", project_id="mcp-header-user")
    assert [e.content for e in await server.engine.list(env_scope)] == ["from the env user"]
    assert [e.content for e in await server.engine.list(header_scope)] == ["from the header user"]
    assert await server.engine.list_projects() == [
        ("clinic", "mcp-env-user"),
        ("hq", "mcp-header-user"),
    ]


async def test_delete_memory(server: Running) -> None:
    async with session(server, {"user-id": PATIENT}) as client:
        await call(client, "add_memory", content="allergic to penicillin")
        await call(client, "add_memory", content="likes green tea")
        first, second = await server.engine.list(space(PATIENT))
        fact = await server.engine.add_fact(
            Fact(
                org_id="mcp-universal",
                project_id=f"mcp-{PATIENT}",
                subject=PATIENT,
                feature="drink",
                value="green tea",
                citations=[second.uid],
            )
        )
        found = await call(client, "search_memory", query="what drink does the patient like")
        assert [f["metadata"]["id"] for f in found["content"]["semantic_memory"]] == [fact]

        done = await call(client, "delete_memory", episodic_memory_uids=[first.uid])
        assert done == {"status": 200, "message": "Success"}
        done = await call(client, "delete_memory", semantic_memory_uids=[fact])
        assert done["status"] == 200
        missing = await call(client, "delete_memory", episodic_memory_uids=[first.uid])
        assert missing["status"] == 404
        empty = await call(client, "delete_memory")
        assert empty["status"] == 422
        bad = await call(client, "delete_memory", episodic_memory_uids=["a/b"])
        assert bad["status"] == 422
    assert [e.uid for e in await server.engine.list(space(PATIENT))] == [second.uid]
    assert await server.engine.facts("mcp-universal", f"mcp-{PATIENT}") == []


async def test_recall_channel_reads_one_channel(server: Running) -> None:
    await server.engine.add(
        [
            episode("the deploy is scheduled for Friday", produced_for=GENERAL),
            episode("the deploy of the cafeteria menu is Monday", produced_for=RANDOM),
        ]
    )
    async with session(server) as client:
        found = await call(
            client,
            "recall_channel",
            channel_id=GENERAL,
            query="when is the deploy",
            org_id=ORG,
            proj_id=PROJECT,
        )
        assert contents(found) == ["the deploy is scheduled for Friday"]
        assert (
            found["content"]["episodic_memory"]["long_term_memory"]["episodes"][0][
                "produced_for_id"
            ]
            == GENERAL
        )
        empty = await call(client, "recall_channel", channel_id=" ", query="deploy")
        assert empty["status"] == 422


async def test_mcp_path_without_slash_redirects(server: Running) -> None:
    async with httpx.AsyncClient(base_url=server.url) as raw:
        response = await raw.post("/mcp", json={})
    assert response.status_code == 307
    assert response.headers["location"].endswith("/mcp/")
    async with session(server, {"user-id": PATIENT}, path="/mcp") as client:
        assert (await call(client, "add_memory", content="via /mcp"))["status"] == 200


async def test_mcp_stdio_serves_the_same_tools(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CHANNELMIND_DATA_DIR": str(tmp_path / "data"),
        "CHANNELMIND_EMBEDDER": "hash",
        "MM_USER_ID": PATIENT,
    }
    env.pop("CHANNELMIND_API_KEYS", None)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "bot.cli", "mcp-stdio"], env=env, cwd=os.getcwd()
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        added = await call(client, "add_memory", content="stdio remembers this")
        assert added["status"] == 200
        found = await call(client, "search_memory", query="what does stdio remember")
    assert contents(found) == ["stdio remembers this"]
    engine = await MemoryEngine.open(tmp_path / "data", "hash")
    try:
        stored = await engine.list(space(PATIENT))
    finally:
        await engine.close()
    assert [(e.content, e.producer) for e in stored] == [("stdio remembers this", PATIENT)]
    assert isinstance(stored[0], Episode)
