"""Answers on Discord: in reply to the message (in its thread), typing meanwhile, or as
follow-ups to a deferred slash command; in pieces of at most 2,000 characters (UTF-16 units, as
Discord counts), never pinging anyone."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import discord

from bot.core.events import NullWorking, Place
from bot.platforms.text import split_text, utf16_units

from .format import discord_source_id

if TYPE_CHECKING:
    from .adapter import DiscordAdapter

log = logging.getLogger(__name__)

MAX_MESSAGE = 2000  # Discord's limit for a message's content
NO_PINGS = discord.AllowedMentions.none()


def split_message(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """``text`` in pieces Discord accepts: ``limit`` UTF-16 units each."""
    return split_text(text, limit, utf16_units)


@asynccontextmanager
async def _typing(channel: discord.abc.Messageable) -> AsyncIterator[None]:
    """``channel.typing()``, where a failing typing sign never stops the answer."""
    sign = channel.typing()
    try:
        await sign.__aenter__()
    except Exception as exc:  # e.g. missing permissions: answer anyway, without the sign
        log.warning("Discord: no typing sign in %s: %s", getattr(channel, "id", "?"), exc)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await sign.__aexit__(None, None, None)


class MessageReplier:
    """Answers a message: in reply to it, in its channel or thread, never pinging."""

    def __init__(self, adapter: DiscordAdapter, message: discord.Message, place: Place) -> None:
        self.adapter = adapter
        self.message = message
        self.place = place

    async def reply(self, text: str) -> str | None:
        channel = self.message.channel
        reference = self.message.to_reference(fail_if_not_exists=False)
        first: discord.Message | None = None
        for piece in split_message(text):
            if first is None:  # the first piece replies to the message; the rest follow it
                first = await channel.send(
                    piece, reference=reference, mention_author=False, allowed_mentions=NO_PINGS
                )
            else:
                await channel.send(piece, allowed_mentions=NO_PINGS)
        if first is None:
            return None
        source_id = discord_source_id(str(first.id))
        self.adapter.remember_link(source_id, first.jump_url)
        return source_id

    async def ephemeral(self, text: str) -> None:
        """Discord has no ephemeral message outside interactions: a DM, else a reply."""
        if not self.place.is_dm:
            try:
                for piece in split_message(text):
                    await self.message.author.send(piece, allowed_mentions=NO_PINGS)
                return
            except discord.HTTPException as exc:  # DMs closed: say it where they asked
                log.info("Discord: cannot DM %s (%s); replying instead", self.message.author, exc)
        await self.reply(text)

    def working(self) -> AbstractAsyncContextManager[None]:
        return _typing(self.message.channel)

    async def permalink(self, source_id: str) -> str | None:
        return await self.adapter.permalink(self.place, source_id)


class InteractionReplier:
    """Answers a slash or menu command with follow-ups to its deferred ephemeral response."""

    def __init__(
        self, adapter: DiscordAdapter, interaction: discord.Interaction[Any], place: Place
    ) -> None:
        self.adapter = adapter
        self.interaction = interaction
        self.place = place

    async def _send(self, text: str, *, ephemeral: bool) -> discord.WebhookMessage | None:
        first: discord.WebhookMessage | None = None
        for piece in split_message(text):
            sent = await self.interaction.followup.send(
                piece, ephemeral=ephemeral, allowed_mentions=NO_PINGS, wait=True
            )
            first = first or sent
        return first

    async def reply(self, text: str) -> str | None:
        sent = await self._send(text, ephemeral=False)
        return discord_source_id(str(sent.id)) if sent is not None else None

    async def ephemeral(self, text: str) -> None:
        await self._send(text, ephemeral=True)

    def working(self) -> AbstractAsyncContextManager[None]:
        return NullWorking()  # the deferred response already shows "thinking..."

    async def permalink(self, source_id: str) -> str | None:
        return await self.adapter.permalink(self.place, source_id)
