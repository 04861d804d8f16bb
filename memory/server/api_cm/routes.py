"""ChannelMind's own routes under ``/api/cm``: what MemMachine's v2 cannot express (edits,
forgetting by producer or channel, source refs, per-user settings, facts with citations, the
engine's own records). :class:`memory.client.MemoryClient` uses them to offer the
:class:`memory.protocol.Memory` contract on another machine. Same auth as v2; the bodies are
defined once, in :mod:`memory.server.api_cm.bodies`, for both sides.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from memory.model import Episode, Fact, ForgetReport, SearchResult, SourceRef, Stats

from ..auth import principal_of
from ..routing import ERRORS, NOT_FOUND, authorize, service_of
from .bodies import (
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

router = APIRouter(prefix="/api/cm", responses=ERRORS, tags=["channelmind"])


@router.post("/episodes/add", response_model=AddedEpisodes)
async def add_episodes(body: AddEpisodesBody, request: Request) -> AddedEpisodes:
    for org in {e.org_id for e in body.episodes}:
        authorize(request, org)
    added = await service_of(request).engine.add_outcomes(body.episodes)
    return AddedEpisodes(uids=[a.uid for a in added], new=[a.new for a in added])


@router.post("/search", response_model=SearchResult)
async def search(body: SearchBody, request: Request) -> SearchResult:
    authorize(request, body.scope.org_id)
    service = service_of(request)
    service.metrics.searches.labels("cm").inc()
    return await service.engine.search(
        body.query,
        body.scope,
        body.filters,
        top_k=body.top_k,
        expand_context=body.expand_context,
        time=body.time,
        mode=body.mode,
        score_threshold=body.score_threshold,
        statements_only=body.statements_only,
    )


@router.post("/episodes/recent", response_model=list[Episode])
async def recent(body: RecentBody, request: Request) -> list[Episode]:
    authorize(request, body.scope.org_id)
    return await service_of(request).engine.recent(body.scope, body.n)


@router.post("/episodes/get", response_model=list[Episode])
async def get_episodes(body: UidsBody, request: Request) -> list[Episode]:
    authorize(request, body.org_id)
    return await service_of(request).engine.get(body.org_id, body.project_id, body.uids)


@router.post("/episodes/list", response_model=list[Episode])
async def list_episodes(body: ListBody, request: Request) -> list[Episode]:
    authorize(request, body.scope.org_id)
    return await service_of(request).engine.list(
        body.scope, body.filters, body.page_size, body.page_num, body.time
    )


@router.post("/episodes/count", response_model=Count)
async def count(body: CountBody, request: Request) -> Count:
    authorize(request, body.scope.org_id)
    return Count(count=await service_of(request).engine.count(body.scope, body.filters))


@router.post("/episodes/delete", response_model=Uids)
async def delete_episodes(body: UidsBody, request: Request) -> Uids:
    """Delete by uid (unknown uids are ignored); answers the uids deleted."""
    authorize(request, body.org_id)
    deleted = await service_of(request).engine.delete(body.org_id, body.project_id, body.uids)
    return Uids(uids=deleted)


@router.post("/forget", response_model=ForgetReport)
async def forget(body: ForgetBody, request: Request) -> ForgetReport:
    authorize(request, body.org_id)
    return await service_of(request).engine.forget(
        body.org_id,
        project_id=body.project_id,
        producer=body.producer,
        produced_for=body.produced_for,
        thread_id=body.thread_id,
        filters=body.filters,
        facts_about_producer=body.facts_about_producer,
    )


@router.post("/episodes/edit", response_model=MaybeEpisode)
async def edit(body: EditBody, request: Request) -> MaybeEpisode:
    engine = service_of(request).engine
    if body.ref is not None:
        authorize(request, body.ref.org_id)
        return MaybeEpisode(episode=await engine.edit(body.ref, body.content))
    if body.uid is None or body.org_id is None or body.project_id is None:
        raise HTTPException(422, "give ref, or uid with org_id and project_id")
    authorize(request, body.org_id)
    found = await engine.edit(
        body.uid, body.content, org_id=body.org_id, project_id=body.project_id
    )
    return MaybeEpisode(episode=found)


@router.post("/episodes/by_source", response_model=MaybeEpisode)
async def by_source(ref: SourceRef, request: Request) -> MaybeEpisode:
    authorize(request, ref.org_id)
    return MaybeEpisode(episode=await service_of(request).engine.get_by_source(ref))


@router.post("/facts/list", response_model=list[Fact])
async def facts(body: FactsBody, request: Request) -> list[Fact]:
    authorize(request, body.org_id)
    return await service_of(request).engine.facts(
        body.org_id,
        body.project_id,
        subject=body.subject,
        produced_for=body.produced_for,
        include_superseded=body.include_superseded,
        uids=body.uids,
    )


@router.post("/facts/add", response_model=Uid, responses=NOT_FOUND)
async def add_fact(body: AddFactBody, request: Request) -> Uid:
    """Store a fact; 404 when a citation is not an episode of the fact's org and project."""
    fact = body.fact
    authorize(request, fact.org_id)
    engine = service_of(request).engine
    found = set(await engine.existing(fact.org_id, fact.project_id, fact.citations))
    missing = [c for c in dict.fromkeys(fact.citations) if c not in found]
    if missing:
        where = f"{fact.org_id}/{fact.project_id}"
        raise HTTPException(404, f"citations not found in {where}: {', '.join(missing[:20])}")
    return Uid(uid=await engine.add_fact(fact))


