"""The Discord adapter: discord.py 2.x, translating Discord into :mod:`bot.core.events` and back.

It translates and nothing else. What to remember, when to answer, who may forget a channel and
how a DM is scoped are the core's (:class:`~bot.platforms.base.Core`); citations arrive
already formatted for Discord (:mod:`bot.platforms.discord.format`), so answers are posted as
given.

* Messages in text channels, threads and DMs become :class:`~bot.core.events.MessageEvent`: the
  author (``discord:<user id>``) produced it for the channel (``discord:<channel id>``; a
  thread's parent channel, with ``thread_id = discord:<thread id>``) of the guild
  (``discord:<guild id>``); a DM is reported as one, from its channel alone (which every raw
  event carries, so an edit or deletion of a message no longer cached still finds it).
  Mentions read as ``@name``; a mention of the bot that opens the message is dropped (it is
  what ``mentions_bot`` says), and so is a reply to one of the bot's messages.
* Answers go in reply to the message (in its thread), typing meanwhile, in pieces of at most
  2,000 characters, never pinging anyone (:mod:`bot.platforms.discord.replier`).
* Edits and deletions come from the raw events, so messages out of discord.py's cache count.
* ``/recall``, ``/forget``, ``/remember``, ``/memory`` and the message menu "Forget this
  message" are deferred ephemerally ("thinking...") and answered with ephemeral follow-ups.
* ``DISCORD_API_BASE`` and ``DISCORD_GATEWAY_URL`` point discord.py at a proxy (or, in tests,
  at a fake Discord); ``DISCORD_SHARDS`` (a number or ``auto``) uses ``AutoShardedClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl
from discord import app_commands

from bot.core.events import (
    Author,
    CommandEvent,
    CommandName,
    DeleteEvent,
    EditEvent,
    MessageEvent,
    Place,
    dm_org,
    pid,
)
from bot.platforms.base import Core, StartupError
from bot.settings import Settings
from memory.lru import Lru

from . import mapping
from .format import PLATFORM, discord_source_id, jump_url
from .history import DiscordHistory
from .replier import NO_PINGS, InteractionReplier, MessageReplier

if TYPE_CHECKING:
    from bot.importers.backfill import Job

log = logging.getLogger(__name__)

SORRY = "Sorry, something went wrong. Please try again."
#: A refused token, or Discord out of reach: the operator's to fix, said in one line.
NOT_STARTED = (discord.LoginFailure, discord.HTTPException, aiohttp.ClientError, OSError)
KEEP_LINKS = 10_000  # jump URLs remembered for citations
KEEP_CHANNELS = 10_000  # channel -> (parent channel, name) resolutions
SETTLE_SECONDS = 120.0  # an edit or deletion waits this long at most for the message's handling


class _Client(discord.Client):
    """discord.py's client, with the adapter's hooks and handlers and a command tree."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self.adapter = adapter
        self.tree: app_commands.CommandTree[Any] = app_commands.CommandTree(self)
        adapter.register_commands(self.tree)

    async def setup_hook(self) -> None:
        await self.adapter.sync_commands(self.tree)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if self.adapter.identify_pause:  # Discord's pacing between IDENTIFYs; tests skip it
            await super().before_identify_hook(shard_id, initial=initial)

    async def on_ready(self) -> None:
        log.info("Discord: connected as %s to %d server(s)", self.user, len(self.guilds))

    async def on_resumed(self) -> None:
        log.info("Discord: gateway session resumed")

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        await self.adapter.on_raw_message_edit(payload)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self.adapter.on_raw_message_delete(payload)

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self.adapter.on_raw_bulk_message_delete(payload)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.adapter.on_guild_join(guild)


class _ShardedClient(_Client, discord.AutoShardedClient):
    """The same, on several gateway connections (``DISCORD_SHARDS``)."""


