"""API keys for the memory server.

``CHANNELMIND_API_KEYS`` holds ``KEY:ORG[|ORG...]`` entries separated by commas; ``*`` in
place of the orgs grants every org, e.g. ``k1:acme|globex,k2:*``. A key may not contain ``:``
or ``,``; org ids may contain ``:`` (MemMachine's SafeId allows it), so an entry is split at its
first colon.

With keys configured every call except the open paths (health, the API docs) needs
``Authorization: Bearer KEY``: none or an unknown key is 401, an org the key does not grant is
403 (checked by the routes and MCP tools, which know the org). Keys are kept only as SHA-256
digests and never logged.

With no keys the server is open, and therefore binds only to loopback (see :func:`is_loopback`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

#: Where the caller's :class:`Principal` is kept in the ASGI scope (mounted apps share it).
PRINCIPAL_KEY = "channelmind.principal"
#: Paths that never need a key.
OPEN_PATHS = frozenset(
    {"/api/v2/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)


class ApiKeyError(ValueError):
    """``CHANNELMIND_API_KEYS`` is malformed; the message never contains a key."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the orgs they may use (``None``: every org)."""

    orgs: frozenset[str] | None
    name: str = "anonymous"

    def allows(self, org_id: str) -> bool:
        return self.orgs is None or org_id in self.orgs

    @property
    def all_orgs(self) -> bool:
        return self.orgs is None


#: The caller when no keys are configured (the server is then loopback-only).
OPEN = Principal(orgs=None, name="open")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """The configured keys, by digest."""

    def __init__(self, entries: dict[str, Principal]) -> None:
        self._by_digest = entries

    @classmethod
    def parse(cls, text: str | None) -> ApiKeys:
        entries: dict[str, Principal] = {}
        for n, raw in enumerate((text or "").split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            key, sep, orgs_text = entry.partition(":")
            key = key.strip()
            if not sep or not key:
                raise ApiKeyError(
                    f"CHANNELMIND_API_KEYS entry #{n} must look like KEY:ORG[|ORG...] or KEY:*"
                )
            orgs = [o.strip() for o in orgs_text.split("|") if o.strip()]
            if not orgs:
                raise ApiKeyError(f"CHANNELMIND_API_KEYS entry #{n} names no org (use * for all)")
            principal = Principal(orgs=None if "*" in orgs else frozenset(orgs), name=f"key#{n}")
            digest = _digest(key)
            if digest in entries:
                raise ApiKeyError(f"CHANNELMIND_API_KEYS entry #{n} repeats an earlier key")
            entries[digest] = principal
        return cls(entries)

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, key: str) -> Principal | None:
        return self._by_digest.get(_digest(key))


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            text = value.decode("latin-1").strip()
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str, extra: Iterable[str] = ()) -> bool:
    """Whether a Host header names loopback or one of ``extra`` (``name`` or ``name:port``)."""
    value = host_header.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = value.partition(":")
    if not name:
        return False
    if is_loopback(name):
        return True
    allowed = set(extra)
    return name in allowed or (bool(port) and f"{name}:{port}" in allowed)


def principal_of(scope: Scope | dict[str, Any]) -> Principal:
    """The caller recorded by :class:`AuthMiddleware` (open when auth is off)."""
    found = scope.get(PRINCIPAL_KEY)
    return found if isinstance(found, Principal) else OPEN


def forbidden_message(org_id: str) -> str:
    return f"this API key may not access org {org_id!r}"


class AuthMiddleware:
    """Pure ASGI middleware: authenticate every HTTP request outside :data:`OPEN_PATHS`.

    Without keys the server is open to whoever reaches it, which must be this machine only:
    requests must then name a loopback host (or an allowed one), so that a web page cannot
    reach the server through DNS rebinding (421 otherwise). With keys and an allowed-host
    list, the Host is checked too.
    """

    def __init__(self, app: ASGIApp, keys: ApiKeys, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = keys
        self.allowed_hosts = frozenset(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.keys.enabled or self.allowed_hosts:
            host = next((v for k, v in scope.get("headers", []) if k == b"host"), b"")
            if not host_allowed(host.decode("latin-1"), self.allowed_hosts):
                await _deny(send, "invalid Host header", status=421)
                return
        if not self.keys.enabled:
            scope[PRINCIPAL_KEY] = OPEN
            await self.app(scope, receive, send)
            return
        if scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope.get("headers", []))
        if token is None:
            await _deny(send, "missing API key: send Authorization: Bearer <key>")
            return
        principal = self.keys.lookup(token)
        if principal is None:
            await _deny(send, "invalid API key")
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)


async def _deny(send: Send, message: str, status: int = 401) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="channelmind"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
