"""A Slack channel's history for the backfill (:class:`~bot.importers.backfill.Backfill`).

``users.conversations`` lists the public and private channels the bot is in;
``conversations.history`` reads a channel newest first, 200 messages a page, with
``conversations.replies`` for each thread; every message is mapped by the live adapter's
:class:`~bot.platforms.slack.mapping.SlackMapping`. Requests are paced
(``CHANNELMIND_BACKFILL_PACE``), and a 429 waits its ``Retry-After`` and tries again, for as
long as it takes. DMs are not backfilled: the bot saw every DM it is in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import async_default_handlers
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.core.backfill import BackfillState
from bot.core.events import MessageEvent, Place, raw_id
from bot.importers.backfill import Job, Page

from .format import PLATFORM
from .mapping import skip_reason

if TYPE_CHECKING:
    from .adapter import SlackAdapter

log = logging.getLogger(__name__)

PAGE = 200
TYPES = "public_channel,private_channel"


def ts_of(when: datetime) -> str:
    return f"{when.timestamp():.6f}"


class SlackHistory:
    platform = PLATFORM

    def __init__(self, adapter: SlackAdapter, client: AsyncWebClient, pace: float) -> None:
        self.adapter = adapter
        #: the backfill's own client: 429s are handled here, patiently, not by the SDK
        self.client = client
        self.pace = pace
        self._last = 0.0

    @classmethod
    def of(cls, adapter: SlackAdapter) -> SlackHistory:
        client = AsyncWebClient(
            token=adapter.client.token,
            base_url=adapter.base_url,
            retry_handlers=async_default_handlers(),
        )
        return cls(adapter, client, adapter.settings.backfill_pace)

    def position(self, when: datetime) -> str:
        return ts_of(when)

    def job(self, channel: str, name: str | None = None, *, force: bool = False) -> Job:
        place = self.adapter.mapping.place(self.adapter.org, channel, channel_name=name)
        return Job(place, channel, f"#{name or channel}", force)

    def job_for(self, place: Place) -> Job:
        return self.job(raw_id(place.channel_id), place.channel_name, force=True)

    async def _call(
        self, method: Callable[..., Awaitable[AsyncSlackResponse]], **kwargs: Any
    ) -> AsyncSlackResponse:
        while True:
            wait = self._last + self.pace - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last = time.monotonic()
            try:
                return await method(**kwargs)
            except SlackApiError as exc:
                if exc.response.status_code != 429:
                    raise
                retry = float(exc.response.headers.get("Retry-After", 1) or 1)
                log.info("slack backfill: rate limited; waiting %.0f s as Slack asks", retry)
                await asyncio.sleep(retry)

    async def channels(self) -> list[Job]:
        await self.adapter.identified()
        jobs: list[Job] = []
        cursor = None
        while True:
            response = await self._call(
                self.client.users_conversations,
                types=TYPES,
                exclude_archived=True,
                limit=PAGE,
                cursor=cursor,
            )
            for channel in response.get("channels") or []:
                if isinstance(channel, dict) and channel.get("id"):
                    jobs.append(self.job(str(channel["id"]), channel.get("name")))
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return jobs

    async def pages(self, job: Job, state: BackfillState) -> AsyncIterator[Page]:
        channel = job.key
        oldest = ts_of(datetime.fromisoformat(state.since)) if state.since else "0"
        latest = state.cursor or state.until or ts_of(datetime.now().astimezone())
        until = state.until
        while True:
            response = await self._call(
                self.client.conversations_history,
                channel=channel,
                latest=latest,
                oldest=oldest,
                inclusive=False,
                limit=PAGE,
            )
            messages = [m for m in response.get("messages") or [] if isinstance(m, dict)]
            page = Page([], None, Counter())
            for message in messages:
                await self._take(message, job, page)
                if message.get("reply_count") and message.get("thread_ts") == message.get("ts"):
                    await self._thread(channel, str(message["ts"]), job, page, until)
            stamps = [str(m["ts"]) for m in messages if isinstance(m.get("ts"), str)]
            if stamps:
                latest = min(stamps, key=float)
            page.cursor = latest
            yield page
            if not messages or not response.get("has_more"):
                return

    async def _thread(
        self, channel: str, parent: str, job: Job, page: Page, until: str | None
    ) -> None:
        cursor = None
        while True:
            response = await self._call(
                self.client.conversations_replies,
                channel=channel,
                ts=parent,
                limit=PAGE,
                cursor=cursor,
            )
            for reply in response.get("messages") or []:
                if not isinstance(reply, dict) or reply.get("ts") == parent:
                    continue
                if until is not None and float(reply.get("ts") or 0) >= float(until):
                    continue  # newer than the backfill: it arrived live
                await self._take(reply, job, page)
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return

    async def _take(self, message: dict[str, Any], job: Job, page: Page) -> None:
        reason = skip_reason(message)
        if reason is not None:
            page.skipped[reason] += 1
            return
        event: MessageEvent = await self.adapter.mapping.message_event(
            message, job.place.org_id, job.key, dm=False
        )
        page.events.append(event)
