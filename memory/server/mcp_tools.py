"""MCP tools over the memory (official ``mcp`` SDK 1.x, FastMCP).

The tools and their parameters are MemMachine's (``add_memory``, ``search_memory``,
``delete_memory``) plus ``recall_channel`` for a chat channel's memory, and ``add_memory``
takes an optional ``channel_id`` (MemMachine stores every MCP memory for ``"unknown"``) so that
an agent can leave a memory in a chat channel, where the bot uses it. Served over streamable
HTTP at ``/mcp/`` by the memory server, and over stdio by ``channelmind mcp-stdio``.

Identity follows MemMachine: the ``user-id`` / ``org-id`` / ``proj-id`` HTTP headers beat the
``MM_USER_ID`` / ``MM_ORG_ID`` / ``MM_PROJ_ID`` environment variables, which beat the tool
arguments. Defaults: ``user_id = user-<hex MAC>``, ``proj_id = mcp-<user_id>``,
``org_id = mcp-universal``: one project per user, which is what lets every agent using
``user-id: patient-001`` share one memory.

An identity set by a header or the environment pins whose memory it is: a pinned user (or
project) fixes the user, the project and the org, a pinned org fixes the org. Tool arguments
may repeat a pinned value or narrow inside it (``channel_id``), never name another one: that is
refused with 403, so a model cannot reach another user's memory by choosing arguments.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import ValidationError

from .api_v2.bodies import AddMemoriesSpec, MemoryMessage, SearchMemoriesSpec
from .auth import OPEN, Principal, forbidden_message, principal_of
from .fields import check_id
from .service import MemoryService, ServiceError, invalid_from

if TYPE_CHECKING:
    from memory.engine import MemoryEngine

log = logging.getLogger(__name__)

DEFAULT_ORG = "mcp-universal"
IDENTITY_ENV = {"org_id": "MM_ORG_ID", "proj_id": "MM_PROJ_ID", "user_id": "MM_USER_ID"}
IDENTITY_HEADERS = {"org_id": "org-id", "proj_id": "proj-id", "user_id": "user-id"}

INSTRUCTIONS = (
    "Long-term memory shared by every agent that uses the same user id. Call add_memory with"
    " the full context of what should be remembered; call search_memory whenever an answer"
    " may depend on something said before. recall_channel searches one chat channel's memory"
    " (e.g. channel_id 'slack:C123')."
)


@dataclass(frozen=True)
class Identity:
    org_id: str
    proj_id: str
    user_id: str


def default_user_id() -> str:
    return f"user-{uuid.getnode():x}"


class IdentityPinned(ValueError):
    """A tool argument names another identity than the header or environment pins."""


def resolve_identity(
    args: Mapping[str, str],
    headers: Mapping[str, str] | None,
    env: Mapping[str, str] | None = None,
) -> Identity:
    """Whose memory a tool call uses: the identity a header or the environment pins (headers
    beat the environment), else the tool arguments; then the defaults. Raises IdentityPinned
    when an argument names another user, project or org than the pinned one."""
    env = os.environ if env is None else env
    asked = {k: (args.get(k) or "").strip() for k in IDENTITY_ENV}
    pinned: dict[str, str] = {}
    source: dict[str, str] = {}
    for key, var in IDENTITY_ENV.items():
        if env.get(var, "").strip():
            pinned[key], source[key] = env[var].strip(), var
    if headers is not None:
        for key, header in IDENTITY_HEADERS.items():
            if (headers.get(header) or "").strip():
                pinned[key] = str(headers[header]).strip()
                source[key] = f"the {header} header"
    if "user_id" in pinned or "proj_id" in pinned:
        # The user (or project) is set: it decides the whole identity.
        user = pinned.get("user_id") or default_user_id()
        fixed = {
            "user_id": user,
            "proj_id": pinned.get("proj_id") or f"mcp-{user}",
            "org_id": pinned.get("org_id") or DEFAULT_ORG,
        }
        by = source.get("user_id") or source["proj_id"]
    elif "org_id" in pinned:
        fixed, by = {"org_id": pinned["org_id"]}, source["org_id"]
    else:
        fixed, by = {}, ""
    for key, value in fixed.items():
        if asked[key] and asked[key] != value:
            raise IdentityPinned(
                f"{source.get(key, by)} sets {key} to {value!r}; the argument"
                f" {key}={asked[key]!r} may not change it"
            )
    values = {**asked, **fixed}
    user = values["user_id"] or default_user_id()
    return Identity(
        org_id=values["org_id"] or DEFAULT_ORG,
        proj_id=values["proj_id"] or f"mcp-{user}",
        user_id=user,
    )


class OrdinaryDisconnect(logging.Filter):
    """The MCP SDK (1.x) logs ``Error in standalone SSE writer`` with a traceback at ERROR
    whenever a client ends its HTTP session: the stream it was writing to is closed. That is
    an ordinary disconnect, not an error; this filter turns exactly that record into a DEBUG
    line and lets every other record through."""

    MESSAGE = "Error in standalone SSE writer"

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.getMessage() == self.MESSAGE and isinstance(
            error, anyio.ClosedResourceError | anyio.BrokenResourceError
        ):
            log.debug("MCP session stream closed by the client")
            return False
        return True


def quiet_ordinary_disconnects() -> None:
    """Install :class:`OrdinaryDisconnect` on the SDK's streamable HTTP logger (once)."""
    sdk = logging.getLogger("mcp.server.streamable_http")
    if not any(isinstance(f, OrdinaryDisconnect) for f in sdk.filters):
        sdk.addFilter(OrdinaryDisconnect())


