"""What the subcommands share: settings read once, ids as typed, the embedded memory, and
one clear line (exit status 2) for a command line that cannot work."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.settings import Settings
    from memory import MemoryEngine


class UsageError(Exception):
    """A command line that cannot work; printed as one line, exit status 2."""


def settings() -> Settings:
    from bot.settings import load

    return load()


def qualify(value: str) -> str:
    """A bare name is the console's (``general`` -> ``console:general``); a qualified id
    (``slack:C123``) is taken as is."""
    from bot.platforms.console.adapter import console_id

    return value if ":" in value else console_id(value)


def org(args: argparse.Namespace, *ids: str) -> str:
    """``--org``, or the console's org when every id is the console's."""
    from bot.core.events import platform_of
    from bot.platforms.console.adapter import ORG

    if args.org:
        return str(args.org)
    platforms = {platform_of(i) for i in ids if i}
    if platforms <= {"console"}:
        return ORG
    raise UsageError("give --org: the Slack team or Discord guild, e.g. --org slack:T0123")


@asynccontextmanager
async def engine(config: Settings) -> AsyncIterator[MemoryEngine]:
    from memory import MemoryEngine

    opened = await MemoryEngine.open(settings=config)
    try:
        yield opened
    finally:
        await opened.close()


def run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except UsageError as exc:
        print(f"channelmind: {exc}", file=sys.stderr)
        return 2
