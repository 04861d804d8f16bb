"""A Discord channel's history for the backfill (:class:`~bot.importers.backfill.Backfill`).

The channels are the servers' text channels the bot may read (View Channel and Read Message
History), and their threads (active ones, and archived public ones); each is read newest first
with discord.py's ``history()`` (100 messages a request; discord.py keeps to Discord's rate
limits and waits out a 429's ``retry_after``), paced by ``CHANNELMIND_BACKFILL_PACE`` between
pages, and mapped by the live adapter's :meth:`~.adapter.DiscordAdapter.message_event`. DMs are
not backfilled: the bot saw every DM it is in.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import discord
from discord.utils import time_snowflake

from bot.core.backfill import BackfillState
from bot.core.events import Place, raw_id
from bot.importers.backfill import Job, Page

from . import mapping
from .format import PLATFORM

if TYPE_CHECKING:
    from .adapter import DiscordAdapter

log = logging.getLogger(__name__)

PAGE = 100


class DiscordHistory:
    platform = PLATFORM

    def __init__(self, adapter: DiscordAdapter) -> None:
        self.adapter = adapter

    def position(self, when: datetime) -> str:
        return str(time_snowflake(when))

    @staticmethod
    def readable(channel: Any) -> bool:
        me = channel.guild.me
        if me is None:
            return False
        perms = channel.permissions_for(me)
        return bool(perms.read_messages and perms.read_message_history)

    def job(self, channel: discord.TextChannel | discord.Thread, *, force: bool = False) -> Job:
        bot = self.adapter.bot_pid
        if isinstance(channel, discord.Thread):
            parent = channel.parent
            place = mapping.place(
                channel.guild.id,
                channel.parent_id,
                thread_id=channel.id,
                name=parent.name if parent is not None else channel.name,
                bot_id=bot,
            )
            label = f"#{parent.name if parent is not None else channel.parent_id} > {channel.name}"
        else:
            place = mapping.place(channel.guild.id, channel.id, name=channel.name, bot_id=bot)
            label = f"#{channel.name}"
        return Job(place, str(channel.id), label, force)

    def job_for(self, place: Place) -> Job | None:
        found = self.adapter.client.get_channel(int(raw_id(place.channel_id)))
        if isinstance(found, discord.TextChannel | discord.Thread):
            return self.job(found, force=True)
        return None

    async def channels(self) -> list[Job]:
        await self.adapter.wait_until_ready()
        jobs: list[Job] = []
        for guild in self.adapter.client.guilds:
            jobs += await self.guild_jobs(guild)
        return jobs

    async def guild_jobs(self, guild: discord.Guild) -> list[Job]:
        jobs: list[Job] = []
        for channel in guild.text_channels:
            if not self.readable(channel):
                continue
            jobs.append(self.job(channel))
            threads = {t.id: t for t in guild.threads if t.parent_id == channel.id}
            try:
                async for thread in channel.archived_threads(limit=None):
                    threads.setdefault(thread.id, thread)
            except discord.HTTPException as exc:
                log.info("discord backfill: archived threads of #%s: %s", channel.name, exc)
            jobs += [self.job(t) for t in threads.values()]
        return jobs

    async def pages(self, job: Job, state: BackfillState) -> AsyncIterator[Page]:
        client = self.adapter.client
        channel = client.get_channel(int(job.key))
        if channel is None:
            channel = await client.fetch_channel(int(job.key))
        if not isinstance(channel, discord.TextChannel | discord.Thread):
            return
        before = discord.Object(int(state.cursor or state.until or self.position(datetime.now())))
        after = (
            discord.Object(int(self.position(datetime.fromisoformat(state.since))))
            if state.since
            else None
        )
        page = Page([], None, Counter())
        async for message in channel.history(
            limit=None, before=before, after=after, oldest_first=False
        ):
            event = await self.adapter.message_event(message)
            if event is None:
                page.skipped[message.type.name] += 1
            else:
                page.events.append(event)
            page.cursor = str(message.id)
            if len(page.events) + sum(page.skipped.values()) >= PAGE:
                yield page
                page = Page([], None, Counter())
                await asyncio.sleep(self.adapter.settings.backfill_pace)
        yield page
