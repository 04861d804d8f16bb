"""Helpers for the core's tests: a recording Replier (the adapter side of the contract) and
builders for Slack-like and Discord-like events. Real parts everywhere else."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import openai

from bot.app import PLATFORMS
from bot.core.conversation import Conversation
from bot.core.events import (
    Author,
    CommandEvent,
    CommandName,
    DeleteEvent,
    EditEvent,
    MessageEvent,
    Place,
    Replier,
)
from bot.core.responder import Responder
from bot.platforms.discord.format import discord_source_id
from bot.platforms.slack.format import slack_source_id
from bot.settings import Settings
from memory import MemoryEngine
from memory.semantic import SemanticMemory

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
SLACK_ORG = "slack:T0ACME"
SLACK_BOT = "slack:U0BOT"
DISCORD_GUILD = "81384788765712384"
DISCORD_ORG = f"discord:{DISCORD_GUILD}"

ALICE = Author("slack:UALICE", "Alice")
BOB = Author("slack:UBOB", "Bob")
CAROL = Author("slack:UCAROL", "Carol")


def settings(**overrides: Any) -> Settings:
    """Settings that ignore the environment's LLM and .env (tests choose their own)."""
    values: dict[str, Any] = {
        "_env_file": None,
        "openai_api_key": None,
        "openai_base_url": None,
        "semantic": False,
        "retention_days": None,
        "admins": [],
    }
    values.update(overrides)
    return Settings(**values)


def slack_permalink(source_id: str) -> str:
    channel, ts = source_id.split(":", 1)
    return f"https://acme.slack.com/archives/{channel}/p{ts.replace('.', '')}"


_reply_ids = count(1)


@dataclass
class RecordingReplier:
    """A Replier as an adapter would implement it, recording what the core sends."""

    platform: str = "slack"
    replies: list[str] = field(default_factory=list)
    ephemerals: list[str] = field(default_factory=list)
    permalink_calls: list[str] = field(default_factory=list)
    working_entered: int = 0
    fail_reply: bool = False

    async def reply(self, text: str) -> str | None:
        if self.fail_reply:
            raise RuntimeError("platform down")
        self.replies.append(text)
        n = next(_reply_ids)  # unique across repliers, as platform message ids are
        if self.platform == "slack":
            return slack_source_id("CBOTREPLY", f"1800000000.{n:06d}")
        return f"99{n:06d}"

    async def ephemeral(self, text: str) -> None:
        self.ephemerals.append(text)

    def working(self) -> AbstractAsyncContextManager[None]:
        replier = self

        @asynccontextmanager
        async def sign() -> AsyncIterator[None]:
            replier.working_entered += 1
            yield

        return sign()

    async def permalink(self, source_id: str) -> str | None:
        self.permalink_calls.append(source_id)
        if self.platform == "slack" and ":" in source_id:
            return slack_permalink(source_id)
        if self.platform == "discord":
            return f"https://discord.com/channels/{DISCORD_GUILD}/555/{source_id}"
        return None


def _check_protocol(r: RecordingReplier) -> Replier:
    return r  # mypy proves RecordingReplier implements the Replier protocol