def _status(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "message": message}


async def _guarded(tool: str, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Run a tool's work; an unexpected error is logged here and answered generically."""
    try:
        return await work
    except ServiceError as exc:
        return _status(exc.status, exc.message)
    except ValidationError as exc:
        return _status(422, str(invalid_from(exc)))
    except ValueError as exc:  # InvalidInput and FilterError included
        return _status(422, str(exc))
    except Exception:
        log.exception("MCP tool %s failed", tool)
        return _status(500, "internal error; see the server log")


def _caller(ctx: Context | None) -> tuple[Mapping[str, str] | None, Principal]:  # type: ignore[type-arg]
    """HTTP headers and principal of the request carrying this tool call (none over stdio)."""
    if ctx is None:
        return None, OPEN
    try:
        request = ctx.request_context.request
    except ValueError:
        return None, OPEN
    if request is None or not hasattr(request, "headers"):
        return None, OPEN
    return request.headers, principal_of(request.scope)


def transport_security(keys_enabled: bool, allowed_hosts: list[str]) -> TransportSecuritySettings:
    """The MCP SDK's own DNS-rebinding protection, matching the app's Host rule: loopback
    plus ``allowed_hosts`` without API keys (or when hosts are listed), off with keys and no
    list (the bearer key is what protects a keyed server)."""
    if keys_enabled and not allowed_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
    for host in allowed_hosts:
        hosts += [host] if ":" in host else [host, f"{host}:*"]
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def build_mcp(
    service: Callable[[], MemoryService],
    *,
    security: TransportSecuritySettings | None = None,
) -> FastMCP:
    """The FastMCP server with the memory tools; its streamable HTTP endpoint is at ``/``
    of :meth:`FastMCP.streamable_http_app` (mounted at ``/mcp`` by the app)."""
    quiet_ordinary_disconnects()
    mcp = FastMCP(
        "ChannelMind memory",
        instructions=INSTRUCTIONS,
        streamable_http_path="/",
        transport_security=security,
    )

    def identify(
        ctx: Context | None,  # type: ignore[type-arg]
        **args: str,
    ) -> Identity | dict[str, Any]:
        headers, principal = _caller(ctx)
        try:
            ident = resolve_identity(args, headers)
        except IdentityPinned as exc:
            return _status(403, str(exc))
        try:
            check_id(ident.org_id)
            check_id(ident.proj_id)
        except ValueError as exc:
            return _status(422, str(exc))
        if not principal.allows(ident.org_id):
            return _status(403, forbidden_message(ident.org_id))
        return ident

    @mcp.tool(
        description="Store a memory (the full context worth remembering) for the current user;"
        " with channel_id (e.g. 'slack:C123', org_id its Slack team or Discord guild), for that"
        " chat channel, where the bot will use it."
    )
    async def add_memory(
        content: str,
        org_id: str = "",
        proj_id: str = "",
        user_id: str = "",
        channel_id: str = "",
        ctx: Context | None = None,  # type: ignore[type-arg]
    ) -> dict[str, Any]:
        ident = identify(ctx, org_id=org_id, proj_id=proj_id, user_id=user_id)
        if not isinstance(ident, Identity):
            return ident
        produced_for = channel_id.strip() or "unknown"

        async def work(ident: Identity) -> dict[str, Any]:
            spec = AddMemoriesSpec(
                org_id=ident.org_id,
                project_id=ident.proj_id,
                messages=[
                    MemoryMessage(
                        content=content,
                        producer=ident.user_id,
                        produced_for=produced_for,
                        role="user",
                        metadata={"user_id": ident.user_id},
                    )
                ],
            )
            await service().add(spec, api="mcp")
            return _status(200, "Success")

        return await _guarded("add_memory", work(ident))

    @mcp.tool(description="Search the current user's memories (episodes and facts) for a query.")
    async def search_memory(
        query: str,
        org_id: str = "",
        proj_id: str = "",
        user_id: str = "",
        top_k: int = 20,
        ctx: Context | None = None,  # type: ignore[type-arg]
    ) -> dict[str, Any]:
        ident = identify(ctx, org_id=org_id, proj_id=proj_id, user_id=user_id)
        if not isinstance(ident, Identity):
            return ident
        return await _guarded("search_memory", _search(service(), ident, query, top_k, None))

    @mcp.tool(
        description="Delete memories by uid: episodic_memory_uids (episodes) and/or"
        " semantic_memory_uids (facts)."
    )
    async def delete_memory(
        org_id: str = "",
        proj_id: str = "",
        episodic_memory_uids: list[str] | None = None,
        semantic_memory_uids: list[str] | None = None,
        ctx: Context | None = None,  # type: ignore[type-arg]
    ) -> dict[str, Any]:
        ident = identify(ctx, org_id=org_id, proj_id=proj_id)
        if not isinstance(ident, Identity):
            return ident
        episodes = sorted({u.strip() for u in episodic_memory_uids or [] if u.strip()})
        facts = sorted({u.strip() for u in semantic_memory_uids or [] if u.strip()})
        if not episodes and not facts:
            return _status(422, "give episodic_memory_uids and/or semantic_memory_uids")

        async def work(ident: Identity) -> dict[str, Any]:
            for uid in (*episodes, *facts):
                check_id(uid)
            if episodes:
                await service().delete_episodes(ident.org_id, ident.proj_id, episodes)
            if facts:
                await service().delete_features(ident.org_id, ident.proj_id, facts)
            return _status(200, "Success")

        return await _guarded("delete_memory", work(ident))

    @mcp.tool(
        description="Search what was said in one chat channel, e.g. channel_id 'slack:C123'"
        " or 'discord:81384788765712384', with org_id the Slack team or Discord guild."
    )
    async def recall_channel(
        channel_id: str,
        query: str,
        org_id: str = "",
        proj_id: str = "",
        top_k: int = 10,
        ctx: Context | None = None,  # type: ignore[type-arg]
    ) -> dict[str, Any]:
        ident = identify(ctx, org_id=org_id, proj_id=proj_id)
        if not isinstance(ident, Identity):
            return ident
        if not channel_id.strip():
            return _status(422, "channel_id must not be empty")
        search = _search(service(), ident, query, top_k, channel_id.strip())
        return await _guarded("recall_channel", search)

    return mcp


async def _search(
    service: MemoryService, ident: Identity, query: str, top_k: int, channel: str | None
) -> dict[str, Any]:
    spec = SearchMemoriesSpec(
        org_id=ident.org_id, project_id=ident.proj_id, query=query, top_k=top_k
    )
    result = await service.search(spec, channel=channel, api="mcp")
    return result.model_dump(mode="json", exclude_none=True)


async def run_stdio(engine: MemoryEngine | None = None) -> None:
    """``channelmind mcp-stdio``: the same tools over stdio, on ``engine`` or on one opened
    from the environment (``CHANNELMIND_DATA_DIR``...); identity from ``MM_*`` env vars or
    arguments. An engine passed in stays open."""
    from memory.engine import MemoryEngine

    from .metrics import Metrics
    from .settings import ServerSettings

    settings = ServerSettings()
    owned = engine is None
    if engine is None:
        engine = await MemoryEngine.open(settings=settings)
    try:
        service = MemoryService(engine, Metrics(), settings.short_term_episodes)
        await build_mcp(lambda: service).run_stdio_async()
    finally:
        if owned:
            await engine.close()
