"""A channel's history backfill, as the core sees it: one record per channel, kept in the
memory's settings (``key`` = :data:`BACKFILL_KEY`), so that it survives restarts and is shared
by every process of the bot. Its ``subject`` is a keyed token of the channel's qualified id,
never the id itself: the record outlives ``/forget channel`` (it is the mark that keeps the
history from being read again), and forgetting must leave no channel id on disk. The key is
random, one per org and project (:mod:`bot.core.tokens`).

The platforms read the history (:mod:`bot.importers.backfill` runs them); the core only needs
three things from it: ``/forget channel`` marks the channel *forgotten* so that its history is
not read again, ``/memory backfill`` (an admin) clears that mark and asks for a backfill now,
and ``/memory`` shows how far the backfill got.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from memory.protocol import Memory

from .events import Place
from .tokens import read_keyed, write_keyed

log = logging.getLogger(__name__)

BACKFILL_KEY = "backfill"
Status = Literal["running", "done", "forgotten", "requested"]

#: What a platform offers the core: start (or restart) the backfill of a place's channel now.
#: Returns False when the platform cannot read that channel's history.
Requester = Callable[[Place], Awaitable[bool]]


@dataclass
class BackfillState:
    """Where a channel's backfill stands. Positions are the platform's own (a Slack ts, a
    Discord snowflake): ``until`` is fixed when the backfill starts (anything newer arrives
    live), ``cursor`` is the oldest message already read (history is read newest first),
    ``since`` the ISO time it reads back to."""

    status: Status = "running"
    until: str | None = None
    cursor: str | None = None
    since: str | None = None
    stored: int = 0
    present: int = 0
    skipped: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def load(cls, text: str | None) -> BackfillState | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            log.warning("backfill: unreadable state %r; starting over", text[:80])
            return None


async def read_state(memory: Memory, project: str, org: str, channel: str) -> BackfillState | None:
    return BackfillState.load(await read_keyed(memory, project, org, "ch", channel, BACKFILL_KEY))


async def write_state(
    memory: Memory, project: str, org: str, channel: str, state: BackfillState | None
) -> None:
    value = state.dump() if state is not None else None
    await write_keyed(memory, project, org, "ch", channel, BACKFILL_KEY, value)


async def mark_forgotten(memory: Memory, project: str, place: Place) -> None:
    """After ``/forget channel``: its history is not read again unless an admin asks."""
    await write_state(
        memory, project, place.org_id, place.channel_id, BackfillState(status="forgotten")
    )


def describe(state: BackfillState | None) -> str | None:
    """One line for ``/memory`` about the history from before the bot arrived."""
    if state is None:
        return None
    since = (state.since or "")[:10]
    back = f" back to {since}" if since else ""
    if state.status == "forgotten":
        return (
            "• History from before I joined: not read again since this channel was forgotten"
            " (an admin can run /memory backfill)."
        )
    if state.status == "done":
        return f"• History from before I joined: read{back} ({state.stored:,} messages kept)."
    return f"• History from before I joined: being read{back}, {state.stored:,} messages so far."
