"""``channelmind import discord``: JSON files written by DiscordChatExporter, one per channel or
thread (``guild``, ``channel``, ``messages``; a DM has guild id ``0``; a thread's ``channel``
names its parent as ``categoryId``/``category``).

Each file is streamed (``ijson``), so a channel larger than memory imports in flat memory; each
message is mapped with :mod:`bot.platforms.discord.mapping`, as the live adapter maps it (the
exporter has already written mentions as ``@name``), and stored through
:class:`~bot.importers.sink.Sink`. A file that is not JSON, or not an export, is one line and a
counted skip; a message without an id, author or time is a counted skip.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ijson
from tqdm import tqdm

from bot.core.backfill import read_state
from bot.core.channel_memory import ChannelMemory
from bot.core.events import Place
from bot.platforms.discord import mapping

from .sink import Sink, Tally

log = logging.getLogger(__name__)

THREAD_KINDS = frozenset({"GuildPublicThread", "GuildPrivateThread", "GuildNewsThread"})


@dataclass
class DiscordImport:
    paths: list[Path]
    since: datetime | None = None
    bot_user: str | None = None
    progress: bool = True


@dataclass
class _Bot:
    """The bot, as the export shows it: its user id, once known, and its own messages."""

    name: str
    id: str | None = None
    own: set[str] = field(default_factory=set)  # ids of the bot's messages seen so far

    def spot(self, people: Iterable[Any]) -> None:
        if self.id is not None:
            return
        for p in people:
            if not isinstance(p, dict) or not p.get("isBot"):
                continue
            names = {str(p.get("name") or "").casefold(), str(p.get("nickname") or "").casefold()}
            if self.name.casefold() in names:
                self.id = str(p.get("id") or "") or None
                return


def place_of(guild: dict[str, Any], channel: dict[str, Any], bot_id: str | None) -> Place:
    bot = f"discord:{bot_id}" if bot_id else None
    guild_id = str(guild.get("id") or "0")
    if guild_id == "0":
        return mapping.place(None, str(channel["id"]), bot_id=bot)
    if channel.get("type") in THREAD_KINDS and channel.get("categoryId"):
        return mapping.place(
            guild_id,
            str(channel["categoryId"]),
            thread_id=str(channel["id"]),
            name=str(channel.get("category") or "") or None,
            bot_id=bot,
        )
    return mapping.place(guild_id, str(channel["id"]), name=channel.get("name"), bot_id=bot)


def _header(path: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The ``guild`` and ``channel`` objects at the top of an export file."""
    with path.open("rb") as f:
        guild = next(ijson.items(f, "guild"), None)
    with path.open("rb") as f:
        channel = next(ijson.items(f, "channel"), None)
    if not isinstance(guild, dict) or not isinstance(channel, dict) or not channel.get("id"):
        return None
    return guild, channel


async def import_discord(
    options: DiscordImport, channels: ChannelMemory
) -> tuple[Tally, list[str]]:
    total = Tally()
    notes: list[str] = []
    bot = _Bot(
        channels.settings.bot_name,
        options.bot_user.removeprefix("discord:") if options.bot_user else None,
    )
    for path in options.paths:
        label = path.name
        try:
            header = _header(path)
        except (OSError, ijson.JSONError) as exc:
            notes.append(f"{label}: skipped, not a JSON file ({exc})")
            total.skipped["files not JSON"] += 1
            continue
        if header is None:
            notes.append(f"{label}: skipped, not a DiscordChatExporter JSON export")
            total.skipped["files not an export"] += 1
            continue
        guild, channel = header
        where = place_of(guild, channel, bot.id)
        label = f"#{channel.get('name') or channel['id']}"
        state = await read_state(channels.memory, channels.project, where.org_id, where.channel_id)
        if state is not None and state.status == "forgotten":
            notes.append(f"{label}: skipped, it was forgotten with /forget channel")
            continue
        sink = Sink(channels, not_before=options.since)
        try:
            await _messages(path, label, guild, channel, sink, bot, options.progress)
        except (ijson.JSONError, OSError) as exc:
            notes.append(
                f"{label}: stopped at a part that is not JSON ({exc}); what came before is stored"
            )
            sink.skip("files cut short")
        await sink.flush()
        total += sink.tally
    return total, notes


async def _messages(
    path: Path,
    label: str,
    guild: dict[str, Any],
    channel: dict[str, Any],
    sink: Sink,
    bot: _Bot,
    progress: bool,
) -> None:
    size = path.stat().st_size  # noqa: ASYNC240  (a CLI import: reading files is its work)
    with (
        path.open("rb") as f,
        tqdm(total=size, desc=label[:24], unit="B", unit_scale=True, disable=not progress) as bar,
    ):
        done = 0
        for message in ijson.items(f, "messages.item", use_float=True):
            await _one(message, sink, guild, channel, bot)
            position = f.tell()
            if position - done >= 1 << 16:
                bar.update(position - done)
                done = position
                bar.set_postfix(sink.tally.postfix(), refresh=False)
        bar.update(size - done)
        bar.set_postfix(sink.tally.postfix(), refresh=False)


async def _one(
    message: Any, sink: Sink, guild: dict[str, Any], channel: dict[str, Any], bot: _Bot
) -> None:
    if not isinstance(message, dict):
        return sink.skip("not a message")
    kind = str(message.get("type") or "Default")
    if kind.lower() not in mapping.SAID_TYPES:
        return sink.skip(kind)
    who = message.get("author")
    if not isinstance(who, dict) or not who.get("id"):
        return sink.skip("no user")
    message_id = str(message.get("id") or "")
    if not message_id:
        return sink.skip("no id")
    try:
        created_at = datetime.fromisoformat(str(message.get("timestamp")))
    except ValueError:
        return sink.skip("no timestamp")
    mentions = [m for m in message.get("mentions") or [] if isinstance(m, dict)]
    bot.spot([who, *mentions])
    where = place_of(guild, channel, bot.id)
    own = bot.id is not None and str(who["id"]) == bot.id
    if own:
        bot.own.add(message_id)
        author = mapping.author(who["id"], bot.name, is_bot=False)
    else:
        name = str(who.get("nickname") or who.get("name") or who["id"])
        author = mapping.author(who["id"], name, is_bot=bool(who.get("isBot")))
    names = {
        int(m["id"]): str(m.get("nickname") or m.get("name"))
        for m in mentions
        if str(m.get("id", "")).isdigit()
    }
    mentioned = bot.id is not None and any(str(m.get("id")) == bot.id for m in mentions)
    reference = message.get("reference") or {}
    replied_to_bot = str(reference.get("messageId") or "") in bot.own
    leading: list[str] = []
    if mentioned and bot.id is not None:
        leading.append(f"<@!?{bot.id}>")
        spelled = {m.get("nickname"), m.get("name")} if (m := _mention(mentions, bot.id)) else set()
        leading += [re.escape(f"@{n}") for n in spelled if n]
    files = [
        str(a.get("fileName") or "")
        for a in message.get("attachments") or []
        if isinstance(a, dict)
    ]
    text = mapping.readable_text(
        str(message.get("content") or ""), own=leading, users=names.get, files=files
    )
    event = mapping.message_event(
        where,
        author,
        text,
        message_id=message_id,
        created_at=created_at,
        mentions_bot=mentioned or replied_to_bot,
        link_channel=str(channel["id"]),
    )
    await sink.put(event)
    return None


def _mention(mentions: list[dict[str, Any]], user_id: str) -> dict[str, Any] | None:
    return next((m for m in mentions if str(m.get("id")) == user_id), None)
