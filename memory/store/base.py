"""The store protocol: what the memory engine needs from the database that holds the truth.

What ``MemoryEngine`` calls on its store; SQLite (:mod:`memory.store.sqlite`, the embedded
default) and PostgreSQL (:mod:`memory.store.postgres`) implement it. Three rules of shape:

* results are small typed records (:class:`KeywordHit`, :class:`Row`, :class:`Tombstone`...)
  instead of positional tuples, so the engine never unpacks a store's row layout;
* every method that writes is atomic and scoped: it names the org and project it may touch,
  and does its whole job in one transaction (a forget deletes the episodes, queues their
  vectors for removal and drops the facts that cited only them, or does nothing);
* what several processes sharing one database need is explicit: :meth:`EpisodeStore.add`
  says whether each source was new (a Slack retry delivered to two workers is answered once),
  and pending rows are *claimed* for embedding with a lease (:class:`Claim`), so that workers
  share the work without duplicates, and a crashed worker's rows come back when its lease ends.

Records set aside. A row that cannot be read back into a record (written before a rule was
enforced) or cannot be embedded is *set aside*: recorded with its reason, counted in
:attr:`Counts.set_aside`, logged once, skipped by the index queue, and still deletable. It
never stops a read or the indexer for the other rows.

Transactions. Each implementation has exactly one transaction helper (begin, commit, roll back
on any exception, retry on a deadlock where the database can report one) and every write
method goes through it; no method leaves a partial write behind. A write is visible to every
reader of the same database, in any process, when the method returns.

Row keys. :attr:`Row.key` is an integer that identifies a stored episode inside one store
(SQLite's rowid, PostgreSQL's identity column). It is stable while the row lives, cheap to
join on, and means nothing outside the store that returned it: the engine uses it to fuse
keyword and vector candidates and to ask for neighbours, never to address a record through
the API (uids do that).

Times are UTC datetimes at the boundary; stores keep them as epoch seconds (a float), so a
time range, a ``created_at`` filter and the order of messages are the same on every store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

from memory.filters import Filter
from memory.model import Added as Added  # a record of the contract; stores make it
from memory.model import Brief, Episode, Fact, Scope, TimeRange

#: Where an operator names the PostgreSQL database a server uses; one-line errors name it.
DATABASE_URL_SETTING = "CHANNELMIND_DATABASE_URL"


class StoreUnavailable(RuntimeError):
    """The store cannot be opened: unreachable server, refused login, unwritable folder,
    a schema newer than this code. The message names the cause and what to do, in one line
    and without secrets (the CLI prints it and exits with status 2)."""


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Row:
    """A stored episode with its store-local row key."""

    key: int
    episode: Episode


class Adjacent(NamedTuple):
    """The row keys just before and just after a row in its channel, in time order.

    A pair (the shape ranking reads): a search builds one per candidate, and a NamedTuple
    costs half of a frozen dataclass to make."""

    before: int | None
    after: int | None


@dataclass(frozen=True, slots=True)
class Found:
    """A search's candidate: a stored episode as ranking reads it (a :class:`Brief`, not a
    whole Episode: a search reads hundreds of these), with its row key and, when the store
    read them in the same query, its neighbours in the channel: what :meth:`EpisodeStore.adjacent`
    would say of it (a search then needs no separate round trip for them)."""

    key: int
    episode: Brief
    adjacent: Adjacent | None = None


@dataclass(frozen=True, slots=True)
class KeywordHit:
    """A keyword (full-text) candidate, as :class:`Found`. ``score`` is positive and larger is
    better; it is bm25-like (term rarity and document length count), comparable within one
    query. ``adjacent`` as :attr:`Found.adjacent`."""

    key: int
    episode: Brief
    score: float
    adjacent: Adjacent | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """Episodes around a row in its channel (its thread, when it is in one), nearest first."""

    before: list[Row] = field(default_factory=list)
    after: list[Row] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A vector to remove from the index: its row is gone. Written in the same transaction
    as the delete, so a crash in between cannot leave an orphaned vector."""

    id: int
    uid: str
    org_id: str
    project_id: str
    produced_for: str


