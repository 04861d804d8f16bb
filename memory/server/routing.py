"""What the routes of both APIs (v2 and ChannelMind) share: the service a request reaches, the
org check, the error responses they document, and the server's version."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import HTTPException, Request

from .api_v2.bodies import ErrorResponse
from .auth import Principal, forbidden_message, principal_of
from .service import MemoryService

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    403: {"model": ErrorResponse, "description": "The API key may not access this org"},
    422: {"model": ErrorResponse, "description": "Invalid request"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown project or ids"}
}


def service_of(request: Request) -> MemoryService:
    service: MemoryService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise HTTPException(503, "the memory engine is not open yet")
    return service


def authorize(request: Request, org_id: str) -> Principal:
    """403 unless the caller's API key grants ``org_id``."""
    principal = principal_of(request.scope)
    if not principal.allows(org_id):
        raise HTTPException(403, forbidden_message(org_id))
    return principal


def version() -> str:
    try:
        return metadata.version("channelmind")
    except metadata.PackageNotFoundError:
        return "0.0.0"
