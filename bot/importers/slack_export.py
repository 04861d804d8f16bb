"""``channelmind import slack``: a standard Slack workspace export, zipped or unzipped.

The export holds ``users.json``, ``channels.json`` and, where present, ``groups.json`` (private
channels), ``dms.json`` and ``mpims.json``, and one folder per conversation with one JSON file
per day. It is read one day file at a time (a zip is read member by member, never whole), each
message is mapped by :class:`~bot.platforms.slack.mapping.SlackMapping` exactly as the live
adapter maps it, and stored through :class:`~bot.importers.sink.Sink` in batches.

Bad input never ends in a traceback: an unreadable archive or a folder that is not an export is
one :class:`ExportError` line; a day file that is not JSON, a truncated member or a message
without ``ts`` or ``user`` is a counted skip, and what was stored before it stays stored.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

import ijson
from tqdm import tqdm

from bot.core.backfill import read_state
from bot.core.channel_memory import ChannelMemory
from bot.core.events import pid
from bot.platforms.slack.format import PLATFORM
from bot.platforms.slack.mapping import SlackMapping, SlackUser, skip_reason, slack_user

from .sink import Sink, Tally

log = logging.getLogger(__name__)

DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.json$")
#: The conversation lists of an export, and whether their folders are named by id.
LISTS = (
    ("channels.json", "channel", False),
    ("groups.json", "private channel", False),
    ("mpims.json", "group DM", False),
    ("dms.json", "DM", True),
)
TEAM_PEEK_FILES = 200  # day files read at most to find the team id


class ExportError(Exception):
    """The export cannot be read at all; the message says why in one line."""


@dataclass(frozen=True)
class Conversation:
    id: str
    name: str  # "general", or the id for a DM
    kind: str  # "channel", "private channel", "group DM", "DM"
    folder: str

    @property
    def is_dm(self) -> bool:
        return self.kind == "DM"

    @property
    def label(self) -> str:
        return self.name if self.is_dm else f"#{self.name}"


class SlackExport:
    """An export as files: a zip read member by member, or its unzipped folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._names: list[str] = []
        self._prefix = ""
        if not path.exists():
            raise ExportError(f"no such file or folder: {path}")
        if path.is_dir():
            self._names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ExportError(
                    f"{path} is not a readable zip file ({exc}); is the download complete?"
                ) from None
            self._names = [n for n in self._zip.namelist() if not n.endswith("/")]
        tops = sorted(
            (n for n in self._names if PurePosixPath(n).name == "channels.json"),
            key=lambda n: n.count("/"),
        )
        if not tops:
            raise ExportError(f"{path} is not a Slack workspace export (it has no channels.json)")
        self._prefix = tops[0][: -len("channels.json")]
        self._files = set(self._names)
        self._days: dict[str, list[tuple[date, str]]] = {}  # folder -> its day files
        for name in self._names:
            if not name.startswith(self._prefix):
                continue
            folder, _, file = name[len(self._prefix) :].rpartition("/")
            if folder and "/" not in folder and (m := DAY_FILE.match(file)):
                try:
                    day = date.fromisoformat(m[1])
                except ValueError:
                    continue
                self._days.setdefault(folder, []).append((day, f"{folder}/{file}"))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def has(self, name: str) -> bool:
        return self._prefix + name in self._files

    def open(self, name: str) -> IO[bytes]:
        full = self._prefix + name
        if self._zip is not None:
            return self._zip.open(full)
        return (self.path / full).open("rb")

    def items(self, name: str) -> Iterator[Any]:
        """The entries of a top-level list file (users.json, channels.json...), streamed."""
        if not self.has(name):
            return
        try:
            with self.open(name) as f:
                yield from ijson.items(f, "item")
        except (ijson.JSONError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ExportError(f"{name} in {self.path} cannot be read ({exc})") from None

    def conversations(self) -> list[Conversation]:
        found: list[Conversation] = []
        for list_name, kind, by_id in LISTS:
            for entry in self.items(list_name):
                if not isinstance(entry, dict) or not entry.get("id"):
                    continue
                cid = str(entry["id"])
                name = str(entry.get("name") or cid)
                found.append(Conversation(cid, name, kind, cid if by_id else name))
        return found

    def day_files(self, conversation: Conversation) -> list[tuple[date, str]]:
        return sorted(self._days.get(conversation.folder, []))

    def day(self, name: str) -> list[Any]:
        """The messages of one day file; ValueError when it is not a JSON list."""
        try:
            with self.open(name) as f:
                data = json.load(f)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ValueError(f"unreadable ({exc})") from None
        if not isinstance(data, list):
            raise ValueError("not a list of messages")
        return data


@dataclass
class SlackImport:
    """What ``channelmind import slack`` was asked."""

    path: Path
    team: str | None = None
    channels: frozenset[str] = frozenset()  # names or ids; empty: every conversation
    since: datetime | None = None
    bot_user: str | None = None
    progress: bool = True


def users_of(export: SlackExport) -> dict[str, SlackUser]:
    return {str(u["id"]): slack_user(u) for u in export.items("users.json") if isinstance(u, dict)}


def find_bot(export: SlackExport, bot_name: str) -> tuple[str | None, str | None]:
    """The bot's user id and bot id in ``users.json``: the bot user named like the bot."""
    wanted = bot_name.casefold()
    for u in export.items("users.json"):
        if not isinstance(u, dict) or not u.get("is_bot"):
            continue
        profile = u.get("profile") or {}
        names = {u.get("name"), u.get("real_name"), profile.get("display_name")}
        names |= {profile.get("real_name")}
        if wanted in {str(n).casefold() for n in names if n}:
            bot_id = profile.get("bot_id")
            return str(u["id"]), str(bot_id) if bot_id else None
    return None, None


def find_team(export: SlackExport, conversations: list[Conversation]) -> str | None:
    """The workspace id from the messages' ``team`` field."""
    read = 0
    for conversation in conversations:
        for _, name in export.day_files(conversation):
            read += 1
            if read > TEAM_PEEK_FILES:
                return None
            try:
                messages = export.day(name)
            except ValueError:
                continue
            for m in messages:
                if isinstance(m, dict) and isinstance(m.get("team"), str) and m["team"]:
                    return str(m["team"])
    return None


def wanted(conversation: Conversation, names: frozenset[str]) -> bool:
    if not names:
        return True
    return conversation.id in names or conversation.name in names


async def import_slack(
    options: SlackImport, channels: ChannelMemory
) -> tuple[str, Tally, list[str]]:
    """Import an export; returns the org, the tally and notes for the summary."""
    export = SlackExport(options.path)
    try:
        return await _import(export, options, channels)
    finally:
        export.close()


async def _import(
    export: SlackExport, options: SlackImport, channels: ChannelMemory
) -> tuple[str, Tally, list[str]]:
    conversations = [c for c in export.conversations() if wanted(c, options.channels)]
    if options.channels and not conversations:
        raise ExportError(f"none of {', '.join(sorted(options.channels))} is in this export")
    team = options.team.removeprefix("slack:") if options.team else None
    team = team or find_team(export, conversations)
    if not team:
        raise ExportError(
            "the export does not say which workspace it is from (no message has a team id):"
            " give --team T0123456"
        )
    org = pid(PLATFORM, team)
    users = users_of(export)
    bot_user, bot_id = (options.bot_user, None)
    if bot_user is None:
        bot_user, bot_id = find_bot(export, channels.settings.bot_name)

    async def lookup(user_id: str) -> SlackUser:
        return users.get(user_id) or SlackUser(user_id, user_id)

    mapping = SlackMapping(
        lookup, bot_user_id=bot_user, bot_id=bot_id, bot_name=channels.settings.bot_name
    )
    project = channels.project
    total = Tally()
    notes: list[str] = []
    if bot_user is None:
        notes.append(
            f"no bot user named {channels.settings.bot_name!r} in users.json: the bot's own"
            " earlier answers (if any) are stored as another bot's messages (--bot-user sets it)"
        )
    for conversation in conversations:
        where = mapping.place(org, conversation.id, dm=conversation.is_dm)
        state = await read_state(channels.memory, project, where.org_id, where.channel_id)
        if state is not None and state.status == "forgotten":
            notes.append(
                f"{conversation.label}: skipped, it was forgotten with /forget channel"
                " (/memory backfill there allows its history again)"
            )
            continue
        sink = Sink(channels, not_before=options.since)
        days = export.day_files(conversation)
        early = 0
        if options.since is not None:
            cut = options.since.date()
            early = sum(1 for d, _ in days if d < cut)
            days = [(d, n) for d, n in days if d >= cut]
        with tqdm(
            total=len(days),
            desc=conversation.label[:24],
            unit="day",
            disable=not options.progress,
            leave=True,
        ) as bar:
            for _, name in days:
                try:
                    messages = export.day(name)
                except ValueError as exc:
                    log.warning("slack import: %s skipped: %s", name, exc)
                    sink.skip("day file not JSON or unreadable")
                    bar.update(1)
                    continue
                for message in messages:
                    await _one(message, sink, mapping, org, conversation)
                await sink.flush()
                bar.update(1)
                bar.set_postfix(sink.tally.postfix(), refresh=False)
        if early:
            sink.skip("day files before --since", early)
        total += sink.tally
    return org, total, notes


async def _one(
    message: Any, sink: Sink, mapping: SlackMapping, org: str, conversation: Conversation
) -> None:
    if not isinstance(message, dict):
        return sink.skip("not a message")
    reason = skip_reason(message)
    if reason is not None:
        return sink.skip(reason)
    event = await mapping.message_event(message, org, conversation.id, dm=conversation.is_dm)
    await sink.put(event)
    return None