@router.post("/facts/supersede", status_code=204, response_class=Response)
async def supersede_fact(body: SupersedeBody, request: Request) -> Response:
    """Mark a fact replaced by another (404 unless both are facts of this org and project)."""
    authorize(request, body.org_id)
    engine = service_of(request).engine
    known = set(await engine.fact_uids(body.org_id, body.project_id, [body.uid, body.by]))
    for uid in (body.uid, body.by):
        if uid not in known:
            raise HTTPException(404, f"no fact {uid!r} in {body.org_id}/{body.project_id}")
    await engine.supersede_fact(body.org_id, body.project_id, body.uid, body.by, body.when)
    return Response(status_code=204)


@router.post("/facts/delete", response_model=Count)
async def delete_facts(body: UidsBody, request: Request) -> Count:
    authorize(request, body.org_id)
    n = await service_of(request).engine.delete_facts(body.org_id, body.project_id, body.uids)
    return Count(count=n)


@router.post("/settings/get", response_model=SettingValue)
async def get_setting(body: SettingBody, request: Request) -> SettingValue:
    authorize(request, body.org_id)
    value = await service_of(request).engine.get_setting(
        body.org_id, body.project_id, body.subject, body.key
    )
    return SettingValue(value=value)


@router.post("/settings/set", status_code=204, response_class=Response)
async def set_setting(body: SetSettingBody, request: Request) -> Response:
    authorize(request, body.org_id)
    await service_of(request).engine.set_setting(
        body.org_id, body.project_id, body.subject, body.key, body.value
    )
    return Response(status_code=204)


@router.post("/similarity", response_model=Similarities)
async def similarity(body: SimilarityBody, request: Request) -> Similarities:
    """Cosine similarity of each text to the query under the server's embedder, so that a bot
    on this server judges relevance by meaning as an embedded one does. It reads no stored
    record, so any valid key may ask."""
    engine = service_of(request).engine
    scores = await engine.similarities(body.query, body.texts)
    return Similarities(embedder=engine.embedder.name, scores=scores)


@router.post("/index/wait", response_model=Indexed)
async def wait_indexed(body: WaitBody, request: Request) -> Indexed:
    """Wait until every stored episode is in the vector index, at most ``timeout`` seconds;
    ``done`` says whether it got there."""
    try:
        await service_of(request).engine.wait_indexed(body.timeout)
    except TimeoutError:
        return Indexed(done=False)
    return Indexed(done=True)


@router.post("/index/rebuild", status_code=202, response_model=Rebuild)
async def rebuild_index(request: Request) -> Rebuild:
    """Rebuild the vector index from the stored episodes inside the server, the process that
    owns the data folder (a second process must not open it). Answers at once with the rows
    queued; ``/index/wait`` tells when they are embedded. Needs a key granting every org."""
    if not principal_of(request.scope).all_orgs:
        raise HTTPException(
            403, "rebuilding the index covers every org; it needs a key granting '*'"
        )
    queued = await service_of(request).engine.start_reindex()
    return Rebuild(queued=queued)


@router.get("/stats", response_model=Stats)
async def stats(request: Request) -> Stats:
    """Counts over every org, so only a key granting every org (``*``) may read them."""
    if not principal_of(request.scope).all_orgs:
        raise HTTPException(403, "stats cover every org; they need a key granting '*'")
    return await service_of(request).engine.stats()
