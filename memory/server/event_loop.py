"""The event loop a long-running server process (``channelmind serve`` / ``run``) runs on.

uvloop (libuv, in C) when it is installed, else asyncio's own. It comes with uvicorn's
``standard`` extra, which Chroma requires, so it is there wherever ChannelMind is installed
on Linux or macOS. At 40 clients (``channelmind bench load --clients 40 --embedder hash``)
asyncio's own loop machinery was about a fifth of the samples of the server's event loop
thread (py-spy: the selector, socket transports, and the wake-ups of every SQLite and
executor call that finishes in another thread); uvloop does the same work in C.
``CHANNELMIND_EVENT_LOOP=asyncio`` (ServerSettings.event_loop) keeps asyncio's own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the server's loop: ``uvloop.new_event_loop`` when ``choice`` is
    ``uvloop`` and uvloop is importable, else ``asyncio.new_event_loop``."""
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which loop runs (the server says so when it starts)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
