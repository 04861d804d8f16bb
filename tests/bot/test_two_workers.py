"""Two ``channelmind run`` workers on one memory server answer a Slack message once.

Slack resends an event it thinks was not handled (``X-Slack-Retry-Num``), and a load balancer
may hand the retry to another worker; a mention also comes twice, as ``message`` and as
``app_mention``, and the two may land on different workers. Each worker's own dedupe sees only
what it received, so the store decides: only the worker the message was new to answers.

Real parts: two Runners in Slack's HTTP mode (slack-bolt) on the fake Slack, sharing the memory
server (CHANNELMIND_MEMORY_URL) under uvicorn on loopback. Between the workers and the memory
server sits a loopback proxy that holds the first two episode adds until both arrived: the
workers' stores then race for real, every run, instead of one finishing before the other asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from bot.app import Runner
from bot.platforms.slack import adapter as slack_adapter
from memory import MemoryEngine, Scope, SourceRef
from tests.bot.helpers import settings as bot_settings
from tests.fakes.slack.server import (
    DEFAULT_TEAM_ID,
    FakeSlack,
    app_mention_event,
    message_event,
    sign_request,
)
from tests.polling import eventually
from tests.server_harness import running

pytestmark = pytest.mark.timeout(90)

ORG = f"slack:{DEFAULT_TEAM_ID}"
PROJECT = "channelmind"
ALICE, BOB, GENERAL = "U0ALICE01", "U0BOB0001", "C0GENERAL"
SECRET = "test-signing-secret"
ADD_PATH = "/api/cm/episodes/add"
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection"}


class HoldingProxy:
    """Forwards everything to ``upstream``; the first ``hold`` requests to add episodes whose
    body holds ``marker`` wait for each other (at most ``patience`` seconds), then go on
    together."""

    def __init__(self, upstream: str, hold: int = 2, patience: float = 30) -> None:
        self.upstream = upstream.rstrip("/")
        self.hold, self.patience = hold, patience
        self.marker: bytes | None = None
        self.held = 0
        self.all_in = asyncio.Event()  # set when ``hold`` adds were waiting at once
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> HoldingProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        held = self.marker is not None and self.marker in body
        if request.path == ADD_PATH and held and self.held < self.hold:
            self.held += 1
            if self.held == self.hold:
                self.all_in.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_in.wait(), self.patience)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            content = await upstream.read()
            kept = {"Content-Type": upstream.headers.get("Content-Type", "application/json")}
            return web.Response(status=upstream.status, body=content, headers=kept)


@contextlib.asynccontextmanager
async def worker(slack: FakeSlack, memory_url: str, data_dir: Path) -> AsyncIterator[str]:
    """One ``channelmind run`` in Slack's HTTP mode on the shared memory; yields its URL."""
    settings = bot_settings(
        slack_bot_token="xoxb-fake",
        slack_signing_secret=SECRET,
        slack_api_url=slack.api_url,
        memory_url=memory_url,
        data_dir=data_dir,
    )
    runner = Runner(settings, host="127.0.0.1", port=0)
    await runner.start()
    try:
        assert runner.url is not None and runner.slack is not None
        yield runner.url
    finally:
        await runner.stop()  # lets in-flight events finish


def source(event: dict[str, Any]) -> SourceRef:
    return SourceRef(
        org_id=ORG,
        project_id=PROJECT,
        platform="slack",
        source_id=f"{event['channel']}:{event['ts']}",
    )


async def post_event(
    url: str, slack: FakeSlack, event: dict[str, Any], event_id: str, retry: int = 0
) -> None:
    body = json.dumps(slack.event_payload(event, event_id=event_id)).encode()
    headers = {"Content-Type": "application/json", **sign_request(body, SECRET)}
    if retry:
        headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.post("/slack/events", content=body, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("delivery", ["slack-retry", "mention-twins"])
async def test_one_message_given_to_two_workers_is_answered_once(
    delivery: str,
    engine: MemoryEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHANNELMIND_MEMORY_API_KEY", "k-team")
    # An app_mention waits this long for its message twin before it answers on its own.
    monkeypatch.setattr(slack_adapter, "MENTION_FALLBACK", 0.05)
    async with (
        FakeSlack() as slack,
        running(engine, api_keys=f"k-team:{ORG}") as memory_server,
        HoldingProxy(memory_server.url) as proxy,
    ):
        slack.add_user(ALICE, "alice", display_name="Alice")
        slack.add_user(BOB, "bob", display_name="Bob")
        slack.add_channel(GENERAL, "general")
        async with (
            worker(slack, proxy.url, tmp_path / "a") as first,
            worker(slack, proxy.url, tmp_path / "b") as second,
        ):
            said = message_event(ALICE, "The incident review is on Wednesday at 3pm", GENERAL)
            await post_event(first, slack, said, "Ev0SAID0001")
            await eventually(lambda: engine.get_by_source(source(said)))
            await engine.wait_indexed()
            asked = message_event(
                BOB, f"<@{slack.bot_user_id}> when is the incident review?", GENERAL
            )
            proxy.marker = source(asked).source_id.encode()
            if delivery == "slack-retry":
                # Slack gave up waiting on the first worker; its retry reaches the second.
                await post_event(first, slack, asked, "Ev0ASKED001")
                await post_event(second, slack, asked, "Ev0ASKED001", retry=1)
            else:
                # One mention, two events: `message` to one worker, `app_mention` to the other.
                twin = app_mention_event(BOB, asked["text"], GENERAL, ts=asked["ts"])
                await post_event(first, slack, asked, "Ev0ASKED001")
                await post_event(second, slack, twin, "Ev0TWIN0001")
            await asyncio.wait_for(proxy.all_in.wait(), 30)  # both workers asked the store
            (post,) = await slack.wait_for_call("chat.postMessage", timeout=30)
            assert "Wednesday at 3pm" in post.params["text"]
        # Both workers stopped, so whatever they were doing is done.
        assert len(slack.calls_to("chat.postMessage")) == 1
        channel = Scope(org_id=ORG, project_id=PROJECT, produced_for=f"slack:{GENERAL}")
        assert await engine.count(channel, "role = 'user'") == 2  # each message stored once
        assert await engine.count(channel, "role = 'assistant'") == 1  # and one answer
