"""How Slack's requests reach the adapter, and when their acks are sent.

Socket Mode: bolt's handler, telling the adapter when an envelope's ack has gone out. HTTP
mode: :class:`SlackEndpoint`, ASGI middleware answering ``POST /slack/events`` in front of the
memory server. Commands answer only after their ack is sent (:class:`AckSignals`), so that
Slack never sees an answer before the command's acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.socket_mode.request import SocketModeRequest

from memory.lru import Lru

if TYPE_CHECKING:
    from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

ACK_WAIT = 2.0  # seconds a command waits for its ack to be sent before answering
#: What Slack sends: a Unix time in seconds and ``v0=<hex HMAC-SHA256>``. slack-sdk calls
#: ``int()`` on the timestamp and ``hmac.compare_digest`` on the signature, which raise on
#: anything else (a 500 from bolt), so other values are refused first, as a bad signature.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{1,128}")


class AckSignals:
    """Commands answer after their ack has gone out: the Socket Mode handler (or the HTTP
    endpoint) signals a trigger id once the ack is sent, and the command waits for it."""

    def __init__(self) -> None:
        self._events: Lru[str, asyncio.Event] = Lru(1000)

    def _event(self, key: str) -> asyncio.Event:
        event = self._events.get(key)
        if event is None:
            event = asyncio.Event()
            self._events.put(key, event)
        return event

    def sent(self, key: str | None) -> None:
        if key:
            self._event(key).set()

    async def wait(self, key: str | None, timeout: float = ACK_WAIT) -> None:  # noqa: ASYNC109
        if not key:
            return
        try:
            await asyncio.wait_for(self._event(key).wait(), timeout)
        except TimeoutError:
            log.debug("no ack signal for %s; answering anyway", key)
        finally:
            self._events.pop(key)


def trigger_id(payload: object) -> str | None:
    """The trigger id of a command's or an interaction's payload, which keys its ack."""
    if isinstance(payload, dict):
        found = payload.get("trigger_id")
        return found if isinstance(found, str) else None
    return None


class SocketModeHandler(AsyncSocketModeHandler):
    """bolt's Socket Mode handler, telling the adapter when an envelope's ack is sent."""

    def __init__(self, app: AsyncApp, app_token: str, acks: AckSignals) -> None:
        super().__init__(app, app_token=app_token)
        self._acks = acks

    async def handle(self, client: Any, req: SocketModeRequest) -> None:
        try:
            await super().handle(client, req)
        finally:
            self._acks.sent(trigger_id(req.payload))


class SlackEndpoint:
    """Pure ASGI middleware that answers ``POST <path>`` with bolt and passes everything else
    on. It sits outside the memory server's API-key and Host checks: Slack's requests carry
    a signature instead, which bolt verifies (401 when it is wrong or stale)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str,
        handler: AsyncSlackRequestHandler,
        acks: AckSignals,
        max_body: int,
    ) -> None:
        self.app = app
        self.path = path
        self.handler = handler
        self.acks = acks
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse

        if scope["method"] != "POST":
            await PlainTextResponse("Method Not Allowed", 405, {"Allow": "POST"})(
                scope, receive, send
            )
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > self.max_body:
                too_large = JSONResponse({"error": "request body too large"}, 413)
                await too_large(scope, receive, send)
                return
        if not signed_like_slack(scope):
            await JSONResponse({"error": "invalid request"}, 401)(scope, receive, send)
            return
        data = bytes(body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": data, "more_body": False}

        try:
            response = await self.handler.handle(Request(scope, replay))
        except Exception:
            log.exception("slack: handling a request to %s failed", self.path)
            response = JSONResponse({"error": "internal error"}, 500)
        await response(scope, receive, send)
        if response.status_code == 200:
            self.acks.sent(form_trigger_id(data))


def signed_like_slack(scope: Scope) -> bool:
    """Whether the signature headers have the shape Slack gives them (bolt then checks them);
    a missing header is left to bolt, which refuses it."""
    shapes = {b"x-slack-request-timestamp": _TIMESTAMP, b"x-slack-signature": _SIGNATURE}
    for name, value in scope.get("headers", []):
        shape = shapes.get(name.lower())
        if shape is not None and not shape.fullmatch(value.decode("latin-1")):
            return False
    return True


def form_trigger_id(body: bytes) -> str | None:
    """The trigger id of a form-encoded command or interactive payload (HTTP mode)."""
    try:
        form = parse_qs(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if "payload" in form:
        try:
            return trigger_id(json.loads(form["payload"][0]))
        except ValueError:
            return None
    found = form.get("trigger_id")
    return found[0] if found else None
