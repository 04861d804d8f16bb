"""A fake Discord (REST API + gateway websocket) on loopback, for tests with the real discord.py.

One aiohttp server on ``127.0.0.1`` (random port) serves:

* REST under ``/api/v10/`` (every call recorded in ``fake.rest_calls``), with injectable 429s;
* the gateway websocket at ``/``, ``/gateway`` and ``/gateway/resume`` (plain JSON text frames,
  HELLO / HEARTBEAT_ACK / READY / GUILD_CREATE / RESUME replay / RECONNECT / INVALID_SESSION).

Usage::

    async with FakeDiscord() as fake, fake.point_discord_py_here():
        fake.add_guild(GUILD, "Test Guild", owner_id=OWNER)
        fake.add_channel(GUILD, CHANNEL, "general")
        fake.add_member(GUILD, ALICE, "alice")
        client = MyClient(intents=..., guild_ready_timeout=0.05)
        task = asyncio.create_task(client.start("fake-token"))
        await fake.wait_ready()
        msg = await fake.send_message(CHANNEL, ALICE, "hi", mentions_bot=True)
        calls = await fake.wait_for_rest("POST", f"/channels/{CHANNEL}/messages")
        await client.close()

Deliberate realism: bot-sent messages are echoed back over the gateway (as Discord does), guild
messages lose their content when the session lacks the MESSAGE_CONTENT intent, and message
events are dropped when the GUILD_MESSAGES / DIRECT_MESSAGES intent is missing
(``enforce_intents=False`` turns both off). Error bodies carry Discord's JSON error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord.gateway
import discord.http
import yarl
from aiohttp import BodyPartReader, WSMsgType, web

JSON = dict[str, Any]
Handler = Callable[[web.Request], Any]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000

# Permission bits (Discord "Permissions" docs).
ADD_REACTIONS = 1 << 6
ADMINISTRATOR = 1 << 3
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = discord.Permissions.all().value
DEFAULT_EVERYONE_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | EMBED_LINKS
    | ATTACH_FILES
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)

# Gateway intent bits.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15

# Message flags.
EPHEMERAL = 1 << 6
LOADING = 1 << 7

# Channel types.
GUILD_TEXT = 0
DM = 1
PUBLIC_THREAD = 11
PRIVATE_THREAD = 12

_BODY: web.RequestKey[Any] = web.RequestKey(
    "fake_discord_body", object
)  # parsed request body, set by the middleware
_MENTION_RE = re.compile(r"<@!?(\d+)>")
_MAX_CONTENT = 2000


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # discord.py only parses bodies whose Content-Type is *exactly* application/json;
    # web.json_response() would append "; charset=utf-8" and break login.
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=all_headers)


def _no_content() -> web.Response:
    return web.Response(status=204)


class ApiError(Exception):
    """Raised by REST handlers; rendered as Discord's JSON error body."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class RestCall:
    """One REST request the fake received. ``path`` is relative to ``/api/v10``."""

    method: str
    path: str
    json: Any
    query: dict[str, str]
    status: int = 0
    rate_limited: bool = False


@dataclass
class Overwrite:
    """A channel permission overwrite for a role (default) or a member."""

    target_id: int
    allow: int = 0
    deny: int = 0
    is_member: bool = False

    def payload(self) -> JSON:
        return {
            "id": str(self.target_id),
            "type": 1 if self.is_member else 0,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass
class FakeUser:
    id: int
    name: str
    bot: bool = False

    def payload(self) -> JSON:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name,
            "avatar": None,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
        }


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int = 0
    position: int = 0

    def payload(self) -> JSON:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass
class FakeMember:
    user_id: int
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=_now_iso)

    def partial(self) -> JSON:
        """Member object without ``user`` (as embedded in messages)."""
        return {
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "roles": [str(r) for r in self.roles],
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
            "avatar_decoration_data": None,
        }


@dataclass
class FakeChannel:
    id: int
    name: str
    type: int = GUILD_TEXT
    guild_id: int | None = None
    parent_id: int | None = None
    owner_id: int | None = None
    recipient_id: int | None = None
    position: int = 0
    topic: str | None = None
    overwrites: list[Overwrite] = field(default_factory=list)
    created_at: str = field(default_factory=_now_iso)
    archived: bool = False  # an archived thread: not in GUILD_CREATE, listed as archived

    @property
    def is_thread(self) -> bool:
        return self.type in (PUBLIC_THREAD, PRIVATE_THREAD)


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    threads: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    joined_at: str = field(default_factory=_now_iso)


@dataclass
class FakeInteraction:
    """An INTERACTION_CREATE the fake dispatched, plus what the bot did with it."""

    id: int
    token: str
    name: str
    user_id: int
    channel_id: int
    guild_id: int | None
    payload: JSON
    callbacks: list[JSON] = field(default_factory=list)
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)

    @property
    def response(self) -> JSON | None:
        """The first callback body (``{"type": 4, "data": {...}}``), if any."""
        return self.callbacks[0] if self.callbacks else None


@dataclass
class _RateLimitRule:
    method: str | None
    suffix: str
    retry_after: float
    is_global: bool
    remaining: int

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and path.endswith(self.suffix)


class _Link:
    """One gateway websocket; serialises sends."""

    def __init__(self, ws: web.WebSocketResponse, path: str) -> None:
        self.ws = ws
        self.path = path
        self._lock = asyncio.Lock()

    async def send(self, payload: JSON) -> None:
        async with self._lock:
            await self.ws.send_str(json.dumps(payload))


