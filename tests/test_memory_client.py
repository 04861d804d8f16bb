"""MemoryClient against the real memory server: the MemoryEngine interface over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.client import MemoryAccessDenied, MemoryClient, MemoryServerError, filter_text
from memory.engine import MemoryEngine
from memory.filters import Comparison, FilterError, parse_filter
from memory.model import Fact, InvalidInput, Scope, SourceRef, TimeRange

from .conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, at, episode
from .server_harness import Running, running

KEYS = "k-team:T0ORG,k-all:*"


@pytest.fixture
async def server(engine: MemoryEngine) -> AsyncIterator[Running]:
    async with running(engine, api_keys=KEYS) as srv:
        yield srv


@pytest.fixture
async def client(server: Running) -> AsyncIterator[MemoryClient]:
    async with MemoryClient(server.url, api_key="k-team") as c:
        yield c


CHANNEL = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)


async def test_write_read_search_edit_delete(client: MemoryClient, server: Running) -> None:
    first = episode("we ship the release on Friday", created_at=at(0))
    second = episode("remember to update the changelog", producer=BOB, created_at=at(1))
    elsewhere = episode("lunch is at noon", produced_for=RANDOM, created_at=at(2))
    uids = await client.add([first, second, elsewhere])
    assert len(uids) == 3
    assert await client.add([first]) == uids[:1]  # the same source is stored once
    assert await client.add([]) == []

    assert [e.content for e in await client.recent(CHANNEL, 10)] == [first.content, second.content]
    got = await client.get(ORG, PROJECT, [uids[1]])
    assert [e.producer for e in got] == [BOB]
    assert got[0].created_at == at(1) and got[0].created_at.tzinfo is not None
    assert await client.count(CHANNEL) == 2
    assert await client.count(CHANNEL, "producer_id = 'slack:UBOB'") == 1
    page = await client.list(CHANNEL, page_size=1, page_num=1)
    assert [e.uid for e in page] == [uids[1]]
    window = TimeRange(since=at(0.5), until=at(10))
    assert [e.uid for e in await client.list(CHANNEL, time=window)] == [uids[1]]

    await server.engine.wait_indexed()
    await client.wait_indexed()
    found = await client.search("when do we ship the release", CHANNEL, top_k=3)
    assert found.hits[0].episode.uid == uids[0]
    assert found.hits[0].source.channel == GENERAL
    keyword = await client.search("changelog", CHANNEL, mode="keyword")
    assert [h.episode.uid for h in keyword.hits] == [uids[1]]
    by_filter = await client.search(
        "release changelog",
        CHANNEL,
        parse_filter("role != 'assistant' AND producer = 'slack:UBOB'"),
    )
    assert [h.episode.uid for h in by_filter.hits] == [uids[1]]

    ref = SourceRef(
        org_id=ORG, project_id=PROJECT, platform="slack", source_id=first.source_id or ""
    )
    assert (await client.get_by_source(ref)) is not None
    edited = await client.edit(ref, "we ship the release on Monday")
    assert edited is not None and edited.content == "we ship the release on Monday"
    by_uid = await client.edit(uids[1], "update the changelog", org_id=ORG, project_id=PROJECT)
    assert by_uid is not None and by_uid.uid == uids[1]
    missing = SourceRef(org_id=ORG, project_id=PROJECT, platform="slack", source_id="nope")
    assert await client.edit(missing, "x") is None
    assert await client.get_by_source(missing) is None

    assert await client.delete(ORG, PROJECT, [uids[0], "not-a-uid"]) == [uids[0]]
    assert await server.engine.get(ORG, PROJECT, [uids[0]]) == []
    # The hashing embedder tells shared words, not meaning: no similarities, as the engine's.
    assert await client.similarities("release", ["the release is on Friday"]) is None


async def test_forget_facts_settings_projects(client: MemoryClient, server: Running) -> None:
    uids = await client.add(
        [
            episode("I live in Lisbon", producer=ALICE),
            episode("I live in Porto", producer=BOB),
            episode("old news", producer=BOB, created_at=datetime(2020, 1, 1, tzinfo=UTC)),
        ]
    )
    fact = Fact(
        org_id=ORG,
        project_id=PROJECT,
        subject=ALICE,
        produced_for=GENERAL,
        feature="city",
        value="Lisbon",
        citations=[uids[0]],
    )
    old_uid = await client.add_fact(fact)
    new_uid = await client.add_fact(fact.model_copy(update={"value": "Lisbon (Alfama)"}))
    assert await client.supersede_fact(ORG, PROJECT, old_uid, new_uid)
    current = await client.facts(ORG, PROJECT, subject=ALICE)
    assert [(f.uid, f.value, f.citations) for f in current] == [
        (new_uid, "Lisbon (Alfama)", [uids[0]])
    ]
    everything = await client.facts(ORG, PROJECT, include_superseded=True)
    assert {f.uid for f in everything} == {old_uid, new_uid}
    assert (await client.facts(ORG, PROJECT, uids=[old_uid], include_superseded=True))[
        0
    ].superseded_by == new_uid
    async with MemoryClient(client.base_url, "k-team") as fresh:  # has not seen the fact
        # The fact is named with its org and project: no client-side memory of where it lives.
        assert await fresh.supersede_fact(ORG, PROJECT, old_uid, new_uid)
        assert not await fresh.supersede_fact(ORG, PROJECT, old_uid, "no-such-fact")
        assert not await fresh.supersede_fact(ORG, "elsewhere", old_uid, new_uid)

    old = parse_filter("created_at < date('2021-01-01T00:00:00+00:00')")
    report = await client.forget(ORG, project_id=PROJECT, filters=old)
    assert report.episodes == 1
    report = await client.forget(ORG, producer=ALICE)
    assert (report.episodes, report.facts) == (1, 2)  # the superseded fact too
    assert await client.facts(ORG, PROJECT, include_superseded=True) == []
    assert await client.delete_facts(ORG, PROJECT, ["nothing"]) == 0

    assert await client.get_setting(ORG, PROJECT, ALICE, "memory") is None
    await client.set_setting(ORG, PROJECT, ALICE, "memory", "off")
    assert await client.get_setting(ORG, PROJECT, ALICE, "memory") == "off"
    await client.set_setting(ORG, PROJECT, ALICE, "memory", None)
    assert await server.engine.get_setting(ORG, PROJECT, ALICE, "memory") is None

    assert await client.list_projects() == [(ORG, PROJECT)]
    assert await client.list_projects("other") == []


async def test_errors_map_to_the_engines(client: MemoryClient, server: Running) -> None:
    with pytest.raises(FilterError, match="unknown field 'colour'"):
        await client.count(CHANNEL, "colour = 'red'")
    with pytest.raises(InvalidInput, match="content must not be empty"):
        await client.add([episode("x").model_copy(update={"content": " "})])
    with pytest.raises(InvalidInput):
        await client.list(CHANNEL, page_size=0)
    elsewhere = Scope(org_id="other-team", project_id=PROJECT)
    with pytest.raises(MemoryAccessDenied) as denied:
        await client.recent(elsewhere)
    assert denied.value.status == 403
    with pytest.raises(MemoryAccessDenied):
        await client.stats()
    async with MemoryClient(server.url, api_key="wrong") as bad:
        with pytest.raises(MemoryAccessDenied) as unauthorized:
            await bad.count(CHANNEL)
    assert unauthorized.value.status == 401
    async with MemoryClient(server.url, api_key="k-all") as root:
        await root.add([episode("counted")])
        stats = await root.stats()
    assert stats.episodes == 1 and stats.embedder.startswith("hash")
    async with MemoryClient("http://127.0.0.1:9", timeout=2) as nowhere:
        with pytest.raises(MemoryServerError) as unreachable:
            await nowhere.count(CHANNEL)
    assert unreachable.value.status == 0


_FILTERS = [
    "producer_id = 'slack:U1' AND metadata.channel_id = 'C0123'",
    "role != 'assistant' OR (m.count > 10 AND m.ratio <= 0.25)",
    "NOT (thread_id IS NULL) AND uid NOT IN ('a', 'b''c')",
    "m.flag = true AND m.n IN (1, 2, 3) AND m.x IS NOT NULL",
    "created_at >= date('2025-01-01T00:00:00+00:00') OR NOT m.y = -4.5",
]


@pytest.mark.parametrize("text", _FILTERS)
def test_filter_text_round_trips(text: str) -> None:
    parsed = parse_filter(text)
    assert parsed is not None
    assert parse_filter(filter_text(parsed)) == parsed


_values = st.one_of(
    st.text(max_size=8),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(value=_values, op=st.sampled_from(["=", "!=", "<", ">="]))
def test_filter_text_round_trips_values(value: str | int | float | bool, op: str) -> None:
    if isinstance(value, bool):
        op = "="
    original = Comparison("metadata.k", op, value)
    assert parse_filter(filter_text(original)) == original


async def test_search_hits_and_their_neighbours_are_whole_episodes(
    client: MemoryClient, server: Running
) -> None:
    """A search ranks light records of its candidates and reads whole episodes only for what
    it returns: each hit and each neighbour added for context is the stored episode, every
    field of it (role, thread, source, type, metadata with the author's name and link)."""
    stored = [
        episode(
            f"the deploy of service {i} went {'fine' if i % 2 else 'badly'}",
            producer=(ALICE, BOB)[i % 2],
            role=("user", "assistant")[i % 2],
            created_at=at(i),
            thread_id="t1" if i % 3 == 0 else None,
            episode_type="message" if i % 4 else "note",
            metadata={"display_name": f"Person {i % 2}", "permalink": f"https://x/{i}", "n": i},
        )
        for i in range(40)
    ]
    uids = await client.add(stored)
    await server.engine.wait_indexed()
    await client.wait_indexed()
    whole = {e.uid: e for e in await client.get(ORG, PROJECT, uids)}
    assert len(whole) == 40
    for expand in (0, 1):
        found = await client.search("deploy went badly", CHANNEL, top_k=6, expand_context=expand)
        assert len(found.hits) == 6
        assert any(h.expanded for h in found.hits) == bool(expand)
        for hit in found.hits:
            assert hit.episode == whole[hit.episode.uid]
            assert hit.source.link == whole[hit.episode.uid].link is not None
            assert hit.source.thread_id == whole[hit.episode.uid].thread_id
