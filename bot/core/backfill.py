"""A channel's history backfill, as the core sees it: one record per channel, kept in the
memory's settings (``key`` = :data:`BACKFILL_KEY`), so that it survives restarts and is shared
by every process of the bot. Its ``subject`` is a keyed token of the channel's qualified id,
never the id itself: the record outlives ``/forget channel`` (it is the mark that keeps the
history from being read again), and forgetting must leave no channel id on disk. The key is
random, one per org and project, kept in the settings too (as memory keys Chroma's names).

The platforms read the history (:mod:`bot.importers.backfill` runs them); the core only needs
three things from it: ``/forget channel`` marks the channel *forgotten* so that its history is
not read again, ``/memory backfill`` (an admin) clears that mark and asks for a backfill now,
and ``/memory`` shows how far the backfill got.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from memory.interface import Memory

from .events import Place

log = logging.getLogger(__name__)

BACKFILL_KEY = "backfill"
#: Where the key of the channel tokens is kept (settings subject and key).
TOKEN_KEY_SUBJECT, TOKEN_KEY = "channelmind", "channel-token-key"
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


async def channel_token(memory: Memory, project: str, org: str, channel: str) -> str:
    """The settings subject that stands for ``channel``: ``ch:`` and a BLAKE2b hash of its
    id under the org's key (made on first use)."""
    key = await memory.get_setting(org, project, TOKEN_KEY_SUBJECT, TOKEN_KEY)
    if key is None:
        await memory.set_setting(org, project, TOKEN_KEY_SUBJECT, TOKEN_KEY, secrets.token_hex(32))
        key = await memory.get_setting(org, project, TOKEN_KEY_SUBJECT, TOKEN_KEY)
        assert key is not None
    digest = hashlib.blake2b(channel.encode(), key=bytes.fromhex(key), digest_size=16)
    return "ch:" + digest.hexdigest()


async def read_state(memory: Memory, project: str, org: str, channel: str) -> BackfillState | None:
    token = await channel_token(memory, project, org, channel)
    text = await memory.get_setting(org, project, token, BACKFILL_KEY)
    if text is None:  # a record from before tokens, under the raw id: moved under the token
        text = await memory.get_setting(org, project, channel, BACKFILL_KEY)
        if text is not None:
            await memory.set_setting(org, project, token, BACKFILL_KEY, text)
            await memory.set_setting(org, project, channel, BACKFILL_KEY, None)
    return BackfillState.load(text)


async def write_state(
    memory: Memory, project: str, org: str, channel: str, state: BackfillState | None
) -> None:
    value = state.dump() if state is not None else None
    token = await channel_token(memory, project, org, channel)
    await memory.set_setting(org, project, token, BACKFILL_KEY, value)
    # A record from before tokens would name the channel (and answer for it): gone.
    await memory.set_setting(org, project, channel, BACKFILL_KEY, None)


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
