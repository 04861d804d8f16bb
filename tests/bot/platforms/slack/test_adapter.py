"""The Slack adapter with the real slack-bolt and slack-sdk against the fake Slack on loopback,
the real core (Conversation, extractive Responder) and a real MemoryEngine in a temp folder."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from bot.app import PLATFORMS
from bot.core.conversation import Conversation
from bot.core.events import dm_org
from bot.core.responder import Responder
from bot.platforms.slack import adapter as slack_adapter
from bot.platforms.slack.adapter import SlackAdapter
from bot.platforms.slack.replier import SlackReplier, split_text
from bot.settings import Settings
from memory import Episode, MemoryEngine, Scope, SourceRef
from memory.server.app import create_app
from tests.bot.helpers import settings as core_settings
from tests.conftest import raw_db
from tests.fakes.slack.server import (
    PERMALINK_BASE,
    FailError,
    FailRateLimited,
    FailStatus,
    FakeSlack,
    app_mention_event,
    message_changed_event,
    message_deleted_event,
    message_event,
    sign_request,
)
from tests.polling import eventually
from tests.test_forgetting import chroma_ids, fts_rows

ORG = "slack:T0FAKETEAM"
PROJECT = "channelmind"
ALICE, BOB, CAROL, ADMIN = "U0ALICE01", "U0BOB0001", "U0CAROL01", "U0ADMIN01"
GENERAL, RANDOM, DM = "C0GENERAL", "C0RANDOM1", "D0ALICE01"
DM_ORG = dm_org("slack")  # DMs live in the platform's DM org
SECRET = "test-signing-secret"
API_KEY = "memory-key-1"
MARKER = "zorblaxquint"


class RecordingSlack(FakeSlack):
    """The fake Slack, also noting how many response_url posts had arrived at each ack."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks_at_ack: dict[str, int] = {}

    def _record_client_frame(self, data: str) -> None:
        before = set(self.acks)
        super()._record_client_frame(data)
        for envelope_id in set(self.acks) - before:
            self.hooks_at_ack[envelope_id] = len(self.hook_posts)


@pytest.fixture
async def fake() -> AsyncIterator[RecordingSlack]:
    async with RecordingSlack() as server:
        server.add_user(ALICE, "alice", real_name="Alice Liddell", display_name="Alice")
        server.add_user(BOB, "bob", display_name="Bob")
        server.add_user(CAROL, "carol", display_name="Carol")
        server.add_user(ADMIN, "ada", display_name="Ada", is_admin=True)
        server.add_channel(GENERAL, "general")
        server.add_channel(RANDOM, "random")
        server.add_channel(DM, user=ALICE)
        yield server


def bot_settings(fake: FakeSlack, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": "xoxb-fake",
        "slack_app_token": "xapp-1-fake",
        "slack_api_url": fake.api_url,
    }
    values.update(overrides)
    return core_settings(**values)


@asynccontextmanager
async def running(
    fake: FakeSlack, engine: MemoryEngine, *, start: bool = True, **overrides: Any
) -> AsyncIterator[SlackAdapter]:
    settings = bot_settings(fake, **overrides)
    conversation = Conversation(engine, Responder(None), settings, platforms=PLATFORMS)
    adapter = SlackAdapter(conversation, settings)
    try:
        if start:
            await adapter.start()
            if adapter.socket_mode:
                await fake.wait_connected()
        yield adapter
    finally:
        await adapter.close()  # before the fake stops
        await conversation.close()


@pytest.fixture
async def bot(fake: RecordingSlack, engine: MemoryEngine) -> AsyncIterator[SlackAdapter]:
    async with running(fake, engine, admins=[f"slack:{CAROL}"]) as adapter:
        yield adapter


# -- helpers ----------------------------------------------------------------------------------


def ref(channel: str, ts: str) -> SourceRef:
    org = DM_ORG if channel == DM else ORG
    return SourceRef(org_id=org, project_id=PROJECT, platform="slack", source_id=f"{channel}:{ts}")


async def deliver(fake: FakeSlack, event: dict[str, Any], **kwargs: Any) -> str:
    envelope_id = await fake.send_event(event, **kwargs)
    await fake.wait_ack(envelope_id)
    return envelope_id


async def stored(engine: MemoryEngine, event: dict[str, Any]) -> Episode:
    """Wait until the message event is in memory, and return it."""
    found: list[Episode] = []

    async def check() -> bool:
        ep = await engine.get_by_source(ref(event["channel"], event["ts"]))
        if ep is not None:
            found.append(ep)
        return ep is not None

    await eventually(check)
    return found[-1]


