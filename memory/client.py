"""MemoryClient: the memory contract (:class:`memory.protocol.Memory`) over HTTP.

A bot pointed at a shared memory server (``CHANNELMIND_MEMORY_URL``) uses this instead of an
embedded engine: the same methods and records (Episode, Fact, SearchResult, Stats...), over the
server's ``/api/cm`` routes (and ``/api/v2/projects/list``), whose bodies are defined once in
:mod:`memory.server.api_cm.bodies` for the server and this client. Requests are sent as the
caller gave them: the server validates them, and its 422 comes back as ``InvalidInput``.
Relevance by meaning uses the server's embedder (:meth:`MemoryClient.similarities`). Filters
may be strings or parsed :data:`memory.filters.Filter` trees; trees are sent as text.

Errors: a 422 raises :class:`memory.model.InvalidInput` (``FilterError`` for a bad filter), as
the engine would; other failures raise :class:`MemoryServerError` (``MemoryAccessDenied`` for
401/403).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from .filters import And, Comparison, Filter, FilterError, InList, IsNull, Not, Or, Value
from .model import (
    Added,
    Episode,
    Fact,
    ForgetReport,
    InvalidInput,
    Scope,
    SearchMode,
    SearchResult,
    SourceRef,
    Stats,
    TimeRange,
)
from .server.api_cm.bodies import (
    AddedEpisodes,
    AddEpisodesBody,
    AddFactBody,
    Count,
    CountBody,
    EditBody,
    FactsBody,
    ForgetBody,
    Indexed,
    ListBody,
    MaybeEpisode,
    NewEpisode,
    NewFact,
    Rebuild,
    RecentBody,
    SearchBody,
    SetSettingBody,
    SettingBody,
    SettingValue,
    Similarities,
    SimilarityBody,
    SupersedeBody,
    Uid,
    Uids,
    UidsBody,
    WaitBody,
)

if TYPE_CHECKING:
    from .protocol import Memory

_Answer = TypeVar("_Answer", bound=BaseModel)
_EPISODES = TypeAdapter(list[Episode])
_FACTS = TypeAdapter(list[Fact])


class MemoryServerError(RuntimeError):
    """The memory server refused or failed a call (``status`` 0: it could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"memory server answered {status}: {message}" if status else message)
        self.status = status
        self.message = message


class MemoryAccessDenied(MemoryServerError, PermissionError):
    """401 (no or wrong API key) or 403 (the key does not grant this org)."""


# -- filters as text -----------------------------------------------------------------------


def _literal(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"number {value} cannot be written in a filter")
        text = format(Decimal(repr(value)), "f")
        return text if "." in text else f"{text}.0"
    if isinstance(value, datetime):
        return f"date('{value.isoformat()}')"
    return "'" + str(value).replace("'", "''") + "'"


def filter_text(f: Filter) -> str:
    """Write a parsed filter back in the filter language (``parse_filter`` reads it back)."""
    if isinstance(f, Comparison):
        return f"{f.field} {f.op} {_literal(f.value)}"
    if isinstance(f, InList):
        items = ", ".join(_literal(v) for v in f.values)
        return f"{f.field} {'NOT IN' if f.negate else 'IN'} ({items})"
    if isinstance(f, IsNull):
        return f"{f.field} IS {'NOT NULL' if f.negate else 'NULL'}"
    if isinstance(f, And | Or):
        word = " AND " if isinstance(f, And) else " OR "
        return word.join(f"({filter_text(item)})" for item in f.items)
    if isinstance(f, Not):
        return f"NOT ({filter_text(f.item)})"
    raise TypeError(f"not a filter: {f!r}")


def _filters(filters: str | Filter | None) -> str | None:
    if filters is None or isinstance(filters, str):
        return filters
    return filter_text(filters)


# -- the client ----------------------------------------------------------------------------