@dataclass(frozen=True, slots=True)
class Claim:
    """Pending episodes handed to one worker to embed, until ``lease_until``.

    Other workers do not get these rows while the lease runs. :meth:`IndexQueue.complete`
    marks them indexed (unless the episode was edited after the claim: then it stays
    pending, to be embedded again); :meth:`IndexQueue.release` hands them back at once. A
    worker that dies does neither, and its rows are claimable again when the lease ends.
    ``stamps`` is the store's private proof of which version of each episode was claimed."""

    token: str
    episodes: tuple[Episode, ...]
    lease_until: datetime
    stamps: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a delete or forget removed: episode uids, the number of facts that went with them
    (they cited only these episodes, or were about the forgotten person), and the channels
    the episodes were in (their vector collections)."""

    uids: list[str] = field(default_factory=list)
    facts: int = 0
    channels: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ProjectRef:
    org_id: str
    project_id: str


@dataclass(frozen=True, slots=True)
class Project:
    org_id: str
    project_id: str
    description: str
    config: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Setting:
    """One stored setting: ``key`` of ``subject`` (a person, a channel, the project's own
    marks) in a project."""

    org_id: str
    project_id: str
    subject: str
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Counts:
    """Whole-store counts for ``stats``."""

    episodes: int
    pending_index: int
    set_aside: int
    facts: int
    orgs: int
    projects: int
    channels: int


# ---------------------------------------------------------------------------- protocols


@runtime_checkable
class Lifecycle(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (versioned migrations, each in one
        transaction; safe when several processes open at once). Raises
        :class:`StoreUnavailable` for operator mistakes."""

    async def close(self) -> None: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def init_meta(self, key: str, value: str) -> str:
        """Set ``key`` to ``value`` unless it is set, and return what it holds: of several
        processes opening one store at once, the first one's value wins for all."""


