"""The console adapter: the terminal as a chat platform with one channel.

It translates and nothing else: a typed line becomes a :class:`~bot.core.events.MessageEvent`
(said to the bot: it is the only one listening) or, when it starts with ``/recall``,
``/forget``, ``/remember`` or ``/memory``, a :class:`~bot.core.events.CommandEvent`; the core's
replies are printed. The person at the terminal owns the local memory, so they count as the
channel's admin.
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

from .format import PLATFORM

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

ORG = "console:local"
COMMANDS: tuple[str, ...] = get_args(CommandName)
SCRIPT_LINE = re.compile(r"^\s*(?P<user>[^:/#][^:]{0,63}?)\s*:\s*(?P<text>.*)$")


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
                source_id=uuid.uuid4().hex,
                created_at=datetime.now(UTC),
                mentions_bot=True,
            )
            await self.core.handle_message(message, self.replier)
        if self.after_each is not None:
            await self.after_each()

    async def run_script(self, lines: Iterable[str], default_user: str) -> int:
        """Lines ``user: message`` (or just ``message``, said by ``default_user``); blank
        lines and ``#`` comments are skipped. Each line is echoed, then the bot's answer."""
        said = 0
        for raw in lines:
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = SCRIPT_LINE.match(line)
            user, text = (m["user"], m["text"]) if m else (default_user, line)
            self.out.write(f"{user}: {text.strip()}\n")
            await self.say(user, text)
            said += 1
        return said

    async def run_interactive(
        self, user: str, read: Callable[[str], str] = input
    ) -> int:  # pragma: no cover - needs a terminal
        """Read lines until EOF or ``/quit``."""
        said = 0
        self.out.write(
            f"Chatting in #{self.place.channel_name} as {user}. Everything you type is"
            " remembered; /recall, /forget, /remember, /memory work; /quit leaves.\n"
        )
        while True:
            try:
                line = await asyncio.to_thread(read, f"{user}> ")
            except EOFError:
                return said
            if line.strip() in ("/quit", "/exit"):
                return said
            await self.say(user, line)
            said += 1
