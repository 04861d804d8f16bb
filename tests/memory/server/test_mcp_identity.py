"""Defect 2 of issue 9: with ``user-id: alice``, ``search_memory(proj_id="mcp-bob")`` read bob's
memory, and add / delete / recall_channel wrote, deleted and read there; the same over stdio
with ``MM_USER_ID``. An identity from a header or the environment now pins whose memory it is:
every argument that selects a memory (org_id, proj_id, user_id, of every tool) may repeat the
pinned value, never name another. Each case has a positive control: without the pin, the same
call does reach bob's memory, so the test would see a leak."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

from memory.engine import MemoryEngine
from memory.model import Episode, Scope
from tests.conftest import GENERAL, ORG, PROJECT, episode
from tests.server_harness import Running, running

pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client`:DeprecationWarning")

MCP_ORG = "mcp-universal"
BOB_SPACE = Scope(org_id=MCP_ORG, project_id="mcp-bob")
ALICE_SPACE = Scope(org_id=MCP_ORG, project_id="mcp-alice")
SECRET = "bob's locker code is 4711"
CHANNEL_NOTE = "the release train leaves on thursday"


@pytest.fixture(autouse=True)
def _no_mm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MM_USER_ID", "MM_ORG_ID", "MM_PROJ_ID"):
        monkeypatch.delenv(name, raising=False)


def bob_message(content: str) -> Episode:
    return Episode(
        org_id=MCP_ORG,
        project_id="mcp-bob",
        producer="bob",
        produced_for="unknown",
        content=content,
    )


async def seed(engine: MemoryEngine) -> str:
    """Bob's memory, a message of a Slack channel, and a deletable message of bob's."""
    await engine.add([bob_message(SECRET)])
    await engine.add([episode(CHANNEL_NOTE, produced_for=GENERAL)])
    [victim] = await engine.add([bob_message("bob's message to be deleted")])
    return victim


#: (tool, the arguments that reach someone else's memory): each must be refused when pinned.
def switching_calls(victim: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("search_memory", {"query": "locker code", "proj_id": "mcp-bob"}),
        ("search_memory", {"query": "locker code", "user_id": "bob"}),
        ("search_memory", {"query": "locker code", "org_id": MCP_ORG, "proj_id": "mcp-bob"}),
        ("add_memory", {"content": "planted in bob's memory", "proj_id": "mcp-bob"}),
        ("add_memory", {"content": "planted as bob", "user_id": "bob"}),
        ("add_memory", {"content": "planted in another org", "org_id": "elsewhere"}),
        ("delete_memory", {"proj_id": "mcp-bob", "episodic_memory_uids": [victim]}),
        (
            "recall_channel",
            {"channel_id": GENERAL, "query": "release train", "org_id": ORG, "proj_id": PROJECT},
        ),
        ("recall_channel", {"channel_id": "unknown", "query": "locker", "proj_id": "mcp-bob"}),
    ]


async def call(client: ClientSession, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.isError, result.content
    assert isinstance(result.structuredContent, dict)
    return result.structuredContent


def texts(result: dict[str, Any]) -> list[str]:
    episodic = result.get("content", {}).get("episodic_memory", {})
    found = episodic.get("long_term_memory", {}).get("episodes", []) + episodic.get(
        "short_term_memory", {}
    ).get("episodes", [])
    return [e["content"] for e in found]


def reached_other_memory(tool: str, result: dict[str, Any]) -> bool:
    """Whether a call's answer shows it used bob's memory or the channel's."""
    if tool in ("search_memory", "recall_channel"):
        return any(SECRET in t or CHANNEL_NOTE in t for t in texts(result))
    return result.get("status") == 200


@pytest.fixture
async def server(engine: MemoryEngine) -> AsyncIterator[Running]:
    async with running(engine) as srv:
        yield srv