class DiscordAdapter:
    """Runs a discord.py client for the core. ``start()`` logs in (and syncs the slash
    commands) and connects in a background task; ``close()`` stops it."""

    def __init__(
        self,
        conversation: Core,
        settings: Settings,
        *,
        identify_pause: bool = True,
        **client_options: Any,
    ) -> None:
        """``identify_pause=False`` skips discord.py's 5 s pause before a re-IDENTIFY (tests);
        ``client_options`` go to ``discord.Client`` (e.g. ``guild_ready_timeout``)."""
        self.conversation = conversation
        self.settings = settings
        self.identify_pause = identify_pause
        self.client_options = client_options
        self.guild: discord.Object | None = None
        if settings.discord_guild_id:
            try:
                self.guild = discord.Object(int(settings.discord_guild_id))
            except ValueError:
                raise StartupError(
                    f"DISCORD_GUILD_ID must be a server id (a number), not"
                    f" {settings.discord_guild_id!r}"
                ) from None
        shards = settings.discord_shards
        if isinstance(shards, int) and shards < 1:
            raise StartupError(f"DISCORD_SHARDS must be 'auto' or at least 1, not {shards}")
        self._client: _Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._error: BaseException | None = None
        self._saved_endpoints: tuple[str, yarl.URL] | None = None
        self._handling: set[asyncio.Task[Any]] = set()
        self._pending: dict[int, asyncio.Event] = {}  # message id -> handled
        self._links: Lru[str, str] = Lru(KEEP_LINKS)
        self._channels: Lru[int, tuple[int, str | None]] = Lru(KEEP_CHANNELS)
        #: the channels' history, for the backfill; ``joined`` (set by the app) hears of the
        #: channels of a server the bot was added to
        self.history = DiscordHistory(self)
        self.joined: Callable[[Job], object] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def client(self) -> discord.Client:
        if self._client is None:
            raise RuntimeError("the Discord adapter is not started")
        return self._client

    @staticmethod
    def intents() -> discord.Intents:
        """Servers, their messages, DMs, and message content (privileged: enable it in the
        Developer Portal). Not members nor presences: members come with their messages."""
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = True
        return intents

    def _make_client(self) -> _Client:
        options: dict[str, Any] = {"intents": self.intents(), "allowed_mentions": NO_PINGS}
        options.update(self.client_options)
        shards = self.settings.discord_shards
        if shards is None:
            return _Client(self, **options)
        if shards != "auto":
            options["shard_count"] = shards
        return _ShardedClient(self, **options)

    def _point_endpoints(self) -> None:
        """Send REST and gateway traffic where the settings say (a proxy, a fake)."""
        route, ws = discord.http.Route, discord.gateway.DiscordWebSocket
        self._saved_endpoints = (route.BASE, ws.DEFAULT_GATEWAY)
        if self.settings.discord_api_base:
            route.BASE = self.settings.discord_api_base.rstrip("/")
        if self.settings.discord_gateway_url:
            ws.DEFAULT_GATEWAY = yarl.URL(self.settings.discord_gateway_url)

    def _restore_endpoints(self) -> None:
        if self._saved_endpoints is not None:
            base, gateway = self._saved_endpoints
            discord.http.Route.BASE = base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway
            self._saved_endpoints = None

    async def start(self) -> None:
        """Log in (checks the token, syncs the commands), then connect in the background."""
        if self._client is not None:
            raise RuntimeError("the Discord adapter is already started")
        token = self.settings.discord_token
        if token is None or not token.get_secret_value().strip():
            raise StartupError("DISCORD_TOKEN is not set")
        self._point_endpoints()
        client = self._make_client()
        try:
            await client.login(token.get_secret_value().strip())
        except BaseException as exc:
            await client.close()
            self._restore_endpoints()
            if isinstance(exc, NOT_STARTED):
                raise StartupError(str(exc)) from None
            raise
        self._client = client
        self._closing = False
        self._task = asyncio.create_task(self._connect(client), name="discord-gateway")

    async def _connect(self, client: _Client) -> None:
        try:
            await client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired as exc:
            self._error = exc
            log.error(
                "Discord refused the Message Content intent: enable it for the bot in the"
                " Developer Portal (Bot > Privileged Gateway Intents), then restart."
            )
        except Exception as exc:
            self._error = exc
            if not self._closing:
                log.exception("Discord: the gateway connection ended")

    async def wait_until_ready(self) -> None:
        """Until the gateway is READY (the servers are known); raises if it failed."""
        ready = asyncio.create_task(self.client.wait_until_ready())
        assert self._task is not None
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            raise RuntimeError("the Discord connection ended before it was ready") from (
                self._error
            )

    async def wait_closed(self) -> None:
        """Until the connection ends (by ``close()`` or for good); re-raises its error."""
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._error is not None and not self._closing:
            raise self._error

    async def close(self) -> None:
        """Stop taking events, let those being handled finish (bounded), disconnect."""
        self._closing = True
        current = asyncio.current_task()
        busy = {t for t in self._handling if t is not current and not t.done()}
        if busy:
            await asyncio.wait(busy, timeout=8)
        if self._client is not None:
            await self._client.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        self._client = None
        self._restore_endpoints()

    @contextlib.contextmanager
    def _handling_event(self, message_id: int | None = None) -> Iterator[None]:
        """Marks an event handler as running (``close()`` waits for it) and, for a new
        message, as pending (an edit or deletion of it waits until it is stored)."""
        task = asyncio.current_task()
        if task is not None:
            self._handling.add(task)
        done = asyncio.Event()
        if message_id is not None:
            self._pending[message_id] = done
        try:
            yield
        finally:
            done.set()
            if message_id is not None and self._pending.get(message_id) is done:
                del self._pending[message_id]
            if task is not None:
                self._handling.discard(task)

    async def _settled(self, message_ids: Iterable[int]) -> None:
        """Wait until these messages' own handling is over (stored, answered), so that a
        quick edit or deletion is never overtaken by the message it changes."""
        waits = [self._pending[m].wait() for m in message_ids if m in self._pending]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), timeout=SETTLE_SECONDS)

    # -- translation: where, who, what -----------------------------------------------------

    def _bot_id(self) -> str | None:
        user = self.client.user
        return pid(PLATFORM, str(user.id)) if user is not None else None

    @property
    def bot_pid(self) -> str | None:
        return self._bot_id()

    async def on_guild_join(self, guild: discord.Guild) -> None:
        """Added to a server: the history of its channels is read (the backfill decides)."""
        log.info("Discord: added to server %s", guild.id)
        if self.joined is None:
            return
        try:
            for job in await self.history.guild_jobs(guild):
                self.joined(job)
        except Exception:
            log.exception("Discord: listing the channels of server %s failed", guild.id)

    def _remember_channel(self, channel_id: int, parent_id: int, name: str | None) -> None:
        self._channels.put(channel_id, (parent_id, name))

    async def _resolve_channel(
        self, channel: object, channel_id: int, *, fetch: bool
    ) -> tuple[int, int | None, str | None]:
        """``(channel for memory, thread or None, name)``: a thread's messages belong to its
        parent channel. An uncached channel is fetched once when ``fetch``."""
        if channel is None or isinstance(channel, discord.PartialMessageable):
            channel = self.client.get_channel(channel_id)
        if channel is None or isinstance(channel, discord.PartialMessageable):
            known = self._channels.get(channel_id)
            if known is None and fetch:
                try:
                    channel = await self.client.fetch_channel(channel_id)
                except discord.HTTPException as exc:
                    log.warning("Discord: cannot read channel %s: %s", channel_id, exc)
            if known is not None:
                parent_id, known_name = known
                return parent_id, (channel_id if parent_id != channel_id else None), known_name
        if isinstance(channel, discord.Thread):
            parent = channel.parent
            name = parent.name if parent is not None else channel.name
            self._remember_channel(channel_id, channel.parent_id, name)
            return channel.parent_id, channel_id, name
        raw_name = getattr(channel, "name", None)
        own_name = raw_name if isinstance(raw_name, str) else None
        if channel is not None and not isinstance(channel, discord.PartialMessageable):
            self._remember_channel(channel_id, channel_id, own_name)
        return channel_id, None, own_name

    async def _place(
        self, guild_id: int | None, channel: object, channel_id: int, *, fetch: bool = True
    ) -> Place:
        if guild_id is None:
            return mapping.place(None, channel_id, bot_id=self._bot_id())
        parent, thread, name = await self._resolve_channel(channel, channel_id, fetch=fetch)
        return mapping.place(guild_id, parent, thread_id=thread, name=name, bot_id=self._bot_id())

    @staticmethod
    def author(user: discord.User | discord.Member, *, webhook: bool = False) -> Author:
        return mapping.author(user.id, user.display_name, is_bot=user.bot or webhook)

    def readable(self, message: discord.Message) -> str:
        """The content as people read it (:func:`mapping.readable_text`), with the names
        Discord sent along and the server's roles and channels."""
        me = self.client.user
        own: list[str] = []
        if me is not None:
            own.append(f"<@!?{me.id}>")
            role = message.guild.self_role if message.guild is not None else None
            if role is not None:
                own.append(f"<@&{role.id}>")
        users = {u.id: u.display_name for u in message.mentions}
        roles = {r.id: r.name for r in message.role_mentions}
        guild = message.guild

        def role_name(role_id: int) -> str | None:
            if role_id in roles:
                return roles[role_id]
            found = guild.get_role(role_id) if guild is not None else None
            return found.name if found is not None else None

        def channel_name(channel_id: int) -> str | None:
            found = guild.get_channel_or_thread(channel_id) if guild is not None else None
            return found.name if found is not None else None

        return mapping.readable_text(
            message.content,
            own=own,
            users=users.get,
            roles=role_name,
            channels=channel_name,
            files=[a.filename for a in message.attachments],
        )

    async def message_event(self, message: discord.Message) -> MessageEvent | None:
        """The core event of a message someone said (the bot's own as its answer), or None
        for joins, pins and other notices."""
        if message.type.name not in mapping.SAID_TYPES:
            return None
        place = await self._place(
            message.guild.id if message.guild is not None else None,
            message.channel,
            message.channel.id,
        )
        me = self.client.user
        if me is not None and message.author.id == me.id:
            who = mapping.author(me.id, self.settings.bot_name, is_bot=False)
        else:
            who = self.author(message.author, webhook=message.webhook_id is not None)
        return mapping.message_event(
            place,
            who,
            self.readable(message),
            message_id=message.id,
            created_at=message.created_at,
            mentions_bot=await self.mentions_bot(message),
            link_channel=message.channel.id,
        )

    async def mentions_bot(self, message: discord.Message) -> bool:
        """A mention of the bot (its user or its role), or a reply to one of its messages."""
        me = self.client.user
        if me is None:
            return False
        if any(u.id == me.id for u in message.mentions):
            return True
        role = message.guild.self_role if message.guild is not None else None
        if role is not None and any(r.id == role.id for r in message.role_mentions):
            return True
        ref = message.reference
        if (
            ref is None
            or ref.message_id is None
            or ref.type is not discord.MessageReferenceType.reply
        ):
            return False
        resolved = ref.resolved if ref.resolved is not None else ref.cached_message
        if isinstance(resolved, discord.DeletedReferencedMessage):
            return False
        if resolved is None:
            try:
                resolved = await message.channel.fetch_message(ref.message_id)
            except discord.HTTPException as exc:
                log.info("Discord: cannot read replied-to message %s: %s", ref.message_id, exc)
                return False
        return resolved.author.id == me.id

    def remember_link(self, source_id: str, url: str) -> None:
        self._links.put(source_id, url)

    async def permalink(self, place: Place, source_id: str) -> str | None:
        """The jump URL of a stored message: known, stored, or built from its channel."""
        if url := self._links.get(source_id):
            return url
        found = await self.conversation.find_message(place, source_id)
        if found is None:
            guild = None if place.is_dm else place.org_id
            return jump_url(guild, place.thread_id or place.channel_id, source_id)
        if found.link:
            return found.link
        guild = None if found.org_id == dm_org(PLATFORM) else found.org_id
        return jump_url(guild, found.thread_id or found.produced_for, source_id)

    # -- gateway events --------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if self._closing or me is None or message.author.id == me.id:
            return  # Discord echoes the bot's own messages; the core stored them already
        if message.type.name not in mapping.SAID_TYPES:
            return  # joins, pins, thread notices...
        with self._handling_event(message.id):
            try:
                event = await self.message_event(message)
                if event is None:
                    return
                self.remember_link(event.source_id, message.jump_url)
                replier = MessageReplier(self, message, event.place)
                await self.conversation.handle_message(event, replier)
            except Exception:
                log.exception("Discord: handling message %s failed", message.id)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        me = self.client.user
        message = payload.message
        if self._closing or me is None or message.author.id == me.id:
            return
        if "content" not in payload.data:
            return  # an update of something else (embeds, flags...)
        with self._handling_event():
            await self._settled([payload.message_id])
            try:
                place = await self._place(
                    payload.guild_id, message.channel, payload.channel_id, fetch=False
                )
                await self.conversation.handle_edit(
                    EditEvent(
                        place=place,
                        source_id=discord_source_id(str(payload.message_id)),
                        text=self.readable(message),
                        editor_id=pid(PLATFORM, str(message.author.id)),
                    )
                )
            except Exception:
                log.exception("Discord: handling the edit of %s failed", payload.message_id)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._deleted(payload.guild_id, payload.channel_id, [payload.message_id])

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._deleted(payload.guild_id, payload.channel_id, sorted(payload.message_ids))

    async def _deleted(self, guild_id: int | None, channel_id: int, ids: list[int]) -> None:
        """Deleted on Discord, forgotten here (the bot's own answers too: a moderator who
        deletes one does not want it quoted again)."""
        if self._closing or not ids:
            return
        with self._handling_event():
            await self._settled(ids)
            try:
                place = await self._place(guild_id, None, channel_id, fetch=False)
                source_ids = tuple(discord_source_id(str(i)) for i in ids)
                await self.conversation.handle_delete(DeleteEvent(place, source_ids))
            except Exception:
                log.exception("Discord: handling the deletion of %s failed", ids)

    # -- commands --------------------------------------------------------------------------

    def register_commands(self, tree: app_commands.CommandTree[Any]) -> None:
        """``/recall``, ``/forget``, ``/remember``, ``/memory`` and the message menu
        "Forget this message"."""

        @tree.command(name="recall", description="What I remember about something said here")
        @app_commands.describe(query="what to look for")
        async def recall(interaction: discord.Interaction[Any], query: str) -> None:
            await self.command(interaction, "recall", query)

        @tree.command(
            name="forget",
            description="Forget what you said (me), one message (a link or id), or this channel",
        )
        @app_commands.describe(what="me, a message link or id, or channel (needs Manage Messages)")
        async def forget(interaction: discord.Interaction[Any], what: str) -> None:
            await self.command(interaction, "forget", what)

        @tree.command(name="remember", description="Tell me a fact about you to use here")
        @app_commands.describe(fact="e.g. role: backend developer")
        async def remember(interaction: discord.Interaction[Any], fact: str) -> None:
            await self.command(interaction, "remember", fact)

        @tree.command(name="memory", description="What I keep about you; turn it off or on")
        @app_commands.describe(setting="off: stop storing what you say; on: store it again")
        async def memory(
            interaction: discord.Interaction[Any], setting: Literal["off", "on"] | None = None
        ) -> None:
            await self.command(interaction, "memory", setting or "")

        @tree.context_menu(name="Forget this message")
        async def forget_message(
            interaction: discord.Interaction[Any], message: discord.Message
        ) -> None:
            target = discord_source_id(str(message.id))
            await self.command(interaction, "forget", "", target=target)

    async def sync_commands(self, tree: app_commands.CommandTree[Any]) -> None:
        """Once at start: to DISCORD_GUILD_ID (instant there), else globally (Discord may
        take a while to show new global commands)."""
        try:
            if self.guild is not None:
                tree.copy_global_to(guild=self.guild)
                synced = await tree.sync(guild=self.guild)
                log.info("Discord: %d command(s) synced to server %s", len(synced), self.guild.id)
            else:
                synced = await tree.sync()
                log.info("Discord: %d command(s) synced globally", len(synced))
        except discord.HTTPException as exc:
            log.error(
                "Discord: syncing the slash commands failed (%s); was the bot invited with"
                " the applications.commands scope?",
                exc,
            )

    async def command(
        self,
        interaction: discord.Interaction[Any],
        name: CommandName,
        text: str,
        *,
        target: str | None = None,
    ) -> None:
        """Defer (ephemeral, thinking: the work may take longer than Discord's 3 s), run the
        core's command, which answers with an ephemeral follow-up."""
        if self._closing:
            return
        with self._handling_event():
            try:
                await interaction.response.defer(ephemeral=True, thinking=True)
            except discord.HTTPException as exc:
                log.warning("Discord: /%s could not be acknowledged: %s", name, exc)
                return
            place = await self._place(
                interaction.guild_id, interaction.channel, interaction.channel_id or 0
            )
            author = self.author(interaction.user)
            event = CommandEvent(
                place=place,
                author=author,
                name=name,
                text=text.strip(),
                is_channel_admin=bool(interaction.permissions.manage_messages),
                target_source_id=target,
            )
            replier = InteractionReplier(self, interaction, place)
            try:
                await self.conversation.handle_command(event, replier)
            except Exception:
                log.exception("Discord: /%s failed", name)
                with contextlib.suppress(discord.HTTPException):
                    await replier.ephemeral(SORRY)
