"""``channelmind run``: guidance without tokens, and the whole bot (memory, memory server,
Slack adapter) against the fake Slack, in HTTP mode and in Socket Mode."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Runner, run
from bot.cli import main
from bot.settings import Settings
from memory import MemoryEngine, SourceRef
from memory.server.gc_tuning import YOUNG_THRESHOLD
from tests.bot.helpers import settings as core_settings
from tests.fakes.slack.server import FakeSlack, message_event, sign_request
from tests.polling import eventually

SECRET = "runner-signing-secret"
ALICE = "U0ALICE01"
GENERAL = "C0GENERAL"
#: Besides the platform tokens (tests/conftest.py): where the memory lives and listens.
PLATFORM_ENV = ("CHANNELMIND_MEMORY_URL", "CHANNELMIND_HOST", "CHANNELMIND_API_KEYS")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in PLATFORM_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env file here


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_user(ALICE, "alice", display_name="Alice")
        server.add_channel(GENERAL, "general")
        yield server


def run_settings(fake: FakeSlack, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": "xoxb-fake",
        "slack_api_url": fake.api_url,
        "data_dir": tmp_path / "data",
        "embedder": "hash",
        "host": "127.0.0.1",
        "port": 0,
    }
    values.update(overrides)
    return core_settings(**values)


def test_no_token_prints_what_to_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    out = capsys.readouterr()
    text = out.err + out.out
    for needed in (
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "DISCORD_TOKEN",
        "channelmind chat",
        "manifest.yml",
    ):
        assert needed in text


def test_slack_needs_socket_mode_or_a_signing_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret-value")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "SLACK_APP_TOKEN" in err and "SLACK_SIGNING_SECRET" in err
    assert "xoxb-very-secret-value" not in err


def test_an_open_memory_server_stays_on_loopback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret-value")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-very-secret-value")
    monkeypatch.setenv("CHANNELMIND_DATA_DIR", str(tmp_path / "data"))
    assert main(["run", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen" in err and "CHANNELMIND_API_KEYS" in err
    assert "secret-value" not in err


async def test_http_mode_serves_slack_events_beside_the_memory_server(
    fake: FakeSlack, tmp_path: Path
) -> None:
    settings = run_settings(fake, tmp_path, slack_signing_secret=SECRET)
    runner = Runner(settings)
    await runner.start()
    try:
        assert runner.slack is not None and not runner.slack.socket_mode
        base = f"http://127.0.0.1:{runner.bound_port}"
        event = message_event(ALICE, "<@U0FAKEBOT> hello over http", GENERAL)
        body = json.dumps(fake.event_payload(event)).encode()
        json_type = {"Content-Type": "application/json"}
        engine: MemoryEngine = runner.memory
        ref = SourceRef(
            org_id=f"slack:{fake.team_id}",
            project_id=settings.project,
            platform="slack",
            source_id=f"{GENERAL}:{event['ts']}",
        )
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/api/v2/health")).status_code == 200
            forged = {**json_type, **sign_request(body, "wrong-secret")}
            assert (
                await http.post("/slack/events", content=body, headers=forged)
            ).status_code == 401
            assert await engine.get_by_source(ref) is None

            signed = {**json_type, **sign_request(body, SECRET)}
            assert (
                await http.post("/slack/events", content=body, headers=signed)
            ).status_code == 200
            (post,) = await fake.wait_for_call("chat.postMessage", timeout=10)
            assert post.params["thread_ts"] == event["ts"]
            deadline = time.monotonic() + 10
            while await engine.get_by_source(ref) is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
    finally:
        await runner.stop()
    assert runner.memory is None and runner.server is None


async def test_socket_mode_run_stops_cleanly_on_sigterm(fake: FakeSlack, tmp_path: Path) -> None:
    settings = run_settings(fake, tmp_path, slack_app_token="xapp-1-fake")
    task = asyncio.create_task(run(settings))
    await fake.wait_connected(timeout=20)
    envelope_id = await fake.send_event(
        message_event(ALICE, "hello in a dm", "D0ALICE01", channel_type="im")
    )
    await fake.wait_ack(envelope_id)
    await fake.wait_for_call("chat.postMessage", timeout=10)

    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 30) == 0
    assert fake._open_socket() is None  # disconnected
    # The memory was closed: it opens again at once, with what was said.
    engine = await MemoryEngine.open(tmp_path / "data", "hash")
    try:
        assert (await engine.stats()).episodes == 2  # the message and the answer
    finally:
        await engine.close()


async def test_served_connections_send_each_reply_at_once(tmp_path: Path) -> None:
    """Nagle's algorithm is off on every connection the server accepts: with it on, each
    reply waited for the client's delayed ACK (about 40 ms on Linux), and one client's
    back-to-back requests took 45-60 ms instead of 2-9 ms. asyncio turns it off only when the
    listening socket says it is TCP, so this checks the sockets the server really holds."""
    settings = core_settings(data_dir=tmp_path / "data", embedder="hash", host="127.0.0.1", port=0)
    runner = Runner(settings, bot=False)
    await runner.start()
    try:
        assert runner.server is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.bound_port}") as http:
            assert (await http.get("/api/v2/health")).status_code == 200
            connections = runner.server.server.server_state.connections
            sockets = [c.transport.get_extra_info("socket") for c in connections]  # type: ignore[attr-defined]
            assert sockets
            for sock in sockets:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await runner.stop()


async def test_serve_runs_under_the_tuned_collector_once_started(tmp_path: Path) -> None:
    """``channelmind serve`` (``run`` with ``bot=False``) freezes what start-up left alive and
    raises the young threshold while it serves (memory.server.gc_tuning: the collector took
    ~14% of the server's CPU at 40 clients), and puts both back when it stops."""
    settings = core_settings(data_dir=tmp_path / "data", embedder="hash", host="127.0.0.1", port=0)
    before = gc.get_threshold()
    task = asyncio.create_task(run(settings, bot=False))
    try:
        await eventually(lambda: task.done() or gc.get_threshold()[0] == YOUNG_THRESHOLD, 60)
        assert not task.done()
        assert gc.get_freeze_count() > 0
    finally:
        if not task.done():
            os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, 30) == 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
