"""How a Slack message becomes a :class:`~bot.core.events.MessageEvent`: written once, for
the live adapter, the history backfill and the import of a workspace export.

The three differ only in where people's names come from (``users.info`` live, ``users.json``
in an export), so :class:`SlackMapping` takes that lookup as a function. Everything else (which
subtypes are something someone said, the author and whether it is a bot, the bot's own messages,
DMs, threads, markup made readable, files as text, the source id and time) is decided here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.core.events import Author, MessageEvent, Place, pid

from .format import PLATFORM, slack_source_id

#: Message subtypes that are something someone said (the rest is joins, topics...).
SAID = frozenset({None, "bot_message", "thread_broadcast", "file_share", "me_message"})

_MARKUP = re.compile(r"<([^<>]+)>")
_USER_REF = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


@dataclass(frozen=True)
class SlackUser:
    id: str
    display_name: str
    is_admin: bool = False  # a workspace admin or owner
    is_bot: bool = False


def slack_user(info: dict[str, Any], user_id: str = "") -> SlackUser:
    """A user as ``users.info`` (or an export's ``users.json``) describes them: the name
    people see is the display name, else the real name, else the handle."""
    user_id = str(info.get("id") or user_id)
    profile = info.get("profile") or {}
    name = (
        profile.get("display_name")
        or profile.get("real_name")
        or info.get("real_name")
        or info.get("name")
        or user_id
    )
    return SlackUser(
        id=user_id,
        display_name=str(name),
        is_admin=bool(info.get("is_admin") or info.get("is_owner")),
        is_bot=bool(info.get("is_bot")),
    )


def ts_time(ts: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(ts), UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


def is_dm(channel: str, channel_type: object = None) -> bool:
    """A direct message with the bot: Slack says ``im`` or, where an event does not say,
    its channel id starts with ``D``."""
    if isinstance(channel_type, str) and channel_type:
        return channel_type == "im"
    return channel.startswith("D")


def thread_of(message: dict[str, Any]) -> str | None:
    """The ts of the thread a message replies in (None for a thread's first message)."""
    given, ts = message.get("thread_ts"), message.get("ts")
    return given if isinstance(given, str) and given != ts else None


def bot_name(event: dict[str, Any]) -> str | None:
    profile = event.get("bot_profile") or {}
    name = profile.get("name") or event.get("username")
    return str(name) if name else None


def files_text(event: dict[str, Any]) -> str:
    """Shared files, kept by their titles (or names) as text."""
    names = [
        str(f.get("title") or f.get("name"))
        for f in event.get("files") or []
        if isinstance(f, dict) and (f.get("title") or f.get("name"))
    ]
    return "".join(f" [file: {n}]" for n in names)


def skip_reason(message: dict[str, Any]) -> str | None:
    """Why a message is not something to remember (its subtype, or what it lacks), or None."""
    subtype = message.get("subtype")
    if subtype not in SAID:
        return str(subtype)
    if not isinstance(message.get("ts"), str) or not message.get("ts"):
        return "no ts"
    if not message.get("user") and not message.get("bot_id"):
        return "no user"
    return None


UserLookup = Callable[[str], Awaitable[SlackUser]]


class SlackMapping:
    """Slack messages -> core events for one workspace's bot."""

    def __init__(
        self,
        users: UserLookup,
        *,
        bot_user_id: str | None = None,
        bot_id: str | None = None,
        bot_name: str = "ChannelMind",
    ) -> None:
        self.users = users
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.bot_name = bot_name

    @property
    def bot_pid(self) -> str | None:
        return pid(PLATFORM, self.bot_user_id) if self.bot_user_id else None

    def place(
        self,
        org: str,
        channel: str,
        *,
        thread_ts: str | None = None,
        dm: bool = False,
        channel_name: str | None = None,
    ) -> Place:
        return Place(
            platform=PLATFORM,
            org_id=org,
            channel_id=pid(PLATFORM, channel),
            thread_id=pid(PLATFORM, thread_ts) if thread_ts else None,
            is_dm=dm,
            channel_name=channel_name,
            bot_id=self.bot_pid,
        )

    def is_own(self, message: dict[str, Any]) -> bool:
        """One of the bot's own messages (its earlier answers)."""
        user, bot = message.get("user"), message.get("bot_id")
        return bool(
            (self.bot_user_id and user == self.bot_user_id) or (self.bot_id and bot == self.bot_id)
        )

    def mentions_bot(self, text: str) -> bool:
        if not self.bot_user_id:
            return False
        return re.search(rf"<@{re.escape(self.bot_user_id)}(?:\|[^>]*)?>", text) is not None

    async def author(self, message: dict[str, Any]) -> Author:
        if self.is_own(message) and self.bot_pid:
            return Author(self.bot_pid, self.bot_name)  # as the core stores its own replies
        is_bot = (
            bool(message.get("bot_id"))
            or message.get("subtype") == "bot_message"
            or message.get("user") == "USLACKBOT"
        )
        user = message.get("user")
        if isinstance(user, str) and user:
            found = await self.users(user)
            name = found.display_name
            if is_bot and name == user:
                name = bot_name(message) or name
            return Author(pid(PLATFORM, user), name, is_bot=is_bot or found.is_bot)
        raw = str(message.get("bot_id") or "unknown")
        return Author(pid(PLATFORM, raw), bot_name(message) or raw, is_bot=True)

    async def text(self, message: dict[str, Any]) -> str:
        return await self.readable(str(message.get("text") or "")) + files_text(message)

    async def message_event(
        self, message: dict[str, Any], org: str, channel: str, *, dm: bool
    ) -> MessageEvent:
        """The core event of something said (check :func:`skip_reason` first)."""
        ts = str(message["ts"])
        place = self.place(org, channel, thread_ts=thread_of(message), dm=dm)
        return MessageEvent(
            place=place,
            author=await self.author(message),
            text=await self.text(message),
            source_id=slack_source_id(channel, ts),
            created_at=ts_time(ts),
            mentions_bot=self.mentions_bot(str(message.get("text") or "")),
        )

    async def readable(self, text: str) -> str:
        """Slack's markup as people read it: ``<@U1>`` -> ``@Alice``, ``<#C1|x>`` -> ``#x``,
        ``<url|label>`` -> ``label (url)``, and ``&amp;`` ``&lt;`` ``&gt;`` unescaped."""
        if "<" not in text:
            return html.unescape(text)
        names = {u: (await self.users(u)).display_name for u in set(_USER_REF.findall(text))}

        def one(m: re.Match[str]) -> str:
            inner = m.group(1)
            target, _, label = inner.partition("|")
            if target.startswith("@"):
                return "@" + names.get(target[1:], label or target[1:])
            if target.startswith("#"):
                return "#" + (label or target[1:])
            if target.startswith("!subteam^"):
                return label or "@group"
            if target.startswith("!"):
                return "@" + (label or target[1:].split("^", 1)[0])
            if target.startswith("mailto:"):
                return label or target[len("mailto:") :]
            return f"{label} ({target})" if label and label != target else target

        return html.unescape(_MARKUP.sub(one, text))
