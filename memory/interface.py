"""The memory as the bot sees it: what both the embedded engine and a remote server offer.

:class:`Memory` lists exactly the methods the chat layer (``bot/``) and semantic memory call.
:class:`memory.engine.MemoryEngine` (SQLite + Chroma in this process) and
:class:`memory.client.MemoryClient` (a memory server over HTTP, ``CHANNELMIND_MEMORY_URL``)
both satisfy it, so the bot is typed against this protocol and either one is a drop-in; the
check at the bottom of this module makes ``mypy`` prove it.

Both raise :class:`memory.model.InvalidInput` (:class:`memory.filters.FilterError` for a bad
filter) for input they refuse; any other exception means the memory failed.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from . import embedders
from .engine import ForgetReport, SourceRef
from .filters import Filter
from .model import Episode, Fact, Scope, SearchResult, TimeRange


class Memory(Protocol):
    """Episodes, facts and per-user settings, scoped by org and project."""

    # -- writes ----------------------------------------------------------------------------

    async def add(self, episodes: Sequence[Episode]) -> builtins.list[str]:
        """Store episodes (idempotent by source); their uids, in order."""
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
    ) -> ForgetReport: ...

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
        mode: Literal["hybrid", "keyword", "vector"] = "hybrid",
        score_threshold: float | None = None,
        statements_only: bool = False,
    ) -> SearchResult: ...

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

    async def supersede_fact(self, uid: str, by: str, when: datetime | None = None) -> None: ...

    async def delete_facts(self, org_id: str, project_id: str, uids: Sequence[str]) -> int: ...

    # -- projects, settings, lifecycle -----------------------------------------------------

    async def list_projects(self, org_id: str | None = None) -> builtins.list[tuple[str, str]]: ...

    async def get_setting(
        self, org_id: str, project_id: str, subject: str, key: str
    ) -> str | None: ...

    async def set_setting(
        self, org_id: str, project_id: str, subject: str, key: str, value: str | None
    ) -> None: ...

    async def close(self) -> None: ...


async def similarities(memory: Memory, query: str, texts: Sequence[str]) -> list[float] | None:
    """Cosine similarity of each text to ``query`` under the memory's own embedder: in this
    process for the engine, on the server for a :class:`~memory.client.MemoryClient` (so a bot
    on a remote memory judges relevance as an embedded one does). None when the embedder
    cannot tell meaning (the hashing one) or the memory has none."""
    from .client import MemoryClient

    if isinstance(memory, MemoryClient):
        return await memory.similarities(query, texts)
    embedder: embedders.Embedder | None = getattr(memory, "embedder", None)
    if embedder is None:
        return None
    return await asyncio.to_thread(embedders.similarities, embedder, query, texts)


if TYPE_CHECKING:  # mypy proves that both implementations are a Memory
    from .client import MemoryClient
    from .engine import MemoryEngine

    def _drop_in(engine: MemoryEngine, client: MemoryClient) -> tuple[Memory, Memory]:
        return engine, client
