"""Tests for tests/fakes/openai_server.py, driven by the real ``openai`` client."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.fakes.openai.server import Delay, FakeOpenAI, Malformed, Reply, Status

pytestmark = pytest.mark.timeout(30)

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def async_client(fake: FakeOpenAI, **kwargs: Any) -> openai.AsyncOpenAI:
    kwargs.setdefault("api_key", "sk-test")
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=fake.base_url, **kwargs)


async def ask(client: openai.AsyncOpenAI) -> str | None:
    resp = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    return resp.choices[0].message.content


async def test_chat_uses_responder_and_records_request(fake: FakeOpenAI) -> None:
    fake.responder = lambda req: f"{len(req['messages'])} messages -> Paris"
    async with async_client(fake) as client:
        resp = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0
        )
    assert resp.choices[0].message.content == "2 messages -> Paris"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "gpt-4o-mini"
    assert resp.usage is not None and resp.usage.total_tokens > 0
    assert fake.chat_requests == [{"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0}]
    assert fake.requests[-1].headers["authorization"] == "Bearer sk-test"
    assert fake.last_prompt() == "You are terse.\nWhat is the capital of France?"


async def test_default_responder_echoes_and_script_takes_precedence(fake: FakeOpenAI) -> None:
    fake.script(Reply("scripted"))
    async with async_client(fake) as client:
        assert await ask(client) == "scripted"
        assert await ask(client) == "echo: What is the capital of France?"


async def test_json_schema_round_trip(fake: FakeOpenAI) -> None:
    fake.responder = lambda req: json.dumps(
        {"city": "Paris", "fmt": req["response_format"]["type"]}
    )
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "fmt": {"type": "string"}},
        "required": ["city", "fmt"],
        "additionalProperties": False,
    }
    async with async_client(fake) as client:
        resp = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            },
        )
    content = resp.choices[0].message.content
    assert content is not None
    assert json.loads(content) == {"city": "Paris", "fmt": "json_schema"}
    assert fake.chat_requests[0]["response_format"]["json_schema"]["schema"] == schema


async def test_rate_limit_then_success_is_retried(fake: FakeOpenAI) -> None:
    fake.script(Status(429, retry_after=0.01), Reply("after retry"))
    async with async_client(fake, max_retries=2) as client:
        assert await ask(client) == "after retry"
    assert len(fake.chat_requests) == 2


async def test_rate_limit_without_retries_raises(fake: FakeOpenAI) -> None:
    fake.script(Status(429, retry_after=0.01))
    async with async_client(fake) as client:
        with pytest.raises(openai.RateLimitError) as exc_info:
            await ask(client)
    assert exc_info.value.status_code == 429
    assert exc_info.value.response.headers["Retry-After"] == "0.01"
    assert exc_info.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error(fake: FakeOpenAI, status: int) -> None:
    fake.script(Status(status, message="boom"))
    async with async_client(fake) as client:
        with pytest.raises(openai.InternalServerError) as exc_info:
            await ask(client)
    assert exc_info.value.status_code == status
    assert exc_info.value.message == f"Error code: {status} - boom"
    assert exc_info.value.type == "server_error"


async def test_delay_longer_than_timeout_raises_timeout(fake: FakeOpenAI) -> None:
    fake.script(Delay(5))
    async with async_client(fake, timeout=0.2) as client:
        with pytest.raises(openai.APITimeoutError):
            await ask(client)


async def test_short_delay_then_reply(fake: FakeOpenAI) -> None:
    fake.script(Delay(0.05, then=Reply("late")))
    async with async_client(fake, timeout=5) as client:
        assert await ask(client) == "late"


async def test_malformed_body_raises_json_decode_error(fake: FakeOpenAI) -> None:
    fake.script(Malformed())
    async with async_client(fake) as client:
        with pytest.raises(json.JSONDecodeError):
            await ask(client)


async def test_streaming_is_rejected(fake: FakeOpenAI) -> None:
    async with async_client(fake) as client:
        with pytest.raises(openai.BadRequestError) as exc_info:
            await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert exc_info.value.status_code == 400


async def test_require_key() -> None:
    async with FakeOpenAI(require_key="sk-test") as fake:
        async with async_client(fake, api_key="sk-wrong") as client:
            with pytest.raises(openai.AuthenticationError) as exc_info:
                await ask(client)
            assert exc_info.value.status_code == 401
            assert exc_info.value.code == "invalid_api_key"
        async with async_client(fake, api_key="sk-test") as client:
            assert await ask(client) == "echo: What is the capital of France?"
            models = await client.models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini", "text-embedding-3-small"]


def norm(vec: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vec))


def test_embeddings_sync_client_in_thread() -> None:
    texts = ["hello world", "goodbye world"]
    with (
        FakeOpenAI.in_thread() as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as client,
    ):
        first = client.embeddings.create(model="text-embedding-3-small", input=texts)
        again = client.embeddings.create(model="text-embedding-3-small", input=texts)
        single = client.embeddings.create(
            model="text-embedding-3-small", input="hello world", encoding_format="float"
        )
        chat = client.chat.completions.create(model="m", messages=MESSAGES)
    a, b = (d.embedding for d in first.data)
    assert [d.index for d in first.data] == [0, 1]
    assert len(a) == len(b) == 384
    assert abs(norm(a) - 1.0) < 1e-5
    assert a != b
    assert [d.embedding for d in again.data] == [a, b]
    # The client asks for base64 by default; float32 round trip stays within float32 precision.
    assert fake.embedding_requests[0]["encoding_format"] == "base64"
    assert max(abs(x - y) for x, y in zip(single.data[0].embedding, a, strict=True)) < 1e-6
    assert chat.choices[0].message.content == "echo: What is the capital of France?"


def test_embeddings_dimension_and_scripted_failure() -> None:
    with (
        FakeOpenAI.in_thread(embedding_dim=16) as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as client,
    ):
        fake.script_embeddings(Status(503))
        with pytest.raises(openai.InternalServerError):
            client.embeddings.create(model="e", input=["x"])
        assert len(client.embeddings.create(model="e", input=["x"]).data[0].embedding) == 16
        resp = client.embeddings.create(model="e", input="x", dimensions=8)
        assert len(resp.data[0].embedding) == 8