@asynccontextmanager
async def http_session(
    server: Running, headers: dict[str, str] | None
) -> AsyncIterator[ClientSession]:
    async with (
        streamablehttp_client(server.url + "/mcp/", headers=headers) as (read, write, _),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        yield client


async def test_user_id_header_pins_every_argument_over_http(server: Running) -> None:
    engine = server.engine
    victim = await seed(engine)
    calls = switching_calls(victim)

    # Positive control: without a header, each call reaches bob's memory or the channel.
    # (Run on a copy of the data: the control's writes and deletes are undone below.)
    async with http_session(server, None) as client:
        for tool, arguments in calls:
            if tool in ("search_memory", "recall_channel"):
                result = await call(client, tool, arguments)
                assert reached_other_memory(tool, result), (tool, arguments)

    # Pinned: every one is refused, and bob's memory is untouched.
    before = [e.content for e in await engine.list(BOB_SPACE)]
    async with http_session(server, {"user-id": "alice"}) as client:
        for tool, arguments in calls:
            result = await call(client, tool, arguments)
            assert result.get("status") == 403, (tool, arguments, result)
            assert "user-id header" in result["message"]
            assert not reached_other_memory(tool, result)
        # Narrowing inside the pinned memory is fine: the same values, or a channel.
        stored = await call(
            client,
            "add_memory",
            {"content": "alice's own note", "user_id": "alice", "channel_id": "slack:C1"},
        )
        assert stored["status"] == 200
        own = await call(client, "search_memory", {"query": "own note", "proj_id": "mcp-alice"})
        assert texts(own) == ["alice's own note"]
    assert [e.content for e in await engine.list(BOB_SPACE)] == before
    assert [(e.content, e.produced_for) for e in await engine.list(ALICE_SPACE)] == [
        ("alice's own note", "slack:C1")
    ]
    assert await engine.list_projects(MCP_ORG) == [(MCP_ORG, "mcp-alice"), (MCP_ORG, "mcp-bob")]

    # The unpinned writes and deletes do reach bob's memory (the control for those tools).
    async with http_session(server, None) as client:
        planted = await call(client, "add_memory", {"content": "x", "proj_id": "mcp-bob"})
        deleted = await call(
            client, "delete_memory", {"proj_id": "mcp-bob", "episodic_memory_uids": [victim]}
        )
    assert planted["status"] == deleted["status"] == 200
    assert victim not in [e.uid for e in await engine.list(BOB_SPACE)]


async def test_org_and_project_headers_pin_too(server: Running) -> None:
    await seed(server.engine)
    async with http_session(server, {"org-id": ORG, "proj-id": PROJECT}) as client:
        mine = await call(client, "recall_channel", {"channel_id": GENERAL, "query": "release"})
        assert texts(mine) == [CHANNEL_NOTE]
        other = await call(client, "search_memory", {"query": "locker", "org_id": MCP_ORG})
        assert other["status"] == 403 and "org-id header" in other["message"]
    # An org alone pins the org; the project may still be chosen inside it.
    async with http_session(server, {"org-id": MCP_ORG}) as client:
        inside = await call(client, "search_memory", {"query": "locker", "proj_id": "mcp-bob"})
        assert SECRET in texts(inside)
        outside = await call(
            client,
            "recall_channel",
            {"channel_id": GENERAL, "query": "release", "org_id": ORG, "proj_id": PROJECT},
        )
        assert outside["status"] == 403


@asynccontextmanager
async def stdio_session(data_dir: Path, user: str | None) -> AsyncIterator[ClientSession]:
    env = {
        **os.environ,
        "CHANNELMIND_DATA_DIR": str(data_dir),
        "CHANNELMIND_EMBEDDER": "hash",
    }
    for name in ("MM_USER_ID", "MM_ORG_ID", "MM_PROJ_ID", "CHANNELMIND_API_KEYS"):
        env.pop(name, None)
    if user is not None:
        env["MM_USER_ID"] = user
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "bot.cli", "mcp-stdio"], env=env, cwd=os.getcwd()
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        yield client


async def test_mm_user_id_pins_every_argument_over_stdio(data_dir: Path) -> None:
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        victim = await seed(engine)
    finally:
        await engine.close()
    calls = switching_calls(victim)

    async with stdio_session(data_dir, None) as client:  # positive control
        for tool, arguments in calls:
            if tool in ("search_memory", "recall_channel"):
                assert reached_other_memory(tool, await call(client, tool, arguments))

    async with stdio_session(data_dir, "alice") as client:
        for tool, arguments in calls:
            result = await call(client, tool, arguments)
            assert result.get("status") == 403, (tool, arguments, result)
            assert "MM_USER_ID" in result["message"]
        own = await call(client, "add_memory", {"content": "alice via stdio"})
        assert own["status"] == 200

    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        bob = [e.content for e in await engine.list(BOB_SPACE)]
        alice = [e.content for e in await engine.list(ALICE_SPACE)]
    finally:
        await engine.close()
    assert bob == [SECRET, "bob's message to be deleted"]
    assert alice == ["alice via stdio"]
