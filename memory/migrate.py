"""Copying an embedded data folder's records into another store (``channelmind migrate``).

What is copied, through the :class:`~memory.store.base.Store` protocol only (so the target
builds its own full-text index, scope tokens and queue state exactly as for any write):

* projects (description and config; the target stamps its own ``created_at``),
* settings (opt-outs, notices, backfill marks, per-project keys: :meth:`list_settings`),
* episodes, with their uids, source ids, times, threads and metadata, project by project in
  time order; they land in the target's embedding queue,
* facts, with their uids, citations and supersession.

Vectors are not copied between indexes. The target carries the folder's index naming key
and embedder (:data:`CARRIED_META`), so an index that already holds a row's
vector under that key (the folder's own embedded Chroma, or a Chroma server a killed run
filled) serves it as it is: :func:`adopt_vectors` marks such rows indexed through the queue's
own claim and complete, and the engine's reconcile queues again every row without a vector.
The target's indexer embeds the rest (:func:`embed_pending`), the path every write takes.
Reading vectors out of one Chroma to write them into another would need the index's private
naming and saves only embedding time; a fresh Chroma server is filled by re-embedding.

Resumable by construction: every copy step first asks the target what it has (by uid) and
writes only what is missing, each batch in one transaction, so a run killed at any point is
finished by the next one with no duplicates, and a run on a finished target copies nothing.
The target is refused when it holds a memory that did not come from this folder: the folder's
index naming key (``index_key`` in its meta) is carried over first and identifies the source.

Rows the source set aside as unreadable cannot be copied (there is no record to copy); they
are counted per project. A row the target refuses (e.g. a NUL character PostgreSQL's
``jsonb`` cannot hold) is listed, never blocks the rest of its batch, and makes the count
check fail.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .index.chroma import SHORT_TOKEN_CHARS
from .model import EMBED_TEXT_VERSION, Episode, Fact, InvalidInput, Scope
from .store.base import Store, StoreUnavailable

if TYPE_CHECKING:
    from tqdm import tqdm

    from .engine import MemoryEngine

#: Meta keys that make the target's vectors line up with the source folder's, each with what
#: a source without it means: the index's naming key (also the source's identity, see the
#: module docstring), the length of its metadata tokens (a folder of an earlier version holds
#: the 11-character form, which the target is told) and the embedder.
CARRIED_META: dict[str, str | None] = {
    "index_key": None,
    "index_token_chars": str(SHORT_TOKEN_CHARS),
    "embedder": None,
}


class TargetNotEmpty(StoreUnavailable):
    """The target holds records that were not copied from this source (one line, exit 2)."""


@dataclass
class Tally:
    """What one kind of record came to: copied now, found in the target already, and refused
    by the target (uid and reason)."""

    copied: int = 0
    present: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ProjectCheck:
    """Counts of one project: readable in the source, set aside there as unreadable (not
    copyable), and found in the target."""

    org_id: str
    project_id: str
    source_episodes: int = 0
    unreadable_episodes: int = 0
    target_episodes: int = 0
    source_facts: int = 0
    unreadable_facts: int = 0
    target_facts: int = 0

    def differences(self) -> list[str]:
        out = []
        if self.source_episodes != self.target_episodes:
            out.append(f"episodes {self.source_episodes} in the source, {self.target_episodes}")
        if self.source_facts != self.target_facts:
            out.append(f"facts {self.source_facts} in the source, {self.target_facts}")
        return [f"{self.org_id}/{self.project_id}: {d} in the target" for d in out]


@dataclass
class Migration:
    """The outcome of :func:`copy_records`."""

    tallies: dict[str, Tally] = field(default_factory=dict)
    checks: list[ProjectCheck] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # settings or projects the target lacks
    #: Every vector the source's index holds is its row's current one (nothing was waiting
    #: to be embedded, in this version's text format): they may be adopted.
    vectors_current: bool = False

    @property
    def copied(self) -> int:
        return sum(t.copied for t in self.tallies.values())

    def differences(self) -> list[str]:
        return [d for c in self.checks for d in c.differences()] + self.missing


@contextmanager
def _bar(kind: str, total: int, progress: bool) -> Iterator[tqdm[None]]:
    from tqdm import tqdm

    with tqdm(total=total, desc=kind, unit=" rows", disable=not progress, leave=True) as bar:
        yield bar


async def claim_target(source: Store, target: Store, where: str, source_name: str) -> None:
    """Make ``target`` this source's copy: refuse it when it holds anything that did not come
    from ``source``; otherwise carry the source's naming key and embedder over."""
    key = await source.init_meta("index_key", secrets.token_hex(32))
    counts = await target.counts()
    projects = await target.projects()
    held = counts.episodes + counts.facts + len(projects) + len(await target.list_settings())
    if held and await target.get_meta("index_key") != key:
        raise TargetNotEmpty(
            f"{where} already holds a memory that was not copied from {source_name}"
            f" ({counts.episodes} episodes, {counts.facts} facts, {len(projects)} projects);"
            " migrate into an empty database"
        )
    for name, absent in CARRIED_META.items():
        value = await source.get_meta(name)
        if value is None:
            value = absent
        if value is not None and await target.get_meta(name) != value:
            await target.set_meta(name, value)


