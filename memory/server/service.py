"""What the REST API v2 and the MCP tools do, on top of the MemoryEngine.

Both front ends call this layer, so that the same request means the same thing over REST and
MCP. Errors are typed (:class:`NotFound`, :class:`Conflict`, ``InvalidInput``); each front end
turns them into its own format.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from memory.engine import MemoryEngine
from memory.filters import Filter, parse_filter
from memory.model import Episode, Fact, InvalidInput, Scope
from memory.text import terms

from .api_v2.bodies import (
    ALL_TYPES,
    AddMemoriesResponse,
    AddMemoriesSpec,
    AddMemoryResult,
    CreateProjectSpec,
    EpisodeOut,
    EpisodicSearchResult,
    FeatureMetadata,
    ListContent,
    ListedEpisode,
    ListMemoriesSpec,
    ListResponse,
    LongTermMemory,
    ProjectConfig,
    ProjectRef,
    ProjectResponse,
    SearchContent,
    SearchMemoriesSpec,
    SearchResponse,
    SemanticFeature,
    ShortTermMemory,
)
from .metrics import Metrics

PROJECT_MISSING = "Project does not exist"


class ServiceError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


MAX_ERROR_LINES = 20


def describe_errors(errors: Iterable[Mapping[str, Any]], skip: Sequence[str] = ("body",)) -> str:
    """Pydantic errors as ``loc: message`` lines, without echoing the (possibly huge) input;
    at most :data:`MAX_ERROR_LINES` of them."""
    lines: list[str] = []
    more = 0
    for err in errors:
        if len(lines) == MAX_ERROR_LINES:
            more += 1
            continue
        loc = [str(p) for p in err.get("loc", ()) if str(p) not in skip]
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error")
            msg = f"malformed JSON ({detail})" if detail else "malformed JSON"
            loc = [f"at position {p}" for p in loc] or loc
        line = f"{'.'.join(loc)}: {msg}" if loc else msg
        lines.append(line if len(line) <= 500 else line[:500] + "...")
    if more:
        lines.append(f"... and {more} more errors")
    if len(lines) == 1:
        return lines[0]
    return "\n" + "\n".join(f"- {line}" for line in lines)


def invalid_from(exc: ValidationError, prefix: str = "") -> InvalidInput:
    text = describe_errors(exc.errors(include_input=False, include_url=False), skip=())
    return InvalidInput(f"{prefix}{text}")


# -- conversions ---------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def string_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): _text(v) for k, v in metadata.items()}


def episode_out(ep: Episode, score: float | None = None) -> EpisodeOut:
    return EpisodeOut(
        uid=ep.uid,
        content=ep.content,
        producer_id=ep.producer,
        producer_role=ep.role,
        produced_for_id=ep.produced_for,
        episode_type="message" if ep.episode_type == "message" else None,
        metadata=string_metadata(ep.metadata),
        created_at=ep.created_at,
        score=score,
    )


def listed_episode(ep: Episode) -> ListedEpisode:
    return ListedEpisode(
        uid=ep.uid,
        content=ep.content,
        session_key=f"{ep.org_id}/{ep.project_id}",
        created_at=ep.created_at,
        producer_id=ep.producer,
        producer_role=ep.role,
        produced_for_id=ep.produced_for,
        episode_type="message" if ep.episode_type == "message" else None,
        metadata=string_metadata(ep.metadata),
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def feature_out(fact: Fact) -> SemanticFeature:
    set_id = f"subject:{fact.subject}"
    if fact.produced_for:
        set_id += f"|channel:{fact.produced_for}"
    other: dict[str, Any] = {
        "subject": fact.subject,
        "produced_for": fact.produced_for,
        "created_at": fact.created_at.isoformat(),
    }
    other.update(string_metadata(fact.metadata))
    return SemanticFeature(
        set_id=set_id,
        category=fact.category,
        tag=fact.tag,
        feature_name=fact.feature,
        value=fact.value,
        # The client types citations as UUIDs; every uid the engine makes is one.
        metadata=FeatureMetadata(
            id=fact.uid, citations=[c for c in fact.citations if _is_uuid(c)], other=other
        ),
    )


def _overlap(query: set[str], words: set[str]) -> int:
    """Query terms found in ``words``, allowing a shared 5-letter stem (crude, but it matches
    ``live`` / ``lives`` / ``living``-style variants without a stemmer)."""
    stems = {w[:5] for w in words if len(w) >= 5}
    return sum(1 for t in query if t in words or (len(t) >= 5 and t[:5] in stems))


def rank_facts(query: str, facts: Sequence[Fact], top_k: int) -> list[Fact]:
    """Facts ranked by keyword overlap with the query (newest first among equals)."""
    wanted = set(terms(query))
    scored = []
    for fact in facts:
        text = f"{fact.feature.replace('_', ' ')} {fact.value} {fact.tag} {fact.category}"
        words = set(terms(text))
        scored.append((_overlap(wanted, words), fact.created_at.timestamp(), fact))
    scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
    return [fact for _, _, fact in scored[:top_k]]


# -- the service ---------------------------------------------------------------------------

_SUBJECT_KEYS = ("producer_id", "producer", "user_id", "subject")
_CHANNEL_KEYS = ("produced_for_id", "produced_for", "channel_id", "channel")


class MemoryService:
    def __init__(self, engine: MemoryEngine, metrics: Metrics, short_term: int = 5) -> None:
        self.engine = engine
        self.metrics = metrics
        self.short_term = short_term

    # projects

    async def create_project(self, spec: CreateProjectSpec) -> ProjectResponse:
        config = spec.config.model_dump(mode="json")
        if not await self.engine.create_project(
            spec.org_id, spec.project_id, spec.description, config
        ):
            raise Conflict("Project already exists")
        return ProjectResponse(
            org_id=spec.org_id,
            project_id=spec.project_id,
            description=spec.description,
            config=spec.config,
        )

    async def get_project(self, org_id: str, project_id: str) -> ProjectResponse:
        found = await self.engine.get_project(org_id, project_id)
        if found is None:
            raise NotFound(PROJECT_MISSING)
        try:
            config = ProjectConfig.model_validate(found.config)
        except ValidationError:
            config = ProjectConfig()
        return ProjectResponse(
            org_id=org_id, project_id=project_id, description=found.description, config=config
        )

    async def list_projects(self) -> list[ProjectRef]:
        return [ProjectRef(org_id=o, project_id=p) for o, p in await self.engine.list_projects()]

    async def episode_count(self, org_id: str, project_id: str) -> int:
        await self.get_project(org_id, project_id)
        return await self.engine.count(Scope(org_id=org_id, project_id=project_id))

    async def delete_project(self, org_id: str, project_id: str) -> None:
        await self.get_project(org_id, project_id)
        await self.engine.delete_project(org_id, project_id)

    # memories

    async def add(self, spec: AddMemoriesSpec, api: str = "rest") -> AddMemoriesResponse:
        episodes = []
        for n, msg in enumerate(spec.messages):
            try:
                episodes.append(
                    Episode(
                        org_id=spec.org_id,
                        project_id=spec.project_id,
                        producer=msg.producer,
                        produced_for=msg.produced_for,
                        role=msg.role,
                        content=msg.content,
                        created_at=msg.timestamp,
                        platform="api",
                        episode_type=msg.episode_type or "message",
                        metadata=dict(msg.metadata),
                    )
                )
            except ValidationError as exc:
                raise invalid_from(exc, f"messages.{n}.") from None
        uids = await self.engine.add(episodes)
        self.metrics.episodes_added.labels(api).inc(len(uids))
        return AddMemoriesResponse(results=[AddMemoryResult(uid=u) for u in uids])

    async def search(
        self, spec: SearchMemoriesSpec, *, channel: str | None = None, api: str = "rest"
    ) -> SearchResponse:
        """Episodic hits (with the request's filter) and facts matched to the query (scoped
        by ``set_metadata``; the filter is never applied to them, see MemMachine gotcha
        §1.9). ``channel`` narrows both to one produced_for."""
        types = spec.types or list(ALL_TYPES)
        filt = parse_filter(spec.filter)
        self.metrics.searches.labels(api).inc()
        content = SearchContent()
        if "episodic" in types:
            scope = Scope(org_id=spec.org_id, project_id=spec.project_id, produced_for=channel)
            found = await self.engine.search(
                spec.query,
                scope,
                filt,
                top_k=spec.top_k,
                expand_context=spec.expand_context,
                score_threshold=spec.score_threshold,
            )
            long_term = [episode_out(h.episode, h.score) for h in found.hits]
            seen = {e.uid for e in long_term}
            recent = await self.recent(scope, filt, min(self.short_term, spec.top_k))
            if spec.score_threshold is not None:
                # A threshold filters both layers: a recent episode stays only if the search
                # ranked it at or above the threshold (found.scores holds just those).
                recent = [e for e in recent if e.uid in found.scores]
            content.episodic_memory = EpisodicSearchResult(
                long_term_memory=LongTermMemory(episodes=long_term),
                short_term_memory=ShortTermMemory(
                    episodes=[episode_out(e) for e in recent if e.uid not in seen],
                    episode_summary=[""],
                ),
            )
        if "semantic" in types:
            facts = await self.scoped_facts(
                spec.org_id, spec.project_id, spec.set_metadata, channel
            )
            content.semantic_memory = [
                feature_out(f) for f in rank_facts(spec.query, facts, spec.top_k)
            ]
        return SearchResponse(content=content)

    async def recent(self, scope: Scope, filt: Filter | None, n: int) -> list[Episode]:
        """The last ``n`` episodes of the scope matching the filter, oldest first."""
        if n <= 0:
            return []
        if filt is None:
            return await self.engine.recent(scope, n)
        total = await self.engine.count(scope, filt)
        if total == 0:
            return []
        start = max(0, total - n)
        page = start // n
        rows = await self.engine.list(scope, filt, page_size=n, page_num=page)
        if (page + 1) * n < total:
            rows += await self.engine.list(scope, filt, page_size=n, page_num=page + 1)
        skip = start - page * n
        return rows[skip : skip + n]

    async def scoped_facts(
        self,
        org_id: str,
        project_id: str,
        set_metadata: Mapping[str, Any] | None,
        channel: str | None = None,
    ) -> list[Fact]:
        wanted = dict(set_metadata or {})
        subject = next((_text(wanted.pop(k)) for k in _SUBJECT_KEYS if k in wanted), None)
        produced_for = next((_text(wanted.pop(k)) for k in _CHANNEL_KEYS if k in wanted), None)
        if channel is not None:
            if produced_for is not None and produced_for != channel:
                return []
            produced_for = channel
        facts = await self.engine.facts(
            org_id, project_id, subject=subject, produced_for=produced_for
        )
        if wanted:
            want = string_metadata(wanted)
            facts = [
                f
                for f in facts
                if all(k in f.metadata and _text(f.metadata[k]) == v for k, v in want.items())
            ]
        return facts

    async def list_memories(self, spec: ListMemoriesSpec) -> ListResponse:
        types = [spec.type] if spec.type else list(ALL_TYPES)
        filt = parse_filter(spec.filter)
        content = ListContent()
        if "episodic" in types:
            scope = Scope(org_id=spec.org_id, project_id=spec.project_id)
            rows = await self.engine.list(
                scope, filt, page_size=spec.page_size, page_num=spec.page_num
            )
            content.episodic_memory = [listed_episode(e) for e in rows]
        if "semantic" in types:
            facts = await self.scoped_facts(spec.org_id, spec.project_id, spec.set_metadata)
            facts.sort(key=lambda f: (f.created_at, f.uid))
            start = spec.page_size * spec.page_num
            content.semantic_memory = [
                feature_out(f) for f in facts[start : start + spec.page_size]
            ]
        return ListResponse(content=content)

    # deletes

    async def delete_episodes(self, org_id: str, project_id: str, uids: Sequence[str]) -> None:
        """All or nothing: unknown ids (in this org and project) are a 404 and delete nothing.
        Facts citing only these episodes go too; complete when this returns."""
        found = set(await self.engine.existing(org_id, project_id, list(uids)))
        missing = sorted(set(uids) - found)
        if missing:
            raise NotFound(f"Episode(s) not found in {org_id}/{project_id}: {', '.join(missing)}")
        await self.engine.delete(org_id, project_id, list(uids))

    async def delete_features(self, org_id: str, project_id: str, uids: Sequence[str]) -> None:
        found = set(await self.engine.fact_uids(org_id, project_id, list(uids)))
        missing = sorted(set(uids) - found)
        if missing:
            raise NotFound(
                f"Semantic feature(s) not found in {org_id}/{project_id}: {', '.join(missing)}"
            )
        await self.engine.delete_facts(org_id, project_id, list(uids))
