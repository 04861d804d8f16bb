"""The memory server: one FastAPI app with the REST API v2 (MemMachine-compatible), the
ChannelMind routes, health, metrics, and MCP over streamable HTTP at ``/mcp/``.

``create_app()`` opens the engine in the app's lifespan (or uses the one it is given) and runs
the MCP session manager there too: a mounted Starlette app's own startup never runs.

Errors never carry tracebacks: validation errors answer 422 in MemMachine's envelope
(``{"detail": {"code", "message", "internal_error", "exception", "trace": ""}}``), unknown
routes 404 JSON, and anything unexpected a generic 500 while the traceback goes to the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory.engine import MemoryEngine
from memory.filters import FilterError
from memory.model import InvalidInput

from .api_cm.routes import router as cm_router
from .api_v2.routes import router as v2_router
from .auth import ApiKeys, AuthMiddleware, is_loopback
from .mcp_tools import build_mcp, transport_security
from .metrics import Metrics, MetricsMiddleware
from .routing import version
from .service import MemoryService, ServiceError, describe_errors
from .settings import ServerSettings

log = logging.getLogger(__name__)

OPEN_SERVER_WARNING = (
    "no API keys configured (CHANNELMIND_API_KEYS): the memory server is open to anyone who"
    " can reach it, so it must only listen on loopback"
)


def error_body(status: int, message: str, exception: str = "", internal: str = "") -> Any:
    return {
        "detail": {
            "code": status,
            "message": message,
            "internal_error": internal,
            "exception": exception,
            "trace": "",
        }
    }


class McpEndpoint:
    """The mount point of the MCP streamable HTTP app, filled in while the app runs."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            if scope["type"] == "http":
                await _send_json(send, 503, error_body(503, "the MCP endpoint is not running"))
            return
        await self.app(scope, receive, send)


class BodyTooLarge(BaseException):
    """Raised from ``receive`` past the size limit. A BaseException, so that the framework's
    body parsing (which turns any Exception into a 400) lets it through to the guard."""


class GuardMiddleware:
    """Outermost: refuses oversized bodies with 413 and turns any unhandled exception into a
    generic 500 (the traceback is logged, never sent)."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await _send_json(send, 413, self._too_large())
                return
        started = False
        received = 0

        async def receiving() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, self._too_large())
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_json(
                    send, 500, error_body(500, "Internal server error; see the server log")
                )

    def _too_large(self) -> Any:
        return error_body(413, f"request body larger than {self.max_body} bytes")


async def _send_json(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _install_handlers(app: FastAPI) -> None:
    async def request_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        text = describe_errors(exc.errors())
        return JSONResponse(
            error_body(422, f"Invalid request payload: {text}", "RequestValidationError", text),
            status_code=422,
        )

    async def model_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValidationError)
        text = describe_errors(exc.errors(include_input=False, include_url=False), skip=())
        return JSONResponse(
            error_body(422, f"invalid argument: {text}", "ValidationError", text), status_code=422
        )

    async def invalid_input(request: Request, exc: Exception) -> JSONResponse:
        what = "invalid filter" if isinstance(exc, FilterError) else "invalid argument"
        return JSONResponse(
            error_body(422, f"{what}: {exc}", type(exc).__name__, str(exc)), status_code=422
        )

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        if exc.status == 404:  # MemMachine answers a plain string detail here
            return JSONResponse({"detail": exc.message}, status_code=404)
        body = error_body(exc.status, exc.message, type(exc).__name__, exc.message)
        return JSONResponse(body, status_code=exc.status)

    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(ValidationError, model_invalid)
    app.add_exception_handler(InvalidInput, invalid_input)
    # A safety net: every text field is checked for lone surrogates where it comes in, but a
    # string that slipped through would fail at SQLite's UTF-8 binding; that is still the
    # caller's input, never a server error.
    app.add_exception_handler(UnicodeError, invalid_input)
    app.add_exception_handler(ServiceError, service_error)


def create_app(
    engine: MemoryEngine | None = None, settings: ServerSettings | None = None
) -> FastAPI:
    """The memory server app. Without ``engine`` it opens one from ``settings`` (the
    ``CHANNELMIND_*`` environment by default) when it starts, and closes it when it stops."""
    settings = settings or ServerSettings()
    keys = ApiKeys.parse(settings.api_keys_text())
    metrics = Metrics()

    def current_service() -> MemoryService:
        service: MemoryService | None = getattr(app.state, "service", None)
        if service is None:
            raise RuntimeError("the memory engine is not open yet")
        return service

    allowed_hosts = settings.allowed_host_list()
    security = transport_security(keys.enabled, allowed_hosts)
    mcp_endpoint = McpEndpoint()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if keys.enabled:
            log.info("memory server: %d API key(s) configured", len(keys))
        else:
            log.warning(OPEN_SERVER_WARNING)
        owned: MemoryEngine | None = None
        if engine is None:
            owned = await MemoryEngine.open(settings=settings)
            app.state.service = MemoryService(owned, metrics, settings.short_term_episodes)
            if settings.port:  # port 0: the bound port is not known here
                await owned.serving_at(served_url(settings.host, settings.port))
        # A session manager runs once, so every start (a restarted app, a second test client)
        # gets a fresh MCP server behind the same mount.
        mcp = build_mcp(current_service, security=security)
        mcp_endpoint.app = mcp.streamable_http_app()
        app.state.mcp = mcp
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            mcp_endpoint.app = None
            if owned is not None:
                app.state.service = None
                await owned.close()

    app = FastAPI(
        title="ChannelMind memory server",
        version=version(),
        description="MemMachine-compatible REST API v2, ChannelMind routes, and MCP at /mcp/.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.service = (
        MemoryService(engine, metrics, settings.short_term_episodes) if engine is not None else None
    )
    app.include_router(v2_router)
    app.include_router(cm_router)
    app.mount("/mcp", mcp_endpoint)
    _install_handlers(app)
    # Added innermost first: Guard (outermost) -> Metrics -> Auth -> routes.
    app.add_middleware(AuthMiddleware, keys=keys, allowed_hosts=allowed_hosts)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(GuardMiddleware, max_body=settings.max_body_bytes)
    return app


def served_url(host: str, port: int) -> str:
    """The URL a local command uses to reach a server bound to ``host:port``."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


class ServeRefused(ValueError):
    """``channelmind serve`` will not start with these settings; the message says why."""


def check_bind(host: str, keys: ApiKeys) -> None:
    if not keys.enabled and not is_loopback(host):
        raise ServeRefused(
            f"refusing to listen on {host!r}: no API keys are configured, so the memory server"
            " would be open to anyone who can reach it. Set CHANNELMIND_API_KEYS (e.g."
            " 'KEY:ORG' or 'KEY:*') or listen on loopback (--host 127.0.0.1)."
        )
