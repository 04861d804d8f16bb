"""Issue 10 on Slack: an agent's memory stored over REST v2 with ``role: "assistant"`` is
evidence for the bot and ``/recall`` (the bot's own replies are known by its id, not a role),
the later word leads, and REST search still returns everything, the bot's replies included,
unless the caller filters. Real slack-bolt against the fake Slack, the memory server under
uvicorn with the official memmachine-client, one MemoryEngine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from memmachine_client import MemMachineClient
from memmachine_client.memory import Memory as MMMemory

from bot.platforms.slack.adapter import SlackAdapter
from memory import MemoryEngine
from tests.bot.platforms.slack.test_adapter import (  # the module's fixtures and helpers
    ALICE,
    BOB,
    GENERAL,
    ORG,
    PROJECT,
    RecordingSlack,
    bot,
    deliver,
    fake,
    mention,
    run_command,
    stored,
    wait_posts,
)
from tests.fakes.slack.server import message_event
from tests.server_harness import running as memory_server

pytestmark = pytest.mark.timeout(90)
__all__ = ["bot", "fake"]  # fixtures, used by name

T = TypeVar("T")
CRM = "agent:crm"


async def sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking memmachine-client call, off the loop that serves it."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_an_agents_assistant_memory_is_evidence_and_the_bots_replies_are_not(
    fake: RecordingSlack, bot: SlackAdapter, engine: MemoryEngine
) -> None:
    said = message_event(BOB, "Acme Corp renewal is due on June 30, contract value 120k", GENERAL)
    await deliver(fake, said)
    await stored(engine, said)
    async with memory_server(engine, api_keys=f"k-agent:{ORG}") as server:
        client = MemMachineClient(base_url=server.url, api_key="k-agent", max_retries=0)
        try:
            memory = MMMemory(client, org_id=ORG, project_id=PROJECT)
            await sync(
                memory.add,
                "Acme Corp renewal moved to July 15 after their budget review",
                role="assistant",  # as agents built on chat APIs store what they say
                producer=CRM,
                produced_for=f"slack:{GENERAL}",
                timestamp=datetime.now(UTC),
            )
            await engine.wait_indexed()

            question = message_event(ALICE, mention(fake, "when does Acme renew?"), GENERAL)
            await deliver(fake, question)
            (answer,) = await wait_posts(fake, 1)
            lines = answer["text"].splitlines()
            assert "Acme Corp renewal moved to July 15" in lines[1] and "[1]" in lines[1]
            assert lines[2].strip().startswith("earlier:") and "June 30" in lines[2]

            recall = await run_command(fake, "/recall", "Acme renewal", ALICE, channel_id=GENERAL)
            assert "moved to July 15" in recall.splitlines()[1]

            # REST search returns everything, the bot's reply too, unless the caller filters.
            await engine.wait_indexed()
            bot_id = f"slack:{fake.bot_user_id}"
            found = await sync(memory.search, "Acme renewal", limit=10)
            producers = {
                str(e.producer_id) for e in found.content.episodic_memory.long_term_memory.episodes
            }
            assert {CRM, bot_id} <= producers
            filtered = await sync(
                memory.search, "Acme renewal", limit=10, filter=f"producer_id != '{bot_id}'"
            )
            episodes = filtered.content.episodic_memory.long_term_memory.episodes
            assert CRM in {str(e.producer_id) for e in episodes}
            assert bot_id not in {str(e.producer_id) for e in episodes}
        finally:
            client.close()