@runtime_checkable
class EpisodeStore(Protocol):
    async def add(self, episodes: Sequence[Episode]) -> list[Added]:
        """Store episodes in one transaction, one :class:`Added` per input, in order. A
        source already stored (or repeated within the batch) is not stored again. An
        episode that cannot be stored for another reason (its uid belongs to a different
        episode) raises ``InvalidInput`` and nothing of the batch is stored. The project of
        each episode is registered if it was not."""

    async def edit(
        self, org_id: str, project_id: str, uid: str, content: str, edited_at: datetime
    ) -> bool:
        """Replace an episode's content (full-text index follows; the episode goes back to
        the embedding queue). False when no such episode is in the org and project."""

    async def delete(self, org_id: str, project_id: str, uids: Sequence[str]) -> Deleted:
        """Delete episodes of one org and project by uid (other uids are ignored), queue
        their vectors for removal, drop facts citing only them."""

    async def forget(
        self, scope: Scope, filt: Filter | None = None, *, drop_facts: bool = False
    ) -> Deleted:
        """Delete every episode inside the scope that matches the filter, as :meth:`delete`
        does, in one transaction. ``drop_facts`` also drops the facts about the scope's
        producer (learned in the scope's channel, when it names one), or, when it names no
        producer, the facts learned in its channel; :attr:`Deleted.facts` counts them too."""

    async def purge(self) -> None:
        """After deletes: make deleted content leave the store's files as far as this store
        can while it serves (SQLite: fold and truncate the WAL; PostgreSQL: VACUUM the
        touched tables). What remains is documented by each implementation."""

    async def get(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[Episode]:
        """Episodes of one org and project by uid, in the order asked, unknown ones left out."""

    async def existing(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[str]:
        """Which of ``uids`` are episodes of this org and project, readable or set aside, in
        the order asked (each once)."""

    async def get_scoped(
        self,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        uids: Sequence[str],
        *,
        neighbours: bool = True,
    ) -> dict[str, Found]:
        """The rows among ``uids`` inside the scope, time range and filter, by uid, as
        candidates of a search, each with its :attr:`Found.adjacent` unless ``neighbours`` is
        False (a search that does not rank by them: not looked up, None)."""

    async def find_source(
        self, org_id: str, project_id: str, platform: str, source_id: str
    ) -> Episode | None: ...

    async def list_episodes(
        self,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        limit: int,
        offset: int,
        newest_first: bool = False,
    ) -> list[Episode]:
        """A page of the scope in time order (ties by insertion order)."""

    async def count(self, scope: Scope, filt: Filter | None = None) -> int: ...

    async def keyword_search(
        self,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        text: str,
        limit: int,
        *,
        neighbours: bool = True,
    ) -> list[KeywordHit]:
        """Full-text candidates inside the scope, best first. Any word of the query may
        match (stopwords dropped); the scope is applied inside the full-text index. Each hit
        carries its :attr:`KeywordHit.adjacent`, as :meth:`get_scoped`."""

    async def adjacent(self, keys: Sequence[int]) -> dict[int, Adjacent]:
        """For each row key, the previous and next row key in the same channel (what
        :meth:`keyword_search` and :meth:`get_scoped` also return with each candidate)."""

    async def neighbours(self, keys: Sequence[int], before: int, after: int) -> dict[int, Context]:
        """For each row key, up to ``before`` earlier and ``after`` later episodes of its
        channel (of its thread when it is in one), nearest first."""

    async def channels(self, org_id: str, project_id: str) -> list[str]:
        """The distinct ``produced_for`` of a project's episodes."""

    async def channel_members(
        self, org_id: str, project_id: str, produced_for: str
    ) -> list[tuple[str, str, str | None]]:
        """(uid, producer, thread id) of every row of a channel, indexed or not: what the
        vector index reads a channel's vectors by (:mod:`memory.index.chroma`)."""

    async def all_uids(self) -> set[str]:
        """Every stored uid (the index's deep consistency check)."""


@runtime_checkable
class IndexQueue(Protocol):
    """Episodes waiting for their vectors, and vectors waiting to be removed."""

    async def claim(self, limit: int, lease_s: float) -> Claim | None:
        """Claim up to ``limit`` pending episodes, channel by channel (one vector collection
        per channel: whole channels keep a batch to few index calls). Rows claimed by another
        live lease are skipped, never waited for. None when nothing is claimable. A row
        claimed too many times without completing (a worker that keeps dying on it) is set
        aside instead of handed out again."""

    async def complete(self, claim: Claim, uids: Sequence[str] | None = None) -> None:
        """Mark the claim's episodes (or only ``uids`` of them) indexed, unless edited since
        the claim, and release the rest."""

    async def release(self, claim: Claim) -> None:
        """Hand a claim's rows back now, for another attempt."""

    async def set_aside(
        self, claim: Claim, uids: Sequence[str], reason: str = "could not be embedded"
    ) -> None:
        """Stop trying to embed these rows of the claim (they failed, for ``reason``): they
        are set aside (see the module's docstring), and any vector they had is queued for
        removal."""

    async def requeue(self, uids: Sequence[str] | None = None) -> None:
        """Put rows back in the queue to be embedded again. With ``uids``: those rows (their
        vectors were lost), unless set aside. With None: every row, set-aside ones included
        (a reindex: a new embedder may take what the old one could not)."""

    async def count_pending(self) -> int: ...

    async def count_indexed(self) -> int: ...

    async def count_set_aside(self) -> int:
        """Records set aside (episodes and facts)."""

    async def tombstones(self, limit: int) -> list[Tombstone]: ...

    async def clear_tombstones(self, ids: Sequence[int] | None = None) -> None:
        """Forget tombstones once their vectors are gone (all of them when None)."""

    async def needs_scrub(self) -> bool:
        """Whether vectors were removed since the vector index's files were last scrubbed.
        Every write that queues a vector for removal sets this in its own transaction, so a
        crash before the scrub is seen by the next open."""

    async def request_scrub(self) -> None: ...

    async def scrubbed(self) -> None:
        """The vector index's files hold nothing removed: clear :meth:`needs_scrub`."""


@runtime_checkable
class FactStore(Protocol):
    async def add_fact(self, fact: Fact) -> str:
        """Store a fact with its citations; returns its uid. Every citation must be an
        episode of the fact's own org and project, and the uid must be free (InvalidInput
        otherwise), so that no other org's delete can take the fact away."""

    async def supersede_fact(
        self, org_id: str, project_id: str, uid: str, by: str, when: datetime
    ) -> bool:
        """Mark fact ``uid`` superseded by fact ``by``; False (nothing changed) unless both are
        facts of this org and project."""

    async def facts(
        self,
        org_id: str,
        project_id: str,
        *,
        subject: str | None = None,
        produced_for: str | None = None,
        include_superseded: bool = False,
        uids: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[Fact]:
        """Facts newest first."""

    async def delete_facts(self, org_id: str, project_id: str, uids: Sequence[str]) -> int: ...

    async def delete_facts_about(
        self, org_id: str, project_id: str, subject: str | None, produced_for: str | None
    ) -> int: ...

    async def count_facts(self, org_id: str, project_id: str) -> int: ...

    async def fact_uids(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[str]:
        """Which of ``uids`` are facts of this org and project, readable or set aside."""


@runtime_checkable
class ProjectStore(Protocol):
    async def create_project(
        self, org_id: str, project_id: str, description: str, config: dict[str, Any]
    ) -> bool:
        """False when the project exists already."""

    async def get_project(self, org_id: str, project_id: str) -> Project | None: ...

    async def projects(self, org_id: str | None = None) -> list[ProjectRef]:
        """Projects ordered by org and project id."""

    async def delete_project(self, org_id: str, project_id: str) -> Deleted:
        """Everything of a project in one transaction: episodes (vectors queued for removal),
        facts, settings and the project itself."""

    async def get_setting(
        self, org_id: str, project_id: str, subject: str, key: str
    ) -> str | None: ...

    async def set_setting(
        self, org_id: str, project_id: str, subject: str, key: str, value: str | None
    ) -> None:
        """Set a setting; None removes it."""

    async def list_settings(self, org_id: str | None = None) -> list[Setting]:
        """Every setting (of one org), ordered by org, project, subject and key."""

    async def counts(self) -> Counts: ...


@runtime_checkable
class Store(Lifecycle, EpisodeStore, IndexQueue, FactStore, ProjectStore, Protocol):
    """Everything the engine needs from a store; SQLite and PostgreSQL implement it."""
