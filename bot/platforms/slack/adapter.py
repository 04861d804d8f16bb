"""The Slack adapter: slack-bolt's :class:`~slack_bolt.async_app.AsyncApp` on one side, the
core's events and :class:`~bot.core.events.Replier` on the other. It translates and nothing else.

Inbound, every ``message`` event (one listener for all subtypes, so that each is acked) becomes
a :class:`~bot.core.events.MessageEvent`, an :class:`~bot.core.events.EditEvent`
(``message_changed``) or a :class:`~bot.core.events.DeleteEvent` (``message_deleted``); the
four slash commands and the "Forget this message" shortcut become
:class:`~bot.core.events.CommandEvent` s. A message is
*addressed* when it mentions the bot (``<@BOT>`` in its text), is a DM, or is in a thread the
bot is already part of. One mention arrives twice (``message`` and ``app_mention``): it is
handled from ``message``, and ``app_mention`` only stands in when its ``message`` twin never
comes. Slack's retries (the same ``event_id``) and twins (the same channel and ts) are handled
once.

Outbound, :class:`SlackReplier` posts answers in the thread (starting one on the asking
message), split at ~3,000 characters; shows an :eyes: reaction while the bot works; answers
commands ephemerally through their ``response_url``; links citations with
``chat.getPermalink``. Slack API errors are logged and never stop the listener: a reply that
cannot be posted is retried once when the error is transient, and the asker is told otherwise.

Socket Mode runs when ``SLACK_APP_TOKEN`` is set; otherwise :meth:`SlackAdapter.mount` adds
``POST /slack/events`` to a FastAPI app (the memory server's), verified with
``SLACK_SIGNING_SECRET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast, get_args
from urllib.parse import parse_qs

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    async_default_handlers,
)
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.channel_memory import BOT_REPLIES
from bot.core.events import (
    Author,
    CommandEvent,
    CommandName,
    DeleteEvent,
    EditEvent,
    MessageEvent,
    NullWorking,
    Place,
    pid,
    slack_source_id,
)
from bot.platforms.text import split_text as text_pieces
from memory.lru import Lru, LruSet

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from bot.core.conversation import Conversation
    from bot.settings import Settings

log = logging.getLogger(__name__)

PLATFORM = "slack"
DEFAULT_API_URL = "https://slack.com/api/"
EVENTS_PATH = "/slack/events"
COMMANDS: tuple[str, ...] = get_args(CommandName)
FORGET_SHORTCUT = "forget_message"
WORKING_REACTION = "eyes"

#: Slack accepts 40,000 characters, but long messages render poorly past ~4,000.
CHUNK_CHARS = 3000
#: Message subtypes that are something someone said (the rest is joins, topics...).
SAID = frozenset({None, "bot_message", "thread_broadcast", "file_share", "me_message"})
#: Errors after which posting the same answer again may work.
TRANSIENT = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
REPLY_FAILED = (
    "Sorry, I found an answer but Slack did not let me post it ({error}). Please try again."
)

DAY = 24 * 60 * 60.0
USER_TTL = 60 * 60.0  # display names and admin flags are cached this long
SEEN = 10_000  # event ids and (channel, ts) pairs remembered for deduplication
CACHED = 10_000  # permalinks and threads remembered
MENTION_FALLBACK = 5.0  # seconds an app_mention waits for its message twin
ACK_WAIT = 2.0  # seconds a command waits for its ack to be sent before answering
SHUTDOWN_WAIT = 10.0  # seconds close() lets in-flight events finish


class SlackStartError(RuntimeError):
    """Slack refused to start (bad token, missing secret...); the message says why and
    never contains a token."""


@dataclass(frozen=True)
class SlackUser:
    id: str
    display_name: str
    is_admin: bool = False  # a workspace admin or owner
    is_bot: bool = False


def split_text(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters (see bot.platforms.text)."""
    return text_pieces(text, limit)


