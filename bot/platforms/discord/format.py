"""Discord's writing and reading rules: mass mentions defused, ``[n](<url>)`` citations (the
number is the link; the angle brackets suppress the embed), jump URLs read and built."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.core.events import Citation, Place, pid, raw_id
from bot.platforms.base import MessageRef, link_citations

PLATFORM = "discord"

#: A jump URL: ``https://discord.com/channels/<guild|@me>/<channel>/<message>``.
JUMP_URL = re.compile(
    r"https?://(?:(?:ptb|canary)\.)?discord(?:app)?\.com/channels/"
    r"(?P<guild>\d+|@me)/(?P<channel>\d+)/(?P<message>\d+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class JumpLink(MessageRef):
    """A message named by its jump URL, which also names its server."""

    guild: str = ""  # the server id in the URL, or "@me" for a DM


def discord_source_id(message_id: str) -> str:
    """The source id of a Discord message: its snowflake, unique across Discord."""
    return message_id


def escape(text: str) -> str:
    """Defuse mass mentions (messages are also sent with ``allowed_mentions=none``)."""
    return re.sub(r"@(everyone|here)", "@\u200b\\1", text)


def jump_url(guild: str | None, channel_id: str | int, message_id: str | int) -> str:
    """The jump URL of a message in a server (``guild``, raw or qualified) or, for None, in
    a DM."""
    where = raw_id(guild) if guild else "@me"
    return f"https://discord.com/channels/{where}/{raw_id(str(channel_id))}/{message_id}"


class DiscordFormat:
    """:class:`~bot.platforms.base.Platform` for Discord."""

    name = PLATFORM
    org_word = "server"

    def escape(self, text: str) -> str:
        return escape(text)

    def link(self, url: str | None, label: str) -> str:
        return f"[{label}](<{url}>)" if url else label

    def render(self, text: str, citations: Sequence[Citation], *, sources: bool = True) -> str:
        return link_citations(escape(text), citations, lambda url, n: self.link(url, str(n)))

    def parse_link(self, text: str) -> MessageRef | None:
        if m := JUMP_URL.search(text):
            guild = m["guild"]
            org = None if guild == "@me" else pid(PLATFORM, guild)
            return JumpLink(PLATFORM, m["message"], org, guild)
        return None

    def message_id(self, text: str, place: Place) -> str:
        return text  # a snowflake, unique across Discord

    def thread_root(self, place: Place) -> str | None:
        # A thread started on a message has that message's id.
        return raw_id(place.thread_id) if place.thread_id else None


DISCORD = DiscordFormat()
