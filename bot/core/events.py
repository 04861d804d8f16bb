"""Platform-neutral events: what the adapters (:mod:`bot.platforms`) hand to the core.

Adapters translate and nothing else. They turn a platform event into one of these, and give the
core a :class:`Replier` that knows how to answer in that place (in-thread, ephemeral, with a
typing sign). The core decides what to remember, whether the bot is addressed and how to answer.

Ids are ``<platform>:<id>`` strings (``slack:U024BE7LH``, ``discord:81384788765712384``), so
that memory never confuses two platforms' users or channels; display names ride along in
metadata and are what the LLM sees.

DMs are scoped by one rule for every platform: a DM is a channel of the platform's DM org,
``<platform>:dm`` (``slack:dm``, ``discord:dm``), never of a workspace or server. Like every
channel it reads only itself, so nothing said there is found from a channel, a workspace-wide
search or another person's DM; every event about a DM finds its memory from the platform alone
(Discord's raw deletions name nothing but the DM channel); and ``/forget me`` anywhere on the
platform reaches the asker's DMs too. :class:`Place` applies the rule, so an adapter only
says that a place is a DM.
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


def platform_of(qualified: str) -> str:
    """``"slack:C123"`` -> ``"slack"``."""
    return qualified.split(":", 1)[0]


def raw_id(qualified: str) -> str:
    """``"slack:C123"`` -> ``"C123"``."""
    return qualified.split(":", 1)[1] if ":" in qualified else qualified


def dm_org(platform: str) -> str:
    """The org of every DM on a platform: ``dm_org("slack") == "slack:dm"``."""
    return pid(platform, "dm")


@dataclass(frozen=True)
class Author:
    id: str  # platform-qualified, e.g. "slack:U1"
    display_name: str
    is_bot: bool = False


@dataclass(frozen=True)
class Place:
    """Where something was said, and so where an answer goes."""

    platform: str  # "slack", "discord", "console"
    org_id: str  # the Slack team or Discord guild, platform-qualified ("slack:T1"); see DMs
    channel_id: str  # platform-qualified channel (a DM's own channel for DMs)
    thread_id: str | None = None  # platform-qualified thread (Slack thread_ts, Discord thread)
    is_dm: bool = False
    channel_name: str | None = None
    #: The bot's own platform-qualified user id in this org, when the adapter knows it
    #: ("slack:U0BOT"). The core stores the bot's replies under it (else "<platform>:bot").
    bot_id: str | None = None

    def __post_init__(self) -> None:
        if self.is_dm:  # the DM rule (see the module): whatever org the adapter saw
            object.__setattr__(self, "org_id", dm_org(self.platform))


@dataclass(frozen=True)
class MessageEvent:
    place: Place
    author: Author
    text: str
    source_id: str  # unique in the org, as the platform builds it (Platform.source_id)
    created_at: datetime
    #: The message mentions the bot or replies to one of its messages (the platform's own
    #: ways of speaking to it). Whether the bot answers is the core's decision.
    mentions_bot: bool
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
    #: The platform says the asker may manage this channel (its own admin flag only:
    #: CHANNELMIND_ADMINS and DMs are the core's rule).
    is_channel_admin: bool
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
        """A link to a message of this org, for citations (cached by the adapter)."""
        ...


class NullWorking:
    """For adapters with no typing sign."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
