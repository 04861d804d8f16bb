"""The live backfill on Slack: the real SlackAdapter (slack-bolt, slack-sdk) against the fake
Slack's history endpoints (pagination, a 429 with Retry-After, a failure mid-way), the real core
and a real MemoryEngine: history is read once, resumes after a restart, is not stored twice when
its messages also arrive live, and answers questions with the right permalinks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.app import PLATFORMS, attach_backfill
from bot.core.backfill import read_state
from bot.core.conversation import Conversation
from bot.core.responder import Responder
from bot.importers.backfill import Backfill
from bot.platforms.slack.adapter import SlackAdapter
from memory import MemoryEngine, Scope
from tests.bot.platforms.slack.test_adapter import (
    ALICE,
    BOB,
    CAROL,
    GENERAL,
    ORG,
    PROJECT,
    RANDOM,
    RecordingSlack,
    bot_settings,
    deliver,
    mention,
    permalink,
    run_command,
    stored,
)
from tests.fakes.slack.server import FailError, FailRateLimited, member_joined_event
from tests.polling import eventually

pytestmark = pytest.mark.timeout(120)

NOW = datetime.now(UTC)


def at(days_ago: float, n: int) -> str:
    when = NOW - timedelta(days=days_ago)
    return f"{int(when.timestamp())}.{n:06d}"


@pytest.fixture
async def fake() -> AsyncIterator[RecordingSlack]:
    async with RecordingSlack() as server:
        server.add_user(ALICE, "alice", display_name="Alice")
        server.add_user(BOB, "bob", display_name="Bob")
        server.add_user(CAROL, "carol", display_name="Carol")
        server.add_channel(GENERAL, "general")
        server.add_channel(RANDOM, "random", is_member=False)
        yield server


@asynccontextmanager
async def bot(
    fake: RecordingSlack, engine: MemoryEngine
) -> AsyncIterator[tuple[SlackAdapter, Backfill]]:
    """The bot as `channelmind run` wires it: adapter, core, backfill (no pause between calls)."""
    settings = bot_settings(fake, backfill_pace=0, admins=[f"slack:{CAROL}"])
    conversation = Conversation(engine, Responder(None), settings, platforms=PLATFORMS)
    adapter = SlackAdapter(conversation, settings)
    backfill = attach_backfill(conversation, adapter)
    try:
        await adapter.start()
        await fake.wait_connected()
        await backfill.start()
        yield adapter, backfill
    finally:
        await backfill.close()
        await adapter.close()
        await conversation.close()


def seed_general(fake: RecordingSlack) -> dict[str, Any]:
    """450 messages over the last 60 days (3 pages of 200), a thread with 3 replies among the
    oldest, a join, and a message older than the 90 days read."""
    for i in range(450):
        user = ALICE if i % 2 else BOB
        fake.add_history(
            GENERAL,
            {
                "type": "message",
                "user": user,
                "ts": at(60 - i / 10, i),
                "text": f"weekly note {i} about the staging cluster",
            },
        )
    decision = fake.add_history(
        GENERAL,
        {
            "type": "message",
            "user": BOB,
            "ts": at(55, 900),
            "text": "Decision: we chose Initech for the vendor contract",
        },
    )
    for k in range(3):
        fake.add_history(
            GENERAL,
            {
                "type": "message",
                "user": ALICE,
                "ts": at(55 - k / 100, 901 + k),
                "thread_ts": decision["ts"],
                "text": f"agreed, point {k}",
            },
        )
    fake.add_history(
        GENERAL,
        {
            "type": "message",
            "subtype": "channel_join",
            "user": CAROL,
            "ts": at(50, 950),
            "text": "<@U0CAROL01> has joined",
        },
    )
    fake.add_history(
        GENERAL, {"type": "message", "user": ALICE, "ts": at(120, 999), "text": "too old to read"}
    )
    return decision


async def general_count(engine: MemoryEngine, channel: str = GENERAL) -> int:
    return await engine.count(
        Scope(org_id=ORG, project_id=PROJECT, produced_for=f"slack:{channel}")
    )


def history_calls(fake: RecordingSlack, channel: str = GENERAL) -> list[dict[str, Any]]:
    return [
        c.params
        for c in fake.calls_to("conversations.history")
        if c.params.get("channel") == channel
    ]


async def test_backfill_pages_waits_out_429_resumes_and_answers_from_history(
    fake: RecordingSlack, engine: MemoryEngine
) -> None:
    decision = seed_general(fake)
    fake.fail("conversations.history", FailRateLimited(retry_after=1))
    fake.fail("conversations.replies", FailError("fatal_error"))  # stops the first run
    async with bot(fake, engine) as (_, backfill):
        await eventually(lambda: backfill.progress.idle, 30)
        state = await read_state(engine, PROJECT, ORG, f"slack:{GENERAL}")
        assert state is not None and state.status == "running"  # stopped at the thread's page
        # the pages before the thread's are stored; the thread's page is read again later
        assert state.cursor is not None and 0 < state.stored < 454
        assert await general_count(engine) == state.stored
    calls = history_calls(fake)
    assert [c.get("latest") for c in calls[:2]] == [calls[0]["latest"]] * 2  # the 429, retried
    assert fake.calls_to("conversations.history")[0].status == 429
    first_run = len(calls)

    async with bot(fake, engine) as (_, backfill):  # a restart: resumes at the cursor
        await eventually(lambda: backfill.progress.done == 1, 30)
        resumed = history_calls(fake)[first_run]
        assert resumed["latest"] == state.cursor
        done = await read_state(engine, PROJECT, ORG, f"slack:{GENERAL}")
        assert done is not None and done.status == "done"
        assert await general_count(engine) == 450 + 1 + 3  # not the join, not the old one
        reply = await stored(engine, {"channel": GENERAL, "ts": at(55, 901)})
        assert reply.thread_id == f"slack:{decision['ts']}"

        # A live delivery of a message the backfill stored stores nothing twice.
        await deliver(
            fake,
            {
                **fake.history[GENERAL][3],
                "channel": GENERAL,
                "channel_type": "channel",
                "team": fake.team_id,
            },
        )
        assert await general_count(engine) == 454
        # Questions are answered from the history, citing it with its permalink.
        await engine.wait_indexed()
        question = {
            "type": "message",
            "user": CAROL,
            "channel": GENERAL,
            "channel_type": "channel",
            "ts": f"{NOW.timestamp():.6f}",
            "team": fake.team_id,
            "text": mention(fake, "who did we choose for the vendor contract?"),
        }
        await deliver(fake, question)
        answer = await eventually(lambda: [m for m in fake.posted_messages(GENERAL)], 20)
        assert "Initech" in answer[0]["text"]
        assert permalink(GENERAL, decision["ts"]) in answer[0]["text"]
        status = await run_command(fake, "/memory", "", CAROL, channel_id=GENERAL)
        assert "History from before I joined: read back to" in status
        assert "454 messages kept" in status
    calls_now = len(history_calls(fake))
    async with bot(fake, engine) as (_, backfill):  # done: never read again
        await eventually(lambda: backfill.progress.idle, 30)
    assert len(history_calls(fake)) == calls_now


async def test_joining_forgetting_and_asking_again(
    fake: RecordingSlack, engine: MemoryEngine
) -> None:
    for i in range(5):
        fake.add_history(
            RANDOM, {"type": "message", "user": BOB, "ts": at(3, i), "text": f"lunch plan {i}"}
        )
    async with bot(fake, engine) as (_, backfill):
        await eventually(lambda: backfill.progress.idle, 30)
        assert history_calls(fake, RANDOM) == []  # not a member yet
        fake.channels[RANDOM]["is_member"] = True
        await deliver(fake, member_joined_event(fake.bot_user_id, RANDOM))
        await eventually(lambda: backfill.progress.done == 2, 30)
        assert await general_count(engine, RANDOM) == 5

        said = await run_command(fake, "/forget", "channel", CAROL, channel_id=RANDOM)
        assert "forgot" in said
        assert await general_count(engine, RANDOM) == 0
    async with bot(fake, engine) as (_, backfill):  # a restart does not read it again
        await eventually(lambda: backfill.progress.idle, 30)
        await eventually(lambda: backfill.progress.current is None)
        assert await general_count(engine, RANDOM) == 0
        denied = await run_command(fake, "/memory", "backfill", BOB, channel_id=RANDOM)
        assert "Only a channel admin" in denied
        asked = await run_command(fake, "/memory", "backfill", CAROL, channel_id=RANDOM)
        assert "reading the history" in asked
        await eventually(lambda: general_count(engine, RANDOM), 30)
        await eventually(lambda: backfill.progress.idle)
        assert await general_count(engine, RANDOM) == 5
