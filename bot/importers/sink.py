"""Where imported and backfilled messages go: in batches, under the live privacy rules, counted.

The rules are the live ones, applied once here: an opted-out author is not stored, a message
older than the retention is not stored (retention counts from the original time), an empty
message is not stored, and the episode is the one the live path makes
(:meth:`~bot.core.channel_memory.ChannelMemory.episode`), so storing it again changes nothing.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.core.channel_memory import ChannelMemory
from bot.core.events import MessageEvent
from memory import Episode
from memory.model import utcnow
from memory.protocol import Memory

BATCH = 500


async def store_new(memory: Memory, episodes: Sequence[Episode]) -> list[bool]:
    """Store episodes; for each, whether it was new (False: its source was stored before).

    ``add()`` is idempotent by source and returns the stored uid for a known source, so an
    episode given a fresh uid is new exactly when that uid comes back. (Once ``add()`` reports
    this itself, only this function changes.)"""
    given = [e.model_copy(update={"uid": str(uuid.uuid4())}) for e in episodes]
    uids = await memory.add(given)
    return [uid == e.uid for uid, e in zip(uids, given, strict=True)]


@dataclass
class Tally:
    """What an import or a backfill did."""

    stored: int = 0
    present: int = 0  # stored before (live, or an earlier import)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> messages
    opted_out: int = 0  # messages of people who turned memory off
    people_opted_out: set[str] = field(default_factory=set)

    @property
    def seen(self) -> int:
        return self.stored + self.present + self.opted_out + sum(self.skipped.values())

    def __iadd__(self, other: Tally) -> Tally:
        self.stored += other.stored
        self.present += other.present
        self.skipped += other.skipped
        self.opted_out += other.opted_out
        self.people_opted_out |= other.people_opted_out
        return self

    def postfix(self) -> dict[str, int]:
        """Counts for a progress bar."""
        return {
            "stored": self.stored,
            "present": self.present,
            "skipped": sum(self.skipped.values()) + self.opted_out,
        }

    def lines(self) -> list[str]:
        skipped = sum(self.skipped.values())
        kinds = ", ".join(f"{n:,} {why}" for why, n in self.skipped.most_common())
        return [
            f"  stored           {self.stored:>9,}",
            f"  already present  {self.present:>9,}",
            f"  skipped          {skipped:>9,}" + (f"  ({kinds})" if kinds else ""),
            f"  opted out        {self.opted_out:>9,}"
            + (
                f"  (messages of {len(self.people_opted_out):,} opted-out"
                f" {'person' if len(self.people_opted_out) == 1 else 'people'})"
                if self.people_opted_out
                else ""
            ),
        ]


class Sink:
    """Buffers messages and stores them a batch at a time (what was flushed stays stored
    whatever comes after)."""

    def __init__(
        self,
        channels: ChannelMemory,
        *,
        not_before: datetime | None = None,
        batch: int = BATCH,
        now: datetime | None = None,
    ) -> None:
        self.channels = channels
        self.batch = batch
        days = channels.settings.retention_days
        self.expired_before = (now or utcnow()) - timedelta(days=days) if days else None
        self.not_before = not_before
        self.tally = Tally()
        self._buffer: list[Episode] = []
        self._opted_out: dict[tuple[str, str], bool] = {}

    def skip(self, reason: str, n: int = 1) -> None:
        self.tally.skipped[reason] += n

    async def put(self, event: MessageEvent) -> None:
        if not event.text.strip():
            return self.skip("empty")
        if self.expired_before is not None and event.created_at < self.expired_before:
            return self.skip("older than the retention")
        if self.not_before is not None and event.created_at < self.not_before:
            return self.skip("before --since")
        if await self._is_opted_out(event.place.org_id, event.author.id):
            self.tally.opted_out += 1
            self.tally.people_opted_out.add(event.author.id)
            return None
        self._buffer.append(self.channels.episode(event))
        if len(self._buffer) >= self.batch:
            await self.flush()
        return None

    async def _is_opted_out(self, org: str, author: str) -> bool:
        key = (org, author)
        if key not in self._opted_out:
            self._opted_out[key] = await self.channels.opted_out(org, author)
        return self._opted_out[key]

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        new = await store_new(self.channels.memory, batch)
        added = sum(new)
        self.tally.stored += added
        self.tally.present += len(new) - added