class MemoryClient:
    """Async client of a ChannelMind memory server: the memory contract over HTTP."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> MemoryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- transport -------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: BaseModel | None = None) -> Any:
        payload = None if body is None else body.model_dump(mode="json")
        try:
            response = await self._http.request(method, path, json=payload)
        except httpx.HTTPError as exc:
            raise MemoryServerError(0, f"memory server unreachable: {exc!r}") from exc
        if response.status_code == 204:
            return None
        if response.is_success:
            return response.json()
        message = _message(response)
        if response.status_code == 422:
            exception = _detail(response).get("exception")
            raise (FilterError if exception == "FilterError" else InvalidInput)(message)
        if response.status_code in (401, 403):
            raise MemoryAccessDenied(response.status_code, message)
        raise MemoryServerError(response.status_code, message)

    async def _post(self, path: str, body: BaseModel | None, answer: type[_Answer]) -> _Answer:
        return answer.model_validate(await self._call("POST", path, body))

    async def _episodes(self, path: str, body: BaseModel) -> builtins.list[Episode]:
        return _EPISODES.validate_python(await self._call("POST", path, body))

    # -- writes ----------------------------------------------------------------------------

    async def add(self, episodes: Sequence[Episode]) -> builtins.list[str]:
        return [a.uid for a in await self.add_outcomes(episodes)]

    async def add_outcomes(self, episodes: Sequence[Episode]) -> builtins.list[Added]:
        if not episodes:
            return []
        body = AddEpisodesBody.model_construct(
            episodes=[NewEpisode.model_construct(**dict(e)) for e in episodes]
        )
        added = await self._post("/api/cm/episodes/add", body, AddedEpisodes)
        return [Added(uid, new) for uid, new in zip(added.uids, added.new, strict=True)]

    async def edit(
        self, ref: SourceRef | str, content: str, *, org_id: str = "", project_id: str = ""
    ) -> Episode | None:
        if isinstance(ref, SourceRef):
            body = EditBody.model_construct(ref=ref, content=content)
        else:
            body = EditBody.model_construct(
                uid=ref, org_id=org_id, project_id=project_id, content=content
            )
        return (await self._post("/api/cm/episodes/edit", body, MaybeEpisode)).episode

    async def delete(self, org_id: str, project_id: str, uids: Sequence[str]) -> builtins.list[str]:
        body = UidsBody.model_construct(org_id=org_id, project_id=project_id, uids=list(uids))
        return (await self._post("/api/cm/episodes/delete", body, Uids)).uids

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
        body = ForgetBody.model_construct(
            org_id=org_id,
            project_id=project_id,
            producer=producer,
            produced_for=produced_for,
            thread_id=thread_id,
            filters=_filters(filters),
            facts_about_producer=facts_about_producer,
        )
        return await self._post("/api/cm/forget", body, ForgetReport)

    # -- reads -----------------------------------------------------------------------------

    async def get(
        self, org_id: str, project_id: str, uids: Sequence[str]
    ) -> builtins.list[Episode]:
        body = UidsBody.model_construct(org_id=org_id, project_id=project_id, uids=list(uids))
        return await self._episodes("/api/cm/episodes/get", body)

    async def get_by_source(self, ref: SourceRef) -> Episode | None:
        return (await self._post("/api/cm/episodes/by_source", ref, MaybeEpisode)).episode

    async def list(
        self,
        scope: Scope,
        filters: str | Filter | None = None,
        page_size: int = 100,
        page_num: int = 0,
        time: TimeRange | None = None,
    ) -> builtins.list[Episode]:
        body = ListBody.model_construct(
            scope=scope,
            filters=_filters(filters),
            page_size=page_size,
            page_num=page_num,
            time=time,
        )
        return await self._episodes("/api/cm/episodes/list", body)

    async def count(self, scope: Scope, filters: str | Filter | None = None) -> int:
        body = CountBody.model_construct(scope=scope, filters=_filters(filters))
        return (await self._post("/api/cm/episodes/count", body, Count)).count

    async def recent(self, scope: Scope, n: int = 20) -> builtins.list[Episode]:
        body = RecentBody.model_construct(scope=scope, n=n)
        return await self._episodes("/api/cm/episodes/recent", body)

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
    ) -> SearchResult:
        body = SearchBody.model_construct(
            query=query,
            scope=scope,
            filters=_filters(filters),
            top_k=top_k,
            expand_context=expand_context,
            time=time,
            mode=mode,
            score_threshold=score_threshold,
            statements_only=statements_only,
        )
        return await self._post("/api/cm/search", body, SearchResult)

    async def wait_indexed(self, timeout: float | None = 120.0) -> None:  # noqa: ASYNC109
        """As the engine's: TimeoutError if indexing is not done within ``timeout``."""
        wait = min(max(timeout or 300.0, 0.01), 300.0)
        http_timeout = httpx.Timeout(self._http.timeout.read or 30.0, read=wait + 30.0)
        body = WaitBody.model_construct(timeout=wait)
        try:
            response = await self._http.post(
                "/api/cm/index/wait", json=body.model_dump(mode="json"), timeout=http_timeout
            )
        except httpx.HTTPError as exc:
            raise MemoryServerError(0, f"memory server unreachable: {exc!r}") from exc
        if not response.is_success:
            raise MemoryServerError(response.status_code, _message(response))
        if not Indexed.model_validate(response.json()).done:
            raise TimeoutError(f"the memory server did not finish indexing in {wait} s")

    async def rebuild_index(self) -> int:
        """Rebuild the vector index inside the server (the process that owns the data folder);
        the number of episodes queued. :meth:`wait_indexed` tells when they are embedded. The
        key must grant every org (``*``)."""
        return (await self._post("/api/cm/index/rebuild", None, Rebuild)).queued

    async def similarities(self, query: str, texts: Sequence[str]) -> builtins.list[float] | None:
        """Similarity of each text to ``query`` under the server's embedder (None for the
        hashing one), so that a bot on this server judges relevance as an embedded one."""
        body = SimilarityBody.model_construct(query=query, texts=list(texts))
        return (await self._post("/api/cm/similarity", body, Similarities)).scores

    # -- facts -----------------------------------------------------------------------------

    async def add_fact(self, fact: Fact) -> str:
        body = AddFactBody.model_construct(fact=NewFact.model_construct(**dict(fact)))
        return (await self._post("/api/cm/facts/add", body, Uid)).uid

    async def facts(
        self,
        org_id: str,
        project_id: str,
        *,
        subject: str | None = None,
        produced_for: str | None = None,
        include_superseded: bool = False,
        uids: Sequence[str] | None = None,
    ) -> builtins.list[Fact]:
        body = FactsBody.model_construct(
            org_id=org_id,
            project_id=project_id,
            subject=subject,
            produced_for=produced_for,
            include_superseded=include_superseded,
            uids=None if uids is None else list(uids),
        )
        return _FACTS.validate_python(await self._call("POST", "/api/cm/facts/list", body))

    async def supersede_fact(
        self, org_id: str, project_id: str, uid: str, by: str, when: datetime | None = None
    ) -> bool:
        body = SupersedeBody.model_construct(
            org_id=org_id, project_id=project_id, uid=uid, by=by, when=when
        )
        try:
            await self._call("POST", "/api/cm/facts/supersede", body)
        except MemoryServerError as exc:
            if exc.status == 404:  # not both facts of this org and project
                return False
            raise
        return True

    async def delete_facts(self, org_id: str, project_id: str, uids: Sequence[str]) -> int:
        body = UidsBody.model_construct(org_id=org_id, project_id=project_id, uids=list(uids))
        return (await self._post("/api/cm/facts/delete", body, Count)).count

    # -- projects, settings, stats ---------------------------------------------------------

    async def list_projects(self, org_id: str | None = None) -> builtins.list[tuple[str, str]]:
        rows = await self._call("POST", "/api/v2/projects/list")
        return [
            (r["org_id"], r["project_id"]) for r in rows if org_id is None or r["org_id"] == org_id
        ]

    async def get_setting(self, org_id: str, project_id: str, subject: str, key: str) -> str | None:
        body = SettingBody.model_construct(
            org_id=org_id, project_id=project_id, subject=subject, key=key
        )
        return (await self._post("/api/cm/settings/get", body, SettingValue)).value

    async def set_setting(
        self, org_id: str, project_id: str, subject: str, key: str, value: str | None
    ) -> None:
        body = SetSettingBody.model_construct(
            org_id=org_id, project_id=project_id, subject=subject, key=key, value=value
        )
        await self._call("POST", "/api/cm/settings/set", body)

    async def stats(self) -> Stats:
        return Stats.model_validate(await self._call("GET", "/api/cm/stats"))


def _detail(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, dict) else {}


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, dict):
        # internal_error is the engine's own message, without the envelope's prefix
        return str(detail.get("internal_error") or detail.get("message") or detail)
    return str(detail)


if TYPE_CHECKING:  # mypy proves that the client is a Memory

    def _is_a_memory(client: MemoryClient) -> Memory:
        return client
