"""How a Discord message becomes a :class:`~bot.core.events.MessageEvent`: written once, for the
live adapter and its history backfill (from discord.py's ``Message``) and for the import of
DiscordChatExporter files (from their JSON).

Where a message is (a guild channel, a thread of one, a DM), who wrote it, its readable text
(mentions as ``@name``, a leading mention of the bot dropped, attachments by name), its source id
and link are decided here; the callers only read those facts out of their own shapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime

from bot.core.events import Author, MessageEvent, Place, pid

from .format import PLATFORM, discord_source_id, jump_url

#: Message types that are something someone said (discord.py's and DiscordChatExporter's names;
#: the rest is joins, pins, thread notices...).
SAID_TYPES = frozenset({"default", "reply"})

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CHANNEL_MENTION = re.compile(r"<#(\d+)>")

Names = Callable[[int], str | None]


def _none(_: int) -> str | None:
    return None


def place(
    guild_id: str | int | None,
    channel_id: str | int,
    *,
    thread_id: str | int | None = None,
    name: str | None = None,
    bot_id: str | None = None,
) -> Place:
    """A guild channel (a thread's messages belong to its parent channel, in the thread), or a
    DM when there is no guild."""
    if guild_id is None:
        return Place(
            platform=PLATFORM,
            org_id="",  # a DM: the core names its org
            channel_id=pid(PLATFORM, str(channel_id)),
            is_dm=True,
            bot_id=bot_id,
        )
    return Place(
        platform=PLATFORM,
        org_id=pid(PLATFORM, str(guild_id)),
        channel_id=pid(PLATFORM, str(channel_id)),
        thread_id=pid(PLATFORM, str(thread_id)) if thread_id is not None else None,
        channel_name=name,
        bot_id=bot_id,
    )


def author(user_id: str | int, display_name: str, *, is_bot: bool) -> Author:
    return Author(id=pid(PLATFORM, str(user_id)), display_name=display_name, is_bot=is_bot)


def readable_text(
    content: str,
    *,
    own: Iterable[str] = (),
    users: Names = _none,
    roles: Names = _none,
    channels: Names = _none,
    files: Iterable[str] = (),
) -> str:
    """The content as people read it: ``<@id>`` -> ``@name``, ``<@&id>`` -> ``@role``,
    ``<#id>`` -> ``#channel``; a leading mention of the bot (``own``: regexes of the ways it is
    written) dropped, since it is what ``mentions_bot`` says; shared files by name."""
    text = content
    patterns = list(own)
    if patterns:
        text = re.sub(rf"^\s*(?:(?:{'|'.join(patterns)})[\s,:]*)+", "", text)

    def named(names: Names, prefix: str) -> Callable[[re.Match[str]], str]:
        def one(m: re.Match[str]) -> str:
            name = names(int(m[1]))
            return f"{prefix}{name}" if name else m[0]

        return one

    text = _USER_MENTION.sub(named(users, "@"), text)
    text = _ROLE_MENTION.sub(named(roles, "@"), text)
    text = _CHANNEL_MENTION.sub(named(channels, "#"), text)
    return text.strip() + "".join(f" [file: {f}]" for f in files if f)


def message_event(
    where: Place,
    who: Author,
    text: str,
    *,
    message_id: str | int,
    created_at: datetime,
    mentions_bot: bool,
    link_channel: str | int,
) -> MessageEvent:
    """``link_channel`` is where the message is shown: its thread, or its channel."""
    guild = None if where.is_dm else where.org_id
    return MessageEvent(
        place=where,
        author=who,
        text=text,
        source_id=discord_source_id(str(message_id)),
        created_at=created_at,
        mentions_bot=mentions_bot,
        link=jump_url(guild, link_channel, message_id),
    )