def posts(fake: FakeSlack, channel: str | None = None) -> list[dict[str, Any]]:
    """The replies Slack accepted: HTTP 200 *and* ``ok`` (an ``invalid_auth`` is a 200 too)."""
    return [
        c.params
        for c in fake.calls_to("chat.postMessage")
        if c.status == 200
        and isinstance(c.response, dict)
        and c.response.get("ok")
        and (channel is None or c.params["channel"] == channel)
    ]


def mention(fake: FakeSlack, text: str) -> str:
    return f"<@{fake.bot_user_id}> {text}"


def permalink(channel: str, ts: str) -> str:
    return f"{PERMALINK_BASE}/archives/{channel}/p{ts.replace('.', '')}"


# -- answering ----------------------------------------------------------------------------------


async def test_channel_mention_is_answered_in_thread_from_this_channel_only(
    fake: RecordingSlack, bot: SlackAdapter, engine: MemoryEngine
) -> None:
    said = message_event(BOB, "The database migration is scheduled for Friday night", GENERAL)
    noise = message_event(CAROL, "lunch is at noon today", GENERAL)
    for event in (said, noise):
        await deliver(fake, event)
    bob_said = await stored(engine, said)
    assert (bob_said.org_id, bob_said.producer, bob_said.produced_for) == (
        ORG,
        f"slack:{BOB}",
        f"slack:{GENERAL}",
    )
    assert bob_said.role == "user" and bob_said.thread_id is None
    assert bob_said.metadata["display_name"] == "Bob"
    await stored(engine, noise)
    await engine.wait_indexed()

    question = message_event(ALICE, mention(fake, "when is the database migration?"), GENERAL)
    await deliver(fake, question)
    (answer,) = [p for p in await wait_posts(fake, 1)]
    assert answer["channel"] == GENERAL
    assert answer["thread_ts"] == question["ts"]  # a thread on the question
    assert "Friday night" in answer["text"]
    assert f"<{permalink(GENERAL, said['ts'])}|" in answer["text"]  # cited with chat.getPermalink
    assert any(c.params["message_ts"] == said["ts"] for c in fake.calls_to("chat.getPermalink"))
    asked = await stored(engine, question)
    assert asked.content.startswith("@channelmind when is")  # the mention, readable
    # The :eyes: reaction came and went.
    assert [c.params["name"] for c in fake.calls_to("reactions.add")] == ["eyes"]
    await eventually(lambda: len(fake.calls_to("reactions.remove")) == 1)
    assert fake.reactions[(GENERAL, question["ts"])] == []
    # The core stored the reply as the bot's.
    reply_ts = fake.posted_messages(GENERAL)[0]["ts"]
    reply = await stored(engine, {"channel": GENERAL, "ts": reply_ts})
    assert (reply.role, reply.producer) == ("assistant", f"slack:{fake.bot_user_id}")

    # The same question in another channel does not see #general.
    elsewhere = message_event(ALICE, mention(fake, "when is the database migration?"), RANDOM)
    await deliver(fake, elsewhere)
    (other,) = [p for p in await wait_posts(fake, 2) if p["channel"] == RANDOM]
    assert "Friday" not in other["text"] and GENERAL not in other["text"]

    # A follow-up in the bot's thread needs no mention; a thread without the bot does.
    chatter = message_event(CAROL, "unrelated thread start", GENERAL)
    aside = message_event(BOB, "friday works for me", GENERAL, thread_ts=chatter["ts"])
    for event in (chatter, aside):
        await deliver(fake, event)
    await stored(engine, aside)
    follow = message_event(BOB, "and is friday night final?", GENERAL, thread_ts=question["ts"])
    await deliver(fake, follow)
    third = (await wait_posts(fake, 3))[-1]
    assert third["channel"] == GENERAL and third["thread_ts"] == question["ts"]
    assert (await stored(engine, follow)).thread_id == f"slack:{question['ts']}"

    # A DM is always addressed; the answer comes inline.
    dm = message_event(ALICE, "what do you know about the migration?", DM, channel_type="im")
    await deliver(fake, dm)
    fourth = (await wait_posts(fake, 4))[-1]
    assert fourth["channel"] == DM and "thread_ts" not in fourth
    assert "Friday" not in fourth["text"]  # DMs see only the DM
    assert (await stored(engine, dm)).metadata["is_dm"] is True

    await bot.close()
    assert len(posts(fake)) == 4  # nothing for the chatter, the aside or the noise


