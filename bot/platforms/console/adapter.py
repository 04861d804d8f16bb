"""The console adapter: the terminal as a chat platform with one channel.

It translates and nothing else: a typed line becomes a :class:`~bot.core.events.MessageEvent`
(said to the bot: it is the only one listening) or, when it starts with ``/recall``,
``/forget``, ``/remember`` or ``/memory``, a :class:`~bot.core.events.CommandEvent`; the core's
replies are printed. The person at the terminal owns the local memory, so they count as the
channel's admin.

The terminal can speak as several people, typed or scripted alike: a line ``name: text`` is
said by ``name``, and ``/as name`` makes ``name`` the one who speaks from then on. Each stored
message's id is shown under it (``(id 3f9a2c1b)``): ``/forget <id>`` forgets that message, as
a link does on Slack or Discord.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO, cast, get_args

from bot.core.events import (
    Author,
    CommandEvent,
    CommandName,
    MessageEvent,
    NullWorking,
    Place,
    pid,
)
from bot.platforms.base import Core
from memory import Episode

from .format import PLATFORM

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

ORG = "console:local"
COMMANDS: tuple[str, ...] = get_args(CommandName)
#: ``name: text``: a name of one to three words (not a command, a comment or a link's scheme).
SCRIPT_LINE = re.compile(
    r"^\s*(?P<user>[^\W\d_][\w.'-]{0,31}(?: [\w.'-]{1,32}){0,2})\s*:(?!//)\s*(?P<text>.*)$"
)
AS = "/as"
ID_CHARS = 8


def console_id(name: str) -> str:
    """A console user or channel id: ``"Alice Smith"`` -> ``"console:alice_smith"``."""
    slug = re.sub(r"[^\w-]+", "_", name.strip().lower()).strip("_") or "someone"
    return pid(PLATFORM, slug)


class ConsoleReplier:
    """Prints the bot's answers; ephemeral ones are marked as seen by the asker only."""

    def __init__(self, out: TextIO, bot_name: str) -> None:
        self.out = out
        self.bot_name = bot_name

    def _print(self, text: str, prefix: str) -> None:
        lines = text.splitlines() or [""]
        self.out.write(f"  {prefix}{lines[0]}\n")
        for line in lines[1:]:
            self.out.write(f"    {line}\n")
        self.out.flush()

    async def reply(self, text: str) -> str | None:
        self._print(text, f"{self.bot_name}: ")
        return f"bot-{uuid.uuid4().hex[:12]}"

    async def ephemeral(self, text: str) -> None:
        self._print(text, f"{self.bot_name} (only you see this): ")

    def working(self) -> AbstractAsyncContextManager[None]:
        return NullWorking()

    async def permalink(self, source_id: str) -> str | None:
        return None  # the terminal has no links; answers list their sources instead


class ConsoleAdapter:
    def __init__(
        self,
        core: Core,
        *,
        channel: str = "general",
        bot_name: str = "ChannelMind",
        out: TextIO,
        after_each: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.core = core
        self.out = out
        self.after_each = after_each
        self.replier = ConsoleReplier(out, bot_name)
        self.place = Place(
            platform=PLATFORM,
            org_id=ORG,
            channel_id=console_id(channel),
            channel_name=channel.lstrip("#"),
            bot_id=console_id(bot_name),
        )

    async def _new_id(self) -> str:
        """A short message id, unused in this org (the id ``/forget`` takes)."""
        while True:
            source_id = uuid.uuid4().hex[:ID_CHARS]
            if await self.core.find_message(self.place, source_id) is None:
                return source_id

    async def say(self, user: str, line: str) -> None:
        """One line typed by ``user``: a command or an (addressed) message."""
        text = line.strip()
        if not text:
            return
        author = Author(id=console_id(user), display_name=user.strip() or "someone")
        word, _, rest = text.partition(" ")
        if word.startswith("/") and word[1:].lower() in COMMANDS:
            command = CommandEvent(
                place=self.place,
                author=author,
                name=cast(CommandName, word[1:].lower()),
                text=rest.strip(),
                is_channel_admin=True,
            )
            await self.core.handle_command(command, self.replier)
        else:
            message = MessageEvent(
                place=self.place,
                author=author,
                text=text,
                source_id=await self._new_id(),
                created_at=datetime.now(UTC),
                mentions_bot=True,
            )
            stored = await self.core.handle_message(message, self.replier)
            if isinstance(stored, Episode):
                self.out.write(f"  (id {stored.source_id})\n")
                self.out.flush()
        if self.after_each is not None:
            await self.after_each()

    def speaker(self, line: str, current: str) -> tuple[str, str] | None:
        """Who says what on a typed or scripted line: ``name: text`` is ``name``'s, anything
        else the current speaker's. ``/as name`` changes the current speaker: then the new
        name and "" are returned. None for blank lines and ``#`` comments."""
        if not line.strip() or line.lstrip().startswith("#"):
            return None
        word, _, rest = line.strip().partition(" ")
        if word.lower() == AS:
            return (rest.strip() or current), ""
        m = SCRIPT_LINE.match(line)
        return (m["user"].strip(), m["text"].strip()) if m else (current, line.strip())

    async def run_script(self, lines: Iterable[str], default_user: str) -> int:
        """Lines ``user: message`` (or just ``message``, said by the current speaker: the
        default user, or the one ``/as name`` named); blank lines and ``#`` comments are
        skipped. Each line is echoed, then the bot's answer."""
        said = 0
        current = default_user
        for raw in lines:
            line = raw.rstrip("\n")
            parsed = self.speaker(line, current)
            if parsed is None:
                continue
            user, text = parsed
            if not text:  # /as name
                current = user
                continue
            self.out.write(f"{user}: {text}\n")
            await self.say(user, text)
            said += 1
        return said

    async def run_interactive(self, user: str, read: Callable[[str], str] = input) -> int:
        """Read lines until EOF or ``/quit``; ``name: text`` and ``/as name`` as in scripts."""
        said = 0
        self.out.write(
            f"Chatting in #{self.place.channel_name} as {user}. Everything you type is"
            " remembered; /recall, /forget, /remember, /memory work; 'name: text' speaks as"
            " someone else, /as name switches who you are; /quit leaves.\n"
        )
        current = user
        while True:
            try:
                line = await asyncio.to_thread(read, f"{current}> ")
            except EOFError:
                return said
            if line.strip() in ("/quit", "/exit"):
                return said
            parsed = self.speaker(line, current)
            if parsed is None:
                continue
            speaker, text = parsed
            if not text:
                current = speaker
                self.out.write(f"  (you are {current} now)\n")
                continue
            await self.say(speaker, text)
            said += 1
