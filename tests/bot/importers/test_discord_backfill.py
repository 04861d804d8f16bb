"""The live backfill on Discord: the real discord.py client against the fake Discord's channel
and thread history (pages of 100, a 429 with retry_after), the real core and a real
MemoryEngine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.app import attach_backfill
from bot.importers.backfill import Backfill
from memory import Scope
from tests.bot.platforms.discord.test_adapter import (
    ALICE,
    BOB,
    CHANNEL,
    GUILD,
    ORG,
    PROJECT,
    Bot,
    jump,
    running,
    setup_guild,
)
from tests.fakes.discord.server import FakeDiscord
from tests.polling import eventually

pytestmark = pytest.mark.timeout(90)

ARCHIVED = 810_000_000_000_000_030
NOW = datetime.now(UTC)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        setup_guild(server)
        server.add_thread(GUILD, CHANNEL, ARCHIVED, "vendor talk", archived=True)
        yield server


@asynccontextmanager
async def backfilled(fake: FakeDiscord, data: Path) -> AsyncIterator[tuple[Bot, Backfill]]:
    async with running(fake, data, backfill_pace=0) as bot:
        backfill = attach_backfill(bot.conversation, bot.adapter)
        await backfill.start()
        try:
            yield bot, backfill
        finally:
            await backfill.close()


async def count(bot: Bot) -> int:
    return await bot.engine.count(
        Scope(org_id=ORG, project_id=PROJECT, produced_for=f"discord:{CHANNEL}")
    )


async def test_channels_and_threads_are_backfilled_once_and_answer_questions(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    said: list[dict[str, Any]] = []
    for i in range(150):
        said.append(
            fake.seed_message(
                CHANNEL,
                ALICE if i % 2 else BOB,
                f"note {i} on the staging cluster",
                at=NOW - timedelta(days=40, minutes=-i),
            )
        )
    decision = fake.seed_message(
        ARCHIVED, BOB, "We chose Initech for the vendor contract", at=NOW - timedelta(days=30)
    )
    fake.seed_message(CHANNEL, ALICE, "far too old", at=NOW - timedelta(days=200))
    joined = fake.seed_message(CHANNEL, BOB, "", at=NOW - timedelta(days=20))
    joined["type"] = 7  # a member joined: not something said
    fake.rate_limit_next(f"GET /channels/{CHANNEL}/messages", retry_after=0.05)

    data = tmp_path / "data"
    async with backfilled(fake, data) as (bot, backfill):
        await eventually(lambda: backfill.progress.idle and backfill.progress.done >= 3, 30)
        assert await count(bot) == 151  # 150 + the thread's message; not the old one nor the join
        history = [
            c
            for c in fake.rest_calls
            if c.path == f"/channels/{CHANNEL}/messages" and c.method == "GET"
        ]
        assert history[0].rate_limited and len(history) >= 3  # a 429, then 2 pages of 100
        in_thread = await bot.wait_stored(decision)
        assert in_thread.thread_id == f"discord:{ARCHIVED}"
        assert in_thread.link == jump(ARCHIVED, decision["id"])
        assert in_thread.metadata["channel_name"] == "general"
        # The same message arriving live is not stored twice.
        await fake.dispatch("MESSAGE_CREATE", said[5], guild_id=GUILD)
        await bot.engine.wait_indexed()
        question = await fake.send_message(
            CHANNEL, ALICE, "who did we choose for the vendor?", mentions_bot=True
        )
        answer = await bot.answer_to(CHANNEL, question)
        assert "Initech" in answer.json["content"]
        assert jump(ARCHIVED, decision["id"]) in answer.json["content"]
        # the question and the bot's answer, and nothing else
        await eventually(lambda: _is(count(bot), 151 + 2))
        assert await count(bot) == 153
        calls = len(fake.rest_calls)
    async with backfilled(fake, data) as (bot, backfill):  # a restart reads nothing again
        await eventually(lambda: backfill.progress.idle, 30)
        await eventually(lambda: backfill.progress.current is None)
        again = [
            c for c in fake.rest_calls[calls:] if c.path.endswith("/messages") and c.method == "GET"
        ]
        assert again == []


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)
