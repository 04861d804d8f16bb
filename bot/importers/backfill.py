"""Live backfill: the history of the channels the bot is in, read through the platform's API.

A platform offers a :class:`History` (``bot.platforms.slack.history``,
``bot.platforms.discord.history``): the channels the bot can read, and a channel's messages,
newest first, a page at a time. :class:`Backfill` runs it politely: one channel at a time in a
background task of its own (live events never wait for it), back to
``CHANNELMIND_BACKFILL_DAYS``, each page stored through :class:`~bot.importers.sink.Sink` (the
live mapping and privacy rules) and followed by the channel's cursor in memory settings
(:mod:`bot.core.backfill`), so a restart resumes where it stopped. A channel forgotten with
``/forget channel`` is skipped unless an admin asked again (``/memory backfill``); a channel
done is not read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from bot.core.backfill import BackfillState, read_state, write_state
from bot.core.channel_memory import ChannelMemory
from bot.core.events import MessageEvent, Place
from memory.model import utcnow

from .sink import Sink

log = logging.getLogger(__name__)

LOG_EVERY = 1000  # messages between two progress lines of one channel


@dataclass(frozen=True)
class Job:
    """A channel (or a Discord thread) to read."""

    place: Place  # where its messages are stored
    key: str  # the platform's id of what is read (a channel, a thread)
    label: str  # for logs: "#general"
    force: bool = False  # an admin asked (/memory backfill): read even if done or forgotten

    @property
    def subject(self) -> str:
        """Whose backfill record this is: the thread's for a thread, else the channel's."""
        return self.place.thread_id or self.place.channel_id


@dataclass
class Page:
    events: list[MessageEvent]
    cursor: str | None  # the oldest position read so far (resume from here)
    skipped: Counter[str] = field(default_factory=Counter)


class History(Protocol):
    platform: str

    async def channels(self) -> list[Job]:
        """The channels (and threads) the bot is in and may read."""
        ...

    def position(self, when: datetime) -> str:
        """The platform's position of a moment (a Slack ts, a Discord snowflake)."""
        ...

    def pages(self, job: Job, state: BackfillState) -> AsyncIterator[Page]:
        """The job's messages newer than ``state.since`` and older than ``state.cursor`` (or
        ``state.until``), newest first, a page at a time."""
        ...


@dataclass
class Progress:
    """What the backfill has done since the bot started (for logs, /memory and metrics)."""

    queued: int = 0
    done: int = 0
    stored: int = 0
    present: int = 0
    skipped: int = 0
    current: str | None = None
    listed: bool = False  # the channels the bot is in are known (and queued)

    @property
    def idle(self) -> bool:
        """Nothing queued or running, once the channels are known."""
        return self.listed and self.queued == 0


class Backfill:
    def __init__(self, history: History, channels: ChannelMemory) -> None:
        self.history = history
        self.channels = channels
        self.settings = channels.settings
        self.progress = Progress()
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._pending: set[str] = set()  # subjects queued or running
        self._task: asyncio.Task[None] | None = None

    @property
    def on(self) -> bool:
        return self.settings.backfill_days > 0

    async def start(self) -> None:
        """List the channels the bot is in and read those not read yet, in the background."""
        if self.on and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"backfill-{self.history.platform}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def enqueue(self, job: Job) -> bool:
        """Read this channel's history when its turn comes (at once if nothing else runs)."""
        if not self.on:
            return False
        if job.subject in self._pending and not job.force:
            return True
        self._pending.add(job.subject)
        self.progress.queued += 1
        self._queue.put_nowait(job)
        return True

    async def _run(self) -> None:
        try:
            jobs = await self.history.channels()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("backfill %s: listing the channels failed", self.history.platform)
            jobs = []
        for job in jobs:
            self.enqueue(job)
        self.progress.listed = True
        while True:
            job = await self._queue.get()
            self.progress.current = job.label
            try:
                await self.run(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "backfill %s: %s stopped; it resumes at the next start",
                    self.history.platform,
                    job.label,
                )
            finally:
                self._pending.discard(job.subject)
                self.progress.queued -= 1
                self.progress.current = None

    async def _state(self, job: Job) -> BackfillState | None:
        """The state to continue from, or None when the job is not to be read."""
        memory, project, org = self.channels.memory, self.channels.project, job.place.org_id
        if job.place.thread_id is not None and not job.force:  # a thread follows its channel
            parent = await read_state(memory, project, org, job.place.channel_id)
            if parent is not None and parent.status == "forgotten":
                return None
        state = await read_state(memory, project, org, job.subject)
        if state is not None and not job.force and state.status in ("done", "forgotten"):
            return None
        if state is None or state.status != "running":
            now = utcnow()
            since = now - timedelta(days=self.settings.backfill_days)
            state = BackfillState(
                status="running", until=self.history.position(now), since=since.isoformat()
            )
            await write_state(memory, project, org, job.subject, state)
        return state

    async def run(self, job: Job) -> None:
        """Read one channel's history (resuming from its cursor) and store it."""
        state = await self._state(job)
        if state is None:
            return
        memory, project, org = self.channels.memory, self.channels.project, job.place.org_id
        platform = self.history.platform
        since = datetime.fromisoformat(state.since) if state.since else None
        back = (state.since or "")[:10]
        log.info("backfill %s: reading %s back to %s", platform, job.label, back)
        logged = state.stored
        async for page in self.history.pages(job, state):
            sink = Sink(self.channels, not_before=since)
            for reason, n in page.skipped.items():
                sink.skip(reason, n)
            for event in page.events:
                await sink.put(event)
            await sink.flush()
            tally = sink.tally
            skipped = sum(tally.skipped.values()) + tally.opted_out
            state.stored += tally.stored
            state.present += tally.present
            state.skipped += skipped
            state.cursor = page.cursor or state.cursor
            self.progress.stored += tally.stored
            self.progress.present += tally.present
            self.progress.skipped += skipped
            await write_state(memory, project, org, job.subject, state)
            if state.stored - logged >= LOG_EVERY:
                logged = state.stored
                log.info("backfill %s: %s, %d messages so far", platform, job.label, state.stored)
        state.status = "done"
        await write_state(memory, project, org, job.subject, state)
        self.progress.done += 1
        log.info(
            "backfill %s: %s done: %d stored, %d already present, %d skipped",
            platform,
            job.label,
            state.stored,
            state.present,
            state.skipped,
        )