def ts_time(ts: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(ts), UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


def _error_of(exc: SlackApiError) -> str:
    response = exc.response
    try:
        error = response.get("error") if isinstance(response.data, dict) else None
    except Exception:
        error = None
    return str(error or f"HTTP {response.status_code}")


def _transient(exc: SlackApiError) -> bool:
    return exc.response.status_code >= 500 or _error_of(exc) in TRANSIENT


class _AckSignals:
    """Commands answer after their ack has gone out: the Socket Mode handler (or the HTTP
    endpoint) signals a trigger id once the ack is sent, and the command waits for it."""

    def __init__(self) -> None:
        self._events: Lru[str, asyncio.Event] = Lru(1000)

    def _event(self, key: str) -> asyncio.Event:
        event = self._events.get(key)
        if event is None:
            event = asyncio.Event()
            self._events.put(key, event)
        return event

    def sent(self, key: str | None) -> None:
        if key:
            self._event(key).set()

    async def wait(self, key: str | None, timeout: float = ACK_WAIT) -> None:  # noqa: ASYNC109
        if not key:
            return
        try:
            await asyncio.wait_for(self._event(key).wait(), timeout)
        except TimeoutError:
            log.debug("no ack signal for %s; answering anyway", key)
        finally:
            self._events.pop(key)


def _trigger_id(payload: Any) -> str | None:
    if isinstance(payload, dict):
        found = payload.get("trigger_id")
        return found if isinstance(found, str) else None
    return None


class _SocketModeHandler(AsyncSocketModeHandler):
    """bolt's Socket Mode handler, telling the adapter when an envelope's ack is sent."""

    def __init__(self, app: AsyncApp, app_token: str, acks: _AckSignals) -> None:
        super().__init__(app, app_token=app_token)
        self._acks = acks

    async def handle(self, client: Any, req: SocketModeRequest) -> None:
        try:
            await super().handle(client, req)
        finally:
            self._acks.sent(_trigger_id(req.payload))


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
            if not _transient(exc):
                await self._tell_failure(exc)
                raise
            log.warning("slack: posting a reply failed (%s); trying once more", _error_of(exc))
            try:
                first = await self._post(pieces[0])
            except SlackApiError as again:
                await self._tell_failure(again)
                raise
        if self.thread_ts:
            self.adapter.remember_thread(self.channel, self.thread_ts)
        for piece in pieces[1:]:
            try:
                await self._post(piece)
            except SlackApiError as exc:
                log.warning("slack: part of a long reply was not posted (%s)", _error_of(exc))
                break
        return slack_source_id(self.channel, first)

    async def _tell_failure(self, exc: SlackApiError) -> None:
        """Best effort: tell the asker that their answer could not be posted."""
        error = _error_of(exc)
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
            log.error("slack: could not tell the asker either: %s", _error_of(notice_exc))
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
                log.error("slack: an ephemeral message was not delivered: %s", _error_of(exc))
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
            log.info("slack: the working reaction failed (%s); no matter", _error_of(exc))
            return False
        except Exception:
            log.info("slack: the working reaction failed; no matter", exc_info=True)
            return False
        return True

    async def permalink(self, source_id: str) -> str | None:
        return await self.adapter.permalink(source_id)


class SlackAdapter:
    """Slack <-> the core. ``start()`` connects (Socket Mode) or prepares (HTTP mode, with
    :meth:`mount`); ``close()`` disconnects and lets in-flight events finish."""

    def __init__(self, conversation: Conversation, settings: Settings) -> None:
        if settings.slack_bot_token is None or not settings.slack_bot_token.get_secret_value():
            raise SlackStartError("SLACK_BOT_TOKEN is not set")
        self.conversation = conversation
        self.settings = settings
        self._token = settings.slack_bot_token.get_secret_value()
        app_token = settings.slack_app_token
        self._app_token = app_token.get_secret_value() if app_token is not None else ""
        secret = settings.slack_signing_secret
        self._signing_secret = secret.get_secret_value() if secret is not None else ""
        base_url = settings.slack_api_url or DEFAULT_API_URL
        handlers = [*async_default_handlers(), AsyncRateLimitErrorRetryHandler(max_retry_count=2)]
        #: The bot's own calls (token included).
        self.client = AsyncWebClient(token=self._token, base_url=base_url, retry_handlers=handlers)
        # bolt's per-request clients copy this one's base URL and retry handlers; the token
        # comes from authorize(), which also tells bolt the bot's ids without a second auth.test.
        app_client = AsyncWebClient(base_url=base_url, retry_handlers=list(handlers))
        self.app = AsyncApp(
            client=app_client,
            signing_secret=self._signing_secret,
            authorize=self._authorizer(),
            logger=_bolt_logger(),
        )
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.team_id: str | None = None
        self._auth_lock = asyncio.Lock()
        self._events: LruSet[str] = LruSet(SEEN)  # event ids handled (Slack's retries repeat them)
        #: (channel, ts) of messages taken in (message + app_mention)
        self._said: LruSet[tuple[str, str]] = LruSet(SEEN)
        self._threads: LruSet[tuple[str, str]] = LruSet(CACHED)  # (channel, thread_ts) joined
        self._permalinks: Lru[str, str] = Lru(CACHED)
        self._users: Lru[str, tuple[float, SlackUser]] = Lru(CACHED)  # id -> (expiry, user)
        self._acks = _AckSignals()
        self._socket: _SocketModeHandler | None = None
        self._purge: asyncio.Task[None] | None = None
        self._busy: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._register()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def socket_mode(self) -> bool:
        return bool(self._app_token)

    async def start(self) -> None:
        """Check the token (auth.test) and connect (Socket Mode) or get ready for
        :meth:`mount` (HTTP mode); then purge expired memory daily while running."""
        if not self.socket_mode and not self._signing_secret:
            raise SlackStartError(
                "set SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)"
            )
        await self._identify()
        if self.socket_mode:
            self._socket = _SocketModeHandler(self.app, self._app_token, self._acks)
            try:
                await self._socket.connect_async()  # type: ignore[no-untyped-call]
            except SlackApiError as exc:
                await self._close_socket()
                raise SlackStartError(
                    f"Slack refused the Socket Mode connection: {_error_of(exc)}"
                    " (check SLACK_APP_TOKEN: an xapp- token with connections:write)"
                ) from None
            log.info("slack: connected in Socket Mode as %s", self.bot_user_id)
        else:
            log.info("slack: HTTP mode; events arrive at POST %s", EVENTS_PATH)
        self._purge = asyncio.create_task(self._purge_daily(), name="slack-purge")

    async def _identify(self) -> None:
        async with self._auth_lock:
            if self.bot_user_id is not None:
                return
            try:
                auth = await self.client.auth_test()
            except SlackApiError as exc:
                raise SlackStartError(
                    f"Slack refused SLACK_BOT_TOKEN: {_error_of(exc)}"
                    " (a bot token starts with xoxb-)"
                ) from None
            self.bot_user_id = str(auth["user_id"])
            self.bot_id = str(auth.get("bot_id") or "") or None
            self.team_id = str(auth.get("team_id") or "") or None

    async def _close_socket(self) -> None:
        if self._socket is not None:
            socket, self._socket = self._socket, None
            try:
                await socket.close_async()  # type: ignore[no-untyped-call]
            except Exception:
                log.warning("slack: closing the Socket Mode connection failed", exc_info=True)

    async def close(self) -> None:
        self._closed.set()
        await self._close_socket()
        if self._purge is not None:
            self._purge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge
            self._purge = None
        busy = [t for t in self._busy if t is not asyncio.current_task()]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=SHUTDOWN_WAIT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)

    async def _purge_daily(self) -> None:
        while True:
            try:
                gone = await self.conversation.purge_expired()
                if gone:
                    log.info("retention: forgot %d expired messages", gone)
            except Exception:
                log.exception("retention: purging expired memory failed")
            await asyncio.sleep(DAY)

    # -- HTTP mode -------------------------------------------------------------------------

    def mount(self, app: FastAPI, path: str = EVENTS_PATH) -> None:
        """Add ``POST path`` to ``app`` for Slack's HTTP mode.

        Slack authenticates with the request signature (SLACK_SIGNING_SECRET), not with the
        memory server's API keys, and calls from its own host name: the endpoint therefore
        sits in front of the server's key and Host checks, and bolt verifies every request
        (bad or stale signatures get 401)."""
        if not self._signing_secret:
            raise SlackStartError("HTTP mode needs SLACK_SIGNING_SECRET")
        from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler

        handler = AsyncSlackRequestHandler(self.app)
        max_body = int(getattr(getattr(app.state, "settings", None), "max_body_bytes", 1 << 22))
        app.add_middleware(
            _SlackEndpoint, path=path, handler=handler, acks=self._acks, max_body=max_body
        )

    # -- bolt wiring -----------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.event("message")(self._on_message)
        app.event("app_mention")(self._on_app_mention)
        for name in COMMANDS:
            app.command(f"/{name}")(self._on_command)
        app.shortcut(FORGET_SHORTCUT)(self._on_forget_shortcut)
        # Anything else the app may receive is acked and dropped (an event no listener
        # matches is never acked in Socket Mode, and Slack would resend it).
        app.event(re.compile(".*"))(self._on_other_event)

    def _authorizer(self) -> Callable[..., Awaitable[AuthorizeResult]]:
        """bolt's ``authorize``: this bot's token and ids (bolt reads the function's argument
        names, so this is a plain function, not a method)."""

        async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            await self._identify()
            return AuthorizeResult(
                enterprise_id=enterprise_id,
                team_id=team_id or self.team_id,
                bot_token=self._token,
                bot_user_id=self.bot_user_id,
                bot_id=self.bot_id,
            )

        return authorize

    @asynccontextmanager
    async def _track(self, what: str) -> AsyncIterator[None]:
        """Record the running listener (close() waits for it) and log, never raise."""
        task = asyncio.current_task()
        if task is not None:
            self._busy.add(task)
        try:
            yield
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("slack: handling %s failed", what)
        finally:
            if task is not None:
                self._busy.discard(task)

    def _first_delivery(self, body: dict[str, Any]) -> bool:
        """False for an event id seen before (a retry of Slack's)."""
        event_id = body.get("event_id")
        if not event_id:
            return True
        if self._events.add(event_id):
            return True
        log.info("slack: event %s delivered again; already handled", event_id)
        return False

    def _org(self, context: AsyncBoltContext, body: dict[str, Any]) -> str:
        team = context.team_id or body.get("team_id") or self.team_id or "unknown"
        return pid(PLATFORM, str(team))

    @property
    def bot_pid(self) -> str | None:
        return pid(PLATFORM, self.bot_user_id) if self.bot_user_id else None

    def _place(
        self,
        org: str,
        channel: str,
        *,
        thread_ts: str | None = None,
        is_dm: bool = False,
        channel_name: str | None = None,
    ) -> Place:
        return Place(
            platform=PLATFORM,
            org_id=org,
            channel_id=pid(PLATFORM, channel),
            thread_id=pid(PLATFORM, thread_ts) if thread_ts else None,
            is_dm=is_dm,
            channel_name=channel_name,
            bot_id=self.bot_pid,
        )

    # -- messages --------------------------------------------------------------------------

    async def _on_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        async with self._track(f"message event {body.get('event_id')}"):
            if not self._first_delivery(body):
                return
            subtype = event.get("subtype")
            if subtype == "message_changed":
                await self._edited(body, event, context)
            elif subtype == "message_deleted":
                await self._deleted(body, event, context)
            elif subtype in SAID:
                await self._said_message(body, event, context)

    async def _on_app_mention(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """The same mention also arrives as a ``message``, which does the work. If that twin
        never comes (the app is not subscribed to the channel's messages), this does."""
        async with self._track(f"app_mention {body.get('event_id')}"):
            if not self._first_delivery(body):
                return
            channel, ts = event.get("channel"), event.get("ts")
            if not channel or not ts or (channel, ts) in self._said:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), MENTION_FALLBACK)
            if (channel, ts) in self._said or self._closed.is_set():
                return
            log.info("slack: app_mention %s:%s came without its message event", channel, ts)
            await self._said_message(body, event, context)

    async def _on_other_event(self) -> None:
        return None

    def mentions_bot(self, text: str) -> bool:
        if not self.bot_user_id:
            return False
        return re.search(rf"<@{re.escape(self.bot_user_id)}(?:\|[^>]*)?>", text) is not None

    async def _said_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        channel, ts = event.get("channel"), event.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            return
        if not self._said.add((channel, ts)):  # the app_mention twin, or a redelivery
            log.debug("slack: message %s:%s taken in already", channel, ts)
            return
        user = event.get("user")
        bot = event.get("bot_id")
        if (self.bot_user_id and user == self.bot_user_id) or (self.bot_id and bot == self.bot_id):
            return  # the bot's own message: the core stored it as its reply
        org = self._org(context, body)
        is_bot = bool(bot) or event.get("subtype") == "bot_message" or user == "USLACKBOT"
        author = await self._author(event, is_bot)
        channel_type = event.get("channel_type") or ("im" if channel.startswith("D") else "")
        is_dm = channel_type == "im"
        given = event.get("thread_ts")
        thread_ts = given if isinstance(given, str) and given != ts else None
        place = self._place(org, channel, thread_ts=thread_ts, is_dm=is_dm)
        raw = str(event.get("text") or "")
        mentioned = self.mentions_bot(raw)
        addressed = not is_bot and (
            mentioned
            or is_dm
            or (thread_ts is not None and await self._bot_in_thread(place, thread_ts))
        )
        text = await self.readable(raw) + _files(event)
        message = MessageEvent(
            place=place,
            author=author,
            text=text,
            source_id=slack_source_id(channel, ts),
            created_at=ts_time(ts),
            addressed=addressed,
            metadata={"mentions_bot": True} if mentioned else {},
        )
        # Answers go in the message's thread, or start one on it (DMs: inline, like a chat).
        reply_in = thread_ts or (None if is_dm else ts)
        replier = SlackReplier(
            self,
            channel,
            user=user if isinstance(user, str) else None,
            thread_ts=reply_in,
            message_ts=ts,
        )
        await self.conversation.handle_message(message, replier)

    async def _author(self, event: dict[str, Any], is_bot: bool) -> Author:
        user = event.get("user")
        if isinstance(user, str) and user:
            found = await self.user(user)
            name = found.display_name
            if is_bot and name == user:
                name = _bot_name(event) or name
            return Author(pid(PLATFORM, user), name, is_bot=is_bot or found.is_bot)
        raw = str(event.get("bot_id") or "unknown")
        return Author(pid(PLATFORM, raw), _bot_name(event) or raw, is_bot=True)

    def remember_thread(self, channel: str, thread_ts: str) -> None:
        self._threads.add((channel, thread_ts))

    async def _bot_in_thread(self, place: Place, thread_ts: str) -> bool:
        """The bot posted in this thread, or its first message mentions or is the bot's."""
        channel = place.channel_id.split(":", 1)[1]
        if (channel, thread_ts) in self._threads:
            return True
        channels = self.conversation.channels
        memory = self.conversation.memory
        try:
            if await memory.count(channels.scope(place, thread=True), BOT_REPLIES):
                self.remember_thread(channel, thread_ts)
                return True
            root = await memory.get_by_source(
                channels.ref(place, slack_source_id(channel, thread_ts))
            )
        except Exception:
            log.exception("memory: cannot tell whether the bot is in thread %s", thread_ts)
            return False
        if root is not None and (
            root.producer == channels.bot_id(place) or root.metadata.get("mentions_bot")
        ):
            self.remember_thread(channel, thread_ts)
            return True
        return False

    async def _edited(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        new = event.get("message") or {}
        old = event.get("previous_message") or {}
        channel, ts = event.get("channel"), new.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            return
        if (self.bot_user_id and new.get("user") == self.bot_user_id) or (
            self.bot_id and new.get("bot_id") == self.bot_id
        ):
            return  # the bot's own chat.update
        org = self._org(context, body)
        thread_ts = new.get("thread_ts")
        in_thread = isinstance(thread_ts, str) and thread_ts != ts
        place = self._place(
            org,
            channel,
            thread_ts=thread_ts if in_thread else None,
            is_dm=event.get("channel_type") == "im",
        )
        source_id = slack_source_id(channel, ts)
        if new.get("subtype") == "tombstone":  # a thread's first message, deleted
            await self.conversation.handle_delete(DeleteEvent(place, (source_id,)))
            return
        text = str(new.get("text") or "")
        if text == str(old.get("text") or ""):
            return  # a link unfurl or another change that is not the text
        editor = (new.get("edited") or {}).get("user") or new.get("user")
        await self.conversation.handle_edit(
            EditEvent(
                place=place,
                source_id=source_id,
                text=await self.readable(text) + _files(new),
                editor_id=pid(PLATFORM, editor) if editor else None,
            )
        )

    async def _deleted(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        channel = event.get("channel")
        ts = event.get("deleted_ts") or (event.get("previous_message") or {}).get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            return
        place = self._place(
            self._org(context, body), channel, is_dm=event.get("channel_type") == "im"
        )
        await self.conversation.handle_delete(DeleteEvent(place, (slack_source_id(channel, ts),)))

    # -- commands --------------------------------------------------------------------------

    async def _on_command(
        self,
        ack: AsyncAck,
        command: dict[str, Any],
        respond: AsyncRespond,
        body: dict[str, Any],
        context: AsyncBoltContext,
    ) -> None:
        await ack()  # first, well within Slack's 3 seconds
        async with self._track(f"command {command.get('command')}"):
            await self._acks.wait(_trigger_id(command))
            name = str(command.get("command", "")).lstrip("/").lower()
            if name not in COMMANDS:
                return
            channel = str(command.get("channel_id", ""))
            user = str(command.get("user_id", ""))
            found = await self.user(user)
            channel_name = str(command.get("channel_name") or "")
            is_dm = channel.startswith("D") or channel_name == "directmessage"
            place = self._place(
                self._org(context, body),
                channel,
                is_dm=is_dm,
                channel_name=_shown_channel_name(channel_name),
            )
            event = CommandEvent(
                place=place,
                author=Author(pid(PLATFORM, user), found.display_name),
                name=cast(CommandName, name),
                text=str(command.get("text") or "").strip(),
                is_channel_admin=self._is_admin(found),
            )
            replier = SlackReplier(self, channel, user=user, respond=respond)
            await self.conversation.handle_command(event, replier)

    async def _on_forget_shortcut(
        self,
        ack: AsyncAck,
        shortcut: dict[str, Any],
        respond: AsyncRespond,
        body: dict[str, Any],
        context: AsyncBoltContext,
    ) -> None:
        await ack()
        async with self._track("the forget_message shortcut"):
            await self._acks.wait(_trigger_id(shortcut))
            channel = str((shortcut.get("channel") or {}).get("id") or "")
            user = str((shortcut.get("user") or {}).get("id") or "")
            message = shortcut.get("message") or {}
            ts = str(message.get("ts") or shortcut.get("message_ts") or "")
            if not channel or not user or not ts:
                return
            found = await self.user(user)
            thread_ts = message.get("thread_ts")
            in_thread = isinstance(thread_ts, str) and thread_ts != ts
            place = self._place(
                self._org(context, body),
                channel,
                thread_ts=thread_ts if in_thread else None,
                is_dm=channel.startswith("D"),
                channel_name=_shown_channel_name(
                    str((shortcut.get("channel") or {}).get("name") or "")
                ),
            )
            event = CommandEvent(
                place=place,
                author=Author(pid(PLATFORM, user), found.display_name),
                name="forget",
                text="",
                is_channel_admin=self._is_admin(found),
                target_source_id=slack_source_id(channel, ts),
            )
            replier = SlackReplier(self, channel, user=user, respond=respond)
            await self.conversation.handle_command(event, replier)

    def _is_admin(self, user: SlackUser) -> bool:
        return (
            user.is_admin
            or self.settings.is_admin(pid(PLATFORM, user.id))
            or self.settings.is_admin(user.id)
        )

    # -- Slack lookups (cached) ------------------------------------------------------------

    async def user(self, user_id: str) -> SlackUser:
        """Display name and admin flags from users.info, cached; on failure, the raw id."""
        now = time.monotonic()
        cached = self._users.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            info = (await self.client.users_info(user=user_id))["user"]
        except SlackApiError as exc:
            log.warning("slack: users.info %s failed: %s", user_id, _error_of(exc))
            return SlackUser(user_id, user_id)
        except Exception as exc:  # the network: the message is stored all the same
            log.warning("slack: users.info %s failed: %r", user_id, exc)
            return SlackUser(user_id, user_id)
        profile = info.get("profile") or {}
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or info.get("real_name")
            or info.get("name")
            or user_id
        )
        found = SlackUser(
            id=user_id,
            display_name=str(name),
            is_admin=bool(info.get("is_admin") or info.get("is_owner")),
            is_bot=bool(info.get("is_bot")),
        )
        self._users.put(user_id, (now + USER_TTL, found))
        return found

    async def permalink(self, source_id: str) -> str | None:
        """chat.getPermalink for ``"<channel>:<ts>"``, cached; None when Slack has none."""
        channel, sep, ts = source_id.partition(":")
        if not sep or not channel or not ts:
            return None
        cached = self._permalinks.get(source_id)
        if cached is not None:
            return cached
        try:
            response = await self.client.chat_getPermalink(channel=channel, message_ts=ts)
        except SlackApiError as exc:
            log.info("slack: no permalink for %s (%s)", source_id, _error_of(exc))
            return None
        except Exception as exc:
            log.info("slack: no permalink for %s (%r)", source_id, exc)
            return None
        link = response.get("permalink")
        if not isinstance(link, str) or not link:
            return None
        self._permalinks.put(source_id, link)
        return link

    async def readable(self, text: str) -> str:
        """Slack's markup as people read it: ``<@U1>`` -> ``@Alice``, ``<#C1|x>`` -> ``#x``,
        ``<url|label>`` -> ``label (url)``, and ``&amp;`` ``&lt;`` ``&gt;`` unescaped."""
        users = set(_USER_REF.findall(text))
        names = {u: (await self.user(u)).display_name for u in users}

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

        return html.unescape(_MARKUP.sub(one, text)) if "<" in text else html.unescape(text)


class _QuietBolt(logging.Filter):
    """bolt warns that SLACK_BOT_TOKEN is unused whenever it is in the environment and a
    client is given, which is how this adapter works; that warning only confuses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("As you gave `client` as well")


def _bolt_logger() -> logging.Logger:
    logger = logging.getLogger("slack_bolt.channelmind")
    if not any(isinstance(f, _QuietBolt) for f in logger.filters):
        logger.addFilter(_QuietBolt())
    return logger


_MARKUP = re.compile(r"<([^<>]+)>")
_USER_REF = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


def _bot_name(event: dict[str, Any]) -> str | None:
    profile = event.get("bot_profile") or {}
    name = profile.get("name") or event.get("username")
    return str(name) if name else None


def _files(event: dict[str, Any]) -> str:
    names = [
        str(f.get("title") or f.get("name"))
        for f in event.get("files") or []
        if isinstance(f, dict) and (f.get("title") or f.get("name"))
    ]
    return "".join(f" [file: {n}]" for n in names)


def _shown_channel_name(name: str) -> str | None:
    """A slash command's ``channel_name``, unless it is a placeholder for a DM or group."""
    if not name or name in ("directmessage", "privategroup") or name.startswith("mpdm-"):
        return None
    return name


class _SlackEndpoint:
    """Pure ASGI middleware that answers ``POST <path>`` with bolt and passes everything else
    on. It sits outside the memory server's API-key and Host checks: Slack's requests carry
    a signature instead, which bolt verifies (401 when it is wrong or stale)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str,
        handler: Any,
        acks: _AckSignals,
        max_body: int,
    ) -> None:
        self.app = app
        self.path = path
        self.handler = handler
        self.acks = acks
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse

        if scope["method"] != "POST":
            await PlainTextResponse("Method Not Allowed", 405, {"Allow": "POST"})(
                scope, receive, send
            )
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > self.max_body:
                too_large = JSONResponse({"error": "request body too large"}, 413)
                await too_large(scope, receive, send)
                return
        data = bytes(body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": data, "more_body": False}

        try:
            response = await self.handler.handle(Request(scope, replay))
        except Exception:
            log.exception("slack: handling a request to %s failed", self.path)
            response = JSONResponse({"error": "internal error"}, 500)
        await response(scope, receive, send)
        if response.status_code == 200:
            self.acks.sent(_form_trigger_id(data))


def _form_trigger_id(body: bytes) -> str | None:
    """The trigger id of a form-encoded command or interactive payload (HTTP mode)."""
    try:
        form = parse_qs(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if "payload" in form:
        try:
            return _trigger_id(json.loads(form["payload"][0]))
        except ValueError:
            return None
    found = form.get("trigger_id")
    return found[0] if found else None
