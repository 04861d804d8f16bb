"""A fake OpenAI-compatible HTTP server (aiohttp) for tests with the real ``openai`` client.

Serves ``POST /v1/chat/completions``, ``POST /v1/embeddings`` and ``GET /v1/models``.
Async tests: ``async with FakeOpenAI() as fake:`` (same event loop). Sync code:
``with FakeOpenAI.in_thread() as fake:`` (own thread + loop). Never call a *sync* client
against an ``async with`` fake from its own loop: it would block the loop serving it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web

Json = dict[str, Any]
Responder = Callable[[Json], str]

_ERROR_TYPES = {
    401: ("invalid_request_error", "invalid_api_key"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(frozen=True)
class Reply:  # Answer 200 with this message content (plain text or a JSON string).
    text: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Status:  # Answer with an HTTP error status and an OpenAI-style error body.
    status: int
    message: str | None = None
    retry_after: float | None = None
    code: str | None = None


@dataclass(frozen=True)
class Delay:  # Sleep before answering; then apply ``then`` (default: the normal answer).
    seconds: float
    then: Reply | Status | Malformed | None = None


@dataclass(frozen=True)
class Malformed:  # Answer 200 with a truncated, unparsable JSON body.
    body: str = '{"choices": ['


Behaviour = Reply | Status | Delay | Malformed


@dataclass
class RecordedRequest:
    path: str
    headers: Mapping[str, str]  # case-insensitive (CIMultiDict)
    body: Json


def fake_embedding(text: str, dim: int = 384) -> list[float]:
    """Deterministic, L2-normalised pseudo-embedding derived from a hash of ``text``."""
    raw = hashlib.shake_256(text.encode("utf-8")).digest(4 * dim)
    vec = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dim}I", raw)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def default_responder(request: Json) -> str:
    """Echo the last message; as a JSON object when a JSON response_format is requested."""
    messages = request.get("messages") or [{}]
    last = _content_text(messages[-1].get("content"))
    fmt = (request.get("response_format") or {}).get("type")
    if fmt in ("json_object", "json_schema"):
        return json.dumps({"echo": last})
    return f"echo: {last}"


class FakeOpenAI:
    def __init__(
        self,
        *,
        responder: Responder = default_responder,
        require_key: str | None = None,
        embedding_dim: int = 384,
        models: tuple[str, ...] = ("gpt-4o-mini", "text-embedding-3-small"),
    ) -> None:
        self.responder = responder
        self.require_key = require_key
        self.embedding_dim = embedding_dim
        self.models = models
        self.requests: list[RecordedRequest] = []
        self._chat_script: deque[Behaviour] = deque()
        self._emb_script: deque[Status | Delay | Malformed] = deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for chat completions; one is consumed per request."""
        self._chat_script.extend(behaviours)

    def script_embeddings(self, *behaviours: Status | Delay | Malformed) -> None:
        """Queue behaviours for embeddings (Reply is not meaningful there)."""
        if any(isinstance(b, Reply) for b in behaviours):
            raise TypeError("Reply is not supported for embeddings")
        self._emb_script.extend(behaviours)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[Json]:
        return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def embedding_requests(self) -> list[Json]:
        return [r.body for r in self.requests if r.path.endswith("/embeddings")]

    def last_prompt(self) -> str:
        """Concatenated message contents of the last chat request ("\\n"-joined)."""
        msgs = self.chat_requests[-1].get("messages", [])
        return "\n".join(_content_text(m.get("content")) for m in msgs)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, **kwargs: Any) -> Iterator[Self]:
        """Run the server in a background thread with its own event loop (for sync code)."""
        fake = cls(**kwargs)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="FakeOpenAI", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(fake.start(), loop).result(timeout=10)
            yield fake
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.require_key is None:
            return None
        if request.headers.get("Authorization") == f"Bearer {self.require_key}":
            return None
        return self._error(401, "Incorrect API key provided.")

    async def _prelude(
        self, request: web.Request, queue: deque[Any]
    ) -> web.Response | tuple[Json, Reply | None]:
        """Record the request, check auth/body/stream, then apply the next scripted behaviour."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.requests.append(
            RecordedRequest(
                request.path, request.headers.copy(), body if isinstance(body, dict) else {}
            )
        )
        if (denied := self._auth_error(request)) is not None:
            return denied
        if not isinstance(body, dict):
            return self._error(400, "Request body must be a JSON object.")
        if body.get("stream"):
            return self._error(
                400, "Streaming is not supported by FakeOpenAI.", "unsupported_value"
            )
        outcome = await self._apply(queue.popleft() if queue else None)
        return outcome if isinstance(outcome, web.Response) else (body, outcome)

    @staticmethod
    def _error(
        status: int,
        message: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> web.Response:
        type_, default_code = _ERROR_TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        err = {"message": message or f"Fake error (HTTP {status}).", "type": type_, "param": None}
        err["code"] = code or default_code
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return web.json_response({"error": err}, status=status, headers=headers)

    async def _apply(self, behaviour: Behaviour | None) -> web.Response | Reply | None:
        """Turn a scripted behaviour into a response, or a Reply/None meaning 'answer normally'."""
        if isinstance(behaviour, Delay):
            await asyncio.sleep(behaviour.seconds)
            behaviour = behaviour.then
        if isinstance(behaviour, Status):
            return self._error(
                behaviour.status, behaviour.message, behaviour.code, behaviour.retry_after
            )
        if isinstance(behaviour, Malformed):
            return web.Response(text=behaviour.body, status=200, content_type="application/json")
        return behaviour

    async def _chat(self, request: web.Request) -> web.Response:
        if isinstance(pre := await self._prelude(request, self._chat_script), web.Response):
            return pre
        body, outcome = pre
        reply = outcome or Reply(self.responder(body))
        n_in = sum(len(_content_text(m.get("content")).split()) for m in body.get("messages", []))
        n_out = len(reply.text.split())
        message = {"role": "assistant", "content": reply.text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None}
        choice["finish_reason"] = reply.finish_reason
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        completion_id = f"chatcmpl-fake-{next(self._ids)}"
        return web.json_response(
            {"id": completion_id, "object": "chat.completion", "created": int(time.time())}
            | {"model": body.get("model", "fake-model"), "choices": [choice], "usage": usage}
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        if isinstance(pre := await self._prelude(request, self._emb_script), web.Response):
            return pre
        body = pre[0]
        raw = body.get("input", "")
        inputs = [raw] if isinstance(raw, str) else list(raw)
        dim = int(body.get("dimensions") or self.embedding_dim)
        data = []
        for i, item in enumerate(inputs):
            vec = fake_embedding(item if isinstance(item, str) else json.dumps(item), dim)
            emb: list[float] | str = vec
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(str(x).split()) for x in inputs)
        usage = {"prompt_tokens": n, "total_tokens": n}
        model = body.get("model", "fake-embedding")
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage})

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})