class Channel:
    """A Slack (or Discord) channel that builds events with increasing timestamps."""

    _clock = count(1)

    def __init__(
        self,
        raw_id: str,
        name: str,
        *,
        platform: str = "slack",
        org: str = SLACK_ORG,
        thread: str | None = None,
        is_dm: bool = False,
        bot_id: str | None = SLACK_BOT,
    ) -> None:
        self.raw_id = raw_id
        self.platform = platform
        self.place = Place(
            platform=platform,
            org_id=org,
            channel_id=f"{platform}:{raw_id}",
            thread_id=thread,
            is_dm=is_dm,
            channel_name=name,
            bot_id=bot_id,
        )

    def in_thread(self, thread: str) -> Channel:
        other = Channel(self.raw_id, self.place.channel_name or "", platform=self.platform)
        other.place = replace(self.place, thread_id=thread)
        return other

    def message(
        self, author: Author, text: str, *, addressed: bool = False, minutes: float | None = None
    ) -> MessageEvent:
        n = next(self._clock)
        when = T0 + timedelta(minutes=minutes if minutes is not None else n)
        if self.platform == "slack":
            source = slack_source_id(self.raw_id, f"{1700000000 + n}.{n:06d}")
        else:
            source = discord_source_id(str(1200000000000000000 + n))
        return MessageEvent(
            place=self.place,
            author=author,
            text=text,
            source_id=source,
            created_at=when,
            mentions_bot=addressed,
        )

    def command(
        self,
        author: Author,
        name: CommandName,
        text: str = "",
        *,
        admin: bool = False,
        target: str | None = None,
    ) -> CommandEvent:
        return CommandEvent(
            place=self.place,
            author=author,
            name=name,
            text=text,
            is_channel_admin=admin,
            target_source_id=target,
        )

    def edit(self, source_id: str, text: str) -> EditEvent:
        return EditEvent(place=self.place, source_id=source_id, text=text)

    def delete(self, *source_ids: str) -> DeleteEvent:
        return DeleteEvent(place=self.place, source_ids=tuple(source_ids))


@asynccontextmanager
async def open_engine(path: Path) -> AsyncIterator[MemoryEngine]:
    engine = await MemoryEngine.open(path, "hash")
    try:
        yield engine
    finally:
        await engine.close()


def llm_client(base_url: str, **kwargs: Any) -> openai.AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", **kwargs)


def responder(base_url: str | None = None, **kwargs: Any) -> Responder:
    """A responder on the fake LLM (real openai client), or extractive without a URL."""
    if base_url is None:
        return Responder(None)
    timeout = kwargs.pop("timeout", 5.0)
    retries = kwargs.pop("max_retries", 0)
    return Responder(
        llm_client(base_url), "gpt-4o-mini", timeout=timeout, max_retries=retries, **kwargs
    )


def conversation(
    engine: MemoryEngine,
    resp: Responder | None = None,
    semantic: SemanticMemory | None = None,
    **overrides: Any,
) -> Conversation:
    if semantic is not None:
        overrides.setdefault("semantic", True)
    return Conversation(engine, resp or Responder(None), settings(**overrides), semantic, PLATFORMS)


# -- a tiny "LLM" for the fake server: answers from the numbered messages of its prompt ---------

QUOTE = re.compile(
    r'^\[(\d+)\] [^|]+\| (?P<who>[^|]+) \| (?P<text>".*")(?P<updated> \(updated later by'
    r" \[(?P<by>\d+)\]\))?$"
)


def quoted(prompt: str) -> list[tuple[int, str, str]]:
    """``(number, author, content)`` of each message quoted in a prompt (a person's name is
    JSON-quoted there: it is given unquoted, with any suffix such as `` (asking)``)."""
    out = []
    for line in prompt.splitlines():
        if m := QUOTE.match(line):
            who = m["who"].strip()
            if who.startswith('"'):
                name, end = json.JSONDecoder().raw_decode(who)
                who = name + who[end:]
            out.append((int(m.group(1)), who, json.loads(m["text"])))
    return out


def grounded(*keywords: str) -> Callable[[dict[str, Any]], str]:
    """A fake LLM that cites the quoted messages containing any keyword, or says the
    conversation does not tell, as the system prompt asks."""

    def respond(request: dict[str, Any]) -> str:
        prompt = "\n".join(str(m.get("content", "")) for m in request["messages"])
        hits = [
            (n, text)
            for n, _, text in quoted(prompt)
            if any(k.lower() in text.lower() for k in keywords)
        ]
        if not hits:
            return "The conversation here does not tell."
        return " ".join(f"{text} [{n}]." for n, text in hits)

    return respond
