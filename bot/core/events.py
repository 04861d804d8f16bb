"""Platform-neutral events: what the Slack, Discord and console adapters hand to the core.

Adapters translate and nothing else. They turn a platform event into one of these, and give the
core a :class:`Replier` that knows how to answer in that place (in-thread, ephemeral, with a
typing sign). The core decides what to remember and how to answer.

Ids are ``<platform>:<id>`` strings (``slack:U024BE7LH``, ``discord:81384788765712384``), so
that memory never confuses two platforms' users or channels; display names ride along in
metadata and are what the LLM sees.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

CommandName = Literal["recall", "forget", "remember", "memory"]


def pid(platform: str, raw_id: str) -> str:
    """A platform-qualified id: ``pid("slack", "U1") == "slack:U1"``."""
    return f"{platform}:{raw_id}"


def slack_source_id(channel: str, ts: str) -> str:
    """The source id of a Slack message: the raw channel id and the message ts,
    ``"C123:1700000000.000100"`` (a ts is unique only within its channel)."""
    return f"{channel}:{ts}"


def discord_source_id(message_id: str) -> str:
    """The source id of a Discord message: its snowflake, unique across Discord."""
    return message_id


@dataclass(frozen=True)
class Author:
    id: str  # platform-qualified, e.g. "slack:U1"
    display_name: str
    is_bot: bool = False


@dataclass(frozen=True)
class Place:
    """Where something was said, and so where an answer goes."""

    platform: str  # "slack", "discord", "console"
    org_id: str  # the Slack team or Discord guild, platform-qualified ("slack:T1")
    channel_id: str  # platform-qualified channel (a DM's own channel for DMs)
    thread_id: str | None = None  # platform-qualified thread (Slack thread_ts, Discord thread)
    is_dm: bool = False
    channel_name: str | None = None
    #: The bot's own platform-qualified user id in this org, when the adapter knows it
    #: ("slack:U0BOT"). The core stores the bot's replies under it (else "<platform>:bot").
    bot_id: str | None = None


@dataclass(frozen=True)
class MessageEvent:
    place: Place
    author: Author
    text: str
    source_id: str  # unique in the org; slack_source_id() / discord_source_id() build it
    created_at: datetime
    addressed: bool  # mention, DM, reply to the bot, or a thread the bot is in
    link: str | None = None  # permalink / jump URL when already known
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EditEvent:
    place: Place
    source_id: str
    text: str
    editor_id: str | None = None


@dataclass(frozen=True)
class DeleteEvent:
    place: Place
    source_ids: tuple[str, ...]


@dataclass(frozen=True)
class CommandEvent:
    place: Place
    author: Author
    name: CommandName
    text: str  # the arguments as typed, e.g. "me", "channel", a link, a fact
    is_channel_admin: bool  # decided by the adapter with the platform's own rules
    target_source_id: str | None = None  # "Forget this message" shortcut / context menu


@dataclass(frozen=True)
class Citation:
    number: int
    author: str
    when: datetime
    link: str | None
    excerpt: str


class Replier(Protocol):
    """How the core answers in the place an event came from. One per event."""

    async def reply(self, text: str) -> str | None:
        """Post ``text`` where the event happened (in its thread, starting one if needed).
        Long text is split at the platform's limit. Returns the source id of the first
        message posted, so the core can store the bot's reply, or None."""
        ...

    async def ephemeral(self, text: str) -> None:
        """Answer only the person who asked (slash commands); falls back to a DM or a
        normal reply where the platform has no ephemeral messages."""
        ...

    def working(self) -> AbstractAsyncContextManager[None]:
        """A sign that the bot is working while the LLM thinks (typing, a reaction...)."""
        ...

    async def permalink(self, source_id: str) -> str | None:
        """A link to a stored message of this org, for citations (cached by the adapter)."""
        ...


class NullWorking:
    """For adapters with no typing sign."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