async def copy_records(
    source: Store, target: Store, *, batch: int = 1000, progress: bool = True
) -> Migration:
    """Copy what ``target`` lacks of ``source`` (see the module docstring) and count both."""
    result = Migration()
    result.vectors_current = (
        await source.count_pending() == 0
        and await source.get_meta("embed_text") == EMBED_TEXT_VERSION
    )
    refs = await source.projects()
    checks = {(r.org_id, r.project_id): ProjectCheck(r.org_id, r.project_id) for r in refs}
    result.checks = list(checks.values())

    tally = result.tallies["projects"] = Tally()
    with _bar("projects", len(refs), progress) as bar:
        for ref in refs:
            found = await source.get_project(ref.org_id, ref.project_id)
            if found is not None and await target.create_project(
                ref.org_id, ref.project_id, found.description, found.config
            ):
                tally.copied += 1
            else:
                tally.present += 1
            bar.update()

    tally = result.tallies["settings"] = Tally()
    wanted = await source.list_settings()
    have = await _settings(target)
    with _bar("settings", len(wanted), progress) as bar:
        for s in wanted:
            if have.get((s.org_id, s.project_id, s.subject, s.key)) == s.value:
                tally.present += 1
            else:
                await target.set_setting(s.org_id, s.project_id, s.subject, s.key, s.value)
                tally.copied += 1
            bar.update()

    tally = result.tallies["episodes"] = Tally()
    totals = {ref: await source.count(Scope(org_id=ref[0], project_id=ref[1])) for ref in checks}
    with _bar("episodes", sum(totals.values()), progress) as bar:
        for (org, project), check in checks.items():
            scope = Scope(org_id=org, project_id=project)
            # Offsets count stored rows, unreadable ones included (they are left out of a
            # page, not out of the order), so every row is visited exactly once.
            for offset in range(0, totals[(org, project)], batch):
                page = await source.list_episodes(scope, None, None, batch, offset)
                raw = min(batch, totals[(org, project)] - offset)
                check.source_episodes += len(page)
                check.unreadable_episodes += raw - len(page)
                present = set(await target.existing(org, project, [e.uid for e in page]))
                tally.present += len(present)
                await _add_episodes(target, [e for e in page if e.uid not in present], tally)
                bar.update(raw)
            check.target_episodes = await target.count(scope)

    tally = result.tallies["facts"] = Tally()
    fact_totals = {ref: await source.count_facts(*ref) for ref in checks}
    with _bar("facts", sum(fact_totals.values()), progress) as bar:
        for (org, project), check in checks.items():
            total = fact_totals[(org, project)]
            facts = await source.facts(org, project, include_superseded=True, limit=total + 1)
            check.source_facts = len(facts)
            check.unreadable_facts = total - len(facts)
            for start in range(0, len(facts), batch):
                chunk = facts[start : start + batch]
                present = set(await target.fact_uids(org, project, [f.uid for f in chunk]))
                tally.present += len(present)
                for fact in chunk:
                    if fact.uid not in present:
                        await _add_fact(target, fact, tally)
                bar.update(len(chunk))
            bar.update(check.unreadable_facts)
            check.target_facts = await target.count_facts(org, project)

    result.missing = await _missing(source, target)
    return result


