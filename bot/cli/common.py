"""What the subcommands share: settings read once, ids as typed, the memory a command works
on, and the one line (exit status 2) for each expected failure."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.settings import Settings
    from memory.client import MemoryClient
    from memory.engine import MemoryEngine


class UsageError(Exception):
    """A command line that cannot work; printed as one line, exit status 2."""


def expected_failure(exc: BaseException) -> str | None:
    """The one line for a failure the operator can fix (a setting, a service, the data
    folder, the command line), or None for anything else: a bug, whose traceback shows."""
    from bot.platforms.base import StartupError
    from memory import EmbedderMismatch, InvalidInput
    from memory.client import MemoryAccessDenied, MemoryServerError
    from memory.store.base import StoreUnavailable

    if isinstance(exc, UsageError | StartupError | EmbedderMismatch | StoreUnavailable):
        return str(exc)
    if isinstance(exc, InvalidInput):
        return str(exc)
    if isinstance(exc, MemoryAccessDenied):
        return f"{exc}; set CHANNELMIND_MEMORY_API_KEY to a key of the server that allows it"
    if isinstance(exc, MemoryServerError):
        from bot.memory_access import server_reason

        return f"the memory server failed: {server_reason(exc)}"
    return None


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
async def memory(
    config: Settings, *, background: bool = True
) -> AsyncIterator[MemoryEngine | MemoryClient]:
    """The memory a command works on: the server at CHANNELMIND_MEMORY_URL, else the server
    that owns the data folder, else the folder itself (:mod:`bot.memory_access`)."""
    from bot.memory_access import open_memory

    opened = await open_memory(config, "command", background=background)
    try:
        yield opened
    finally:
        await opened.close()


async def indexed(mem: MemoryEngine | MemoryClient) -> None:
    """Until everything stored is in the vector index, however long that takes."""
    while True:
        try:
            await mem.wait_indexed(timeout=300)
            return
        except TimeoutError:
            continue


def run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)
