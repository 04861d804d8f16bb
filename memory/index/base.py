"""The vector index the engine uses: what it must do, whatever holds the vectors.

The index is derived from the store and rebuildable from it at any time. Every vector belongs
to one row (its ``uid``), is stored once, and is reachable by two kinds of search: project-wide
(org, project) and one channel (org, project, produced_for); narrower filters (producer, thread)
are the implementation's to apply. How a channel search finds its vectors among the project's
is the implementation's choice too (Chroma: :mod:`memory.index.chroma`). The engine keeps the
index consistent with two checks of its own: a cheap one on open (:meth:`VectorIndex.count`
against the rows it says are indexed) and a deep one (:meth:`VectorIndex.vector_ids` against
every row, dropping orphans with :meth:`VectorIndex.drop`). An index in an older layout is
converted when it is opened, without the engine's help.

Calls are synchronous; the engine makes them from worker threads. The implementation is
:class:`memory.index.chroma.ChromaIndex` (embedded Chroma or a Chroma server).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from memory.embedders import Vectors


@dataclass(frozen=True)
class VectorItem:
    """What the index keeps beside a vector: where it may be found."""

    uid: str
    org_id: str
    project_id: str
    produced_for: str
    producer: str
    thread_id: str | None


#: A row of a channel as the store holds it: (uid, producer, thread id).
Member = tuple[str, str, str | None]
#: Lists a channel's rows from the store, indexed or not (called by the index from its thread,
#: at the moment its own consistency rule needs: see :mod:`memory.index.chroma`).
Members = Callable[[], Sequence[Member]]


@dataclass
class ScrubReport:
    """What a scrub cleared from the index's files."""

    queue_rows: int = 0  # write-ahead rows emptied
    hnsw_elements: int = 0  # HNSW elements whose vector was zeroed
    dropped_segments: int = 0  # folders of dropped collections removed


class VectorIndex(Protocol):
    def upsert(self, items: list[VectorItem], vectors: Vectors) -> None:
        """Write (or overwrite) the vector of each item; ``vectors[i]`` is ``items[i]``'s."""
        ...

    def query(
        self,
        org_id: str,
        project_id: str,
        produced_for: str | None,
        vector: Vectors,
        k: int,
        producer: str | None = None,
        thread_id: str | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` nearest uids in the scope with their cosine similarity, best first
        (``produced_for`` None: the whole project)."""
        ...

    def query_many(
        self,
        org_id: str,
        project_id: str,
        produced_for: str | None,
        vectors: Vectors,
        k: int,
        producer: str | None = None,
        thread_id: str | None = None,
        members: Members | None = None,
    ) -> list[list[tuple[str, float]]]:
        """:meth:`query` for each row of ``vectors`` (one search, several query vectors),
        in one call to the index: a search's query vectors share its scope. ``members``: for a
        channel search, how to list the channel's rows from the store (an implementation
        that reads a channel's vectors by uid uses it; without it, it finds them itself)."""
        ...

    def delete(self, org_id: str, project_id: str, produced_for: str, uids: list[str]) -> None:
        """Delete these vectors of one channel (remembered for :meth:`scrub_touched`); a later
        search of any scope no longer returns them."""
        ...

    def drop_project(self, org_id: str, project_id: str, channels: list[str]) -> None:
        """Delete every vector of a project (``channels``: the project's channels, for an
        implementation that keeps anything per channel)."""
        ...

    def ids(self, org_id: str, project_id: str, produced_for: str | None = None) -> set[str]:
        """The uids a search of this scope reaches (``produced_for`` None: the project)."""
        ...

    def vector(
        self, org_id: str, project_id: str, produced_for: str | None, uid: str
    ) -> Vectors | None:
        """The vector a search of this scope compares for ``uid``; None when it has none."""
        ...

    def count(self) -> int:
        """How many vectors the index holds (the cheap check on open)."""
        ...

    def vector_ids(self) -> set[str]:
        """The uid of every vector in the index (the deep check)."""
        ...

    def drop(self, uids: Collection[str]) -> None:
        """Delete these vectors wherever they are (orphans: their rows are gone)."""
        ...

    def reset(self) -> None:
        """Delete every vector (before a full reindex, or a new naming key)."""
        ...

    def scrub_touched(self) -> ScrubReport | None:
        """Leave nothing of the vectors deleted since the last call in the index's files;
        None when the files are not this process's to scrub (a server)."""
        ...

    def close(self) -> None:
        """Release the index (files, threads); it is unusable afterwards."""
        ...
