"""A fake Slack on loopback for tests.

One aiohttp server on 127.0.0.1 (port 0) that the real slack-sdk / slack-bolt talk to:

- ``/api/{method}``: the Web API (point ``AsyncWebClient(base_url=fake.api_url)`` at it).
- ``/link``: the Socket Mode websocket that ``apps.connections.open`` hands out.
- ``/hooks/{id}``: ``response_url`` targets for slash commands and shortcuts.

Usage::

    async with FakeSlack() as fake:
        client = AsyncWebClient(token="xoxb-fake", base_url=fake.api_url)
        app = AsyncApp(client=client, signing_secret="x")
        handler = AsyncSocketModeHandler(app, app_token="xapp-1-fake")
        await handler.connect_async()
        await fake.wait_connected()
        envelope_id = await fake.send_event(app_mention_event("U1", "hi", "C1"))
        await fake.wait_ack(envelope_id)
        calls = await fake.wait_for_call("chat.postMessage")
        await handler.close_async()
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

DEFAULT_TEAM_ID = "T0FAKETEAM"
DEFAULT_BOT_USER_ID = "U0FAKEBOT"
DEFAULT_BOT_ID = "B0FAKEBOT"
DEFAULT_APP_ID = "A0FAKEAPP"
DEFAULT_USER_ID = "U0FAKEUSER"
DEFAULT_CHANNEL_ID = "C0FAKECHAN"
PERMALINK_BASE = "https://fake.slack.test"

JsonDict = dict[str, Any]

# ---------------------------------------------------------------------------
# Message timestamps and event builders

_ts_counter = itertools.count(1)


def next_ts() -> str:
    """A new, strictly increasing Slack ts such as ``"1700000000.000100"`` (shared process-wide)."""
    micros = 1_700_000_000_000_000 + next(_ts_counter) * 100
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def message_event(
    user: str,
    text: str,
    channel: str,
    ts: str | None = None,
    thread_ts: str | None = None,
    channel_type: str = "channel",
    team: str = DEFAULT_TEAM_ID,
) -> JsonDict:
    """A plain ``message`` event (``channel_type``: channel, group, im or mpim)."""
    ts = ts or next_ts()
    event: JsonDict = {
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel": channel,
        "channel_type": channel_type,
        "team": team,
        "client_msg_id": str(uuid.uuid4()),
        "blocks": [
            {
                "type": "rich_text",
                "block_id": uuid.uuid4().hex[:5],
                "elements": [
                    {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
                ],
            }
        ],
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


def app_mention_event(
    user: str,
    text: str,
    channel: str,
    ts: str | None = None,
    thread_ts: str | None = None,
    team: str = DEFAULT_TEAM_ID,
    bot_user_id: str = DEFAULT_BOT_USER_ID,
) -> JsonDict:
    """An ``app_mention`` event; ``<@bot_user_id>`` is prepended to ``text`` if it is missing."""
    mention = f"<@{bot_user_id}>"
    if mention not in text:
        text = f"{mention} {text}"
    event = message_event(user, text, channel, ts=ts, thread_ts=thread_ts, team=team)
    event["type"] = "app_mention"
    del event["channel_type"]  # app_mention events carry no channel_type
    return event


def message_changed_event(
    channel: str,
    ts: str,
    new_text: str,
    user: str,
    previous_text: str,
    channel_type: str = "channel",
    team: str = DEFAULT_TEAM_ID,
) -> JsonDict:
    """A ``message_changed`` event: ``message`` is the edited message, keeping its original ts."""
    event_ts = next_ts()
    return {
        "type": "message",
        "subtype": "message_changed",
        "hidden": True,
        "channel": channel,
        "channel_type": channel_type,
        "ts": event_ts,
        "event_ts": event_ts,
        "message": {
            "type": "message",
            "user": user,
            "text": new_text,
            "ts": ts,
            "team": team,
            "edited": {"user": user, "ts": event_ts},
        },
        "previous_message": {"type": "message", "user": user, "text": previous_text, "ts": ts},
    }


def message_deleted_event(
    channel: str,
    ts: str,
    previous_text: str,
    user: str,
    channel_type: str = "channel",
) -> JsonDict:
    """A ``message_deleted`` event for the message ``ts``."""
    event_ts = next_ts()
    return {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "channel": channel,
        "channel_type": channel_type,
        "ts": event_ts,
        "event_ts": event_ts,
        "deleted_ts": ts,
        "previous_message": {"type": "message", "user": user, "text": previous_text, "ts": ts},
    }


def member_joined_event(user: str, channel: str, team: str = DEFAULT_TEAM_ID) -> JsonDict:
    """``member_joined_channel``: ``user`` (e.g. the bot) was added to ``channel``."""
    return {
        "type": "member_joined_channel",
        "user": user,
        "channel": channel,
        "channel_type": "C",
        "team": team,
        "event_ts": next_ts(),
    }


def sign_request(
    body: bytes | str, signing_secret: str, timestamp: int | None = None
) -> dict[str, str]:
    """Headers that make ``body`` pass bolt's HTTP-mode signature check."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=ts, body=body)
    if signature is None:  # only when timestamp is None, which cannot happen here
        raise ValueError("could not sign request")
    return {"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": ts}


