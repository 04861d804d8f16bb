"""The memory contract: what the embedded engine and a remote memory server both offer.

:class:`Memory` is the protocol the chat layer (``bot/``), semantic memory and the CLI are
typed with. :class:`memory.engine.MemoryEngine` (the store and the vector index in this
process) and :class:`memory.client.MemoryClient` (a memory server over HTTP,
``CHANNELMIND_MEMORY_URL``) both satisfy it, so either one is a drop-in; each module proves it
to ``mypy`` at its end. This module imports neither implementation, only the records of
:mod:`memory.model`.

Both raise :class:`memory.model.InvalidInput` (:class:`memory.filters.FilterError` for a bad
filter) for input they refuse; any other exception means the memory failed.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from .filters import Filter
from .model import (
    Added,
    Episode,
    Fact,
    ForgetReport,
    Scope,
    SearchMode,
    SearchResult,
    SourceRef,
    Stats,
    TimeRange,
)


class Memory(Protocol):
    """Episodes, facts and per-user settings, scoped by org and project."""

    # -- writes ----------------------------------------------------------------------------

    async def add(self, episodes: Sequence[Episode]) -> builtins.list[str]:
        """Store episodes (idempotent by source); their uids, in order."""
        ...

    async def add_outcomes(self, episodes: Sequence[Episode]) -> builtins.list[Added]:
        """Store episodes; for each, its uid and whether this call stored it (``new`` is
        False for a source stored before: a platform's retry, a second worker given the same
        event). Of concurrent adds of one source, exactly one is told it is new."""
        ...

    async def edit(
        self, ref: SourceRef | str, content: str, *, org_id: str = "", project_id: str = ""
    ) -> Episode | None:
        """Replace a message's content; the edited episode, or None if it is unknown."""
        ...

    async def delete(self, org_id: str, project_id: str, uids: Sequence[str]) -> builtins.list[str]:
        """Delete episodes by uid (unknown ones are ignored); the uids deleted."""
        ...

    async def forget(
        self,
        org_id: str,
        *,
        project_id: str | None = None,
        producer: str | None = None,
        produced_for: str | None = None,
        thread_id: str | None = None,
        filters: str | Filter | None = None,
        facts_about_producer: bool = True,
    ) -> ForgetReport:
        """Forget everything that matches (a person in an org, a channel, a thread...)."""
        ...

    # -- reads -----------------------------------------------------------------------------

    async def get(
        self, org_id: str, project_id: str, uids: Sequence[str]
    ) -> builtins.list[Episode]: ...

    async def get_by_source(self, ref: SourceRef) -> Episode | None: ...

    async def list(
        self,
        scope: Scope,
        filters: str | Filter | None = None,
        page_size: int = 100,
        page_num: int = 0,
        time: TimeRange | None = None,
    ) -> builtins.list[Episode]: ...

    async def count(self, scope: Scope, filters: str | Filter | None = None) -> int: ...

    async def recent(self, scope: Scope, n: int = 20) -> builtins.list[Episode]: ...

    async def search(
        self,
        query: str,
        scope: Scope,
        filters: str | Filter | None = None,
        top_k: int = 10,
        expand_context: int = 0,
        *,
        time: TimeRange | None = None,
        mode: SearchMode = "hybrid",
        score_threshold: float | None = None,
        statements_only: bool = False,
    ) -> SearchResult: ...

    async def similarities(self, query: str, texts: Sequence[str]) -> builtins.list[float] | None:
        """Cosine similarity of each text to ``query`` under the memory's own embedder (on the
        server for a client, so a bot on a remote memory judges relevance as an embedded one
        does). None when the embedder cannot tell meaning (the hashing one)."""
        ...

    # -- facts -----------------------------------------------------------------------------

    async def add_fact(self, fact: Fact) -> str: ...

    async def facts(
        self,
        org_id: str,
        project_id: str,
        *,
        subject: str | None = None,
        produced_for: str | None = None,
        include_superseded: bool = False,
        uids: Sequence[str] | None = None,
    ) -> builtins.list[Fact]: ...

    async def supersede_fact(
        self, org_id: str, project_id: str, uid: str, by: str, when: datetime | None = None
    ) -> bool:
        """Mark fact ``uid`` replaced by fact ``by``; False unless both are facts of this org
        and project."""
        ...

    async def delete_facts(self, org_id: str, project_id: str, uids: Sequence[str]) -> int: ...

    # -- projects, settings, lifecycle -----------------------------------------------------

    async def list_projects(self, org_id: str | None = None) -> builtins.list[tuple[str, str]]: ...

    async def get_setting(
        self, org_id: str, project_id: str, subject: str, key: str
    ) -> str | None: ...

    async def set_setting(
        self, org_id: str, project_id: str, subject: str, key: str, value: str | None
    ) -> None: ...

    async def wait_indexed(self, timeout: float | None = 120.0) -> None:  # noqa: ASYNC109
        """Wait until every stored episode is in the vector index (TimeoutError if not)."""
        ...

    async def stats(self) -> Stats: ...

    async def close(self) -> None: ...
