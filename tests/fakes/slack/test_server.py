"""The fake Slack (tests/fakes/slack_server.py) against the real slack-bolt and slack-sdk."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond, AsyncSay
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    async_default_handlers,
)
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack.server import (
    DEFAULT_CHANNEL_ID,
    FailError,
    FailRateLimited,
    FailStatus,
    FakeSlack,
    app_mention_event,
    message_changed_event,
    message_deleted_event,
    message_event,
    next_ts,
    sign_request,
)
from tests.polling import eventually

SIGNING_SECRET = "test-signing-secret"
CHANNEL = "C0MEMORY1"
ALICE = "U0ALICE01"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_user(ALICE, "alice", real_name="Alice Liddell", display_name="ali")
        server.add_channel(CHANNEL, "memory")
        yield server


@dataclass
class Seen:
    """What the bolt listeners observed."""

    mentions: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    edits: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[dict[str, Any]] = field(default_factory=list)
    retry_nums: list[str | None] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    errors: list[SlackApiError] = field(default_factory=list)


def build_app(
    fake: FakeSlack, retry_handlers: list[AsyncRetryHandler] | None = None
) -> tuple[AsyncApp, Seen]:
    client = AsyncWebClient(token="xoxb-fake", base_url=fake.api_url, retry_handlers=retry_handlers)
    app = AsyncApp(client=client, signing_secret=SIGNING_SECRET)
    seen = Seen()

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], body: dict[str, Any], say: AsyncSay) -> None:
        seen.mentions.append(event)
        seen.event_ids.append(body["event_id"])
        try:
            await say(text=f"echo: {event['text']}", thread_ts=event.get("thread_ts", event["ts"]))
        except SlackApiError as e:
            seen.errors.append(e)

    @app.message()
    async def on_message(message: dict[str, Any], req: AsyncBoltRequest) -> None:
        seen.messages.append(message)
        retry = req.headers.get("x-slack-retry-num")
        seen.retry_nums.append(retry[0] if retry else None)

    @app.event({"type": "message", "subtype": "message_changed"})
    async def on_edit(event: dict[str, Any]) -> None:
        seen.edits.append(event)

    @app.event({"type": "message", "subtype": "message_deleted"})
    async def on_delete(event: dict[str, Any]) -> None:
        seen.deletes.append(event)

    @app.command("/recall")
    async def on_recall(ack: AsyncAck, respond: AsyncRespond, command: dict[str, Any]) -> None:
        await ack()
        await respond(text=f"recall: {command['text']}", response_type="ephemeral")

    @app.shortcut("forget_thread")
    async def on_forget(ack: AsyncAck, respond: AsyncRespond, shortcut: dict[str, Any]) -> None:
        await ack()
        await respond(text=f"forgot {shortcut['message']['ts']}", response_type="ephemeral")

    return app, seen


@asynccontextmanager
async def socket_mode(app: AsyncApp, fake: FakeSlack) -> AsyncIterator[AsyncSocketModeHandler]:
    handler = AsyncSocketModeHandler(app, app_token="xapp-1-fake")
    await handler.connect_async()  # type: ignore[no-untyped-call]  # untyped in slack-bolt
    try:
        await fake.wait_connected()
        yield handler
    finally:
        await handler.close_async()  # type: ignore[no-untyped-call]


async def test_mention_reaches_listener_and_reply_is_threaded(fake: FakeSlack) -> None:
    app, seen = build_app(fake)
    async with socket_mode(app, fake):
        (open_call,) = fake.calls_to("apps.connections.open")
        assert open_call.token == "xapp-1-fake"

        event = app_mention_event(ALICE, "what did we decide?", CHANNEL)
        envelope_id = await fake.send_event(event)
        ack = await fake.wait_ack(envelope_id)
        assert ack.payload is None and ack.elapsed < 3

        (post,) = await fake.wait_for_call("chat.postMessage")
        assert post.token == "xoxb-fake"
        assert post.params["channel"] == CHANNEL
        assert post.params["thread_ts"] == event["ts"]
        assert post.params["team_id"] == fake.team_id  # bolt adds it to the per-request client
        assert seen.mentions[0]["text"] == f"<@{fake.bot_user_id}> what did we decide?"

        (reply,) = fake.posted_messages(CHANNEL)
        assert reply["thread_ts"] == event["ts"]
        assert reply["bot_id"] == fake.bot_id
        assert float(reply["ts"]) > float(event["ts"])
        assert fake.calls_to("auth.test")[0].token == "xoxb-fake"


async def test_messages_edits_deletes_and_dms_reach_listeners(fake: FakeSlack) -> None:
    app, seen = build_app(fake)
    async with socket_mode(app, fake):
        root = message_event(ALICE, "we ship on friday", CHANNEL)
        reply = message_event(ALICE, "or monday", CHANNEL, thread_ts=root["ts"])
        dm = message_event(ALICE, "private note", "D0ALICE01", channel_type="im")
        own = message_event(fake.bot_user_id, "bot talking", CHANNEL)
        own["bot_id"] = fake.bot_id
        edit = message_changed_event(CHANNEL, root["ts"], "we ship on monday", ALICE, root["text"])
        delete = message_deleted_event(CHANNEL, reply["ts"], reply["text"], ALICE)

        envelope_ids = [await fake.send_event(e) for e in (root, reply, dm, own, edit, delete)]
        for envelope_id in envelope_ids:
            await fake.wait_ack(envelope_id)
        assert float(root["ts"]) < float(reply["ts"]) < float(edit["ts"]) < float(delete["ts"])

    # ignoring_self_events_enabled drops the bot's own message (it is still acked).
    assert [m["text"] for m in seen.messages] == ["we ship on friday", "or monday", "private note"]
    assert seen.messages[1]["thread_ts"] == root["ts"]
    assert seen.messages[2]["channel_type"] == "im"
    assert seen.edits[0]["message"]["text"] == "we ship on monday"
    assert seen.edits[0]["message"]["ts"] == root["ts"]
    assert seen.deletes[0]["deleted_ts"] == reply["ts"]


async def test_retry_delivery_keeps_event_id(fake: FakeSlack) -> None:
    app, seen = build_app(fake)
    async with socket_mode(app, fake):
        event = message_event(ALICE, "hello", CHANNEL)
        first = await fake.send_event(event, event_id="Ev0RETRY01")
        await fake.wait_ack(first)
        again = await fake.send_event(
            event, event_id="Ev0RETRY01", retry_attempt=1, retry_reason="timeout"
        )
        await fake.wait_ack(again)
    # bolt mirrors retry_attempt into x-slack-retry-num, even "0" on the first delivery.
    assert seen.retry_nums == ["0", "1"]
    assert [fake.envelopes[e]["payload"]["event_id"] for e in (first, again)] == ["Ev0RETRY01"] * 2


async def test_event_without_listener_is_not_acked(fake: FakeSlack) -> None:
    # Gotcha: bolt answers an unhandled request with 404, and the Socket Mode adapter then
    # sends no ack at all, so real Slack would redeliver it. Listen to every subscribed event.
    app, _ = build_app(fake)
    async with socket_mode(app, fake):
        reaction = {
            "type": "reaction_added",
            "user": ALICE,
            "reaction": "eyes",
            "event_ts": next_ts(),
        }
        envelope_id = await fake.send_event(reaction)
        with pytest.raises(TimeoutError):
            await fake.wait_ack(envelope_id, timeout=0.5)


async def test_command_is_acked_and_responds_ephemerally(fake: FakeSlack) -> None:
    app, _ = build_app(fake)
    async with socket_mode(app, fake):
        envelope_id = await fake.send_command("/recall", "deadlines", user_id=ALICE)
        ack = await fake.wait_ack(envelope_id)
        assert ack.elapsed < 3
        (hook,) = await fake.wait_for_hook()
    response_url = fake.envelopes[envelope_id]["payload"]["response_url"]
    assert response_url.endswith(f"/hooks/{hook.hook_id}")
    assert hook.body["text"] == "recall: deadlines"
    assert hook.body["response_type"] == "ephemeral"


async def test_message_shortcut_is_acked_and_responds(fake: FakeSlack) -> None:
    app, _ = build_app(fake)
    async with socket_mode(app, fake):
        target = message_event(ALICE, "forget this thread", CHANNEL)
        envelope_id = await fake.send_shortcut(
            "forget_thread", message=target, channel=CHANNEL, user=ALICE
        )
        await fake.wait_ack(envelope_id)
        (hook,) = await fake.wait_for_hook()
    assert hook.body == {"text": f"forgot {target['ts']}", "response_type": "ephemeral"}


async def test_rate_limit_is_visible_to_the_app(fake: FakeSlack) -> None:
    app, seen = build_app(fake)
    fake.fail("chat.postMessage", FailRateLimited(retry_after=1))
    async with socket_mode(app, fake):
        envelope_id = await fake.send_event(app_mention_event(ALICE, "hi", CHANNEL))
        await fake.wait_ack(envelope_id)
        (call,) = await fake.wait_for_call("chat.postMessage")
        await eventually(lambda: bool(seen.errors))
    assert call.status == 429
    (error,) = seen.errors
    assert error.response.status_code == 429
    assert error.response["error"] == "ratelimited"
    assert error.response.headers["Retry-After"] == "1"
    assert fake.posted_messages(CHANNEL) == []


async def test_rate_limit_is_retried_with_retry_handler(fake: FakeSlack) -> None:
    handlers = [*async_default_handlers(), AsyncRateLimitErrorRetryHandler(max_retry_count=1)]
    app, seen = build_app(fake, retry_handlers=handlers)
    fake.fail("chat.postMessage", FailRateLimited(retry_after=1))
    async with socket_mode(app, fake):
        started = time.monotonic()
        await fake.send_event(app_mention_event(ALICE, "hi", CHANNEL))
        first, second = await fake.wait_for_call("chat.postMessage", count=2, timeout=10)
        assert time.monotonic() - started >= 1  # honoured Retry-After
    assert (first.status, second.status) == (429, 200)
    assert seen.errors == []
    assert len(fake.posted_messages(CHANNEL)) == 1


async def test_disconnect_makes_the_client_reconnect(fake: FakeSlack) -> None:
    app, seen = build_app(fake)
    async with socket_mode(app, fake):
        assert await fake.disconnect_clients() == 1
        await fake.wait_for_call("apps.connections.open", count=2)
        await fake.wait_connected(count=2)
        envelope_id = await fake.send_event(message_event(ALICE, "after reconnect", CHANNEL))
        await fake.wait_ack(envelope_id)
    assert fake.connection_count == 2
    assert [m["text"] for m in seen.messages] == ["after reconnect"]


async def test_http_mode_with_signed_requests(fake: FakeSlack) -> None:
    app, seen = build_app(fake)
    runner = web.AppRunner(app.web_app(path="/slack/events"))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
    try:
        async with aiohttp.ClientSession() as http:
            event = app_mention_event(ALICE, "over http", CHANNEL)
            body = json.dumps(fake.event_payload(event)).encode()
            json_headers = {"Content-Type": "application/json"}
            headers = {**json_headers, **sign_request(body, SIGNING_SECRET)}
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200
            (post,) = await fake.wait_for_call("chat.postMessage")
            assert post.params["thread_ts"] == event["ts"]

            stale = {**json_headers, **sign_request(body, SIGNING_SECRET, int(time.time()) - 600)}
            wrong = {**json_headers, **sign_request(body, "not-the-secret")}
            for bad in (stale, wrong):
                async with http.post(url, data=body, headers=bad) as resp:
                    assert resp.status == 401

            form = urlencode(fake.command_payload("/recall", "over http", user_id=ALICE))
            form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
            headers = {**form_headers, **sign_request(form, SIGNING_SECRET)}
            async with http.post(url, data=form, headers=headers) as resp:
                assert resp.status == 200
            (hook,) = await fake.wait_for_hook()
            assert hook.body["text"] == "recall: over http"
    finally:
        await runner.cleanup()
    assert len(seen.mentions) == 1


async def test_web_api_methods(fake: FakeSlack) -> None:
    client = AsyncWebClient(token="xoxb-fake", base_url=fake.api_url)

    auth = await client.auth_test()
    assert (auth["team_id"], auth["user_id"], auth["bot_id"]) == (
        fake.team_id,
        fake.bot_user_id,
        fake.bot_id,
    )
    user = (await client.users_info(user=ALICE))["user"]
    assert user["profile"]["display_name"] == "ali" and user["is_admin"] is False
    channel = (await client.conversations_info(channel=CHANNEL))["channel"]
    assert channel["name"] == "memory"

    posted = await client.chat_postMessage(channel=CHANNEL, text="v1")
    ts = posted["ts"]
    assert posted["message"]["text"] == "v1"
    updated = await client.chat_update(channel=CHANNEL, ts=ts, text="v2")
    assert updated["message"]["text"] == "v2"
    link = await client.chat_getPermalink(channel=CHANNEL, message_ts=ts)
    assert link["permalink"] == f"https://fake.slack.test/archives/{CHANNEL}/p{ts.replace('.', '')}"
    await client.reactions_add(channel=CHANNEL, timestamp=ts, name="eyes")
    assert fake.reactions[(CHANNEL, ts)] == ["eyes"]
    await client.reactions_remove(channel=CHANNEL, timestamp=ts, name="eyes")
    ephemeral = await client.chat_postEphemeral(channel=CHANNEL, user=ALICE, text="psst")
    assert fake.ephemeral_messages[0]["user"] == ALICE and ephemeral["message_ts"]
    await client.assistant_threads_setStatus(channel_id=CHANNEL, thread_ts=ts, status="thinking")
    assert fake.assistant_statuses[0]["status"] == "thinking"
    assert (await client.api_call("team.info"))["ok"] is True
    await client.chat_delete(channel=CHANNEL, ts=ts)
    assert fake.posted_messages(CHANNEL) == []

    for call, error in (
        (client.users_info(user="U0NOBODY"), "user_not_found"),
        (client.chat_update(channel=CHANNEL, ts=ts, text="gone"), "message_not_found"),
        (
            client.chat_postMessage(channel=CHANNEL, text="x", token="xapp-1-fake"),
            "not_allowed_token_type",
        ),
        (client.conversations_info(channel=DEFAULT_CHANNEL_ID), "channel_not_found"),
    ):
        with pytest.raises(SlackApiError) as info:
            await call
        assert info.value.response["error"] == error

    fake.fail("chat.postMessage", FailError("invalid_auth"), FailStatus(500))
    with pytest.raises(SlackApiError) as info:
        await client.chat_postMessage(channel=CHANNEL, text="a")
    assert info.value.response.status_code == 200
    assert info.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as info:
        await client.chat_postMessage(channel=CHANNEL, text="b")
    assert info.value.response.status_code == 500
    assert (await client.chat_postMessage(channel=CHANNEL, text="c"))["ok"] is True
    assert [c.status for c in fake.calls_to("chat.postMessage")][-3:] == [200, 500, 200]
    assert float(next_ts()) > float(ts)
