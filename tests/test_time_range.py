"""Defects 1 and 4 of issue 9, driven through the REST API as they were found.

1. ``"timestamp": "9999-12-31T23:59:59.999999"`` was accepted; its stored epoch rounded up to
   year 10000, and every read of the project (search, list, the indexer, the delete) failed
   from then on. Same with Unix ms ``253402300799999.9``, ``created_at`` on the ChannelMind
   routes, and a fact's ``created_at``.
4. Out-of-range time zones (``0001-01-01T00:00:00+14:00``) answered 500 (OverflowError) on
   add, in search time ranges and in list.

One valid time range (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z) now holds at every entry
point: anything outside is a 422 naming the field, and the project keeps working.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from memory.engine import MemoryEngine

from .conftest import ALICE, GENERAL
from .server_harness import Running, running

ORG, PROJECT, OTHER_ORG = "acme", "support", "globex"

PAST_THE_END = [
    "9999-12-31T23:59:59.999999",
    "9999-12-31T23:59:59.5Z",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59-00:01",
    253402300799999.9,  # Unix ms, a fraction of a millisecond before year 10000
    253402300800,  # Unix seconds: 10000-01-01
    1e300,
]
BEFORE_THE_START = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00+00:01",
    -62135596801,
]


@pytest.fixture
async def http(engine: MemoryEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
        c.server = srv  # type: ignore[attr-defined]
        yield c


def server_of(http: httpx.AsyncClient) -> Running:
    srv: Running = http.server  # type: ignore[attr-defined]
    return srv


async def add(http: httpx.AsyncClient, org: str, content: str, **message: Any) -> httpx.Response:
    body = {"org_id": org, "project_id": PROJECT, "messages": [{"content": content, **message}]}
    return await http.post("/api/v2/memories", json=body)


async def assert_project_works(http: httpx.AsyncClient) -> None:
    """Search, list and indexing in the project and in another org all still work."""
    for org in (ORG, OTHER_ORG):
        body = {"org_id": org, "project_id": PROJECT, "query": "message"}
        assert (await http.post("/api/v2/memories/search", json=body)).status_code == 200
        body = {"org_id": org, "project_id": PROJECT}
        listed = await http.post("/api/v2/memories/list", json=body)
        assert listed.status_code == 200, listed.text
    done = await http.post("/api/cm/index/wait", json={"timeout": 60})
    assert done.json() == {"done": True}


def refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    message = response.json()["detail"]["message"]
    assert field in message and "out of range" in message, message


@pytest.mark.parametrize("timestamp", PAST_THE_END + BEFORE_THE_START)
async def test_v2_timestamp_out_of_the_valid_range_is_422_naming_the_field(
    http: httpx.AsyncClient, timestamp: Any
) -> None:
    assert (await add(http, OTHER_ORG, "a message of another org")).status_code == 200
    refused(await add(http, ORG, "a message from the far future", timestamp=timestamp), "timestamp")
    assert (await add(http, ORG, "an ordinary message")).status_code == 200
    await assert_project_works(http)
    listed = await http.post("/api/v2/memories/list", json={"org_id": ORG, "project_id": PROJECT})
    assert [e["content"] for e in listed.json()["content"]["episodic_memory"]] == [
        "an ordinary message"
    ]


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("0001-01-01T00:00:00-14:00", "0001-01-01T14:00:00Z"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        ("9999-12-31T23:59:59+14:00", "9999-12-31T09:59:59Z"),
        (253402300799, "9999-12-31T23:59:59Z"),
        (253402300799000, "9999-12-31T23:59:59Z"),
    ],
)
async def test_the_ends_of_the_valid_range_are_stored_and_read_back(
    http: httpx.AsyncClient, timestamp: Any, expected: str
) -> None:
    assert (await add(http, ORG, "at the edge of time", timestamp=timestamp)).status_code == 200
    await assert_project_works(http)
    listed = await http.post("/api/v2/memories/list", json={"org_id": ORG, "project_id": PROJECT})
    [episode] = listed.json()["content"]["episodic_memory"]
    assert episode["created_at"] == expected


def cm_episode(**fields: Any) -> dict[str, Any]:
    return {
        "org_id": ORG,
        "project_id": PROJECT,
        "producer": ALICE,
        "produced_for": GENERAL,
        "content": "a chat message",
        **fields,
    }


@pytest.mark.parametrize("created_at", ["9999-12-31T23:59:59.999999", *BEFORE_THE_START[:2]])
async def test_channelmind_created_at_out_of_range_is_422(
    http: httpx.AsyncClient, created_at: str
) -> None:
    body = {"episodes": [cm_episode(created_at=created_at)]}
    refused(await http.post("/api/cm/episodes/add", json=body), "created_at")
    fact = {
        "org_id": ORG,
        "project_id": PROJECT,
        "subject": ALICE,
        "feature": "timezone",
        "value": "far future",
        "created_at": created_at,
    }
    refused(await http.post("/api/cm/facts/add", json={"fact": fact}), "created_at")
    await assert_project_works(http)
    facts = await http.post("/api/cm/facts/list", json={"org_id": ORG, "project_id": PROJECT})
    assert facts.status_code == 200 and facts.json() == []


async def test_fact_superseded_at_and_supersede_time_out_of_range_are_422(
    http: httpx.AsyncClient,
) -> None:
    fact = {"org_id": ORG, "project_id": PROJECT, "subject": ALICE, "feature": "f", "value": "v"}
    bad = {**fact, "superseded_at": "9999-12-31T23:59:59-14:00"}
    refused(await http.post("/api/cm/facts/add", json={"fact": bad}), "superseded_at")
    first = (await http.post("/api/cm/facts/add", json={"fact": fact})).json()["uid"]
    second = (await http.post("/api/cm/facts/add", json={"fact": fact})).json()["uid"]
    body = {
        "org_id": ORG,
        "project_id": PROJECT,
        "uid": first,
        "by": second,
        "when": "0001-01-01T00:00:00+14:00",
    }
    refused(await http.post("/api/cm/facts/supersede", json=body), "when")
    listed = await http.post("/api/cm/facts/list", json={"org_id": ORG, "project_id": PROJECT})
    assert len(listed.json()) == 2


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_out_of_range_time_zones_in_search_and_list_are_422(
    http: httpx.AsyncClient, when: str
) -> None:
    assert (await add(http, ORG, "a message to look for")).status_code == 200
    scope = {"org_id": ORG, "project_id": PROJECT}
    for route, body in [
        ("/api/cm/search", {"query": "message", "scope": scope, "time": {"since": when}}),
        ("/api/cm/search", {"query": "message", "scope": scope, "time": {"until": when}}),
        ("/api/cm/episodes/list", {"scope": scope, "time": {"since": when}}),
        ("/api/v2/memories/list", {**scope, "filter": f"created_at > date('{when}')"}),
        ("/api/v2/memories/search", {**scope, "query": "m", "filter": f"created_at < '{when}'"}),
    ]:
        response = await http.post(route, json=body)
        assert response.status_code == 422, (route, body, response.text)
        assert "out of range" in response.json()["detail"]["message"], response.text
    await assert_project_works(http)
