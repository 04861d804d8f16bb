"""The REST API v2 driven by the official memmachine-client 0.4.0 over real HTTP, plus raw
requests for what the client does not send (timestamps, bad bodies, error envelopes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest
import requests
from memmachine_client import MemMachineClient, format_search_result
from memmachine_common.api import MemoryType

from memory.engine import MemoryEngine
from memory.model import Fact, Scope
from tests.server_harness import Running, running

T = TypeVar("T")


@pytest.fixture
async def server(engine: MemoryEngine) -> AsyncIterator[Running]:
    async with running(engine) as srv:
        yield srv


async def sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking client call off the loop that serves it."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def client(server: Running) -> MemMachineClient:
    return MemMachineClient(base_url=server.url, max_retries=0, timeout=30)


async def test_project_lifecycle(server: Running) -> None:
    mm = client(server)
    with pytest.raises(requests.HTTPError) as missing:
        await sync(mm.get_project, org_id="acme", project_id="slack-C0123")
    assert missing.value.response.status_code == 404
    assert missing.value.response.json() == {"detail": "Project does not exist"}

    project = await sync(
        mm.get_or_create_project, org_id="acme", project_id="slack-C0123", description="general"
    )
    assert (project.org_id, project.project_id, project.description) == (
        "acme",
        "slack-C0123",
        "general",
    )
    with pytest.raises(requests.HTTPError) as duplicate:
        await sync(mm.create_project, org_id="acme", project_id="slack-C0123")
    assert duplicate.value.response.status_code == 409
    assert duplicate.value.response.json()["detail"]["message"] == "Project already exists"
    again = await sync(mm.get_or_create_project, org_id="acme", project_id="slack-C0123")
    assert again.description == "general"

    listed = await sync(mm.list_projects)
    assert [(p.org_id, p.project_id) for p in listed] == [("acme", "slack-C0123")]
    assert await sync(project.get_episode_count) == 0

    await sync(project.memory().add, "hello there", producer="slack:U1")
    assert await sync(project.get_episode_count) == 1

    await sync(project.delete)
    with pytest.raises(requests.HTTPError):
        await sync(mm.get_project, org_id="acme", project_id="slack-C0123")
    assert await server.engine.count(Scope(org_id="acme", project_id="slack-C0123")) == 0
    async with httpx.AsyncClient(base_url=server.url) as raw:
        gone = await raw.post(
            "/api/v2/projects/delete", json={"org_id": "acme", "project_id": "slack-C0123"}
        )
    assert gone.status_code == 404
    assert gone.json() == {"detail": "Project does not exist"}


async def test_add_search_list_with_roles_and_metadata(server: Running) -> None:
    project = await sync(client(server).get_or_create_project, org_id="acme", project_id="p1")
    memory = project.memory(metadata={"user_id": "alice"})
    added = []
    for role, text in [
        ("user", "I moved to Berlin last month and I love the techno clubs"),
        ("assistant", "Berlin is a great city for music"),
        ("system", "The conversation is about relocation"),
    ]:
        results = await sync(
            memory.add, text, role=role, producer=f"p-{role}", metadata={"topic": "move"}
        )
        assert len(results) == 1 and isinstance(results[0].uid, uuid.UUID)
        added.append(str(results[0].uid))

    result = await sync(memory.search, "Where does Alice live? Berlin", limit=5)
    assert result.status == 0
    episodic = result.content.episodic_memory
    assert episodic is not None
    assert result.content.semantic_memory == []
    long_term = episodic.long_term_memory.episodes
    assert long_term and str(long_term[0].uid) in added
    assert all(e.score is not None for e in long_term)
    assert episodic.short_term_memory.episode_summary == [""]
    assert all(e.score is None for e in episodic.short_term_memory.episodes)
    every = {str(e.uid): e for e in [*long_term, *episodic.short_term_memory.episodes]}
    assert set(every) == set(added)
    berlin = every[added[0]]
    assert berlin.producer_id == "p-user" and berlin.producer_role == "user"
    assert berlin.metadata == {"user_id": "alice", "topic": "move"}
    assert berlin.created_at is not None and berlin.created_at.tzinfo is not None

    listed = await sync(memory.list, page_size=2, page_num=0)
    episodes = listed.content.episodic_memory
    assert listed.content.semantic_memory is None  # only episodic was asked for
    assert episodes is not None and [str(e.uid) for e in episodes] == added[:2]
    assert [e.producer_role for e in episodes] == ["user", "assistant"]
    assert episodes[0].session_key == "acme/p1"
    second = await sync(memory.list, page_size=2, page_num=1)
    assert [str(e.uid) for e in second.content.episodic_memory or []] == added[2:]
    semantic = await sync(memory.list, memory_type=MemoryType.Semantic)
    assert semantic.content.semantic_memory == [] and semantic.content.episodic_memory is None


async def test_instance_metadata_isolates_users_and_filter_dict_narrows(server: Running) -> None:
    project = await sync(client(server).get_or_create_project, org_id="acme", project_id="shared")
    alice = project.memory(metadata={"user_id": "a"})
    bob = project.memory(metadata={"user_id": "b"})
    await sync(alice.add, "my favourite colour is green", metadata={"time": "morning"})
    await sync(alice.add, "my favourite food is pasta", metadata={"time": "evening"})
    await sync(bob.add, "my favourite colour is purple", metadata={"time": "morning"})

    def contents(result: Any) -> set[str]:
        epi = result.content.episodic_memory
        return {
            e.content for e in [*epi.long_term_memory.episodes, *epi.short_term_memory.episodes]
        }

    seen_by_alice = contents(await sync(alice.search, "favourite colour"))
    assert seen_by_alice == {"my favourite colour is green", "my favourite food is pasta"}
    assert contents(await sync(bob.search, "favourite colour")) == {"my favourite colour is purple"}
    morning = await sync(alice.search, "favourite", filter_dict={"m.time": "morning"})
    assert contents(morning) == {"my favourite colour is green"}
    listed = await sync(bob.list)
    assert [e.content for e in listed.content.episodic_memory or []] == [
        "my favourite colour is purple"
    ]


async def test_delete_episodic_removes_episode_and_facts_citing_it(server: Running) -> None:
    project = await sync(client(server).get_or_create_project, org_id="acme", project_id="del")
    memory = project.memory()
    uids = [str((await sync(memory.add, f"message number {n}"))[0].uid) for n in range(3)]
    fact = Fact(
        org_id="acme",
        project_id="del",
        subject="user",
        feature="counting",
        value="likes numbers",
        citations=[uids[0]],
    )
    await server.engine.add_fact(fact)

    assert await sync(memory.delete_episodic, episodic_ids=uids[:2]) is True
    left = await sync(memory.list)
    assert [str(e.uid) for e in left.content.episodic_memory or []] == uids[2:]
    assert await server.engine.facts("acme", "del") == []
    assert await sync(project.get_episode_count) == 1

    with pytest.raises(requests.HTTPError) as unknown:
        await sync(memory.delete_episodic, episodic_ids=[str(uuid.uuid4()), uids[2]])
    assert unknown.value.response.status_code == 404
    assert await sync(project.get_episode_count) == 1  # all or nothing
    await sync(memory.delete_episodic, uids[2])
    assert await sync(project.get_episode_count) == 0


async def test_semantic_search_scoping_and_delete(server: Running) -> None:
    project = await sync(client(server).get_or_create_project, org_id="acme", project_id="sem")
    memory = project.memory()
    (added,) = await sync(memory.add, "I live in Berlin now", producer="slack:UALICE")
    cite = str(added.uid)
    berlin = await server.engine.add_fact(
        Fact(
            org_id="acme",
            project_id="sem",
            subject="slack:UALICE",
            tag="Geography",
            feature="current_city",
            value="lives in Berlin",
            citations=[cite],
        )
    )
    await server.engine.add_fact(
        Fact(
            org_id="acme",
            project_id="sem",
            subject="slack:UBOB",
            feature="pet",
            value="has a dog called Rex",
        )
    )

    result = await sync(memory.search, "Which city does she live in?")
    features = result.content.semantic_memory or []
    assert features and features[0].feature_name == "current_city"
    first = features[0]
    assert first.value == "lives in Berlin" and first.tag == "Geography"
    assert first.metadata.id == berlin
    assert [str(c) for c in first.metadata.citations or []] == [cite]

    scoped = await sync(memory.search, "city", set_metadata={"producer_id": "slack:UBOB"})
    assert [f.feature_name for f in scoped.content.semantic_memory or []] == ["pet"]
    # A filter on an episode-only field never breaks the semantic part (MemMachine §1.9).
    filtered = await sync(memory.search, "city", filter="producer_id = 'slack:UALICE'")
    assert filtered.content.semantic_memory and filtered.content.episodic_memory

    rendered = format_search_result(result)  # the client's own formatter accepts our answer
    assert "current_city" in rendered and "I live in Berlin now" in rendered

    listed = await sync(memory.list, memory_type=MemoryType.Semantic)
    assert {f.feature_name for f in listed.content.semantic_memory or []} == {
        "current_city",
        "pet",
    }

    assert await sync(memory.delete_semantic, semantic_id=berlin) is True
    assert [f.uid for f in await server.engine.facts("acme", "sem")] != [berlin]
    assert len(await server.engine.facts("acme", "sem")) == 1
    with pytest.raises(requests.HTTPError) as again:
        await sync(memory.delete_semantic, semantic_id=berlin)
    assert again.value.response.status_code == 404


async def test_unicode_and_large_content_round_trip(server: Running) -> None:
    project = await sync(
        client(server).get_or_create_project, org_id="組織", project_id="プロジェクト"
    )
    memory = project.memory()
    texts = [
        "Grüße aus Köln 👋 — 日本語のテキスト, עברית, emoji 🧠🎉 and 'quotes' \"too\"",
        ("large document line with some words. " * 2800)[:100_000],
    ]
    for text in texts:
        await sync(memory.add, text, producer="Zoë")
    listed = await sync(memory.list)
    episodes = listed.content.episodic_memory or []
    assert [e.content for e in episodes] == texts
    assert episodes[0].producer_id == "Zoë" and len(episodes[1].content) == 100_000
    found = await sync(memory.search, "Köln")
    epi = found.content.episodic_memory
    assert epi is not None
    assert texts[0] in {e.content for e in epi.long_term_memory.episodes}


async def test_health_and_metrics(server: Running) -> None:
    mm = client(server)
    health = await sync(mm.health_check)
    assert health["status"] == "healthy" and health["service"] == "channelmind"
    project = await sync(mm.get_or_create_project, org_id="acme", project_id="m")
    await sync(project.memory().add, "count me")
    await sync(project.memory().search, "count")
    text = await sync(mm.get_metrics)
    assert 'channelmind_episodes_added_total{api="rest"} 1.0' in text
    assert 'channelmind_searches_total{api="rest"} 1.0' in text
    assert 'route="/api/v2/memories/search",status="200"' in text
    assert "channelmind_http_request_duration_seconds_bucket" in text


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2025-11-24T10:00:00Z", "2025-11-24T10:00:00Z"),
        ("2025-11-24T12:00:00+02:00", "2025-11-24T10:00:00Z"),
        ("2025-11-24T10:00:00", "2025-11-24T10:00:00Z"),  # naive is UTC
        (1764064800, "2025-11-25T10:00:00Z"),  # Unix seconds
        (1764064800500, "2025-11-25T10:00:00.500000Z"),  # Unix milliseconds
    ],
)
async def test_timestamps(server: Running, timestamp: Any, expected: str) -> None:
    body = {"messages": [{"content": "timed", "timestamp": timestamp}]}
    async with httpx.AsyncClient(base_url=server.url) as raw:
        added = await raw.post("/api/v2/memories", json=body)
        assert added.status_code == 200
        listed = await raw.post("/api/v2/memories/list", json={})
    (episode,) = listed.json()["content"]["episodic_memory"]
    assert episode["created_at"] == expected
    assert episode["session_key"] == "universal/universal"  # the default org and project
    assert episode["producer_id"] == "user" and episode["producer_role"] == ""


async def test_defaults_and_omitted_nulls(server: Running) -> None:
    async with httpx.AsyncClient(base_url=server.url) as raw:
        await raw.post("/api/v2/memories", json={"messages": [{"content": "defaults apply"}]})
        found = await raw.post("/api/v2/memories/search", json={"query": "defaults"})
        only_semantic = await raw.post(
            "/api/v2/memories/search", json={"query": "defaults", "types": ["semantic"]}
        )
    content = found.json()["content"]
    (hit,) = content["episodic_memory"]["long_term_memory"]["episodes"]
    assert set(hit) == {
        "uid",
        "content",
        "producer_id",
        "producer_role",
        "produced_for_id",
        "episode_type",
        "metadata",
        "created_at",
        "score",
    }
    assert hit["created_at"].endswith("Z")
    assert datetime.fromisoformat(hit["created_at"]) <= datetime.now(UTC)
    assert only_semantic.json()["content"] == {"semantic_memory": []}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"messages": [{"content": "x", "timestamp": "yesterday"}]}, "unsupported timestamp"),
        ({"messages": [{"content": "x", "timestamp": True}]}, "timestamp"),
        ({"messages": []}, "messages"),
        ({"org_id": "a/b", "messages": [{"content": "x"}]}, "ID can only contain"),
        ({"project_id": "", "messages": [{"content": "x"}]}, "project_id"),
        ({"messages": [{"content": "x", "metadata": {"n": 1}}]}, "metadata.n"),
        ({"messages": [{"content": "   "}]}, "content must not be empty"),
        ({"messages": [{"content": "x", "producer": ""}]}, "producer must not be empty"),
    ],
)
async def test_invalid_add_bodies_get_422_envelope(
    server: Running, body: dict[str, Any], needle: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as raw:
        response = await raw.post("/api/v2/memories", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["code"] == 422 and detail["trace"] == ""
    assert needle in detail["message"]
    assert "Traceback" not in response.text


async def test_malformed_json_unknown_route_and_filter_errors(server: Running) -> None:
    async with httpx.AsyncClient(base_url=server.url) as raw:
        bad = await raw.post(
            "/api/v2/memories/search",
            content=b'{"query": "x",',
            headers={"content-type": "application/json"},
        )
        assert bad.status_code == 422
        assert "malformed JSON" in bad.json()["detail"]["message"]
        assert bad.json()["detail"]["message"].startswith("Invalid request payload:")

        not_json = await raw.post("/api/v2/memories/search", content=b"[1, 2]")
        assert not_json.status_code == 422

        unknown = await raw.post("/api/v2/nothing/here", json={})
        assert unknown.status_code == 404 and unknown.json() == {"detail": "Not Found"}
        wrong_method = await raw.get("/api/v2/memories")
        assert wrong_method.status_code == 405 and "detail" in wrong_method.json()

        syntax = await raw.post(
            "/api/v2/memories/search", json={"query": "x", "filter": "producer_id = 'a' AND"}
        )
        assert syntax.status_code == 422
        message = syntax.json()["detail"]["message"]
        assert message == (
            "invalid filter: expected a field name at position 21, found end of filter"
        )
        unknown_field = await raw.post("/api/v2/memories/list", json={"filter": "colour = 'red'"})
        assert unknown_field.status_code == 422
        assert "unknown field 'colour'" in unknown_field.json()["detail"]["message"]

        too_big = await raw.post("/api/v2/memories/search", json={"query": "x", "top_k": 0})
        assert too_big.status_code == 422 and "top_k" in too_big.json()["detail"]["message"]
        no_ids = await raw.post("/api/v2/memories/episodic/delete", json={"episodic_id": ""})
        assert no_ids.status_code == 422
        assert "At least one episodic ID" in no_ids.json()["detail"]["message"]


async def test_unexpected_errors_are_generic_500s_and_logged(
    server: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire at /secret/path")

    monkeypatch.setattr(server.engine, "list", broken)
    async with httpx.AsyncClient(base_url=server.url) as raw:
        response = await raw.post("/api/v2/memories/list", json={})
    assert response.status_code == 500
    assert response.json() == {
        "detail": {
            "code": 500,
            "message": "Internal server error; see the server log",
            "internal_error": "",
            "exception": "",
            "trace": "",
        }
    }
    assert "secret" not in response.text
    assert "disk on fire at /secret/path" in caplog.text
    assert any(r.exc_info for r in caplog.records if r.name == "memory.server.app")


async def test_oversized_bodies_get_413(engine: MemoryEngine) -> None:
    async with (
        running(engine, max_body_bytes=4096) as small,
        httpx.AsyncClient(base_url=small.url) as raw,
    ):
        body = {"messages": [{"content": "x" * 10_000}]}
        response = await raw.post("/api/v2/memories", json=body)
        assert response.status_code == 413
        assert "larger than 4096 bytes" in response.json()["detail"]["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"messages": [{"content": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}]}'

        streamed = await raw.post(
            "/api/v2/memories", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
    assert await engine.count(Scope(org_id="universal", project_id="universal")) == 0
