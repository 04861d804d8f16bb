"""The Slack adapter: slack-bolt's :class:`~slack_bolt.async_app.AsyncApp` on one side, the
core's events on the other. It translates and nothing else.

Inbound, every ``message`` event (one listener for all subtypes, so that each is acked) becomes
a :class:`~bot.core.events.MessageEvent`, an :class:`~bot.core.events.EditEvent`
(``message_changed``) or a :class:`~bot.core.events.DeleteEvent` (``message_deleted``); the
four slash commands and the "Forget this message" shortcut become
:class:`~bot.core.events.CommandEvent` s. The adapter reports what Slack says (a mention of the
bot, ``<@BOT>``; an ``im`` channel; a thread; a workspace admin); whether the bot answers,
who may forget a channel and how a DM is scoped are the core's rules. One mention arrives
twice (``message`` and ``app_mention``): it is handled from ``message``, and ``app_mention``
only stands in when its ``message`` twin never comes. Slack's retries (the same ``event_id``)
and twins (the same channel and ts) are handled once.

Outbound, :class:`~bot.platforms.slack.replier.SlackReplier` posts answers;
:mod:`bot.platforms.slack.transport` takes Slack's requests in Socket Mode
(``SLACK_APP_TOKEN``) or, with :meth:`SlackAdapter.mount`, at ``POST /slack/events`` of a
FastAPI app (the memory server's), verified with ``SLACK_SIGNING_SECRET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast, get_args

import aiohttp
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    async_default_handlers,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.events import (
    Author,
    CommandEvent,
    CommandName,
    DeleteEvent,
    EditEvent,
    Place,
    pid,
)
from bot.platforms.base import Core, StartupError
from memory.lru import Lru, LruSet

from .format import PLATFORM, slack_source_id
from .history import SlackHistory
from .mapping import SAID, SlackMapping, SlackUser, is_dm, skip_reason, slack_user, thread_of
from .replier import SlackReplier, error_of
from .transport import AckSignals, SlackEndpoint, SocketModeHandler, trigger_id

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bot.importers.backfill import Job
    from bot.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
#: What a Slack call raises when Slack cannot be reached at all (no network, a wrong URL).
UNREACHABLE = (aiohttp.ClientError, OSError, TimeoutError)
EVENTS_PATH = "/slack/events"
COMMANDS: tuple[str, ...] = get_args(CommandName)
FORGET_SHORTCUT = "forget_message"

USER_TTL = 60 * 60.0  # display names and admin flags are cached this long
SEEN = 10_000  # event ids and (channel, ts) pairs remembered for deduplication
CACHED = 10_000  # permalinks and users remembered
MENTION_FALLBACK = 5.0  # seconds an app_mention waits for its message twin
SHUTDOWN_WAIT = 10.0  # seconds close() lets in-flight events finish


class SlackAdapter:
    """Slack <-> the core. ``start()`` connects (Socket Mode) or prepares (HTTP mode, with
    :meth:`mount`); ``close()`` disconnects and lets in-flight events finish."""

    def __init__(self, conversation: Core, settings: Settings) -> None:
        if settings.slack_bot_token is None or not settings.slack_bot_token.get_secret_value():
            raise StartupError("SLACK_BOT_TOKEN is not set")
        self.conversation = conversation
        self.settings = settings
        self._token = settings.slack_bot_token.get_secret_value()
        app_token = settings.slack_app_token
        self._app_token = app_token.get_secret_value() if app_token is not None else ""
        secret = settings.slack_signing_secret
        self._signing_secret = secret.get_secret_value() if secret is not None else ""
        self.base_url = base_url = settings.slack_api_url or DEFAULT_API_URL
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
        self._permalinks: Lru[str, str] = Lru(CACHED)
        self._users: Lru[str, tuple[float, SlackUser]] = Lru(CACHED)  # id -> (expiry, user)
        self._acks = AckSignals()
        #: Slack messages -> core events (shared with the backfill; names from users.info)
        self.mapping = SlackMapping(self.user, bot_name=settings.bot_name)
        #: the channels' history, for the backfill; ``joined`` (set by the app) hears of a
        #: channel the bot was added to
        self.history = SlackHistory.of(self)
        self.joined: Callable[[Job], object] | None = None
        self._socket: SocketModeHandler | None = None
        self._busy: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._register()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def socket_mode(self) -> bool:
        return bool(self._app_token)

    async def start(self) -> None:
        """Check the token (auth.test) and connect (Socket Mode) or get ready for
        :meth:`mount` (HTTP mode)."""
        if not self.socket_mode and not self._signing_secret:
            raise StartupError(
                "set SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)"
            )
        await self._identify()
        if self.socket_mode:
            self._socket = SocketModeHandler(self.app, self._app_token, self._acks)
            try:
                await self._socket.connect_async()  # type: ignore[no-untyped-call]
            except SlackApiError as exc:
                await self._close_socket()
                raise StartupError(
                    f"the Socket Mode connection was refused: {error_of(exc)}"
                    " (check SLACK_APP_TOKEN: an xapp- token with connections:write)"
                ) from None
            except UNREACHABLE as exc:
                await self._close_socket()
                raise self._unreachable(exc) from None
            log.info("slack: connected in Socket Mode as %s", self.bot_user_id)
        else:
            log.info("slack: HTTP mode; events arrive at POST %s", EVENTS_PATH)

    async def identified(self) -> None:
        """Once the bot's own ids and workspace are known (auth.test)."""
        await self._identify()

    async def _identify(self) -> None:
        async with self._auth_lock:
            if self.bot_user_id is not None:
                return
            try:
                auth = await self.client.auth_test()
            except SlackApiError as exc:
                raise StartupError(
                    f"SLACK_BOT_TOKEN was refused: {error_of(exc)} (a bot token starts with xoxb-)"
                ) from None
            except UNREACHABLE as exc:
                raise self._unreachable(exc) from None
            self.bot_user_id = str(auth["user_id"])
            self.bot_id = str(auth.get("bot_id") or "") or None
            self.team_id = str(auth.get("team_id") or "") or None
            self.mapping.bot_user_id, self.mapping.bot_id = self.bot_user_id, self.bot_id

    def _unreachable(self, exc: BaseException) -> StartupError:
        reason = str(exc) or type(exc).__name__
        return StartupError(
            f"cannot reach {self.base_url} ({reason}); check the network, or"
            " SLACK_API_URL if it is set"
        )

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
        busy = [t for t in self._busy if t is not asyncio.current_task()]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=SHUTDOWN_WAIT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)

    # -- HTTP mode -------------------------------------------------------------------------

    def mount(self, app: FastAPI, path: str = EVENTS_PATH) -> None:
        """Add ``POST path`` to ``app`` for Slack's HTTP mode.

        Slack authenticates with the request signature (SLACK_SIGNING_SECRET), not with the
        memory server's API keys, and calls from its own host name: the endpoint therefore
        sits in front of the server's key and Host checks, and bolt verifies every request
        (bad or stale signatures get 401)."""
        if not self._signing_secret:
            raise StartupError("HTTP mode needs SLACK_SIGNING_SECRET")
        from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler

        handler = AsyncSlackRequestHandler(self.app)
        max_body = int(getattr(getattr(app.state, "settings", None), "max_body_bytes", 1 << 22))
        app.add_middleware(
            SlackEndpoint, path=path, handler=handler, acks=self._acks, max_body=max_body
        )

    # -- bolt wiring -----------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.event("message")(self._on_message)
        app.event("app_mention")(self._on_app_mention)
        app.event("member_joined_channel")(self._on_member_joined)
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
    def org(self) -> str:
        """The workspace's org (known once the token is checked)."""
        return pid(PLATFORM, self.team_id or "unknown")

    @property
    def bot_pid(self) -> str | None:
        return self.mapping.bot_pid

    def _place(
        self,
        org: str,
        channel: str,
        *,
        thread_ts: str | None = None,
        is_dm: bool = False,
        channel_name: str | None = None,
    ) -> Place:
        return self.mapping.place(
            org, channel, thread_ts=thread_ts, dm=is_dm, channel_name=channel_name
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

    async def _on_member_joined(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """The bot was added to a channel: its history is read (the backfill decides)."""
        async with self._track(f"member_joined_channel {body.get('event_id')}"):
            channel = event.get("channel")
            if event.get("user") != self.bot_user_id or not isinstance(channel, str):
                return
            log.info("slack: added to %s", channel)
            if self.joined is not None:
                self.joined(self.history.job(channel))

    def mentions_bot(self, text: str) -> bool:
        return self.mapping.mentions_bot(text)

    async def _said_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        channel, ts = event.get("channel"), event.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            return
        if not self._said.add((channel, ts)):  # the app_mention twin, or a redelivery
            log.debug("slack: message %s:%s taken in already", channel, ts)
            return
        if self.mapping.is_own(event):
            return  # the bot's own message: the core stored it as its reply
        if skip_reason(event) is not None:
            return
        dm = is_dm(channel, event.get("channel_type"))
        message = await self.mapping.message_event(event, self._org(context, body), channel, dm=dm)
        user = event.get("user")
        # Answers go in the message's thread, or start one on it (DMs: inline, like a chat).
        reply_in = thread_of(event) or (None if dm else ts)
        replier = SlackReplier(
            self,
            channel,
            user=user if isinstance(user, str) else None,
            thread_ts=reply_in,
            message_ts=ts,
        )
        await self.conversation.handle_message(message, replier)

    async def _edited(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        new = event.get("message") or {}
        old = event.get("previous_message") or {}
        channel, ts = event.get("channel"), new.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            return
        if self.mapping.is_own(new):
            return  # the bot's own chat.update
        org = self._org(context, body)
        thread_ts = new.get("thread_ts")
        in_thread = isinstance(thread_ts, str) and thread_ts != ts
        place = self._place(
            org,
            channel,
            thread_ts=thread_ts if in_thread else None,
            is_dm=is_dm(channel, event.get("channel_type")),
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
                text=await self.mapping.text(new),
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
            self._org(context, body), channel, is_dm=is_dm(channel, event.get("channel_type"))
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
            await self._acks.wait(trigger_id(command))
            name = str(command.get("command", "")).lstrip("/").lower()
            if name not in COMMANDS:
                return
            channel = str(command.get("channel_id", ""))
            user = str(command.get("user_id", ""))
            found = await self.user(user)
            channel_name = str(command.get("channel_name") or "")
            dm = is_dm(channel) or channel_name == "directmessage"
            place = self._place(
                self._org(context, body),
                channel,
                is_dm=dm,
                channel_name=_shown_channel_name(channel_name),
            )
            event = CommandEvent(
                place=place,
                author=Author(pid(PLATFORM, user), found.display_name),
                name=cast(CommandName, name),
                text=str(command.get("text") or "").strip(),
                is_channel_admin=found.is_admin,
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
            await self._acks.wait(trigger_id(shortcut))
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
                is_dm=is_dm(channel),
                channel_name=_shown_channel_name(
                    str((shortcut.get("channel") or {}).get("name") or "")
                ),
            )
            event = CommandEvent(
                place=place,
                author=Author(pid(PLATFORM, user), found.display_name),
                name="forget",
                text="",
                is_channel_admin=found.is_admin,
                target_source_id=slack_source_id(channel, ts),
            )
            replier = SlackReplier(self, channel, user=user, respond=respond)
            await self.conversation.handle_command(event, replier)

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
            log.warning("slack: users.info %s failed: %s", user_id, error_of(exc))
            return SlackUser(user_id, user_id)
        except Exception as exc:  # the network: the message is stored all the same
            log.warning("slack: users.info %s failed: %r", user_id, exc)
            return SlackUser(user_id, user_id)
        found = slack_user(info, user_id)
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
            log.info("slack: no permalink for %s (%s)", source_id, error_of(exc))
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
        """Slack's markup as people read it (see :meth:`SlackMapping.readable`)."""
        return await self.mapping.readable(text)


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


def _shown_channel_name(name: str) -> str | None:
    """A slash command's ``channel_name``, unless it is a placeholder for a DM or group."""
    if not name or name in ("directmessage", "privategroup") or name.startswith("mpdm-"):
        return None
    return name