# ---------------------------------------------------------------------------
# Error injection and records


@dataclass(frozen=True)
class FailRateLimited:
    """HTTP 429 with ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``."""

    retry_after: int = 1


@dataclass(frozen=True)
class FailError:
    """HTTP 200 with ``{"ok": false, "error": error}``."""

    error: str


@dataclass(frozen=True)
class FailStatus:
    """A bare HTTP error status with a text body."""

    status: int
    body: str = "Internal Server Error"


Failure = FailRateLimited | FailError | FailStatus


@dataclass
class ApiCall:
    method: str
    params: JsonDict  # query string + form or JSON body, merged
    headers: dict[str, str]
    http_verb: str
    status: int = 200
    response: JsonDict | str = field(default_factory=dict)

    @property
    def token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth.removeprefix("Bearer ")
        token = self.params.get("token")
        return token if isinstance(token, str) else None


@dataclass
class Ack:
    envelope_id: str
    payload: JsonDict | None  # e.g. {"text": ...} when ack(text=...) was used
    elapsed: float  # seconds between sending the envelope and receiving the ack
    raw: JsonDict


@dataclass
class HookPost:
    hook_id: str
    body: Any  # parsed JSON, or the raw text
    headers: dict[str, str]


class _ApiError(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _require(params: JsonDict, name: str, error: str) -> str:
    value = params.get(name)
    if not value:
        raise _ApiError(error)
    return str(value)


# ---------------------------------------------------------------------------
# The server


class FakeSlack:
    def __init__(
        self,
        *,
        team_id: str = DEFAULT_TEAM_ID,
        team_domain: str = "fake",
        bot_user_id: str = DEFAULT_BOT_USER_ID,
        bot_id: str = DEFAULT_BOT_ID,
        app_id: str = DEFAULT_APP_ID,
        verification_token: str = "fake-verification-token",
    ) -> None:
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.verification_token = verification_token
        self.port = 0

        self.calls: list[ApiCall] = []
        self.messages: dict[str, list[JsonDict]] = defaultdict(list)  # channel -> live messages
        #: channel -> messages said before (what conversations.history and .replies serve,
        #: with the bot's posted messages)
        self.history: dict[str, list[JsonDict]] = defaultdict(list)
        self.ephemeral_messages: list[JsonDict] = []
        self.reactions: dict[tuple[str, str], list[str]] = defaultdict(list)  # (channel, ts)
        self.assistant_statuses: list[JsonDict] = []
        self.users: dict[str, JsonDict] = {}
        self.channels: dict[str, JsonDict] = {}
        self.envelopes: dict[str, JsonDict] = {}  # envelope_id -> envelope sent
        self.acks: dict[str, Ack] = {}
        self.ws_received: list[Any] = []  # client frames that were not acks
        self.hook_posts: list[HookPost] = []
        self.connection_count = 0  # websocket connections ever accepted

        self._sent_at: dict[str, float] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._failures: dict[str, deque[Failure]] = defaultdict(deque)
        self._cond = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._api: dict[str, Callable[[JsonDict], JsonDict]] = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "users.conversations": self._users_conversations,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
            "assistant.threads.setStatus": self._assistant_set_status,
        }
        self.add_user(bot_user_id, "channelmind", is_bot=True)

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_get("/link", self._handle_ws)
        app.router.add_get("/link/", self._handle_ws)
        app.router.add_post("/hooks/{hook_id}", self._handle_hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    # -- test setup --------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        name: str,
        *,
        real_name: str | None = None,
        display_name: str | None = None,
        is_admin: bool = False,
        is_owner: bool = False,
        is_bot: bool = False,
    ) -> JsonDict:
        real_name = real_name if real_name is not None else name
        display_name = display_name if display_name is not None else name
        user: JsonDict = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "deleted": False,
            "real_name": real_name,
            "tz": "UTC",
            "is_admin": is_admin,
            "is_owner": is_owner,
            "is_bot": is_bot,
            "profile": {
                "real_name": real_name,
                "real_name_normalized": real_name,
                "display_name": display_name,
                "display_name_normalized": display_name,
                "team": self.team_id,
            },
        }
        self.users[user_id] = user
        return user

    def add_channel(
        self,
        channel_id: str,
        name: str = "",
        *,
        is_private: bool = False,
        user: str | None = None,
        is_member: bool = True,
    ) -> JsonDict:
        """Register a channel for conversations.info (a D... id is a DM: give ``user``)."""
        is_im = channel_id.startswith("D")
        channel: JsonDict = {
            "id": channel_id,
            "created": 1_700_000_000,
            "is_channel": not is_im and not is_private,
            "is_group": is_private,
            "is_im": is_im,
            "is_mpim": False,
            "is_private": is_private or is_im,
            "is_archived": False,
            "is_member": is_member,
            "context_team_id": self.team_id,
        }
        if is_im:
            channel["user"] = user
        else:
            channel["name"] = name or channel_id.lower()
        self.channels[channel_id] = channel
        return channel

    def add_history(self, channel: str, message: JsonDict) -> JsonDict:
        """A message said in ``channel`` before now (e.g. from message_event(), or a raw
        export-style dict); it is served by conversations.history / .replies."""
        kept = {
            k: v for k, v in message.items() if k not in {"channel", "channel_type", "event_ts"}
        }
        self.history[channel].append(kept)
        return kept

    def fail(self, method: str, *failures: Failure) -> None:
        """Make the next calls to ``method`` fail, one failure per call, in order."""
        self._failures[method].extend(failures)

    # -- queries -----------------------------------------------------------

    def calls_to(self, method: str) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method]

    def posted_messages(self, channel: str | None = None) -> list[JsonDict]:
        """Messages the bot posted (and did not delete), oldest first, across channels if None."""
        if channel is not None:
            return list(self.messages.get(channel, []))
        return sorted((m for ms in self.messages.values() for m in ms), key=lambda m: m["ts"])

    async def wait_for_call(
        self,
        method: str,
        count: int = 1,
        timeout: float = 5,  # noqa: ASYNC109
    ) -> list[ApiCall]:
        await self._wait(lambda: len(self.calls_to(method)) >= count, timeout, f"{count}x {method}")
        return self.calls_to(method)

    async def wait_ack(
        self,
        envelope_id: str,
        timeout: float = 5,  # noqa: ASYNC109
    ) -> Ack:
        await self._wait(lambda: envelope_id in self.acks, timeout, f"ack of {envelope_id}")
        return self.acks[envelope_id]

    async def wait_for_hook(
        self,
        count: int = 1,
        timeout: float = 5,  # noqa: ASYNC109
    ) -> list[HookPost]:
        await self._wait(lambda: len(self.hook_posts) >= count, timeout, f"{count} hook posts")
        return list(self.hook_posts)

    async def wait_connected(
        self,
        count: int = 1,
        timeout: float = 5,  # noqa: ASYNC109
    ) -> None:
        """Wait until ``count`` websocket connections were made and one is open."""
        await self._wait(
            lambda: self.connection_count >= count and self._open_socket() is not None,
            timeout,
            f"{count} socket mode connections",
        )

    async def _wait(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(predicate), seconds)
            except TimeoutError:
                seen = [c.method for c in self.calls]
                raise TimeoutError(
                    f"timed out after {seconds}s waiting for {what}; api calls: {seen}"
                ) from None

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    # -- Web API -----------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params: JsonDict = dict(request.query)
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
        elif request.can_read_body:
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        call = ApiCall(method, params, dict(request.headers), request.method)
        self.calls.append(call)

        status, body_out, headers = self._answer(call)
        call.status, call.response = status, body_out
        await self._notify()
        if isinstance(body_out, str):
            return web.Response(status=status, text=body_out, headers=headers)
        return web.json_response(body_out, status=status, headers=headers)

    def _answer(self, call: ApiCall) -> tuple[int, JsonDict | str, dict[str, str]]:
        queue = self._failures.get(call.method)
        if queue:
            failure = queue.popleft()
            if isinstance(failure, FailRateLimited):
                headers = {"Retry-After": str(failure.retry_after)}
                return 429, {"ok": False, "error": "ratelimited"}, headers
            if isinstance(failure, FailError):
                return 200, {"ok": False, "error": failure.error}, {}
            return failure.status, failure.body, {}

        token = call.token
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        wants_app_token = call.method == "apps.connections.open"
        if token.startswith("xapp-") != wants_app_token:
            return 200, {"ok": False, "error": "not_allowed_token_type"}, {}
        if not token.startswith(("xoxb-", "xoxp-", "xapp-")):
            return 200, {"ok": False, "error": "invalid_auth"}, {}

        handler = self._api.get(call.method)
        headers = {"x-oauth-scopes": "app_mentions:read,channels:history,chat:write,commands"}
        try:
            return 200, (handler(call.params) if handler else {"ok": True}), headers
        except _ApiError as e:
            return 200, {"ok": False, "error": e.error}, headers

    def _auth_test(self, params: JsonDict) -> JsonDict:
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.test/",
            "team": "Fake Team",
            "user": self.users[self.bot_user_id]["name"],
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, params: JsonDict) -> JsonDict:
        ticket = uuid.uuid4().hex
        url = f"ws://127.0.0.1:{self.port}/link?ticket={ticket}&app_id={self.app_id}"
        return {"ok": True, "url": url}

    def _find_message(self, channel: str, ts: str) -> JsonDict:
        for message in self.messages.get(channel, []):
            if message["ts"] == ts:
                return message
        raise _ApiError("message_not_found")

    def _chat_post_message(self, params: JsonDict) -> JsonDict:
        channel = _require(params, "channel", "channel_not_found")
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise _ApiError("no_text")
        message: JsonDict = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "text": params.get("text") or "",
            "ts": next_ts(),
        }
        for key in ("blocks", "attachments", "thread_ts", "metadata"):
            if params.get(key):
                message[key] = params[key]
        self.messages[channel].append(message)
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": message}

    def _chat_update(self, params: JsonDict) -> JsonDict:
        channel = _require(params, "channel", "channel_not_found")
        message = self._find_message(channel, _require(params, "ts", "message_not_found"))
        for key in ("text", "blocks", "attachments"):
            if key in params:
                message[key] = params[key]
        message["edited"] = {"user": self.bot_user_id, "ts": next_ts()}
        text = message["text"]
        return {
            "ok": True,
            "channel": channel,
            "ts": message["ts"],
            "text": text,
            "message": message,
        }

    def _chat_delete(self, params: JsonDict) -> JsonDict:
        channel = _require(params, "channel", "channel_not_found")
        message = self._find_message(channel, _require(params, "ts", "message_not_found"))
        self.messages[channel].remove(message)
        return {"ok": True, "channel": channel, "ts": message["ts"]}

    def _chat_post_ephemeral(self, params: JsonDict) -> JsonDict:
        channel = _require(params, "channel", "channel_not_found")
        user = _require(params, "user", "user_not_in_channel")
        if not (params.get("text") or params.get("blocks")):
            raise _ApiError("no_text")
        ts = next_ts()
        self.ephemeral_messages.append(
            {
                "channel": channel,
                "user": user,
                "text": params.get("text") or "",
                "thread_ts": params.get("thread_ts"),
                "ts": ts,
            }
        )
        return {"ok": True, "message_ts": ts}

    def _chat_get_permalink(self, params: JsonDict) -> JsonDict:
        channel = _require(params, "channel", "channel_not_found")
        ts = _require(params, "message_ts", "message_not_found")
        link = f"{PERMALINK_BASE}/archives/{channel}/p{ts.replace('.', '')}"
        return {"ok": True, "channel": channel, "permalink": link}

    def _users_info(self, params: JsonDict) -> JsonDict:
        user = self.users.get(str(params.get("user", "")))
        if user is None:
            raise _ApiError("user_not_found")
        return {"ok": True, "user": user}

    def _conversations_info(self, params: JsonDict) -> JsonDict:
        channel = self.channels.get(str(params.get("channel", "")))
        if channel is None:
            raise _ApiError("channel_not_found")
        return {"ok": True, "channel": channel}

    def _said_in(self, channel: str) -> list[JsonDict]:
        """Everything said in a channel, oldest first (parents carry their reply counts)."""
        said = sorted(
            [*self.history.get(channel, []), *self.messages.get(channel, [])],
            key=lambda m: float(m["ts"]),
        )
        replies: dict[str, int] = defaultdict(int)
        for m in said:
            if m.get("thread_ts") and m["thread_ts"] != m["ts"]:
                replies[m["thread_ts"]] += 1
        out = []
        for m in said:
            if replies.get(m["ts"]):
                m = {**m, "thread_ts": m["ts"], "reply_count": replies[m["ts"]]}
            out.append(m)
        return out

    @staticmethod
    def _page(
        items: list[JsonDict], params: JsonDict, default: int = 100
    ) -> tuple[list[JsonDict], str]:
        """Cursor pagination: the cursor is the offset of the next page."""
        limit = int(params.get("limit") or default)
        start = int(params.get("cursor") or 0)
        page = items[start : start + limit]
        more = start + limit < len(items)
        return page, str(start + limit) if more else ""

    def _conversations_history(self, params: JsonDict) -> JsonDict:
        channel = _require(params, "channel", "channel_not_found")
        if channel not in self.channels:
            raise _ApiError("channel_not_found")
        latest = float(params.get("latest") or 1e12)
        oldest = float(params.get("oldest") or 0)
        inclusive = str(params.get("inclusive", "")).lower() in ("1", "true")
        found = [
            m
            for m in self._said_in(channel)
            if (
                not m.get("thread_ts")
                or m["thread_ts"] == m["ts"]
                or m.get("subtype") == "thread_broadcast"
            )
            and (
                oldest <= float(m["ts"]) <= latest
                if inclusive
                else oldest < float(m["ts"]) < latest
            )
        ]
        newest_first = list(reversed(found))
        page, cursor = self._page(newest_first, params)
        return {
            "ok": True,
            "messages": page,
            "has_more": bool(cursor),
            "response_metadata": {"next_cursor": cursor},
        }

    def _conversations_replies(self, params: JsonDict) -> JsonDict:
        channel = _require(params, "channel", "channel_not_found")
        ts = _require(params, "ts", "thread_not_found")
        thread = [m for m in self._said_in(channel) if m["ts"] == ts or m.get("thread_ts") == ts]
        if not thread:
            raise _ApiError("thread_not_found")
        page, cursor = self._page(thread, params)
        return {
            "ok": True,
            "messages": page,
            "has_more": bool(cursor),
            "response_metadata": {"next_cursor": cursor},
        }

    def _users_conversations(self, params: JsonDict) -> JsonDict:
        types = set(str(params.get("types") or "public_channel").split(","))
        chosen = []
        for c in self.channels.values():
            kind = (
                "im"
                if c["is_im"]
                else "mpim"
                if c["is_mpim"]
                else "private_channel"
                if c["is_group"]
                else "public_channel"
            )
            if kind in types and c.get("is_member") and not c.get("is_archived"):
                chosen.append(c)
        page, cursor = self._page(chosen, params)
        return {"ok": True, "channels": page, "response_metadata": {"next_cursor": cursor}}

    def _reaction_key(self, params: JsonDict) -> tuple[tuple[str, str], str]:
        channel = _require(params, "channel", "channel_not_found")
        ts = _require(params, "timestamp", "no_item_specified")
        return (channel, ts), _require(params, "name", "invalid_name")

    def _reactions_add(self, params: JsonDict) -> JsonDict:
        key, name = self._reaction_key(params)
        if name in self.reactions[key]:
            raise _ApiError("already_reacted")
        self.reactions[key].append(name)
        return {"ok": True}

    def _reactions_remove(self, params: JsonDict) -> JsonDict:
        key, name = self._reaction_key(params)
        if name not in self.reactions[key]:
            raise _ApiError("no_reaction")
        self.reactions[key].remove(name)
        return {"ok": True}

    def _assistant_set_status(self, params: JsonDict) -> JsonDict:
        _require(params, "channel_id", "channel_not_found")
        _require(params, "thread_ts", "invalid_arguments")
        self.assistant_statuses.append(dict(params))
        return {"ok": True}

    # -- Socket Mode -------------------------------------------------------

    def _open_socket(self) -> web.WebSocketResponse | None:
        open_sockets = [ws for ws in self._sockets if not ws.closed]
        return open_sockets[-1] if open_sockets else None

    async def _handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()  # autoping answers the SDK's ping frames
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connection_count += 1
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": sum(not s.closed for s in self._sockets),
                "debug_info": {
                    "host": "applink-fake",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self.app_id},
            }
        )
        await self._notify()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._record_client_frame(msg.data)
                    await self._notify()
        finally:
            self._sockets.remove(ws)
            await self._notify()
        return ws

    def _record_client_frame(self, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            self.ws_received.append(data)
            return
        envelope_id = frame.get("envelope_id") if isinstance(frame, dict) else None
        if not envelope_id:
            self.ws_received.append(frame)
            return
        elapsed = time.monotonic() - self._sent_at.get(envelope_id, time.monotonic())
        self.acks[envelope_id] = Ack(envelope_id, frame.get("payload"), elapsed, frame)

    async def send_envelope(
        self, envelope_type: str, payload: JsonDict, *, accepts_response_payload: bool, **extra: Any
    ) -> str:
        """Push one envelope to the newest open connection (waiting for one); returns its id."""
        await self.wait_connected()
        ws = self._open_socket()
        assert ws is not None
        envelope_id = str(uuid.uuid4())
        envelope: JsonDict = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": envelope_type,
            "accepts_response_payload": accepts_response_payload,
            **extra,
        }
        self.envelopes[envelope_id] = envelope
        self._sent_at[envelope_id] = time.monotonic()
        await ws.send_json(envelope)
        return envelope_id

    def event_payload(self, event: JsonDict, *, event_id: str | None = None) -> JsonDict:
        """The Events API ``event_callback`` body (also what HTTP mode POSTs)."""
        return {
            "token": self.verification_token,
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{uuid.uuid4().hex}",
        }

    async def send_event(
        self,
        event: JsonDict,
        *,
        event_id: str | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
    ) -> str:
        """Deliver an Events API event; pass the same ``event_id`` again to simulate a retry."""
        return await self.send_envelope(
            "events_api",
            self.event_payload(event, event_id=event_id),
            accepts_response_payload=False,
            retry_attempt=retry_attempt,
            retry_reason=retry_reason,
        )

    def hook_url(self) -> str:
        return f"{self.base_url}/hooks/{uuid.uuid4().hex}"

    def command_payload(
        self,
        command: str = "/recall",
        text: str = "",
        *,
        user_id: str = DEFAULT_USER_ID,
        channel_id: str = DEFAULT_CHANNEL_ID,
    ) -> dict[str, str]:
        """A slash-command payload (all strings: in HTTP mode it is form-encoded)."""
        user = self.users.get(user_id, {})
        channel = self.channels.get(channel_id, {})
        return {
            "token": self.verification_token,
            "team_id": self.team_id,
            "team_domain": self.team_domain,
            "channel_id": channel_id,
            "channel_name": str(channel.get("name", "directmessage")),
            "user_id": user_id,
            "user_name": str(user.get("name", user_id.lower())),
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": self.hook_url(),
            "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}",
        }

    async def send_command(
        self,
        command: str = "/recall",
        text: str = "",
        *,
        user_id: str = DEFAULT_USER_ID,
        channel_id: str = DEFAULT_CHANNEL_ID,
    ) -> str:
        payload = self.command_payload(command, text, user_id=user_id, channel_id=channel_id)
        return await self.send_envelope("slash_commands", payload, accepts_response_payload=True)

    async def send_shortcut(
        self,
        callback_id: str,
        *,
        message: JsonDict,
        channel: str = DEFAULT_CHANNEL_ID,
        user: str = DEFAULT_USER_ID,
    ) -> str:
        """A message shortcut (``message_action``) on ``message`` (e.g. from message_event())."""
        name = str(self.users.get(user, {}).get("name", user.lower()))
        message = {
            k: v for k, v in message.items() if k not in {"channel", "channel_type", "event_ts"}
        }
        payload: JsonDict = {
            "type": "message_action",
            "token": self.verification_token,
            "action_ts": f"{time.time():.6f}",
            "team": {"id": self.team_id, "domain": self.team_domain},
            "user": {"id": user, "username": name, "team_id": self.team_id, "name": name},
            "channel": {"id": channel, "name": str(self.channels.get(channel, {}).get("name", ""))},
            "is_enterprise_install": False,
            "enterprise": None,
            "callback_id": callback_id,
            "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}",
            "response_url": self.hook_url(),
            "message_ts": message.get("ts"),
            "message": message,
        }
        return await self.send_envelope("interactive", payload, accepts_response_payload=False)

    async def disconnect_clients(self, reason: str = "refresh_requested") -> int:
        """Ask every connected client to reconnect, as Slack does periodically."""
        sockets = [ws for ws in self._sockets if not ws.closed]
        for ws in sockets:
            await ws.send_json(
                {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}}
            )
        return len(sockets)

    # -- response_url hooks ------------------------------------------------

    async def _handle_hook(self, request: web.Request) -> web.Response:
        raw = await request.text()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        self.hook_posts.append(HookPost(request.match_info["hook_id"], body, dict(request.headers)))
        await self._notify()
        return web.Response(text="ok")