async def wait_posts(fake: FakeSlack, count: int) -> list[dict[str, Any]]:
    await eventually(lambda: len(posts(fake)) >= count)
    return posts(fake)


async def test_a_thread_the_bot_answered_before_a_restart_is_still_followed(
    fake: RecordingSlack, engine: MemoryEngine
) -> None:
    async with running(fake, engine):
        question = message_event(ALICE, mention(fake, "what is the plan?"), GENERAL)
        await deliver(fake, question)
        await wait_posts(fake, 1)
    # A new process (nothing in its caches) learns from memory that the bot is in the thread.
    async with running(fake, engine):
        follow = message_event(BOB, "any news?", GENERAL, thread_ts=question["ts"])
        await deliver(fake, follow)
        answer = (await wait_posts(fake, 2))[-1]
    assert answer["thread_ts"] == question["ts"]


# -- commands -----------------------------------------------------------------------------------


async def run_command(fake: RecordingSlack, command: str, text: str, user: str, **kw: Any) -> str:
    before = len(fake.hook_posts)
    envelope_id = await fake.send_command(command, text, user_id=user, **kw)
    await fake.wait_ack(envelope_id)
    hooks = await fake.wait_for_hook(before + 1)
    assert fake.hooks_at_ack[envelope_id] == before  # acked before it was answered
    body = hooks[before].body
    assert body["response_type"] == "ephemeral"
    return str(body["text"])


async def shortcut(fake: RecordingSlack, target: dict[str, Any], user: str) -> str:
    before = len(fake.hook_posts)
    envelope_id = await fake.send_shortcut(
        "forget_message", message=target, channel=target["channel"], user=user
    )
    await fake.wait_ack(envelope_id)
    hooks = await fake.wait_for_hook(before + 1)
    assert fake.hooks_at_ack[envelope_id] == before
    assert hooks[before].body["response_type"] == "ephemeral"
    return str(hooks[before].body["text"])


async def test_slash_commands_and_the_forget_shortcut(
    fake: RecordingSlack, bot: SlackAdapter, engine: MemoryEngine, data_dir: Path
) -> None:
    events = [
        message_event(ALICE, f"my secret codename is {MARKER}", GENERAL),
        message_event(ALICE, f"{MARKER} again, in random", RANDOM),
        message_event(BOB, "the standup moves to ten", GENERAL),
        message_event(BOB, "the retro is on thursday", GENERAL),
        message_event(BOB, "random has a new topic", RANDOM),
    ]
    for event in events:
        await deliver(fake, event)
    for event in events:
        await stored(engine, event)
    await engine.wait_indexed()

    text = await run_command(fake, "/recall", "standup", ALICE, channel_id=GENERAL)
    assert "standup moves to ten" in text and "Bob" in text
    assert permalink(GENERAL, events[2]["ts"]) in text
    text = await run_command(fake, "/remember", "role: backend developer", ALICE)
    assert text.startswith("Noted")
    text = await run_command(fake, "/memory", "", ALICE, channel_id=GENERAL)
    assert "Memory for you in this workspace: on" in text and "#general" in text

    # /forget channel: refused for a member, allowed for a workspace admin or a configured one.
    text = await run_command(fake, "/forget", "channel", ALICE, channel_id=GENERAL)
    assert text.startswith("Only a channel admin")
    assert await engine.count(Scope(org_id=ORG, project_id=PROJECT)) == 5

    # /forget me: nothing of Alice is left in SQLite, its FTS index or Chroma.
    alice_uids = {
        e.uid
        for e in await engine.list(Scope(org_id=ORG, project_id=PROJECT, producer=f"slack:{ALICE}"))
    }
    assert len(alice_uids) == 2
    assert any(alice_uids & ids for ids in chroma_ids(data_dir).values())
    text = await run_command(fake, "/forget", "me", ALICE, channel_id=GENERAL)
    assert text.startswith("Done. I forgot everything you said")
    await engine.wait_indexed()
    with raw_db(data_dir) as conn:
        assert conn.execute(
            "SELECT count(*) FROM episodes WHERE producer = ?", (f"slack:{ALICE}",)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM episodes WHERE content LIKE ?", (f"%{MARKER}%",)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM facts WHERE subject = ?", (f"slack:{ALICE}",)
        ).fetchone() == (0,)
        assert fts_rows(conn, MARKER) == []
    for name, ids in chroma_ids(data_dir).items():
        assert not alice_uids & ids, name

    # The shortcut forgets one message of the asker's, and refuses someone else's.
    text = await shortcut(fake, events[3], ALICE)
    assert "not yours" in text
    text = await shortcut(fake, events[3], BOB)
    assert text == "Done. I forgot 1 message and 0 facts."
    assert await engine.get_by_source(ref(GENERAL, events[3]["ts"])) is None

    text = await run_command(fake, "/forget", "channel", ADMIN, channel_id=GENERAL)
    assert text.startswith("Done. I forgot #general")
    general = Scope(org_id=ORG, project_id=PROJECT, produced_for=f"slack:{GENERAL}")
    assert await engine.count(general) == 0
    text = await run_command(
        fake, "/forget", "channel", CAROL, channel_id=RANDOM
    )  # CHANNELMIND_ADMINS
    assert text.startswith("Done. I forgot #random")
    assert await engine.count(Scope(org_id=ORG, project_id=PROJECT)) == 0
    assert fake.posted_messages() == []  # commands never post in the channel


