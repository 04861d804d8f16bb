"""Answers on Slack: :class:`SlackReplier` posts in the thread (starting one on the asking
message; inline in DMs), split at ~3,000 characters; shows an :eyes: reaction while the bot
works; answers commands ephemerally through their ``response_url``; links citations with
``chat.getPermalink``. Slack API errors are logged and never stop the listener: a reply that
cannot be posted is retried once when the error is transient, and the asker is told otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.events import NullWorking
from bot.platforms.text import split_text as text_pieces

from .format import slack_source_id

if TYPE_CHECKING:
    from .adapter import SlackAdapter

log = logging.getLogger(__name__)

WORKING_REACTION = "eyes"
#: Slack accepts 40,000 characters, but long messages render poorly past ~4,000.
CHUNK_CHARS = 3000
#: Errors after which posting the same answer again may work.
TRANSIENT = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
REPLY_FAILED = (
    "Sorry, I found an answer but Slack did not let me post it ({error}). Please try again."
)


def split_text(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut where people read breaks."""
    return text_pieces(text, limit)


def error_of(exc: SlackApiError) -> str:
    response = exc.response
    try:
        error = response.get("error") if isinstance(response.data, dict) else None
    except Exception:
        error = None
    return str(error or f"HTTP {response.status_code}")


def transient(exc: SlackApiError) -> bool:
    return exc.response.status_code >= 500 or error_of(exc) in TRANSIENT


class SlackReplier:
    """The core's :class:`~bot.core.events.Replier` for one Slack event."""

    def __init__(
        self,
        adapter: SlackAdapter,
        channel: str,
        *,
        user: str | None,
        thread_ts: str | None = None,
        message_ts: str | None = None,
        respond: AsyncRespond | None = None,
    ) -> None:
        self.adapter = adapter
        self.channel = channel
        self.user = user
        self.thread_ts = thread_ts  # where replies go (None: the channel itself)
        self.message_ts = message_ts  # the asking message (for the :eyes: reaction)
        self.respond = respond  # a command's response_url

    @property
    def client(self) -> AsyncWebClient:
        return self.adapter.client

    async def _post(self, text: str) -> str:
        kwargs: dict[str, Any] = {"channel": self.channel, "text": text}
        if self.thread_ts:
            kwargs["thread_ts"] = self.thread_ts
        response = await self.client.chat_postMessage(
            **kwargs, unfurl_links=False, unfurl_media=False
        )
        return str(response["ts"])

    async def reply(self, text: str) -> str | None:
        pieces = split_text(text)
        if not pieces:
            return None
        try:
            first = await self._post(pieces[0])
        except SlackApiError as exc:
            if not transient(exc):
                await self._tell_failure(exc)
                raise
            log.warning("slack: posting a reply failed (%s); trying once more", error_of(exc))
            try:
                first = await self._post(pieces[0])
            except SlackApiError as again:
                await self._tell_failure(again)
                raise
        for piece in pieces[1:]:
            try:
                await self._post(piece)
            except SlackApiError as exc:
                log.warning("slack: part of a long reply was not posted (%s)", error_of(exc))
                break
        return slack_source_id(self.channel, first)

    async def _tell_failure(self, exc: SlackApiError) -> None:
        """Best effort: tell the asker that their answer could not be posted."""
        error = error_of(exc)
        log.error("slack: could not post a reply in %s: %s", self.channel, error)
        notice = REPLY_FAILED.format(error=error)
        try:
            if self.user:
                kwargs: dict[str, Any] = {"channel": self.channel, "user": self.user}
                if self.thread_ts:
                    kwargs["thread_ts"] = self.thread_ts
                await self.client.chat_postEphemeral(**kwargs, text=notice)
            else:
                await self._post(notice)
        except SlackApiError as notice_exc:
            log.error("slack: could not tell the asker either: %s", error_of(notice_exc))
        except Exception as notice_exc:
            log.error("slack: could not tell the asker either: %r", notice_exc)

    async def ephemeral(self, text: str) -> None:
        for piece in split_text(text):
            if self.respond is not None and await self._respond(piece):
                continue
            if not self.user:
                log.warning("slack: no one to send an ephemeral message to in %s", self.channel)
                return
            kwargs: dict[str, Any] = {"channel": self.channel, "user": self.user, "text": piece}
            if self.thread_ts:
                kwargs["thread_ts"] = self.thread_ts
            try:
                await self.client.chat_postEphemeral(**kwargs)
            except SlackApiError as exc:
                log.error("slack: an ephemeral message was not delivered: %s", error_of(exc))
                return
            except Exception as exc:
                log.error("slack: an ephemeral message was not delivered: %r", exc)
                return

    async def _respond(self, text: str) -> bool:
        assert self.respond is not None
        try:
            result = await self.respond(text=text, response_type="ephemeral")
        except Exception as exc:
            log.warning("slack: response_url failed (%s); using chat.postEphemeral", exc)
            return False
        status = getattr(result, "status_code", 200)
        if status != 200:
            log.warning("slack: response_url answered %s; using chat.postEphemeral", status)
            return False
        return True

    def working(self) -> AbstractAsyncContextManager[None]:
        if not self.message_ts:
            return NullWorking()
        return self._reacting(self.message_ts)

    @asynccontextmanager
    async def _reacting(self, ts: str) -> AsyncIterator[None]:
        added = await self._reaction(self.client.reactions_add, ts)
        try:
            yield
        finally:
            if added:
                await self._reaction(self.client.reactions_remove, ts)

    async def _reaction(self, call: Callable[..., Awaitable[Any]], ts: str) -> bool:
        try:
            await call(channel=self.channel, timestamp=ts, name=WORKING_REACTION)
        except SlackApiError as exc:
            log.info("slack: the working reaction failed (%s); no matter", error_of(exc))
            return False
        except Exception:
            log.info("slack: the working reaction failed; no matter", exc_info=True)
            return False
        return True

    async def permalink(self, source_id: str) -> str | None:
        return await self.adapter.permalink(source_id)
