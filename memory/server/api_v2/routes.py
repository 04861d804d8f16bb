"""The MemMachine-compatible REST API v2 under ``/api/v2``.

Same paths, bodies, defaults, status codes and response shapes as MemMachine's core routes
(projects, memories add / search / list, episodic and semantic delete, health, metrics), so
that ``memmachine-client`` works unchanged. Everything is ``POST`` with a JSON body except
health and metrics.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..auth import principal_of
from ..metrics import Metrics
from ..routing import ERRORS, NOT_FOUND, authorize, service_of, version
from ..service import MemoryService
from .bodies import (
    AddMemoriesResponse,
    AddMemoriesSpec,
    CreateProjectSpec,
    DeleteEpisodicSpec,
    DeleteSemanticSpec,
    EpisodeCount,
    ErrorResponse,
    Health,
    ListMemoriesSpec,
    ListResponse,
    ProjectRef,
    ProjectResponse,
    ProjectSpec,
    SearchMemoriesSpec,
    SearchResponse,
)

router = APIRouter(prefix="/api/v2", responses=ERRORS)


# -- projects ------------------------------------------------------------------------------


@router.post(
    "/projects",
    status_code=201,
    response_model=ProjectResponse,
    responses={409: {"model": ErrorResponse, "description": "Project already exists"}},
    tags=["projects"],
)
async def create_project(spec: CreateProjectSpec, request: Request) -> ProjectResponse:
    authorize(request, spec.org_id)
    return await service_of(request).create_project(spec)


@router.post(
    "/projects/get", response_model=ProjectResponse, responses=NOT_FOUND, tags=["projects"]
)
async def get_project(spec: ProjectSpec, request: Request) -> ProjectResponse:
    authorize(request, spec.org_id)
    return await service_of(request).get_project(spec.org_id, spec.project_id)


@router.post(
    "/projects/episode_count/get",
    response_model=EpisodeCount,
    responses=NOT_FOUND,
    tags=["projects"],
)
async def episode_count(spec: ProjectSpec, request: Request) -> EpisodeCount:
    authorize(request, spec.org_id)
    count = await service_of(request).episode_count(spec.org_id, spec.project_id)
    return EpisodeCount(count=count)


@router.post("/projects/list", response_model=list[ProjectRef], tags=["projects"])
async def list_projects(request: Request) -> list[ProjectRef]:
    principal = principal_of(request.scope)
    return [p for p in await service_of(request).list_projects() if principal.allows(p.org_id)]


@router.post(
    "/projects/delete",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
    tags=["projects"],
)
async def delete_project(spec: ProjectSpec, request: Request) -> Response:
    """Delete a project and everything in it; complete when this returns."""
    authorize(request, spec.org_id)
    await service_of(request).delete_project(spec.org_id, spec.project_id)
    return Response(status_code=204)


# -- memories ------------------------------------------------------------------------------


@router.post("/memories", response_model=AddMemoriesResponse, tags=["memories"])
async def add_memories(spec: AddMemoriesSpec, request: Request) -> AddMemoriesResponse:
    """Store messages (the project is created on first use); uids in input order."""
    authorize(request, spec.org_id)
    return await service_of(request).add(spec)


@router.post(
    "/memories/search",
    response_model=SearchResponse,
    response_model_exclude_none=True,
    tags=["memories"],
)
async def search_memories(spec: SearchMemoriesSpec, request: Request) -> SearchResponse:
    authorize(request, spec.org_id)
    return await service_of(request).search(spec)


@router.post(
    "/memories/list",
    response_model=ListResponse,
    response_model_exclude_none=True,
    tags=["memories"],
)
async def list_memories(spec: ListMemoriesSpec, request: Request) -> ListResponse:
    """A page of memories, oldest first; ``page_num`` is zero-based."""
    authorize(request, spec.org_id)
    return await service_of(request).list_memories(spec)


@router.post(
    "/memories/episodic/delete",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
    tags=["memories"],
)
async def delete_episodic(spec: DeleteEpisodicSpec, request: Request) -> Response:
    """Delete episodes (and the facts citing only them); complete when this returns."""
    authorize(request, spec.org_id)
    await service_of(request).delete_episodes(spec.org_id, spec.project_id, spec.ids())
    return Response(status_code=204)


@router.post(
    "/memories/semantic/delete",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
    tags=["memories"],
)
async def delete_semantic(spec: DeleteSemanticSpec, request: Request) -> Response:
    authorize(request, spec.org_id)
    await service_of(request).delete_features(spec.org_id, spec.project_id, spec.ids())
    return Response(status_code=204)


# -- health and metrics --------------------------------------------------------------------


@router.get("/health", response_model=Health, tags=["service"])
async def health(request: Request) -> Health:
    if getattr(request.app.state, "service", None) is None:
        raise HTTPException(503, "the memory engine is not open yet")
    return Health(status="healthy", service="channelmind", version=version())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    tags=["service"],
)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    service: MemoryService | None = getattr(request.app.state, "service", None)
    if service is not None:
        registry.set_aside.set(await service.engine.count_set_aside())
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
