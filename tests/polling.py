"""Waiting for something that happens in the background (a fake server's event, a message
stored by an adapter). Not a timing assertion: the limit only ends a test that would hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def eventually(probe: Callable[[], Any], within: float = 10.0) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