async def _add_episodes(target: Store, episodes: Sequence[Episode], tally: Tally) -> None:
    """Add a batch in one transaction; when the target refuses it, one by one, so that one bad
    row is listed and the others are stored."""
    if not episodes:
        return
    try:
        added = await target.add(episodes)
    except InvalidInput as exc:
        if len(episodes) == 1:
            tally.refused.append((episodes[0].uid, str(exc)))
        else:
            for one in episodes:
                await _add_episodes(target, [one], tally)
        return
    for ep, outcome in zip(episodes, added, strict=True):
        if outcome.uid != ep.uid:  # the same source under another uid: not this source's copy
            raise TargetNotEmpty(
                f"the target holds message {ep.platform}:{ep.source_id} of"
                f" {ep.org_id}/{ep.project_id} under another uid ({outcome.uid}, here"
                f" {ep.uid}); migrate into an empty database"
            )
        tally.copied += 1


async def _add_fact(target: Store, fact: Fact, tally: Tally) -> None:
    try:
        await target.add_fact(fact)
    except InvalidInput as exc:
        tally.refused.append((fact.uid, str(exc)))
    else:
        tally.copied += 1


async def _missing(source: Store, target: Store) -> list[str]:
    """Settings and projects of the source that the target lacks or holds otherwise."""
    out = []
    have = await _settings(target)
    for s in await source.list_settings():
        if have.get((s.org_id, s.project_id, s.subject, s.key)) != s.value:
            out.append(f"setting {s.key!r} of {s.subject} in {s.org_id}/{s.project_id}")
    projects = {(p.org_id, p.project_id) for p in await target.projects()}
    for p in await source.projects():
        if (p.org_id, p.project_id) not in projects:
            out.append(f"project {p.org_id}/{p.project_id}")
    return [f"{what} is missing in the target" for what in out]


async def _settings(store: Store) -> dict[tuple[str, str, str, str], str]:
    return {
        (s.org_id, s.project_id, s.subject, s.key): s.value for s in await store.list_settings()
    }


async def adopt_vectors(engine: MemoryEngine, lease_s: float = 60.0) -> int:
    """Mark the target's queued rows indexed, then let the engine's reconcile queue again each
    row whose vector its index does not hold; returns the rows whose vectors were kept.

    Only right when every vector the index holds for a row is that row's current one: the
    caller adopts only when the source had nothing waiting to be embedded."""
    if not (await engine.stats()).vectors:  # a fresh index: nothing to keep
        return 0
    claimed = 0
    while (claim := await engine.store.claim(1000, lease_s)) is not None:
        await engine.store.complete(claim)
        claimed += len(claim.episodes)
    if not claimed:
        return 0
    requeued = (await engine.reconcile())["requeued_rows"]
    return max(0, claimed - requeued)


async def embed_pending(engine: MemoryEngine, progress: bool = True) -> int:
    """Run the engine's indexer in this process until its queue is empty (every row embedded,
    or set aside when it cannot be); returns how many rows were waiting."""
    total = await engine.store.count_pending()
    left = total
    with _bar("vectors", total, progress) as bar:
        while left:
            stepped = await engine.index_step()
            now = await engine.store.count_pending()
            bar.update(max(0, left - now))
            left = now
            if not stepped and left:
                # Rows still claimed by a run that was killed: theirs again when the lease ends.
                await asyncio.sleep(1)
    return total
