"""Tests for tests/fakes/discord_server.py, driven by the real discord.py client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import discord
import pytest
from discord import app_commands

from tests.fakes.discord.server import (
    EPHEMERAL,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    MANAGE_MESSAGES,
    FakeDiscord,
)
from tests.polling import eventually

pytestmark = pytest.mark.timeout(30)

GUILD = 700_000_000_000_000_001
CHANNEL = 700_000_000_000_000_010
THREAD = 700_000_000_000_000_020
OWNER = 700_000_000_000_000_100
ALICE = 700_000_000_000_000_200
MOD = 700_000_000_000_000_300
DM_CHANNEL = 700_000_000_000_000_400

T = TypeVar("T")


class MemoryBot(discord.Client):
    """A tiny bot shaped like ChannelMind's Discord adapter; records what it sees."""

    def __init__(self, *, message_content: bool = True) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        # guild_ready_timeout: on_ready waits this long after the last GUILD_CREATE (default 2 s).
        super().__init__(intents=intents, guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.events: defaultdict[str, list[Any]] = defaultdict(list)
        guild = discord.Object(GUILD)

        @self.tree.command(name="recall", description="Recall channel memory", guild=guild)
        async def recall(interaction: discord.Interaction, query: str) -> None:
            self.events["recall"].append((query, interaction.permissions.manage_messages))
            await interaction.response.send_message(f"recalled: {query}", ephemeral=True)

        @self.tree.context_menu(name="Remember this", guild=guild)
        async def remember(interaction: discord.Interaction, message: discord.Message) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            await interaction.followup.send(f"remembering {message.id}", ephemeral=True)
            await interaction.edit_original_response(content=f"remembered: {message.content}")

    async def setup_hook(self) -> None:
        await self.tree.sync(guild=discord.Object(GUILD))

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every re-IDENTIFY; skip that in tests."""

    async def on_message(self, message: discord.Message) -> None:
        self.events["message"].append(message)
        assert self.user is not None
        if message.author == self.user or not self.user.mentioned_in(message):
            return
        async with message.channel.typing():
            await message.reply("noted", allowed_mentions=discord.AllowedMentions.none())

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.events["raw_edit"].append(payload)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.events["raw_delete"].append(payload)

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        self.events["raw_bulk_delete"].append(payload)

    async def on_resumed(self) -> None:
        self.events["resumed"].append(True)


@contextlib.asynccontextmanager
async def running(client: discord.Client) -> AsyncIterator[asyncio.Task[None]]:
    """Start ``client`` against the fake, wait for on_ready, and always close it."""
    task = asyncio.create_task(client.start("fake-token"))
    try:
        await eventually(lambda: client.is_ready() or task.done(), within=10)
        if task.done():
            task.result()  # surface the startup error
        yield task
    finally:
        await client.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)


def setup_guild(fake: FakeDiscord) -> None:
    fake.add_guild(GUILD, "Test Guild", owner_id=OWNER)
    fake.add_channel(GUILD, CHANNEL, "general")
    fake.add_thread(GUILD, CHANNEL, THREAD, "planning")
    fake.add_member(GUILD, ALICE, "alice")
    fake.add_member(GUILD, MOD, "mod", permissions=MANAGE_MESSAGES)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        setup_guild(server)
        with server.point_discord_py_here():
            yield server


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[MemoryBot]:
    client = MemoryBot()
    async with running(client):
        yield client


def messages_with(bot: MemoryBot, content: str) -> list[discord.Message]:
    return [m for m in bot.events["message"] if m.content == content]


async def test_identify_intents_ready_and_guild_cache(fake: FakeDiscord, bot: MemoryBot) -> None:
    [identify] = fake.identify_payloads
    assert identify["token"] == "fake-token"
    for bit in (
        INTENT_GUILDS,
        INTENT_GUILD_MESSAGES,
        INTENT_DIRECT_MESSAGES,
        INTENT_MESSAGE_CONTENT,
    ):
        assert identify["intents"] & bit
    assert fake.gateway_connections == ["/gateway"]

    assert bot.user is not None and bot.user.id == fake.bot_user_id
    assert bot.application_id == fake.application_id
    guild = bot.get_guild(GUILD)
    assert guild is not None and guild.name == "Test Guild" and guild.owner_id == OWNER
    channel = guild.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel) and channel.name == "general"
    thread = guild.get_thread(THREAD)
    assert thread is not None and thread.parent_id == CHANNEL
    mod_role = guild.get_role(fake.guilds[GUILD].members[MOD].roles[-1])
    assert mod_role is not None and mod_role.name == "mod perms"
    assert mod_role.permissions.manage_messages
    assert guild.me.guild_permissions.send_messages
    assert not guild.me.guild_permissions.manage_messages

    paths = [(c.method, c.path) for c in fake.rest_calls]
    assert ("GET", "/users/@me") in paths
    assert ("GET", "/oauth2/applications/@me") in paths
    [sync] = await fake.wait_for_rest(
        "PUT", f"/applications/{fake.application_id}/guilds/{GUILD}/commands"
    )
    assert {c["name"] for c in sync.json} == {"recall", "Remember this"}
    assert {(c["name"], c["type"]) for c in fake.commands[GUILD]} == {
        ("recall", 1),
        ("Remember this", 3),
    }


async def test_mention_gets_typing_and_reply_without_pings(
    fake: FakeDiscord, bot: MemoryBot
) -> None:
    sent = await fake.send_message(CHANNEL, ALICE, "what did we decide?", mentions_bot=True)
    path = f"/channels/{CHANNEL}/messages"
    [reply] = await fake.wait_for_rest("POST", path)
    [typing] = await fake.wait_for_rest("POST", f"/channels/{CHANNEL}/typing")
    assert fake.rest_calls.index(typing) < fake.rest_calls.index(reply)

    assert reply.json["content"] == "noted"
    assert reply.json["message_reference"]["message_id"] == int(sent["id"])
    assert reply.json["allowed_mentions"]["parse"] == []
    assert reply.json["allowed_mentions"] == {"parse": []}  # replied_user defaults to off

    incoming = bot.events["message"][0]
    assert incoming.id == int(sent["id"]) and incoming.author.id == ALICE
    assert incoming.content == f"<@{fake.bot_user_id}> what did we decide?"
    assert bot.user in incoming.mentions
    assert incoming.guild is not None and incoming.guild.id == GUILD

    # Discord echoes the bot's own message back; the bot must not answer itself.
    [echo] = await eventually(lambda: messages_with(bot, "noted"))
    assert echo.author == bot.user
    assert echo.reference is not None and echo.reference.message_id == incoming.id
    assert fake.channel_messages(CHANNEL)[-1]["mentions"] == []  # nobody was pinged
    await asyncio.sleep(0.1)
    assert len([c for c in fake.rest_calls if c.path == path]) == 1


async def test_thread_and_dm_messages(fake: FakeDiscord, bot: MemoryBot) -> None:
    await fake.send_message(THREAD, ALICE, "in the thread")
    [in_thread] = await eventually(lambda: messages_with(bot, "in the thread"))
    assert isinstance(in_thread.channel, discord.Thread)
    assert in_thread.channel.parent_id == CHANNEL

    await fake.send_message(DM_CHANNEL, ALICE, "private hello")
    [dm] = await eventually(lambda: messages_with(bot, "private hello"))
    assert dm.guild is None and isinstance(dm.channel, discord.DMChannel)
    assert dm.channel.id == DM_CHANNEL

    user = await bot.fetch_user(ALICE)
    await user.send("hello from the bot")
    [opened] = await fake.wait_for_rest("POST", "/users/@me/channels")
    assert opened.json == {"recipient_id": ALICE}
    [sent] = await fake.wait_for_rest("POST", f"/channels/{DM_CHANNEL}/messages")
    assert sent.json["content"] == "hello from the bot"


async def test_raw_edit_and_delete_fire_for_uncached_messages(
    fake: FakeDiscord, bot: MemoryBot
) -> None:
    unseen = fake.next_snowflake()
    await fake.send_edit(CHANNEL, unseen, "edited text", author_id=ALICE)
    [edit] = await eventually(lambda: bot.events["raw_edit"])
    assert edit.message_id == unseen and edit.guild_id == GUILD and edit.channel_id == CHANNEL
    assert edit.cached_message is None
    assert edit.message.content == "edited text" and edit.message.author.id == ALICE

    await fake.send_delete(CHANNEL, unseen)
    [delete] = await eventually(lambda: bot.events["raw_delete"])
    assert delete.message_id == unseen and delete.guild_id == GUILD
    assert delete.cached_message is None

    ids = [fake.next_snowflake(), fake.next_snowflake()]
    await fake.send_bulk_delete(CHANNEL, ids)
    [bulk] = await eventually(lambda: bot.events["raw_bulk_delete"])
    assert bulk.message_ids == set(ids) and bulk.channel_id == CHANNEL

    # A message the client did see is cached, so the raw event carries the old version.
    seen = await fake.send_message(CHANNEL, ALICE, "first draft")
    await fake.send_edit(CHANNEL, int(seen["id"]), "second draft")
    cached_edit = await eventually(lambda: bot.events["raw_edit"][1:])
    assert cached_edit[0].cached_message is not None
    assert cached_edit[0].cached_message.content == "first draft"
    assert cached_edit[0].message.content == "second draft"


async def test_slash_command_replies_ephemerally(fake: FakeDiscord, bot: MemoryBot) -> None:
    iid = await fake.send_interaction(
        "recall", {"query": "budget"}, user_id=MOD, channel_id=CHANNEL
    )
    response = await fake.wait_for_interaction_response(iid)
    assert response["type"] == 4
    assert response["data"]["flags"] == EPHEMERAL
    assert response["data"]["content"] == "recalled: budget"

    interaction = fake.interactions[iid]
    [synced] = [c for c in fake.commands[GUILD] if c["name"] == "recall"]
    assert interaction.payload["data"]["id"] == synced["id"]
    [callback] = await fake.wait_for_rest(
        "POST", f"/interactions/{iid}/{interaction.token}/callback"
    )
    assert callback.query == {"with_response": "1"}

    iid2 = await fake.send_interaction("recall", {"query": "x"}, user_id=ALICE, channel_id=CHANNEL)
    await fake.wait_for_interaction_response(iid2)
    assert bot.events["recall"] == [("budget", True), ("x", False)]
    await asyncio.sleep(0.05)
    assert not [m for m in bot.events["message"] if m.content.startswith("recalled")]


async def test_message_context_menu_defers_then_follows_up(
    fake: FakeDiscord, bot: MemoryBot
) -> None:
    target = await fake.send_message(CHANNEL, ALICE, "ship on friday")
    iid = await fake.send_interaction(
        "Remember this",
        user_id=MOD,
        channel_id=CHANNEL,
        command_type=3,
        target_message_id=int(target["id"]),
    )
    response = await fake.wait_for_interaction_response(iid)
    assert response == {"type": 5, "data": {"flags": EPHEMERAL}}

    interaction = fake.interactions[iid]
    webhook = f"/webhooks/{fake.application_id}/{interaction.token}"
    [followup] = await fake.wait_for_rest("POST", webhook)
    assert followup.json["flags"] == EPHEMERAL
    assert followup.json["content"] == f"remembering {target['id']}"
    await fake.wait_for_rest("PATCH", f"{webhook}/messages/@original")
    assert interaction.original_message_id is not None
    original = fake.messages[interaction.original_message_id]
    assert original["content"] == "remembered: ship on friday"
    assert original["flags"] & EPHEMERAL


async def test_rate_limit_is_waited_out(fake: FakeDiscord, bot: MemoryBot) -> None:
    path = f"/channels/{CHANNEL}/messages"
    fake.rate_limit_next(f"POST {path}", retry_after=0.2)
    started = time.monotonic()
    await fake.send_message(CHANNEL, ALICE, "are you there?", mentions_bot=True)
    await fake.wait_for_rest("POST", path)
    assert time.monotonic() - started >= 0.2
    attempts = [c for c in fake.rest_calls if c.method == "POST" and c.path == path]
    assert [(c.status, c.rate_limited) for c in attempts] == [(429, True), (200, False)]
    assert attempts[0].json == attempts[1].json


async def test_reconnect_resumes_and_replays_missed_events(
    fake: FakeDiscord, bot: MemoryBot
) -> None:
    assert bot.ws is not None
    session_id = bot.ws.session_id

    await fake.force_reconnect(wait=False)
    await fake.send_message(CHANNEL, ALICE, "sent while reconnecting")
    await eventually(lambda: bot.events["resumed"])
    await eventually(lambda: messages_with(bot, "sent while reconnecting"))
    assert fake.identify_count == 1 and fake.resume_count == 1
    assert fake.resume_payloads[0]["session_id"] == session_id
    assert fake.gateway_connections == ["/gateway", "/gateway/resume"]

    await fake.force_reconnect()  # waits for the RESUME this time
    assert fake.resume_count == 2
    await fake.send_message(CHANNEL, ALICE, "after resume")
    await eventually(lambda: messages_with(bot, "after resume"))
    assert len(messages_with(bot, "sent while reconnecting")) == 1  # replayed exactly once


async def test_invalid_session_makes_client_identify_again(
    fake: FakeDiscord, bot: MemoryBot
) -> None:
    await fake.invalidate_session()
    assert fake.identify_count == 2
    await fake.wait_ready()
    await fake.send_message(CHANNEL, ALICE, "new session")
    await eventually(lambda: messages_with(bot, "new session"))


async def test_bot_side_rest_round_trip(fake: FakeDiscord, bot: MemoryBot) -> None:
    channel = await bot.fetch_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel) and channel.guild.id == GUILD
    sent = await channel.send("draft")
    await sent.edit(content="final")
    fetched = await channel.fetch_message(sent.id)
    assert fetched.content == "final" and fetched.edited_at is not None
    await fetched.add_reaction("\N{THUMBS UP SIGN}")
    history = [m.id async for m in channel.history(limit=10)]
    assert history[0] == sent.id
    await fetched.delete()
    assert sent.id not in fake.messages
    # Each change was echoed over the gateway, as Discord does for the bot's own actions.
    await eventually(lambda: [e for e in bot.events["raw_delete"] if e.message_id == sent.id])
    assert [e.message.content for e in bot.events["raw_edit"]] == ["final"]


async def test_rest_errors_map_to_discord_exceptions(fake: FakeDiscord, bot: MemoryBot) -> None:
    with pytest.raises(discord.NotFound) as unknown:
        await bot.get_partial_messageable(123).send("hello?")
    assert unknown.value.code == 10003
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    assert too_long.value.code == 50035


async def test_missing_message_content_intent_blanks_guild_content(fake: FakeDiscord) -> None:
    client = MemoryBot(message_content=False)
    async with running(client):
        assert not fake.identify_payloads[0]["intents"] & INTENT_MESSAGE_CONTENT
        await fake.send_message(CHANNEL, ALICE, "secret plans")
        await fake.send_message(CHANNEL, ALICE, "hey bot", mentions_bot=True)
        await fake.send_message(DM_CHANNEL, ALICE, "dm text")
        seen = await eventually(lambda: client.events["message"][2:] and client.events["message"])
        assert [m.content for m in seen[:3]] == ["", f"<@{fake.bot_user_id}> hey bot", "dm text"]


async def test_auto_sharded_client_uses_gateway_bot(fake: FakeDiscord) -> None:
    other_guild = GUILD + (1 << 22)  # lands on the other shard
    other_channel = CHANNEL + 1
    fake.add_guild(other_guild, "Other Guild")
    fake.add_channel(other_guild, other_channel, "random")
    fake.shard_count = 2
    seen: list[discord.Message] = []

    class ShardedBot(discord.AutoShardedClient):
        async def before_identify_hook(
            self, shard_id: int | None, *, initial: bool = False
        ) -> None:
            """Skip the 5 s pause discord.py takes between shard IDENTIFYs."""

        async def on_message(self, message: discord.Message) -> None:
            seen.append(message)

    client = ShardedBot(intents=discord.Intents.default(), guild_ready_timeout=0.05)
    async with running(client):
        await fake.wait_ready()
        assert ("GET", "/gateway/bot") in [(c.method, c.path) for c in fake.rest_calls]
        assert sorted(tuple(p["shard"]) for p in fake.identify_payloads) == [(0, 2), (1, 2)]
        assert {g.id for g in client.guilds} == {GUILD, other_guild}
        await fake.send_message(other_channel, ALICE, "on the other shard")
        [message] = await eventually(lambda: seen)
        assert message.guild is not None and message.guild.id == other_guild
        assert message.guild.shard_id == (other_guild >> 22) % 2
