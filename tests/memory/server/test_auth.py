"""API keys: 401 without or with a wrong key, 403 for an org the key does not grant, ``*`` keys
everywhere, health open; the same for MCP; loopback-only without keys; keys never logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import requests
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from memmachine_client import MemMachineClient

from bot.cli import main as cli_main
from memory.engine import MemoryEngine
from memory.server.app import ServeRefused, check_bind, create_app
from memory.server.auth import ApiKeyError, ApiKeys, is_loopback
from tests.server_harness import Running, running, serve, settings

pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client`:DeprecationWarning")

KEYS = "k-acme-1234:acme|globex, k-root-5678:*"
ACME = {"Authorization": "Bearer k-acme-1234"}
ROOT = {"Authorization": "Bearer k-root-5678"}


@pytest.fixture
async def server(engine: MemoryEngine) -> AsyncIterator[Running]:
    async with running(engine, api_keys=KEYS) as srv:
        yield srv


def add_body(org: str) -> dict[str, Any]:
    return {"org_id": org, "project_id": "p", "messages": [{"content": f"hello {org}"}]}


async def test_rest_needs_a_key_for_the_org(server: Running) -> None:
    async with httpx.AsyncClient(base_url=server.url) as raw:
        missing = await raw.post("/api/v2/memories", json=add_body("acme"))
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "missing API key" in missing.json()["detail"]
        wrong = await raw.post(
            "/api/v2/memories", json=add_body("acme"), headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid API key"}
        basic = await raw.post(
            "/api/v2/memories", json=add_body("acme"), headers={"Authorization": "Basic eDp5"}
        )
        assert basic.status_code == 401

        ok = await raw.post("/api/v2/memories", json=add_body("acme"), headers=ACME)
        assert ok.status_code == 200
        also = await raw.post("/api/v2/memories", json=add_body("globex"), headers=ACME)
        assert also.status_code == 200
        other = await raw.post("/api/v2/memories", json=add_body("initech"), headers=ACME)
        assert other.status_code == 403
        assert other.json() == {"detail": "this API key may not access org 'initech'"}
        search = await raw.post(
            "/api/v2/memories/search", json={"org_id": "initech", "query": "x"}, headers=ACME
        )
        assert search.status_code == 403

        everywhere = await raw.post("/api/v2/memories", json=add_body("initech"), headers=ROOT)
        assert everywhere.status_code == 200

        health = await raw.get("/api/v2/health")
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        metrics = await raw.get("/api/v2/metrics")
        assert metrics.status_code == 401
        assert (await raw.get("/api/v2/metrics", headers=ACME)).status_code == 200

        listed = await raw.post("/api/v2/projects/list", headers=ACME)
        assert {p["org_id"] for p in listed.json()} == {"acme", "globex"}
        listed = await raw.post("/api/v2/projects/list", headers=ROOT)
        assert {p["org_id"] for p in listed.json()} == {"acme", "globex", "initech"}

        stats = await raw.get("/api/cm/stats", headers=ACME)
        assert stats.status_code == 403
        assert (await raw.get("/api/cm/stats", headers=ROOT)).json()["episodes"] == 3
        assert (await raw.post("/api/cm/index/rebuild", headers=ACME)).status_code == 403
        rebuilt = await raw.post("/api/cm/index/rebuild", headers=ROOT)
        assert rebuilt.status_code == 202 and rebuilt.json() == {"queued": 3}
        scoped = await raw.post(
            "/api/cm/episodes/count",
            json={"scope": {"org_id": "initech", "project_id": "p"}},
            headers=ACME,
        )
        assert scoped.status_code == 403


async def test_memmachine_client_with_api_key(server: Running) -> None:
    def flow() -> None:
        good = MemMachineClient(api_key="k-acme-1234", base_url=server.url, max_retries=0)
        project = good.get_or_create_project(org_id="acme", project_id="keyed")
        project.memory().add("keyed memory")
        assert project.get_episode_count() == 1
        bad = MemMachineClient(api_key="wrong", base_url=server.url, max_retries=0)
        with pytest.raises(requests.HTTPError) as denied:
            bad.get_or_create_project(org_id="acme", project_id="keyed")
        assert denied.value.response.status_code == 401
        with pytest.raises(requests.HTTPError) as forbidden:
            good.create_project(org_id="initech", project_id="keyed")
        assert forbidden.value.response.status_code == 403
        assert bad.health_check()["status"] == "healthy"

    await asyncio.to_thread(flow)


async def test_mcp_needs_a_key_and_an_allowed_org(server: Running) -> None:
    async with httpx.AsyncClient(base_url=server.url) as raw:
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        accept = {"Accept": "application/json, text/event-stream"}
        denied = await raw.post("/mcp/", json=initialize, headers=accept)
        assert denied.status_code == 401
        wrong = await raw.post(
            "/mcp/", json=initialize, headers={**accept, "Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401

    with pytest.raises(Exception):  # noqa: B017 - the client raises its own wrapper of the 401
        async with streamablehttp_client(server.url + "/mcp/") as (read, write, _):
            async with ClientSession(read, write) as client:
                await asyncio.wait_for(client.initialize(), 10)

    # Without identity headers the arguments choose the org, among those the key grants.
    async with (
        streamablehttp_client(server.url + "/mcp/", headers=ACME) as (read, write, _),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        # The default org (mcp-universal) is not granted to this key.
        refused = await client.call_tool("add_memory", {"content": "x"})
        assert refused.structuredContent == {
            "status": 403,
            "message": "this API key may not access org 'mcp-universal'",
        }
        allowed = await client.call_tool("add_memory", {"content": "x", "org_id": "acme"})
        assert allowed.structuredContent == {"status": 200, "message": "Success"}
        found = await client.call_tool("search_memory", {"query": "x", "org_id": "globex"})
        assert found.structuredContent and found.structuredContent["status"] == 0
        forbidden = await client.call_tool("search_memory", {"query": "x", "org_id": "initech"})
        assert forbidden.structuredContent and forbidden.structuredContent["status"] == 403

    # A user-id header pins the org too (its default, or the org-id header's).
    headers = {**ACME, "user-id": "patient-001", "org-id": "acme"}
    async with (
        streamablehttp_client(server.url + "/mcp/", headers=headers) as (read, write, _),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        allowed = await client.call_tool("add_memory", {"content": "x"})
        assert allowed.structuredContent == {"status": 200, "message": "Success"}
        switched = await client.call_tool("search_memory", {"query": "x", "org_id": "globex"})
        assert switched.structuredContent and switched.structuredContent["status"] == 403

    org_header = {**ACME, "org-id": "initech"}  # a header cannot widen what the key grants
    async with (
        streamablehttp_client(server.url + "/mcp/", headers=org_header) as (read, write, _),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        refused = await client.call_tool("add_memory", {"content": "x", "org_id": "acme"})
        assert refused.structuredContent and refused.structuredContent["status"] == 403


def test_key_parsing() -> None:
    keys = ApiKeys.parse(" k1:acme|globex , k2:* ,")
    assert len(keys) == 2
    k1, k2 = keys.lookup("k1"), keys.lookup("k2")
    assert k1 is not None and k1.allows("acme") and not k1.allows("initech")
    assert k2 is not None and k2.all_orgs
    assert keys.lookup("k3") is None
    assert not ApiKeys.parse("").enabled
    assert ApiKeys.parse("k:org:with:colons").lookup("k") is not None
    for bad in ("secretvalue", "secretvalue:", ":acme", "secretvalue:a,secretvalue:b"):
        with pytest.raises(ApiKeyError) as err:
            ApiKeys.parse(bad)
        assert "secretvalue" not in str(err.value)


def test_loopback_only_without_keys(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
    with pytest.raises(ServeRefused):
        check_bind("0.0.0.0", ApiKeys.parse(""))
    check_bind("0.0.0.0", ApiKeys.parse("k:*"))
    check_bind("127.0.0.1", ApiKeys.parse(""))

    monkeypatch.delenv("CHANNELMIND_API_KEYS", raising=False)
    monkeypatch.chdir("/")  # no .env file
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "no API keys are configured" in capsys.readouterr().err
    monkeypatch.setenv("CHANNELMIND_API_KEYS", "justakey")
    assert cli_main(["serve", "--host", "127.0.0.1", "--port", "0"]) == 2
    assert "justakey" not in capsys.readouterr().err


async def test_start_warns_when_open_and_never_logs_keys(
    engine: MemoryEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(create_app(engine, settings())):
        pass
    assert "no API keys configured" in caplog.text
    caplog.clear()
    async with serve(create_app(engine, settings(api_keys=KEYS))) as url:
        async with httpx.AsyncClient(base_url=url) as raw:
            await raw.post("/api/v2/memories", json=add_body("acme"), headers=ACME)
            await raw.post("/api/v2/memories", json=add_body("acme"), headers=ROOT)
            await raw.post(
                "/api/v2/memories", json=add_body("x"), headers={"Authorization": "Bearer guess"}
            )
    assert "2 API key(s) configured" in caplog.text
    assert "no API keys configured" not in caplog.text
    for secret in ("k-acme-1234", "k-root-5678", "guess"):
        assert secret not in caplog.text


async def test_open_server_only_answers_loopback_hosts(engine: MemoryEngine) -> None:
    """DNS-rebinding protection: without keys, a request naming another host is refused."""
    async with running(engine) as open_server, httpx.AsyncClient(base_url=open_server.url) as raw:
        port = open_server.url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "localhost"):
            ok = await raw.get("/api/v2/health", headers={"Host": host})
            assert ok.status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
            refused = await raw.post("/api/v2/projects/list", headers={"Host": host})
            assert refused.status_code == 421, host
            assert refused.json() == {"detail": "invalid Host header"}
        mcp = await raw.post("/mcp/", json={}, headers={"Host": "evil.example"})
        assert mcp.status_code == 421
    async with running(engine, allowed_hosts="memory.internal") as listed:
        async with httpx.AsyncClient(base_url=listed.url) as raw:
            ok = await raw.get("/api/v2/health", headers={"Host": "memory.internal:8080"})
            assert ok.status_code == 200


async def test_keyed_server_accepts_any_host(server: Running) -> None:
    async with httpx.AsyncClient(base_url=server.url) as raw:
        ok = await raw.post("/api/v2/projects/list", headers={**ACME, "Host": "memory.example.com"})
    assert ok.status_code == 200