@dataclass
class _Session:
    session_id: str
    shard_id: int
    shard_count: int
    intents: int
    link: _Link | None
    seq: int = 0
    history: list[JSON] = field(default_factory=list)
    ready: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FakeDiscord:
    """Fake Discord REST + gateway. Use as ``async with FakeDiscord() as fake:``."""

    def __init__(
        self,
        *,
        bot_user_id: int = 111_111_111_111_111_111,
        application_id: int | None = None,
        bot_name: str = "ChannelMind",
        token: str | None = None,
        shard_count: int = 1,
        heartbeat_interval_ms: int = 41_250,
        echo_bot_messages: bool = True,
        enforce_intents: bool = True,
    ) -> None:
        self.bot_user_id = bot_user_id
        self.application_id = application_id or bot_user_id
        self.token = token  # when set, REST Authorization and IDENTIFY token are checked
        self.shard_count = shard_count  # reported by GET /gateway/bot
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.echo_bot_messages = echo_bot_messages
        self.enforce_intents = enforce_intents

        self.users: dict[int, FakeUser] = {bot_user_id: FakeUser(bot_user_id, bot_name, bot=True)}
        self.guilds: dict[int, FakeGuild] = {}
        self.dm_channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, JSON] = {}
        self.commands: dict[int | None, list[JSON]] = {}  # guild id (None = global) -> commands
        self.interactions: dict[int, FakeInteraction] = {}

        self.rest_calls: list[RestCall] = []
        self.identify_payloads: list[JSON] = []
        self.resume_payloads: list[JSON] = []
        self.gateway_received: list[JSON] = []
        self.gateway_connections: list[str] = []  # request path of every websocket connection
        self.identify_count = 0
        self.resume_count = 0

        self._sessions: dict[str, _Session] = {}
        self._active: dict[int, _Session] = {}  # shard id -> current session
        self._rate_limits: list[_RateLimitRule] = []
        self._last_snowflake = 0
        self._changed = asyncio.Event()
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._api_middleware])
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001), timeout=2)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway/resume"

    @contextlib.contextmanager
    def point_discord_py_here(self) -> Iterator[None]:
        """Patch discord.py's REST base and default gateway to this fake; restore on exit.

        ``Route`` computes its URL when built, so keep this active for the client's lifetime.
        """
        route_cls = discord.http.Route
        ws_cls = discord.gateway.DiscordWebSocket
        old_base, old_gateway = route_cls.BASE, ws_cls.DEFAULT_GATEWAY
        route_cls.BASE = self.api_base
        ws_cls.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            route_cls.BASE = old_base
            ws_cls.DEFAULT_GATEWAY = old_gateway

    # ------------------------------------------------------------------ test-facing setup

    def add_user(self, user_id: int, name: str, *, bot: bool = False) -> FakeUser:
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = FakeUser(user_id, name, bot=bot)
        return user

    def add_guild(
        self, guild_id: int, name: str = "Test Guild", owner_id: int | None = None
    ) -> FakeGuild:
        """Add a guild with an @everyone role (id = guild id) and the bot as a member."""
        owner = owner_id if owner_id is not None else guild_id + 1
        guild = FakeGuild(guild_id, name, owner)
        guild.roles[guild_id] = FakeRole(guild_id, "@everyone", DEFAULT_EVERYONE_PERMISSIONS)
        self.guilds[guild_id] = guild
        guild.members[self.bot_user_id] = FakeMember(self.bot_user_id)
        self.add_member(guild_id, owner, f"owner{owner}")
        return guild

    def add_role(
        self, guild_id: int, role_id: int, name: str, permissions: int = 0, *, position: int = 1
    ) -> FakeRole:
        role = FakeRole(role_id, name, permissions, position)
        self._guild(guild_id).roles[role_id] = role
        return role

    def add_member(
        self,
        guild_id: int,
        user_id: int,
        name: str,
        roles: Sequence[int] = (),
        *,
        permissions: int | None = None,
        bot: bool = False,
        nick: str | None = None,
    ) -> FakeMember:
        """Add a member (or give an existing one more roles).

        ``permissions`` creates a role named ``"<name> perms"`` with those bits and gives it to
        the member (its id is ``member.roles[-1]``), e.g. ``permissions=MANAGE_MESSAGES``.
        """
        guild = self._guild(guild_id)
        self.add_user(user_id, name, bot=bot)
        role_ids = list(roles)
        for role_id in role_ids:
            if role_id not in guild.roles:
                raise KeyError(f"role {role_id} not in guild {guild_id}; add_role() first")
        if permissions is not None:
            role = self.add_role(guild_id, self.next_snowflake(), f"{name} perms", permissions)
            role_ids.append(role.id)
        member = guild.members.get(user_id)
        if member is None:
            member = guild.members[user_id] = FakeMember(user_id, role_ids, nick)
        else:
            member.roles.extend(r for r in role_ids if r not in member.roles)
        return member

    def add_channel(
        self,
        guild_id: int,
        channel_id: int,
        name: str,
        *,
        type: int = GUILD_TEXT,
        topic: str | None = None,
        overwrites: Sequence[Overwrite] = (),
    ) -> FakeChannel:
        guild = self._guild(guild_id)
        channel = FakeChannel(
            channel_id,
            name,
            type,
            guild_id,
            topic=topic,
            position=len(guild.channels),
            overwrites=list(overwrites),
        )
        guild.channels[channel_id] = channel
        return channel

    def add_thread(
        self,
        guild_id: int,
        parent_id: int,
        thread_id: int,
        name: str,
        *,
        owner_id: int | None = None,
        private: bool = False,
        archived: bool = False,
    ) -> FakeChannel:
        guild = self._guild(guild_id)
        if parent_id not in guild.channels:
            raise KeyError(f"parent channel {parent_id} not in guild {guild_id}")
        thread = FakeChannel(
            thread_id,
            name,
            PRIVATE_THREAD if private else PUBLIC_THREAD,
            guild_id,
            parent_id=parent_id,
            owner_id=owner_id if owner_id is not None else guild.owner_id,
            archived=archived,
        )
        guild.threads[thread_id] = thread
        return thread

    def open_dm(self, user_id: int, channel_id: int | None = None) -> FakeChannel:
        """The DM channel between the bot and ``user_id`` (created if needed)."""
        for channel in self.dm_channels.values():
            if channel.recipient_id == user_id:
                if channel_id is not None and channel.id != channel_id:
                    raise ValueError(f"user {user_id} already has DM channel {channel.id}")
                return channel
        self.add_user(user_id, f"user{user_id}")
        cid = channel_id if channel_id is not None else self.next_snowflake()
        channel = FakeChannel(cid, "", DM, recipient_id=user_id)
        self.dm_channels[cid] = channel
        return channel

    def next_snowflake(self) -> int:
        """A fresh, strictly increasing snowflake based on the current time."""
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_snowflake = max(self._last_snowflake + 1, now)
        return self._last_snowflake

    def rate_limit_next(
        self,
        route: str,
        retry_after: float = 0.05,
        *,
        times: int = 1,
        is_global: bool = False,
    ) -> None:
        """Answer the next ``times`` matching REST calls with a 429.

        ``route`` is a path suffix (``"/channels/1/messages"``) optionally preceded by a method
        (``"POST /channels/1/messages"``). Paths are relative to ``/api/v10``.
        """
        method, _, suffix = route.rpartition(" ")
        self._rate_limits.append(
            _RateLimitRule(method.upper() or None, suffix, retry_after, is_global, times)
        )

    def seed_message(
        self,
        channel_id: int,
        author_id: int,
        content: str,
        *,
        at: datetime,
        reply_to: int | None = None,
        mentions_bot: bool = False,
    ) -> JSON:
        """A message said at ``at`` (before the bot was there): stored for the channel's
        history, never dispatched. Its snowflake is of its time, as Discord's are."""
        if mentions_bot and f"<@{self.bot_user_id}>" not in content:
            content = f"<@{self.bot_user_id}> {content}"
        ms = int(at.timestamp() * 1000)
        mid = ((ms - DISCORD_EPOCH_MS) << 22) + len(self.messages) % (1 << 22)
        message = self._user_message(channel_id, author_id, content, None, mid)
        message["timestamp"] = at.isoformat()
        if reply_to is not None:
            self._attach_reference(message, reply_to)
        self.messages[mid] = message
        return message

    def channel_messages(self, channel_id: int) -> list[JSON]:
        """Stored messages of a channel, oldest first."""
        return sorted(
            (m for m in self.messages.values() if int(m["channel_id"]) == channel_id),
            key=lambda m: int(m["id"]),
        )

    # ------------------------------------------------------------------ gateway dispatch helpers

    async def dispatch(self, event: str, data: JSON, *, guild_id: int | None = None) -> int | None:
        """Send a raw DISPATCH (op 0) to the session owning ``guild_id`` (shard 0 for DMs).

        Returns the sequence number, or None if the session's intents filtered it out.
        Events sent while the client is reconnecting are replayed when it RESUMEs.
        """
        session = self._session_for(guild_id)
        if session is None:
            raise RuntimeError("no gateway session: start the client and await fake.wait_ready()")
        filtered = self._filter_for_intents(session, event, data)
        if filtered is None:
            return None
        async with session.lock:
            return await self._dispatch_locked(session, event, filtered)

    async def send_message(
        self,
        channel_id: int,
        author_id: int,
        content: str,
        *,
        guild_id: int | None = None,
        mentions_bot: bool = False,
        reply_to: int | None = None,
        message_id: int | None = None,
    ) -> JSON:
        """Dispatch MESSAGE_CREATE from a user and store the message.

        ``guild_id`` is inferred from the channel; an unknown channel with no guild is a DM.
        With ``mentions_bot`` the content becomes ``"<@BOTID> content"``.
        """
        if mentions_bot and f"<@{self.bot_user_id}>" not in content:
            content = f"<@{self.bot_user_id}> {content}"
        message = self._user_message(channel_id, author_id, content, guild_id, message_id)
        if reply_to is not None:
            self._attach_reference(message, reply_to)
        self.messages[int(message["id"])] = message
        await self.dispatch("MESSAGE_CREATE", message, guild_id=_guild_of(message))
        return message

    async def send_edit(
        self,
        channel_id: int,
        message_id: int,
        content: str,
        *,
        guild_id: int | None = None,
        author_id: int | None = None,
    ) -> JSON:
        """Dispatch MESSAGE_UPDATE with the full edited message.

        Works for messages the fake never saw (pass ``author_id``), e.g. to test raw events
        for uncached messages.
        """
        stored = self.messages.get(message_id)
        if stored is None:
            if author_id is None:
                raise KeyError(f"message {message_id} unknown; pass author_id to edit it anyway")
            stored = self._user_message(channel_id, author_id, content, guild_id, message_id)
        message = {**stored, "content": content, "edited_timestamp": _now_iso()}
        message["mentions"] = self._mentions_payload(content, _guild_of(message), None)
        self.messages[message_id] = message
        await self.dispatch("MESSAGE_UPDATE", message, guild_id=_guild_of(message))
        return message

    async def send_delete(
        self, channel_id: int, message_id: int, guild_id: int | None = None
    ) -> None:
        """Dispatch MESSAGE_DELETE (the message need not be known)."""
        guild_id = self._resolve_guild(channel_id, guild_id)
        self.messages.pop(message_id, None)
        data: JSON = {"id": str(message_id), "channel_id": str(channel_id)}
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
        await self.dispatch("MESSAGE_DELETE", data, guild_id=guild_id)

    async def send_bulk_delete(
        self, channel_id: int, message_ids: Sequence[int], guild_id: int | None = None
    ) -> None:
        """Dispatch MESSAGE_DELETE_BULK."""
        guild_id = self._resolve_guild(channel_id, guild_id)
        for mid in message_ids:
            self.messages.pop(mid, None)
        data: JSON = {"ids": [str(m) for m in message_ids], "channel_id": str(channel_id)}
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
        await self.dispatch("MESSAGE_DELETE_BULK", data, guild_id=guild_id)

    async def send_guild_create(self, guild_id: int) -> None:
        """Dispatch GUILD_CREATE again, e.g. after adding channels/members post-READY."""
        await self.dispatch(
            "GUILD_CREATE", self._guild_payload(self._guild(guild_id)), guild_id=guild_id
        )

    async def send_interaction(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[JSON] | None = None,
        *,
        user_id: int,
        channel_id: int,
        guild_id: int | None = None,
        command_type: int = 1,
        target_message_id: int | None = None,
        permissions: int | None = None,
        resolved: JSON | None = None,
        locale: str = "en-US",
    ) -> int:
        """Dispatch INTERACTION_CREATE for an application command; returns the interaction id.

        ``options`` is ``{"name": value}`` (types inferred) or raw option dicts.
        ``command_type=3`` is a message context menu: ``target_message_id`` must be a message
        the fake knows (e.g. from ``send_message``). ``permissions`` overrides the member's
        computed channel permissions. ``data.id`` is the id returned when commands were synced.
        """
        guild_id = self._resolve_guild(channel_id, guild_id)
        channel = self._channel(channel_id)
        if channel is None:
            if guild_id is not None:
                raise KeyError(f"channel {channel_id} not in guild {guild_id}")
            channel = self.open_dm(user_id, channel_id)
        command_id, command_guild = self._command_id(name, command_type, guild_id)
        interaction_id = self.next_snowflake()
        token = f"fake-interaction-token-{interaction_id}"

        data: JSON = {"id": str(command_id), "name": name, "type": command_type}
        if command_guild is not None:
            data["guild_id"] = str(command_guild)
        if command_type == 1:
            data["options"] = _options_payload(options)
        if resolved is not None:
            data["resolved"] = resolved
        if command_type == 3:
            if target_message_id is None or target_message_id not in self.messages:
                raise KeyError("message context menus need target_message_id of a known message")
            data["target_id"] = str(target_message_id)
            target = self.messages[target_message_id]
            data["resolved"] = {"messages": {str(target_message_id): target}}

        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": 2,
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            "channel": self._channel_payload(channel),
            "locale": locale,
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if guild_id is not None:
            guild = self._guild(guild_id)
            if user_id not in guild.members:
                self.add_member(guild_id, user_id, self._user(user_id).name)
            perms = (
                permissions
                if permissions is not None
                else self.permissions_for(guild_id, user_id, channel_id)
            )
            member = {**guild.members[user_id].partial(), "user": self.users[user_id].payload()}
            member["permissions"] = str(perms)
            payload.update(
                guild_id=str(guild_id),
                guild={"id": str(guild_id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=member,
                app_permissions=str(self.permissions_for(guild_id, self.bot_user_id, channel_id)),
                authorizing_integration_owners={"0": str(guild_id)},
                context=0,
            )
        else:
            payload.update(
                user=self._user(user_id).payload(),
                app_permissions=str(DEFAULT_EVERYONE_PERMISSIONS),
                authorizing_integration_owners={"0": "0"},
                context=1,
            )
        self.interactions[interaction_id] = FakeInteraction(
            interaction_id, token, name, user_id, channel_id, guild_id, payload
        )
        await self.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id)
        return interaction_id

    # ------------------------------------------------------------------ connection control

    async def force_reconnect(
        self,
        shard_id: int = 0,
        *,
        wait: bool = True,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> None:
        """Send op 7 RECONNECT. Dispatches sent before the client resumes are buffered and
        replayed on RESUME. With ``wait``, return once the client has resumed."""
        session = self._active_session(shard_id)
        before = self.resume_count
        async with session.lock:
            link, session.link = session.link, None
            if link is not None:
                await link.send({"op": 7, "d": None})
        if wait:
            await self._wait_until(
                lambda: self.resume_count > before and session.link is not None,
                timeout,
                "the client to RESUME",
            )

    async def invalidate_session(
        self,
        shard_id: int = 0,
        *,
        resumable: bool = False,
        wait: bool = True,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> None:
        """Send op 9 INVALID_SESSION; a non-resumable session makes the client IDENTIFY again.

        discord.py's ``Client.before_identify_hook`` sleeps 5 s before a re-IDENTIFY; override it
        in tests (or pass a larger ``timeout``).
        """
        session = self._active_session(shard_id)
        identifies, resumes = self.identify_count, self.resume_count
        async with session.lock:
            link, session.link = session.link, None
            if not resumable:
                self._sessions.pop(session.session_id, None)
            if link is not None:
                await link.send({"op": 9, "d": resumable})
        if wait:
            await self._wait_until(
                lambda: self.identify_count > identifies or self.resume_count > resumes,
                timeout,
                "the client to reconnect",
            )

    async def close_gateway(self, shard_id: int = 0, *, code: int = 4000) -> None:
        """Close the session's websocket from the server side (the client should RESUME)."""
        session = self._active_session(shard_id)
        async with session.lock:
            link, session.link = session.link, None
        if link is not None:
            await link.ws.close(code=code)

    # ------------------------------------------------------------------ waiting helpers

    async def wait_ready(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until READY and the GUILD_CREATEs were sent on every shard's session.

        Events dispatched afterwards reach the client after those, so its guild cache is filled;
        ``on_ready`` itself fires ``guild_ready_timeout`` later (pass a small one to the Client).
        """

        def ready() -> bool:
            if not self._active:
                return False
            count = next(iter(self._active.values())).shard_count
            return all(s in self._active and self._active[s].ready for s in range(count))

        await self._wait_until(ready, timeout, "READY")

    async def wait_for_rest(
        self,
        method: str,
        path: str,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[RestCall]:
        """Wait for ``count`` served calls (injected 429s are not counted); returns all matches."""

        def matches() -> list[RestCall]:
            return [
                c
                for c in self.rest_calls
                if c.method == method.upper() and c.path == path and not c.rate_limited
            ]

        await self._wait_until(
            lambda: len(matches()) >= count, timeout, f"{count}x {method} {path}"
        )
        return matches()

    async def wait_for_interaction_response(
        self,
        interaction_id: int,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> JSON:
        """Wait for the bot's first callback to an interaction; returns its body."""
        interaction = self.interactions[interaction_id]
        await self._wait_until(
            lambda: interaction.response is not None, timeout, f"callback to {interaction_id}"
        )
        assert interaction.response is not None
        return interaction.response

    async def _wait_until(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        try:
            async with asyncio.timeout(seconds):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"FakeDiscord: timed out after {seconds}s waiting for {what}"
            ) from None

    def _bump(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ gateway internals

    def _session_for(self, guild_id: int | None) -> _Session | None:
        if not self._active:
            return None
        count = next(iter(self._active.values())).shard_count
        shard_id = (guild_id >> 22) % count if guild_id is not None else 0
        return self._active.get(shard_id)

    def _active_session(self, shard_id: int) -> _Session:
        try:
            return self._active[shard_id]
        except KeyError:
            raise RuntimeError(f"no gateway session for shard {shard_id}") from None

    async def _dispatch_locked(self, session: _Session, event: str, data: JSON) -> int:
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.history.append(frame)
        if session.link is not None:
            try:
                await session.link.send(frame)
            except ConnectionError:
                session.link = None  # replayed when the client resumes
        return session.seq

    def _filter_for_intents(self, session: _Session, event: str, data: JSON) -> JSON | None:
        if not self.enforce_intents or not event.startswith("MESSAGE_"):
            return data
        needed = INTENT_GUILD_MESSAGES if "guild_id" in data else INTENT_DIRECT_MESSAGES
        if not session.intents & needed:
            return None
        if (
            event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE")
            or session.intents & INTENT_MESSAGE_CONTENT
        ):
            return data
        author_id = int(data.get("author", {}).get("id", 0))
        mentioned = any(int(u["id"]) == self.bot_user_id for u in data.get("mentions", []))
        if "guild_id" not in data or author_id == self.bot_user_id or mentioned:
            return data
        blanked = {**data, "content": "", "embeds": [], "attachments": [], "components": []}
        blanked.pop("poll", None)
        return blanked

    async def _gateway_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        link = _Link(ws, request.path)
        self._sockets.add(ws)
        self.gateway_connections.append(request.path)
        session: _Session | None = None
        try:
            await link.send({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                self.gateway_received.append(payload)
                op, data = payload.get("op"), payload.get("d")
                if op == 1:
                    await link.send({"op": 11})
                elif op == 2:
                    session = await self._identify(link, data)
                elif op == 6:
                    session = await self._resume(link, data)
                elif op == 8 and session is not None:
                    await self._members_chunk(session, data)
                self._bump()
        except ConnectionError:
            pass
        finally:
            self._sockets.discard(ws)
            if session is not None and session.link is link:
                session.link = None
            self._bump()
        return ws

    async def _identify(self, link: _Link, data: JSON) -> _Session | None:
        self.identify_payloads.append(data)
        self.identify_count += 1
        if self.token is not None and data.get("token") != self.token:
            await link.ws.close(code=4004, message=b"Authentication failed.")
            return None
        shard_id, shard_count = data.get("shard") or (0, 1)
        session = _Session(
            uuid.uuid4().hex, shard_id, shard_count, int(data.get("intents", 0)), link
        )
        self._sessions[session.session_id] = session
        self._active[shard_id] = session
        guilds = [g for g in self.guilds.values() if (g.id >> 22) % shard_count == shard_id]
        ready: JSON = {
            "v": 10,
            "user": {
                **self.users[self.bot_user_id].payload(),
                "verified": True,
                "mfa_enabled": False,
            },
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["fake-discord"],
        }
        if data.get("shard") is not None:
            ready["shard"] = [shard_id, shard_count]
        async with session.lock:
            await self._dispatch_locked(session, "READY", ready)
            for guild in guilds:
                await self._dispatch_locked(session, "GUILD_CREATE", self._guild_payload(guild))
            session.ready = True
        return session

    async def _resume(self, link: _Link, data: JSON) -> _Session | None:
        self.resume_payloads.append(data)
        session = self._sessions.get(str(data.get("session_id")))
        if session is None or (self.token is not None and data.get("token") != self.token):
            await link.send({"op": 9, "d": False})
            return None
        async with session.lock:
            session.link = link
            last_seen = int(data.get("seq") or 0)
            for frame in session.history:
                if frame["s"] > last_seen:
                    await link.send(frame)
            await self._dispatch_locked(session, "RESUMED", {"_trace": ["fake-discord"]})
        self._active[session.shard_id] = session
        self.resume_count += 1
        return session

    async def _members_chunk(self, session: _Session, data: JSON) -> None:
        guild = self.guilds.get(int(data["guild_id"]))
        if guild is None:
            return
        members = [self._member_payload(guild, uid) for uid in guild.members]
        chunk = {
            "guild_id": str(guild.id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
            "nonce": data.get("nonce"),
        }
        async with session.lock:
            await self._dispatch_locked(session, "GUILD_MEMBERS_CHUNK", chunk)

    async def _echo(self, event: str, data: JSON, *, flags: int | None = None) -> None:
        """Echo a bot-side change over the gateway, as Discord does (if a session exists).

        Ephemeral messages are never dispatched."""
        flags = int(data.get("flags", 0)) if flags is None else flags
        if not self.echo_bot_messages or flags & EPHEMERAL:
            return
        guild_id = _guild_of(data)
        if self._session_for(guild_id) is not None:
            await self.dispatch(event, data, guild_id=guild_id)

    # ------------------------------------------------------------------ payload builders

    def _guild(self, guild_id: int) -> FakeGuild:
        try:
            return self.guilds[guild_id]
        except KeyError:
            raise KeyError(f"guild {guild_id} unknown; add_guild() first") from None

    def _user(self, user_id: int) -> FakeUser:
        return self.users.get(user_id) or self.add_user(user_id, f"user{user_id}")

    def _channel(self, channel_id: int) -> FakeChannel | None:
        for guild in self.guilds.values():
            found = guild.channels.get(channel_id) or guild.threads.get(channel_id)
            if found is not None:
                return found
        return self.dm_channels.get(channel_id)

    def _resolve_guild(self, channel_id: int, guild_id: int | None) -> int | None:
        channel = self._channel(channel_id)
        if channel is not None and guild_id is not None and channel.guild_id != guild_id:
            raise ValueError(f"channel {channel_id} is not in guild {guild_id}")
        return channel.guild_id if channel is not None else guild_id

    def _command_id(
        self, name: str, command_type: int, guild_id: int | None
    ) -> tuple[int, int | None]:
        """Id of the synced command (guild scope first, then global), and its guild id."""
        scopes: list[int | None] = [guild_id, None] if guild_id is not None else [None]
        for scope in scopes:
            for command in self.commands.get(scope, []):
                if command["name"] == name and command["type"] == command_type:
                    return int(command["id"]), scope
        return self.next_snowflake(), None  # never synced: discord.py will report it unknown

    def permissions_for(self, guild_id: int, user_id: int, channel_id: int | None = None) -> int:
        """Effective permissions (roles, owner/admin, then channel overwrites)."""
        guild = self._guild(guild_id)
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        member = guild.members.get(user_id) or FakeMember(user_id)
        perms = guild.roles[guild.id].permissions
        for role_id in member.roles:
            perms |= guild.roles[role_id].permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        channel = self._channel(channel_id) if channel_id is not None else None
        if channel is not None and channel.is_thread and channel.parent_id is not None:
            channel = self._channel(channel.parent_id)
        if channel is None:
            return perms
        by_target = {(o.target_id, o.is_member): o for o in channel.overwrites}
        everyone = by_target.get((guild.id, False))
        if everyone is not None:
            perms = (perms & ~everyone.deny) | everyone.allow
        role_allow = role_deny = 0
        for role_id in member.roles:
            ow = by_target.get((role_id, False))
            if ow is not None:
                role_allow, role_deny = role_allow | ow.allow, role_deny | ow.deny
        perms = (perms & ~role_deny) | role_allow
        own = by_target.get((user_id, True))
        if own is not None:
            perms = (perms & ~own.deny) | own.allow
        return perms

    def _member_payload(self, guild: FakeGuild, user_id: int) -> JSON:
        return {**guild.members[user_id].partial(), "user": self._user(user_id).payload()}

    def _channel_payload(self, channel: FakeChannel) -> JSON:
        if channel.type == DM:
            assert channel.recipient_id is not None
            return {
                "id": str(channel.id),
                "type": DM,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self._user(channel.recipient_id).payload()],
            }
        payload: JSON = {
            "id": str(channel.id),
            "type": channel.type,
            "guild_id": str(channel.guild_id),
            "name": channel.name,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
            "nsfw": False,
        }
        if channel.is_thread:
            payload.update(
                parent_id=str(channel.parent_id),
                owner_id=str(channel.owner_id),
                message_count=0,
                member_count=1,
                total_message_sent=0,
                applied_tags=[],
                thread_metadata={
                    "archived": channel.archived,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": channel.created_at,
                    "locked": False,
                    "create_timestamp": channel.created_at,
                },
            )
        else:
            payload.update(
                position=channel.position,
                parent_id=None,
                topic=channel.topic,
                permission_overwrites=[o.payload() for o in channel.overwrites],
                default_auto_archive_duration=1440,
            )
        return payload

    def _guild_payload(self, guild: FakeGuild) -> JSON:
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "max_members": 500_000,
            "max_video_channel_users": 25,
            "features": [],
            "roles": [r.payload() for r in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "joined_at": guild.joined_at,
            "large": False,
            "unavailable": False,
            "member_count": len(guild.members),
            "members": [self._member_payload(guild, uid) for uid in guild.members],
            "channels": [self._channel_payload(c) for c in guild.channels.values()],
            "threads": [self._channel_payload(t) for t in guild.threads.values() if not t.archived],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "incidents_data": None,
        }

    def _mentions_payload(
        self, content: str, guild_id: int | None, allowed: JSON | None, extra: Sequence[int] = ()
    ) -> list[JSON]:
        """Users mentioned by ``<@id>`` in content, filtered like Discord's allowed_mentions."""
        ids = [int(m) for m in _MENTION_RE.findall(content)]
        if allowed is not None:
            allowed_ids = {int(u) for u in allowed.get("users", [])}
            parse_users = "users" in allowed.get("parse", [])
            ids = [i for i in ids if parse_users or i in allowed_ids]
        mentions: list[JSON] = []
        for user_id in dict.fromkeys([*ids, *extra]):
            entry = self._user(user_id).payload()
            guild = self.guilds.get(guild_id) if guild_id is not None else None
            if guild is not None and user_id in guild.members:
                entry["member"] = guild.members[user_id].partial()
            mentions.append(entry)
        return mentions

    def _base_message(
        self, channel: FakeChannel, author_id: int, content: str, message_id: int
    ) -> JSON:
        message: JSON = {
            "id": str(message_id),
            "channel_id": str(channel.id),
            "type": 0,
            "author": self._user(author_id).payload(),
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "flags": 0,
        }
        if channel.guild_id is not None:
            guild = self.guilds[channel.guild_id]
            message["guild_id"] = str(guild.id)
            if author_id in guild.members:
                message["member"] = guild.members[author_id].partial()
        return message

    def _user_message(
        self,
        channel_id: int,
        author_id: int,
        content: str,
        guild_id: int | None,
        message_id: int | None,
    ) -> JSON:
        guild_id = self._resolve_guild(channel_id, guild_id)
        channel = self._channel(channel_id)
        if guild_id is None:
            if channel is None:
                channel = self.open_dm(author_id, channel_id)
            self._user(author_id)
        else:
            if channel is None:
                raise KeyError(f"channel {channel_id} not in guild {guild_id}; add_channel() first")
            guild = self._guild(guild_id)
            if author_id not in guild.members:
                self.add_member(guild_id, author_id, self._user(author_id).name)
        mid = message_id if message_id is not None else self.next_snowflake()
        message = self._base_message(channel, author_id, content, mid)
        message["mentions"] = self._mentions_payload(content, guild_id, None)
        return message

    def _attach_reference(
        self, message: JSON, reply_to: int, *, fail_if_missing: bool = False
    ) -> None:
        referenced = self.messages.get(reply_to)
        if referenced is None and fail_if_missing:
            raise ApiError(400, 50035, "Invalid Form Body: Unknown message")
        message["type"] = 19
        reference: JSON = {
            "type": 0,
            "message_id": str(reply_to),
            "channel_id": message["channel_id"],
        }
        if "guild_id" in message:
            reference["guild_id"] = message["guild_id"]
        message["message_reference"] = reference
        if referenced is not None:
            message["referenced_message"] = {
                k: v for k, v in referenced.items() if k != "referenced_message"
            }

    def _bot_message(self, channel: FakeChannel, body: JSON, *, allow_empty: bool = False) -> JSON:
        """Build (and validate) a message the bot creates via REST."""
        content = str(body.get("content") or "")
        if len(content) > _MAX_CONTENT:
            raise ApiError(
                400, 50035, "Invalid Form Body: content must be 2000 or fewer in length."
            )
        files = body.get("_files", [])
        has_payload = any(body.get(k) for k in ("embeds", "sticker_ids", "components", "poll"))
        if not (allow_empty or content or files or has_payload):
            raise ApiError(400, 50006, "Cannot send an empty message")
        message = self._base_message(channel, self.bot_user_id, content, self.next_snowflake())
        message.update(
            tts=bool(body.get("tts", False)),
            embeds=list(body.get("embeds") or []),
            components=list(body.get("components") or []),
            flags=int(body.get("flags") or 0),
            attachments=[self._attachment(f) for f in files],
        )
        if body.get("nonce") is not None:
            message["nonce"] = body["nonce"]
        allowed = body.get("allowed_mentions")
        reference = body.get("message_reference")
        replied_user: list[int] = []
        if reference and reference.get("message_id"):
            ref_id = int(reference["message_id"])
            fail = reference.get("fail_if_not_exists", True) is not False
            self._attach_reference(message, ref_id, fail_if_missing=fail)
            referenced = self.messages.get(ref_id)
            if referenced is not None and (allowed is None or allowed.get("replied_user", False)):
                replied_user.append(int(referenced["author"]["id"]))
        message["mentions"] = self._mentions_payload(
            content, channel.guild_id, allowed, replied_user
        )
        return message

    def _attachment(self, file: JSON) -> JSON:
        attachment_id = self.next_snowflake()
        url = f"{self.base_url}/attachments/{attachment_id}/{file['filename']}"
        return {
            "id": str(attachment_id),
            "filename": file["filename"],
            "size": file["size"],
            "url": url,
            "proxy_url": url,
        }

    # ------------------------------------------------------------------ REST plumbing

    def _add_routes(self, app: web.Application) -> None:
        api = API_PREFIX
        msg = r"{message_id:\d+|@original}"
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/users/@me", self._get_me),
            ("GET", r"/users/{user_id:\d+}", self._get_user),
            ("POST", "/users/@me/channels", self._open_dm),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/applications/@me", self._get_application),
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("PUT", "/applications/{app_id}/commands", self._put_commands),
            ("GET", "/applications/{app_id}/commands", self._get_commands),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self._get_commands),
            ("GET", r"/channels/{channel_id:\d+}", self._get_channel),
            ("POST", r"/channels/{channel_id:\d+}/typing", self._typing),
            ("POST", r"/channels/{channel_id:\d+}/messages/bulk-delete", self._bulk_delete),
            ("GET", r"/channels/{channel_id:\d+}/messages", self._history),
            ("GET", r"/channels/{channel_id:\d+}/threads/archived/public", self._archived),
            ("POST", r"/channels/{channel_id:\d+}/messages", self._create_message),
            ("GET", r"/channels/{channel_id:\d+}/messages/{message_id:\d+}", self._get_message),
            ("PATCH", r"/channels/{channel_id:\d+}/messages/{message_id:\d+}", self._edit_message),
            (
                "DELETE",
                r"/channels/{channel_id:\d+}/messages/{message_id:\d+}",
                self._delete_message,
            ),
            (
                "PUT",
                r"/channels/{channel_id:\d+}/messages/{message_id:\d+}/reactions/{emoji}/@me",
                self._react,
            ),
            (
                "DELETE",
                r"/channels/{channel_id:\d+}/messages/{message_id:\d+}/reactions/{emoji}/@me",
                self._react,
            ),
            (
                "POST",
                r"/interactions/{interaction_id:\d+}/{token}/callback",
                self._interaction_callback,
            ),
            ("GET", "/webhooks/{app_id}/{token}", self._get_webhook),
            ("PATCH", "/webhooks/{app_id}/{token}", self._get_webhook),
            ("POST", "/webhooks/{app_id}/{token}", self._followup),
            ("GET", "/webhooks/{app_id}/{token}/messages/" + msg, self._get_webhook_message),
            ("PATCH", "/webhooks/{app_id}/{token}/messages/" + msg, self._edit_webhook_message),
            ("DELETE", "/webhooks/{app_id}/{token}/messages/" + msg, self._delete_webhook_message),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, api + path, handler)
        for ws_path in ("/", "/gateway", "/gateway/resume"):
            app.router.add_get(ws_path, self._gateway_handler)

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            response: web.StreamResponse = await handler(request)
            return response
        path = request.path[len(API_PREFIX) :]
        body = await _read_body(request)
        request[_BODY] = body  # handlers read it via _body()
        call = RestCall(request.method, path, body, dict(request.query))
        rule = next((r for r in self._rate_limits if r.matches(request.method, path)), None)
        if rule is not None:
            rule.remaining -= 1
            if rule.remaining <= 0:
                self._rate_limits.remove(rule)
            call.rate_limited = True
            response = _rate_limited_response(rule)
        else:
            try:
                self._check_auth(request, path)
                response = await handler(request)
            except ApiError as exc:
                response = _json_response({"message": exc.message, "code": exc.code}, exc.status)
            except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
                response = _json_response({"message": "404: Not Found", "code": 0}, 404)
        call.status = response.status
        self.rest_calls.append(call)
        self._bump()
        return response

    def _check_auth(self, request: web.Request, path: str) -> None:
        if self.token is None or path.startswith(("/webhooks/", "/interactions/")):
            return
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise ApiError(401, 0, "401: Unauthorized")

    def _rest_channel(self, request: web.Request) -> FakeChannel:
        channel = self._channel(int(request.match_info["channel_id"]))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    def _rest_message(self, request: web.Request) -> JSON:
        channel = self._rest_channel(request)
        message = self.messages.get(int(request.match_info["message_id"]))
        if message is None or int(message["channel_id"]) != channel.id:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    # ------------------------------------------------------------------ REST handlers

    async def _get_me(self, request: web.Request) -> web.Response:
        return _json_response(
            {**self.users[self.bot_user_id].payload(), "verified": True, "flags": 0}
        )

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return _json_response(user.payload())

    async def _open_dm(self, request: web.Request) -> web.Response:
        recipient = int(_body(request)["recipient_id"])
        return _json_response(self._channel_payload(self.open_dm(recipient)))

    async def _get_application(self, request: web.Request) -> web.Response:
        bot = self.users[self.bot_user_id]
        owner = FakeUser(self.bot_user_id + 1, "app-owner").payload()
        return _json_response(
            {
                "id": str(self.application_id),
                "name": bot.name,
                "description": "",
                "summary": "",
                "icon": None,
                "cover_image": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": owner,
                "team": None,
                "flags": 0,
                "tags": [],
                "bot": bot.payload(),
                "approximate_guild_count": len(self.guilds),
                "redirect_uris": [],
                "interactions_endpoint_url": None,
            }
        )

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return _json_response(
            {"url": self.gateway_url, "shards": self.shard_count, "session_start_limit": limit}
        )

    async def _put_commands(self, request: web.Request) -> web.Response:
        guild_raw = request.match_info.get("guild_id")
        guild_id = int(guild_raw) if guild_raw is not None else None
        previous = {(c["name"], c.get("type", 1)): c["id"] for c in self.commands.get(guild_id, [])}
        synced: list[JSON] = []
        for command in request[_BODY] if isinstance(request[_BODY], list) else []:
            ctype = command.get("type", 1)
            stored: JSON = {
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                "integration_types": [0],
                "contexts": None,
                **command,
                "type": ctype,
                "id": previous.get((command["name"], ctype)) or str(self.next_snowflake()),
                "application_id": str(self.application_id),
                "version": str(self.next_snowflake()),
            }
            if guild_id is not None:
                stored["guild_id"] = str(guild_id)
            synced.append(stored)
        self.commands[guild_id] = synced
        return _json_response(synced)

    async def _get_commands(self, request: web.Request) -> web.Response:
        guild_raw = request.match_info.get("guild_id")
        return _json_response(self.commands.get(int(guild_raw) if guild_raw else None, []))

    async def _get_channel(self, request: web.Request) -> web.Response:
        return _json_response(self._channel_payload(self._rest_channel(request)))

    async def _typing(self, request: web.Request) -> web.Response:
        self._rest_channel(request)
        return _no_content()

    async def _history(self, request: web.Request) -> web.Response:
        channel = self._rest_channel(request)
        limit = int(request.query.get("limit", 50))
        before = int(request.query.get("before", 0)) or None
        after = int(request.query.get("after", 0)) or None
        found = [
            m
            for m in self.channel_messages(channel.id)
            if (before is None or int(m["id"]) < before) and (after is None or int(m["id"]) > after)
        ]
        newest_first = list(reversed(found[-limit:] if after is None else found[:limit]))
        return _json_response(newest_first)

    async def _archived(self, request: web.Request) -> web.Response:
        channel = self._rest_channel(request)
        guild = self._guild(channel.guild_id) if channel.guild_id is not None else None
        threads = [
            self._channel_payload(t)
            for t in (guild.threads.values() if guild is not None else [])
            if t.parent_id == channel.id and t.archived and t.type == PUBLIC_THREAD
        ]
        return _json_response({"threads": threads, "members": [], "has_more": False})

    async def _create_message(self, request: web.Request) -> web.Response:
        channel = self._rest_channel(request)
        message = self._bot_message(channel, _body(request))
        self.messages[int(message["id"])] = message
        await self._echo("MESSAGE_CREATE", message)
        return _json_response(message)

    async def _get_message(self, request: web.Request) -> web.Response:
        return _json_response(self._rest_message(request))

    async def _edit_message(self, request: web.Request) -> web.Response:
        message = self._rest_message(request)
        if int(message["author"]["id"]) != self.bot_user_id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        message = self._apply_edit(message, _body(request))
        await self._echo("MESSAGE_UPDATE", message)
        return _json_response(message)

    async def _delete_message(self, request: web.Request) -> web.Response:
        message = self._rest_message(request)
        await self._delete_stored(message)
        return _no_content()

    async def _bulk_delete(self, request: web.Request) -> web.Response:
        channel = self._rest_channel(request)
        ids = [int(i) for i in _body(request).get("messages", [])]
        for mid in ids:
            self.messages.pop(mid, None)
        if self.echo_bot_messages and self._session_for(channel.guild_id) is not None:
            await self.send_bulk_delete(channel.id, ids, channel.guild_id)
        return _no_content()

    async def _react(self, request: web.Request) -> web.Response:
        self._rest_message(request)
        return _no_content()

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(int(request.match_info["interaction_id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise ApiError(404, 10062, "Unknown interaction")
        if interaction.callbacks:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        body = _body(request)
        rtype = int(body.get("type", 0))
        data: JSON = body.get("data") or {}
        flags = int(data.get("flags") or 0)
        message: JSON | None = None
        if rtype in (4, 5):  # CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
            if rtype == 5:
                data = {"flags": flags | LOADING}
            message = self._interaction_message(interaction, data, allow_empty=rtype == 5)
            interaction.original_message_id = int(message["id"])
        interaction.callbacks.append(body)  # only once valid: a 400 does not acknowledge
        self._bump()
        if message is not None:
            await self._echo("MESSAGE_CREATE", message)
        if request.query.get("with_response") not in ("1", "true", "True"):
            return _no_content()
        info: JSON = {
            "id": str(interaction.id),
            "type": 2,
            "response_message_loading": rtype == 5,
            "response_message_ephemeral": bool(flags & EPHEMERAL),
        }
        result: JSON = {"interaction": info}
        if message is not None:
            info["response_message_id"] = message["id"]
            result["resource"] = {"type": rtype, "message": message}
        elif rtype in (6, 7, 8, 9):
            result["resource"] = {"type": rtype}
        return _json_response(result)

    def _interaction_message(
        self, interaction: FakeInteraction, data: JSON, *, allow_empty: bool
    ) -> JSON:
        channel = self._channel(interaction.channel_id)
        assert channel is not None
        message = self._bot_message(channel, data, allow_empty=allow_empty)
        message.update(
            type=20,
            webhook_id=str(self.application_id),
            application_id=str(self.application_id),
            interaction_metadata={
                "id": str(interaction.id),
                "type": 2,
                "name": interaction.name,
                "user": self._user(interaction.user_id).payload(),
                "authorizing_integration_owners": interaction.payload[
                    "authorizing_integration_owners"
                ],
            },
        )
        self.messages[int(message["id"])] = message
        return message

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction:
        token = request.match_info["token"]
        if request.match_info["app_id"] == str(self.application_id):
            for interaction in self.interactions.values():
                if interaction.token == token:
                    return interaction
        raise ApiError(404, 10015, "Unknown Webhook")

    def _webhook_message(self, request: web.Request) -> tuple[FakeInteraction, JSON]:
        interaction = self._webhook_interaction(request)
        raw = request.match_info["message_id"]
        mid = interaction.original_message_id if raw == "@original" else int(raw)
        owned = [interaction.original_message_id, *interaction.followup_ids]
        if mid is None or mid not in owned or mid not in self.messages:
            raise ApiError(404, 10008, "Unknown Message")
        return interaction, self.messages[mid]

    async def _get_webhook(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        return _json_response(
            {
                "id": str(self.application_id),
                "type": 3,
                "application_id": str(self.application_id),
                "name": self.users[self.bot_user_id].name,
                "avatar": None,
                "token": interaction.token,
                "channel_id": str(interaction.channel_id),
                "guild_id": str(interaction.guild_id) if interaction.guild_id else None,
            }
        )

    async def _followup(self, request: web.Request) -> web.StreamResponse:
        interaction = self._webhook_interaction(request)
        if not interaction.callbacks:
            raise ApiError(404, 10015, "Unknown Webhook")
        body = _body(request)
        original = self.messages.get(interaction.original_message_id or 0)
        if original is not None and int(original["flags"]) & LOADING:
            # The first follow-up after a deferred "thinking" response replaces that message.
            message = self._apply_edit(original, body, keep_flags=EPHEMERAL)
            await self._echo("MESSAGE_UPDATE", message)
        else:
            message = self._interaction_message(interaction, body, allow_empty=False)
            interaction.followup_ids.append(int(message["id"]))
            await self._echo("MESSAGE_CREATE", message)
        if request.query.get("wait") in ("1", "true", "True"):
            return _json_response(message)
        return _no_content()

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        return _json_response(self._webhook_message(request)[1])

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        _, message = self._webhook_message(request)
        message = self._apply_edit(message, _body(request), keep_flags=EPHEMERAL)
        await self._echo("MESSAGE_UPDATE", message)
        return _json_response(message)

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        _, message = self._webhook_message(request)
        await self._delete_stored(message)
        return _no_content()

    def _apply_edit(self, message: JSON, body: JSON, *, keep_flags: int | None = None) -> JSON:
        edited = dict(message)
        for key in ("content", "embeds", "components"):
            if key in body and body[key] is not None:
                edited[key] = body[key]
        if len(str(edited.get("content") or "")) > _MAX_CONTENT:
            raise ApiError(
                400, 50035, "Invalid Form Body: content must be 2000 or fewer in length."
            )
        if keep_flags is not None:
            edited["flags"] = (int(message["flags"]) & keep_flags) | int(body.get("flags") or 0)
        elif "flags" in body and body["flags"] is not None:
            edited["flags"] = int(body["flags"])
        edited["edited_timestamp"] = _now_iso()
        edited["mentions"] = self._mentions_payload(
            str(edited.get("content") or ""), _guild_of(edited), body.get("allowed_mentions")
        )
        self.messages[int(edited["id"])] = edited
        return edited

    async def _delete_stored(self, message: JSON) -> None:
        self.messages.pop(int(message["id"]), None)
        data: JSON = {"id": message["id"], "channel_id": message["channel_id"]}
        if "guild_id" in message:
            data["guild_id"] = message["guild_id"]
        await self._echo("MESSAGE_DELETE", data, flags=int(message.get("flags", 0)))


# ---------------------------------------------------------------------- module helpers


def _body(request: web.Request) -> JSON:
    """The request's JSON object body (``{}`` when absent or not an object)."""
    body = request[_BODY]
    return body if isinstance(body, dict) else {}


def _guild_of(message: Mapping[str, Any]) -> int | None:
    raw = message.get("guild_id")
    return int(raw) if raw is not None else None


def _option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3


def _options_payload(options: Mapping[str, Any] | Sequence[JSON] | None) -> list[JSON]:
    if options is None:
        return []
    if isinstance(options, Mapping):
        return [{"name": k, "type": _option_type(v), "value": v} for k, v in options.items()]
    return [dict(o) for o in options]


async def _read_body(request: web.Request) -> Any:
    """JSON body, or for multipart the ``payload_json`` part plus ``_files`` metadata."""
    if request.content_type.startswith("multipart/"):
        body: JSON = {}
        files: list[JSON] = []
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "payload_json":
                body.update(json.loads(await part.text()))
            else:
                data = await part.read()
                files.append(
                    {"field": part.name, "filename": part.filename or "file", "size": len(data)}
                )
        if files:
            body["_files"] = files
        return body
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _rate_limited_response(rule: _RateLimitRule) -> web.Response:
    # discord.py treats a 429 as a real rate limit only with a Via header and a JSON body;
    # otherwise it assumes a Cloudflare ban and raises HTTPException.
    headers = {
        "Via": "1.1 google",
        "Retry-After": str(max(1, round(rule.retry_after))),
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
        "X-RateLimit-Bucket": f"fake-{abs(hash(rule.suffix)):x}",
        "X-RateLimit-Scope": "global" if rule.is_global else "user",
    }
    if rule.is_global:
        headers["X-RateLimit-Global"] = "true"
    body = {
        "message": "You are being rate limited.",
        "retry_after": rule.retry_after,
        "global": rule.is_global,
    }
    return _json_response(body, 429, headers)