# -- edits, deletions, duplicates ---------------------------------------------------------------


async def test_edits_and_deletions_follow_and_own_edits_and_unfurls_are_ignored(
    fake: RecordingSlack,
    bot: SlackAdapter,
    engine: MemoryEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edits: list[str] = []
    handle_edit = bot.conversation.handle_edit

    async def spy(event: Any) -> Any:
        edits.append(event.text)
        return await handle_edit(event)

    monkeypatch.setattr(bot.conversation, "handle_edit", spy)
    original = message_event(ALICE, "the release is on tuesday", GENERAL)
    await deliver(fake, original)
    await stored(engine, original)

    unfurl = message_changed_event(
        GENERAL, original["ts"], original["text"], ALICE, original["text"]
    )
    unfurl["message"]["attachments"] = [{"title": "a link preview", "from_url": "https://x.test"}]
    own = message_changed_event(GENERAL, "1700000000.999999", "v2", fake.bot_user_id, "v1")
    own["message"]["bot_id"] = fake.bot_id
    edit = message_changed_event(
        GENERAL,
        original["ts"],
        "the release is on *wednesday* &amp; final",
        ALICE,
        original["text"],
    )
    for event in (unfurl, own, edit):
        await deliver(fake, event)

    async def edited() -> bool:
        ep = await engine.get_by_source(ref(GENERAL, original["ts"]))
        return ep is not None and ep.content == "the release is on *wednesday* & final"

    await eventually(edited)
    assert edits == ["the release is on *wednesday* & final"]

    await deliver(fake, message_deleted_event(GENERAL, original["ts"], "x", ALICE))

    async def gone() -> bool:
        return await engine.get_by_source(ref(GENERAL, original["ts"])) is None

    await eventually(gone)
    assert posts(fake) == []


async def test_retries_and_mention_twins_are_handled_once(
    fake: RecordingSlack,
    bot: SlackAdapter,
    engine: MemoryEngine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.platforms.slack.adapter")
    dm = message_event(ALICE, "what did I say about tuesdays?", DM, channel_type="im")
    await deliver(fake, dm, event_id="Ev0FIRST01")
    await wait_posts(fake, 1)
    # Slack's retry (same event id), and a redelivery under a new id.
    await deliver(fake, dm, event_id="Ev0FIRST01", retry_attempt=1, retry_reason="timeout")
    await eventually(lambda: "event Ev0FIRST01 delivered again" in caplog.text)
    await deliver(fake, dm, event_id="Ev0SECOND1")
    await eventually(lambda: f"message {DM}:{dm['ts']} taken in already" in caplog.text)

    # One mention, delivered as app_mention and as message (in either order).
    ask = message_event(ALICE, mention(fake, "what about tuesdays?"), GENERAL)
    twin = app_mention_event(ALICE, ask["text"], GENERAL, ts=ask["ts"])
    await deliver(fake, twin)
    await deliver(fake, ask)
    await eventually(lambda: len(posts(fake, GENERAL)) == 1)

    # An app_mention whose message twin never comes is answered after a while.
    monkeypatch.setattr(slack_adapter, "MENTION_FALLBACK", 0.05)
    alone = app_mention_event(BOB, "anyone there?", GENERAL)
    await deliver(fake, alone)
    await eventually(lambda: len(posts(fake, GENERAL)) == 2)
    assert (await stored(engine, alone)).producer == f"slack:{BOB}"

    await bot.close()
    assert len(posts(fake, DM)) == 1
    assert [p["thread_ts"] for p in posts(fake, GENERAL)] == [ask["ts"], alone["ts"]]
    dms = Scope(org_id=DM_ORG, project_id=PROJECT, produced_for=f"slack:{DM}")
    assert await engine.count(dms) == 2  # the question and the one answer


# -- Slack API errors ---------------------------------------------------------------------------


async def test_slack_api_errors_are_survived(
    fake: RecordingSlack, bot: SlackAdapter, engine: MemoryEngine
) -> None:
    async def ask(text: str) -> dict[str, Any]:
        event = message_event(ALICE, text, DM, channel_type="im")
        await deliver(fake, event)
        await stored(engine, event)  # stored whatever Slack does next
        return event

    # Rate limited: slack-sdk waits for Retry-After and posts again.
    fake.fail("chat.postMessage", FailRateLimited(retry_after=1))
    await ask("first question about the budget")
    await eventually(lambda: len(posts(fake)) == 1, within=15)
    assert [c.status for c in fake.calls_to("chat.postMessage")] == [429, 200]

    # A 500: posted again once.
    fake.fail("chat.postMessage", FailStatus(500))
    await ask("second question about the budget")
    await eventually(lambda: len(posts(fake)) == 2)

    # invalid_auth (and a failing reaction): the asker is told, nothing is stored as answered.
    fake.fail("reactions.add", FailError("invalid_auth"))
    fake.fail("chat.postMessage", FailError("invalid_auth"))
    third = await ask("third question about the budget")
    await eventually(lambda: len(fake.ephemeral_messages) == 1)
    notice = fake.ephemeral_messages[0]
    assert notice["user"] == ALICE and notice["channel"] == DM
    assert "invalid_auth" in notice["text"] and "try again" in notice["text"]

    # users.info failing: the raw id stands in for the name. The bot keeps answering.
    fake.add_user("U0DAVE001", "dave", display_name="Dave")
    fake.fail("users.info", FailError("internal_error"))
    event = message_event("U0DAVE001", "fourth question about the budget", DM, channel_type="im")
    await deliver(fake, event)
    assert (await stored(engine, event)).metadata["display_name"] == "U0DAVE001"
    await eventually(lambda: len(posts(fake)) == 3)
    assert third["ts"] not in {p.get("thread_ts") for p in posts(fake)}
    await bot.close()  # lets the last answer be stored
    replies = await engine.list(
        Scope(org_id=DM_ORG, project_id=PROJECT, produced_for=f"slack:{DM}"), "role = 'assistant'"
    )
    assert len(replies) == 3  # the failed answer was not stored as said


# -- HTTP mode ----------------------------------------------------------------------------------


async def test_http_mode_verifies_signatures_and_sits_beside_the_memory_api(
    fake: RecordingSlack, engine: MemoryEngine
) -> None:
    async with running(
        fake, engine, slack_app_token=None, slack_signing_secret=SECRET, api_keys=f"{API_KEY}:*"
    ) as adapter:
        assert not adapter.socket_mode
        app = create_app(engine=engine, settings=adapter.settings)
        adapter.mount(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://bot.example") as http:
            event = message_event(ALICE, mention(fake, "is anyone keeping notes?"), GENERAL)
            body = json.dumps(fake.event_payload(event)).encode()
            json_type = {"Content-Type": "application/json"}

            forged = {**json_type, **sign_request(body, "not-the-secret")}
            stale = {**json_type, **sign_request(body, SECRET, int(time.time()) - 600)}
            for bad in (forged, stale, json_type):
                response = await http.post("/slack/events", content=body, headers=bad)
                assert response.status_code == 401
            assert await engine.get_by_source(ref(GENERAL, event["ts"])) is None

            good = {**json_type, **sign_request(body, SECRET)}
            response = await http.post("/slack/events", content=body, headers=good)
            assert response.status_code == 200
            await stored(engine, event)
            (answer,) = await wait_posts(fake, 1)
            assert answer["thread_ts"] == event["ts"]

            form = urlencode(fake.command_payload("/memory", "", user_id=ALICE))
            form_type = {"Content-Type": "application/x-www-form-urlencoded"}
            signed = {**form_type, **sign_request(form, SECRET)}
            response = await http.post("/slack/events", content=form, headers=signed)
            assert response.status_code == 200
            (hook,) = await fake.wait_for_hook()
            assert hook.body["response_type"] == "ephemeral"
            assert hook.body["text"].startswith("Memory for you")

            # The memory API keeps its keys; the Slack endpoint only takes POST.
            assert (await http.get("/api/v2/projects/list")).status_code in (401, 405)
            assert (await http.get("/slack/events")).status_code == 405
        assert not fake.calls_to("apps.connections.open")


async def test_http_mode_answers_malformed_signature_headers_with_401(
    fake: RecordingSlack, engine: MemoryEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A timestamp that is not a number (or one too long for Python's int) and a signature
    that is not ASCII are bad signatures like any other: 401, nothing stored, nothing logged
    as an error."""
    async with running(
        fake, engine, slack_app_token=None, slack_signing_secret=SECRET, api_keys=f"{API_KEY}:*"
    ) as adapter:
        app = create_app(engine=engine, settings=adapter.settings)
        adapter.mount(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://bot.example") as http:
            event = message_event(ALICE, "the vault code is 4711", GENERAL)
            body = json.dumps(fake.event_payload(event)).encode()
            good = {"Content-Type": "application/json", **sign_request(body, SECRET)}
            signature = good["X-Slack-Signature"]
            malformed: list[dict[str, str | bytes]] = [
                {"X-Slack-Request-Timestamp": "abc"},
                {"X-Slack-Request-Timestamp": ""},
                {"X-Slack-Request-Timestamp": "9" * 5000},
                {"X-Slack-Request-Timestamp": "-1"},
                {"X-Slack-Request-Timestamp": "1e9"},
                {"X-Slack-Request-Timestamp": "\u00b2".encode("latin-1")},
                {"X-Slack-Signature": signature[:-1].encode() + b"\xe9"},
                {"X-Slack-Signature": ""},
            ]
            with caplog.at_level(logging.ERROR):
                for change in malformed:
                    headers = {**good, **change}
                    response = await http.post("/slack/events", content=body, headers=headers)
                    assert response.status_code == 401, change
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert await engine.get_by_source(ref(GENERAL, event["ts"])) is None

            # Control: the same body, signed, is taken.
            response = await http.post("/slack/events", content=body, headers=good)
            assert response.status_code == 200
            await stored(engine, event)


# -- pieces -------------------------------------------------------------------------------------


def test_split_text_keeps_lines_and_links_whole() -> None:
    assert split_text("short") == ["short"]
    lines = [f"line {i} " + "x" * 90 for i in range(100)]
    pieces = split_text("\n".join(lines), limit=1000)
    assert all(len(p) <= 1000 for p in pieces)
    assert "\n".join(pieces).splitlines() == lines
    link = "<https://fake.slack.test/archives/C1/p1700000000000100|[1]>"
    words = " ".join([link] * 200)
    assert all(link in p or p == "" for p in split_text(words, limit=300))
    assert "".join(split_text(words, limit=300)).count(link) == 200
    assert [len(p) for p in split_text("y" * 2500, limit=1000)] == [1000, 1000, 500]


async def test_long_replies_are_split_and_markup_is_read(
    fake: RecordingSlack, engine: MemoryEngine
) -> None:
    async with running(fake, engine, start=False) as adapter:
        await adapter._identify()
        replier = SlackReplier(adapter, GENERAL, user=ALICE, thread_ts="1700000000.000100")
        text = "\n".join(f"paragraph {i}: " + "words " * 60 for i in range(40))
        source_id = await replier.reply(text)
        sent = posts(fake, GENERAL)
        assert len(sent) > 1 and all(len(p["text"]) <= 3000 for p in sent)
        assert source_id == f"{GENERAL}:{fake.posted_messages(GENERAL)[0]['ts']}"
        assert all(p["thread_ts"] == "1700000000.000100" for p in sent)
        assert await replier.permalink("not-a-source") is None

        readable = await adapter.readable(
            f"hi <@{BOB}> and <@{fake.bot_user_id}> see <#{RANDOM}|random>, "
            "<https://x.test/a?b=1&amp;c=2|the doc> &lt;3 <!here> <mailto:a@b.test|a@b.test>"
        )
        assert readable == (
            "hi @Bob and @channelmind see #random, the doc (https://x.test/a?b=1&c=2) <3 @here"
            " a@b.test"
        )
        assert adapter.mentions_bot(f"<@{fake.bot_user_id}|channelmind> hi")
        assert not adapter.mentions_bot(f"<@{BOB}> hi")
