"""The store protocol, driven method by method against each real database (SQLite and
PostgreSQL, through the ``store_url`` fixture). Everything here is about behaviour a caller can
see, not about a particular schema."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from memory.filters import parse_filter
from memory.model import Episode, Fact, InvalidInput, Scope, TimeRange
from memory.store.base import Store
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, at, episode
from tests.memory.store.conftest import make_store

CHANNEL = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)
PROJECT_SCOPE = Scope(org_id=ORG, project_id=PROJECT)


async def add(store: Store, *episodes: Episode) -> list[str]:
    return [a.uid for a in await store.add(episodes)]


# ---------------------------------------------------------------------------- adding


async def test_add_says_which_sources_were_new(store: Store) -> None:
    first = episode("the deploy is at noon", source_id="1.1")
    again = episode("the deploy is at noon", source_id="1.1")
    other = episode("lunch?", source_id="1.2")
    added = await store.add([first, other])
    assert [a.new for a in added] == [True, True]
    retried = await store.add([again, other, episode("dup in batch", source_id="1.3"),
                               episode("dup in batch", source_id="1.3")])  # fmt: skip
    assert [a.new for a in retried] == [False, False, True, False]
    assert retried[0].uid == added[0].uid and retried[1].uid == added[1].uid
    assert retried[2].uid == retried[3].uid
    assert await store.count(CHANNEL) == 3


async def test_a_batch_with_another_episodes_uid_is_refused_whole(store: Store) -> None:
    """A record whose uid is already another episode's (another source) is refused, and with
    it the batch's other records, even those the store had written before it found out: none
    is stored, none acknowledged. (On PostgreSQL the duplicate is found by a second statement
    after the INSERT, so only the transaction around both keeps the batch whole.)"""
    [taken] = await add(store, episode("first", source_id="1.1"))
    fresh = episode("written before the conflict is found", source_id="1.2")
    clash = episode("another source, the same uid", source_id="1.3", uid=taken)
    with pytest.raises(InvalidInput, match="belongs to another episode"):
        await store.add([fresh, clash])
    assert await store.count(CHANNEL) == 1
    assert [e.content for e in await store.get(ORG, PROJECT, [taken])] == ["first"]


async def test_concurrent_adds_of_one_source_store_it_once(store_url: str) -> None:
    """Two workers (two connection pools, as two processes would have) receive the same
    Slack retry at once: exactly one of them is told the message is new."""
    a, b = make_store(store_url), make_store(store_url)
    await asyncio.gather(a.open(), b.open())
    try:
        for i in range(15):
            results = await asyncio.gather(
                a.add([episode(f"retry {i}", source_id=f"9.{i}")]),
                b.add([episode(f"retry {i}", source_id=f"9.{i}")]),
            )
            flags = [r[0].new for r in results]
            assert sorted(flags) == [False, True], (i, flags)
            assert results[0][0].uid == results[1][0].uid
        assert await a.count(CHANNEL) == 15
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_uid_that_belongs_to_another_episode_stores_nothing(store: Store) -> None:
    [uid] = await add(store, episode("first"))
    with pytest.raises(InvalidInput, match="uid"):
        await store.add([episode("innocent"), episode("thief", uid=uid)])
    assert [e.content for e in await store.list_episodes(CHANNEL, None, None, 10, 0)] == ["first"]


async def test_json_jsonb_cannot_hold_is_refused_on_postgresql_kept_on_sqlite(
    store_url: str, store: Store
) -> None:
    if store_url.startswith("sqlite:"):  # the text an embedded folder always held
        [uid] = await add(store, episode("x", metadata={"name": "a\x00b"}))
        assert [e.metadata for e in await store.get(ORG, PROJECT, [uid])] == [{"name": "a\x00b"}]
        return
    with pytest.raises(InvalidInput, match="NUL"):
        await store.add([episode("x", metadata={"name": "a\x00b"})])
    with pytest.raises(InvalidInput, match="JSON"):
        await store.add([episode("x", metadata={"score": float("nan")})])
    assert await store.count(PROJECT_SCOPE) == 0


async def test_episodes_round_trip_exactly(store: Store) -> None:
    when = datetime(2025, 3, 1, 12, 0, 0, 123457, tzinfo=UTC)
    original = episode(
        "naïve café ☕ — 日本語", created_at=when, thread_id="1.0", role="assistant",
        metadata={"display_name": "Alice", "n": 5, "f": 1.5, "nested": {"a": [1, "b", None]}},
    )  # fmt: skip
    [uid] = await add(store, original)
    [got] = await store.get(ORG, PROJECT, [uid])
    assert got.model_dump() == original.model_copy(update={"uid": uid}).model_dump() | {
        # epoch seconds as a double, exactly as the SQLite store keeps them
        "created_at": datetime.fromtimestamp(when.timestamp(), UTC)
    }
    no_source = episode("api message", source_id=None, platform="api")
    [uid2] = await add(store, no_source)
    assert (await store.get(ORG, PROJECT, [uid2]))[0].source_id is None


async def test_a_huge_message_is_stored_and_its_start_is_searchable(store: Store) -> None:
    content = "zanzibar " + "lorem ipsum dolor sit amet quux " * 31_000  # ~1M characters
    [uid] = await add(store, episode(content[:1_000_000]))
    hits = await store.keyword_search(CHANNEL, None, None, "zanzibar", 5)
    assert [h.episode.uid for h in hits] == [uid]


# ---------------------------------------------------------------------------- reading


async def test_get_is_scoped_and_ordered(store: Store) -> None:
    u1, u2 = await add(store, episode("one"), episode("two"))
    [other] = await add(store, episode("elsewhere", org_id="T1OTHER"))
    got = await store.get(ORG, PROJECT, [u2, other, "nope", u1, u2])
    assert [e.content for e in got] == ["two", "one"]
    assert await store.get("T1OTHER", PROJECT, [u1]) == []
    found = await store.get_scoped(CHANNEL, parse_filter("producer = 'slack:UALICE'"), None,
                                   [u1, u2, other])  # fmt: skip
    assert set(found) == {u1, u2}
    assert found[u1].episode.content == "one"
    assert found[u1].key != found[u2].key


async def test_channel_members_lists_every_row_of_one_channel(store: Store) -> None:
    """What the vector index reads a channel's vectors by: each row of the channel (indexed
    or not), with its producer and thread, and nothing of another channel or project."""
    u1, u2 = await add(
        store, episode("one"), episode("two", producer=BOB, thread_id="1700000000.000009")
    )
    await add(store, episode("elsewhere", produced_for=RANDOM))
    await add(store, episode("other project", project_id="P2"))
    members = await store.channel_members(ORG, PROJECT, GENERAL)
    assert sorted(members) == sorted([(u1, ALICE, None), (u2, BOB, "1700000000.000009")])
    assert await store.channel_members(ORG, PROJECT, "slack:CNONE") == []


async def test_find_source(store: Store) -> None:
    [uid] = await add(store, episode("hello", source_id="42.0001"))
    found = await store.find_source(ORG, PROJECT, "slack", "42.0001")
    assert found is not None and found.uid == uid
    assert await store.find_source(ORG, "other", "slack", "42.0001") is None


async def test_list_pages_in_time_order(store: Store) -> None:
    await add(store, *(episode(f"m{i}", created_at=at(10 - i)) for i in range(5)))
    await add(
        store,
        episode("same time a", created_at=at(20)),
        episode("same time b", created_at=at(20)),
        episode("random", produced_for=RANDOM, created_at=at(0)),
    )
    page = await store.list_episodes(CHANNEL, None, None, 3, 0)
    assert [e.content for e in page] == ["m4", "m3", "m2"]
    rest = await store.list_episodes(CHANNEL, None, None, 10, 3)
    assert [e.content for e in rest] == ["m1", "m0", "same time a", "same time b"]
    newest = await store.list_episodes(CHANNEL, None, None, 2, 0, newest_first=True)
    assert [e.content for e in newest] == ["same time b", "same time a"]
    window = TimeRange(since=at(7), until=at(9))
    assert [e.content for e in await store.list_episodes(CHANNEL, None, window, 10, 0)] == [
        "m3", "m2", "m1"]  # fmt: skip
    assert await store.count(CHANNEL) == 7
    assert await store.count(PROJECT_SCOPE) == 8
    assert await store.count(PROJECT_SCOPE, parse_filter("produced_for = 'slack:CRANDOM'")) == 1


async def test_created_at_filters_use_epoch_seconds(store: Store) -> None:
    await add(store, episode("before", created_at=at(0)), episode("after", created_at=at(10)))
    cut = at(5).isoformat()
    for text, expected in (
        (f"created_at > date('{cut}')", ["after"]),
        (f"timestamp <= '{cut}'", ["before"]),
        (f"created_at >= {int(at(10).timestamp())}", ["after"]),
    ):
        got = await store.list_episodes(PROJECT_SCOPE, parse_filter(text), None, 10, 0)
        assert [e.content for e in got] == expected, text


# ---------------------------------------------------------------------------- keyword search


async def test_keyword_search_stays_inside_its_scope(store: Store) -> None:
    await add(
        store,
        episode("the kubernetes upgrade is done", producer=ALICE),
        episode("kubernetes in a thread", thread_id="100.1"),
        episode("kubernetes elsewhere", produced_for=RANDOM, producer=BOB),
        episode("kubernetes in another org", org_id="T1OTHER"),
        episode("kubernetes in another project", project_id="other"),
    )

    async def contents(scope: Scope) -> set[str]:
        hits = await store.keyword_search(scope, None, None, "kubernetes", 10)
        return {h.episode.content for h in hits}

    upgrade, threaded = "the kubernetes upgrade is done", "kubernetes in a thread"
    assert await contents(CHANNEL) == {upgrade, threaded}
    assert await contents(PROJECT_SCOPE) == {upgrade, threaded, "kubernetes elsewhere"}
    thread = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL, thread_id="100.1")
    assert await contents(thread) == {"kubernetes in a thread"}
    assert await contents(Scope(org_id=ORG, project_id=PROJECT, producer=BOB)) == {
        "kubernetes elsewhere"}  # fmt: skip


async def test_keyword_search_stems_folds_accents_and_ranks_rare_words_first(
    store: Store,
) -> None:
    common = [episode(f"deploy note {i}") for i in range(30)]
    await add(store, *common, episode("the café deploy went fine"), episode("deploying zorblat"))
    hits = await store.keyword_search(CHANNEL, None, None, "What about the cafe?", 5)
    assert [h.episode.content for h in hits] == ["the café deploy went fine"]
    ranked = await store.keyword_search(CHANNEL, None, None, "deploy zorblat", 50)
    assert ranked[0].episode.content == "deploying zorblat"  # the rare word weighs more
    assert len(ranked) == 32 and all(h.score > 0 for h in ranked)
    assert ranked == sorted(ranked, key=lambda h: -h.score)
    assert await store.keyword_search(CHANNEL, None, None, "the and of you", 5) == []
    assert await store.keyword_search(CHANNEL, None, None, "   ", 5) == []
    assert await store.keyword_search(CHANNEL, None, None, "it's (a) 'quote' & | ! :*", 5) == []


async def test_keyword_search_applies_filters_and_time(store: Store) -> None:
    await add(
        store,
        episode("budget review", created_at=at(0), metadata={"team": "finance", "n": 3}),
        episode("budget draft", created_at=at(10), metadata={"team": "eng", "n": 12}),
    )
    by_meta = await store.keyword_search(CHANNEL, parse_filter("m.n > 5"), None, "budget", 5)
    assert [h.episode.content for h in by_meta] == ["budget draft"]
    by_time = await store.keyword_search(CHANNEL, None, TimeRange(until=at(5)), "budget", 5)
    assert [h.episode.content for h in by_time] == ["budget review"]


# ---------------------------------------------------------------------------- neighbours


async def test_adjacent_and_neighbours(store: Store) -> None:
    uids = await add(store, *(episode(f"msg {i}", created_at=at(i)) for i in range(6)))
    await add(store, episode("in thread a", created_at=at(2.5), thread_id="t1"),
              episode("in thread b", created_at=at(4.5), thread_id="t1"),
              episode("other channel", created_at=at(3.5), produced_for=RANDOM))  # fmt: skip
    rows = await store.get_scoped(CHANNEL, None, None, uids)
    key = {rows[u].episode.content: rows[u].key for u in uids}
    adjacent = await store.adjacent([key["msg 3"], key["msg 0"]])
    assert adjacent[key["msg 0"]].before is None
    around = await store.neighbours([key["msg 3"]], 2, 2)
    context = around[key["msg 3"]]
    assert [r.episode.content for r in context.before] == ["in thread a", "msg 2"]
    assert [r.episode.content for r in context.after] == ["msg 4", "in thread b"]
    thread_rows = await store.keyword_search(CHANNEL, None, None, "thread", 5)
    tkey = {h.episode.content: h.key for h in thread_rows}
    in_thread = await store.neighbours([tkey["in thread b"]], 3, 3)
    assert [r.episode.content for r in in_thread[tkey["in thread b"]].before] == ["in thread a"]
    assert in_thread[tkey["in thread b"]].after == []


async def test_candidates_carry_name_time_metadata_and_neighbours(store: Store) -> None:
    """A search's candidates (keyword hits, and rows read by uid for the vector list) carry
    what ranking reads of them: the author's display name, the time, the metadata and the
    row keys next to them in the channel, equal to the Episode and to :meth:`adjacent`, for
    every kind of display name a message's metadata can hold."""
    metadata: list[dict[str, object]] = [
        {"display_name": "Alice Smith", "team": "infra"},
        {},
        {"display_name": ""},
        {"display_name": None},
        {"display_name": False},
        {"display_name": True},
        {"display_name": 0},
        {"display_name": 7},
        {"display_name": 2.5},
        {"display_name": ["x"]},
        {"display_name": {"first": "Zoë"}},
        {"display_name": 'Zoë "Z" 😀\n\\'},
        {"profile": {"display_name": "nested"}},
    ]
    notes = [
        episode(f"budget note {i}", created_at=at(i), metadata=m) for i, m in enumerate(metadata)
    ]
    uids = await add(store, *notes)
    await add(store, episode("budget in a thread", created_at=at(3.5), thread_id="t1"),
              episode("budget elsewhere", created_at=at(4.5), produced_for=RANDOM))  # fmt: skip
    stored = {e.uid: e for e in await store.get(ORG, PROJECT, [*uids])}
    by_keyword = await store.keyword_search(CHANNEL, None, None, "budget", 50)
    in_time = await store.keyword_search(CHANNEL, None, TimeRange(until=at(60)), "budget", 50)
    project_wide = await store.keyword_search(PROJECT_SCOPE, None, None, "budget", 50)
    by_uid = await store.get_scoped(CHANNEL, None, None, uids)
    assert len(by_keyword) == len(in_time) == len(metadata) + 1
    assert len(project_wide) == len(metadata) + 2 and len(by_uid) == len(metadata)
    found = [*by_keyword, *in_time, *project_wide, *by_uid.values()]
    adjacent = await store.adjacent([f.key for f in found])
    in_channel = [adjacent[f.key] for f in by_uid.values()]
    assert all(a.before is not None or a.after is not None for a in in_channel)
    for f in found:
        assert f.adjacent == adjacent[f.key], f
        if f.episode.uid not in stored:  # the rows in a thread and another channel
            continue
        ep = stored[f.episode.uid]
        assert f.episode.display_name == ep.display_name, ep.metadata
        assert (f.episode.producer, f.episode.content) == (ep.producer, ep.content)
        assert f.episode.created_at == ep.created_at
        assert f.episode.metadata == ep.metadata
    # A search that does not rank by neighbours does not have them looked up.
    plain = await store.keyword_search(CHANNEL, None, None, "budget", 50, neighbours=False)
    alone = await store.get_scoped(CHANNEL, None, None, uids, neighbours=False)
    assert [(h.key, h.score) for h in plain] == [(h.key, h.score) for h in by_keyword]
    assert alone.keys() == by_uid.keys()
    assert all(f.adjacent is None for f in [*plain, *alone.values()])


# ---------------------------------------------------------------------------- deleting


async def test_delete_is_scoped_and_takes_facts_citing_only_it(store: Store) -> None:
    u1, u2 = await add(store, episode("alice likes tea"), episode("alice likes green tea"))
    [foreign] = await add(store, episode("not yours", org_id="T1OTHER"))
    only = await store.add_fact(fact("drink", "tea", [u1]))
    both = await store.add_fact(fact("colour", "green", [u1, u2]))
    gone = await store.delete(ORG, PROJECT, [u1, foreign, "unknown"])
    assert gone.uids == [u1] and gone.facts == 1 and gone.channels == [GENERAL]
    assert await store.get("T1OTHER", PROJECT, [foreign])
    left = await store.facts(ORG, PROJECT, uids=[only, both])
    assert [(f.uid, f.citations) for f in left] == [(both, [u2])]
    stones = await store.tombstones(10)
    assert [(t.uid, t.produced_for) for t in stones] == [(u1, GENERAL)]
    await store.clear_tombstones([t.id for t in stones])
    assert await store.tombstones(10) == []


async def test_forget_by_scope_and_filter(store: Store) -> None:
    await add(store, episode("alice in general", producer=ALICE),
              episode("bob in general", producer=BOB),
              episode("alice in random", producer=ALICE, produced_for=RANDOM),
              episode("alice secret", producer=ALICE, metadata={"secret": True}))  # fmt: skip
    scope = Scope(org_id=ORG, project_id=PROJECT, producer=ALICE, produced_for=GENERAL)
    only_secret = await store.forget(scope, parse_filter("m.secret = true"))
    assert len(only_secret.uids) == 1
    rest = await store.forget(Scope(org_id=ORG, project_id=PROJECT, producer=ALICE))
    assert sorted(rest.channels) == sorted([GENERAL, RANDOM]) and len(rest.uids) == 2
    assert [e.content for e in await store.list_episodes(PROJECT_SCOPE, None, None, 9, 0)] == [
        "bob in general"]  # fmt: skip
    assert await store.keyword_search(PROJECT_SCOPE, None, None, "alice", 5) == []


async def test_delete_project_takes_everything(store: Store) -> None:
    [uid] = await add(store, episode("in project"))
    await add(store, episode("other project", project_id="keep"))
    await store.add_fact(fact("a", "b", [uid]))
    await store.add_fact(fact("c", "d", []))
    await store.set_setting(ORG, PROJECT, ALICE, "opt_out", "1")
    gone = await store.delete_project(ORG, PROJECT)
    assert gone.uids == [uid] and gone.facts == 2 and gone.channels == [GENERAL]
    assert await store.count(PROJECT_SCOPE) == 0
    assert await store.get_project(ORG, PROJECT) is None
    assert await store.get_setting(ORG, PROJECT, ALICE, "opt_out") is None
    assert await store.count_facts(ORG, PROJECT) == 0
    assert [p.project_id for p in await store.projects(ORG)] == ["keep"]


# ---------------------------------------------------------------------------- the embedding queue


async def test_claims_split_the_queue_between_workers(store_url: str) -> None:
    if store_url.startswith("sqlite:"):
        pytest.skip("one process owns an embedded folder: its claims live in that process")
    a, b = make_store(store_url), make_store(store_url)
    await asyncio.gather(a.open(), b.open())
    try:
        await a.add([episode(f"m{i}", produced_for=f"slack:C{i % 7}") for i in range(100)])
        taken: list[str] = []
        while True:
            claims = await asyncio.gather(a.claim(9, 60), b.claim(9, 60))
            if not any(claims):
                break
            for store, claim in zip((a, b), claims, strict=True):
                if claim is not None:
                    taken += [e.uid for e in claim.episodes]
                    await store.complete(claim)
        assert len(taken) == len(set(taken)) == 100
        assert await a.count_pending() == 0 and await a.count_indexed() == 100
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_claim_is_taken_channel_by_channel(store: Store) -> None:
    await add(store, *(episode(f"m{i}", produced_for=f"slack:C{i % 3}") for i in range(9)))
    claim = await store.claim(3, 60)
    assert claim is not None
    assert {e.produced_for for e in claim.episodes} == {"slack:C0"}


async def test_an_edit_during_a_claim_is_embedded_again(store: Store) -> None:
    [uid] = await add(store, episode("first version"))
    claim = await store.claim(10, 60)
    assert claim is not None and [e.content for e in claim.episodes] == ["first version"]
    assert await store.claim(10, 60) is None  # leased
    assert await store.edit(ORG, PROJECT, uid, "second version", at(1))
    assert not await store.edit("T1OTHER", PROJECT, uid, "hijack", at(2))
    await store.complete(claim)
    again = await store.claim(10, 60)
    assert again is not None and [e.content for e in again.episodes] == ["second version"]
    await store.complete(again)
    assert await store.count_pending() == 0


async def test_released_and_expired_claims_come_back_and_poison_is_set_aside(
    store: Store,
) -> None:
    await add(store, episode("a"), episode("b"))
    claim = await store.claim(10, 60)
    assert claim is not None
    await store.release(claim)
    for _ in range(5):  # a worker that dies: its lease ends (here at once) and nothing is done
        dead = await store.claim(10, 0)
        assert dead is not None and len(dead.episodes) == 2
    assert await store.claim(10, 0) is None
    counts = await store.counts()
    assert counts.set_aside == 2 and counts.pending_index == 0
    await store.requeue()
    retry = await store.claim(1, 60)
    assert retry is not None
    await store.set_aside(retry, [retry.episodes[0].uid])
    assert (await store.counts()).set_aside == 1


# ---------------------------------------------------------------------------- facts, projects


def fact(feature: str, value: str, citations: list[str], **fields: object) -> Fact:
    values: dict[str, object] = {"org_id": ORG, "project_id": PROJECT, "subject": ALICE,
                                 "produced_for": GENERAL, "feature": feature, "value": value,
                                 "citations": citations}  # fmt: skip
    return Fact(**(values | fields))  # type: ignore[arg-type]


async def test_facts(store: Store) -> None:
    # A fact may cite only episodes of its own org and project.
    await add(store, *(episode(f"said {u}", uid=u) for u in ("e1", "e2", "e3")))
    with pytest.raises(InvalidInput, match="citations not found"):
        await store.add_fact(fact("drink", "water", ["e1", "nope"]))
    old = await store.add_fact(fact("drink", "coffee", ["e1", "e2"], created_at=at(0)))
    new = await store.add_fact(fact("drink", "tea", ["e3"], created_at=at(1)))
    await store.add_fact(fact("pet", "cat", [], subject=BOB, created_at=at(2)))
    assert await store.supersede_fact(ORG, PROJECT, old, new, at(3))
    assert not await store.supersede_fact("T1OTHER", PROJECT, new, old, at(3))
    current = await store.facts(ORG, PROJECT, subject=ALICE)
    assert [(f.value, f.citations) for f in current] == [("tea", ["e3"])]
    everything = await store.facts(ORG, PROJECT, include_superseded=True)
    assert [f.value for f in everything] == ["cat", "tea", "coffee"]
    assert everything[2].superseded_by == new and everything[2].citations == ["e1", "e2"]
    assert await store.delete_facts_about(ORG, PROJECT, BOB, None) == 1
    assert await store.delete_facts(ORG, PROJECT, [new]) == 1
    assert await store.count_facts(ORG, PROJECT) == 1
    with pytest.raises(InvalidInput):
        await store.add_fact(fact("x", "y", [], uid=old))


async def test_projects_settings_meta_and_counts(store: Store) -> None:
    assert await store.create_project(ORG, "alpha", "first", {"k": 1})
    assert not await store.create_project(ORG, "alpha", "again", {})
    project = await store.get_project(ORG, "alpha")
    assert project is not None and (project.description, project.config) == ("first", {"k": 1})
    await add(store, episode("auto-registers its project"))
    assert [(p.org_id, p.project_id) for p in await store.projects()] == [
        (ORG, "alpha"), (ORG, PROJECT)]  # fmt: skip
    await store.set_setting(ORG, PROJECT, ALICE, "retention", "30")
    await store.set_setting(ORG, PROJECT, ALICE, "retention", "60")
    assert await store.get_setting(ORG, PROJECT, ALICE, "retention") == "60"
    await store.set_setting(ORG, PROJECT, ALICE, "retention", None)
    assert await store.get_setting(ORG, PROJECT, ALICE, "retention") is None
    assert await store.get_meta("embedder") is None
    await store.set_meta("embedder", "hash-384")
    assert await store.get_meta("embedder") == "hash-384"
    # Of processes opening one store at once, the first value of a key wins for all.
    assert await store.init_meta("index_key", "first") == "first"
    assert await store.init_meta("index_key", "second") == "first"
    assert await store.get_meta("index_key") == "first"
    counts = await store.counts()
    assert (counts.episodes, counts.pending_index, counts.orgs, counts.channels) == (1, 1, 1, 1)
    assert await store.channels(ORG, PROJECT) == [GENERAL]
    assert len(await store.all_uids()) == 1


async def test_the_newest_time_survives_the_round_trip(store: Store) -> None:
    now = datetime.now(UTC) + timedelta(microseconds=7)
    [uid] = await add(store, episode("now", created_at=now))
    [got] = await store.get(ORG, PROJECT, [uid])
    assert got.created_at == datetime.fromtimestamp(now.timestamp(), UTC)
    assert abs(got.created_at - now) <= timedelta(microseconds=1)


async def test_list_settings_lists_every_setting_in_order(store: Store) -> None:
    assert await store.list_settings() == []
    await store.set_setting("T1OTHER", PROJECT, ALICE, "opt_out", "1")
    await store.set_setting(ORG, PROJECT, BOB, "opt_out", "1")
    await store.set_setting(ORG, PROJECT, ALICE, "notice", "2025-03-01")
    await store.set_setting(ORG, PROJECT, ALICE, "notice", "2025-03-02")  # replaced, not added
    await store.set_setting(ORG, "alpha", GENERAL, "backfilled", "yes")
    await store.set_setting(ORG, PROJECT, BOB, "gone", "x")
    await store.set_setting(ORG, PROJECT, BOB, "gone", None)
    listed = [
        (s.org_id, s.project_id, s.subject, s.key, s.value) for s in await store.list_settings()
    ]
    assert listed == [
        (ORG, "alpha", GENERAL, "backfilled", "yes"),
        (ORG, PROJECT, ALICE, "notice", "2025-03-02"),
        (ORG, PROJECT, BOB, "opt_out", "1"),
        ("T1OTHER", PROJECT, ALICE, "opt_out", "1"),
    ]
    assert [s.org_id for s in await store.list_settings("T1OTHER")] == ["T1OTHER"]
    assert len(await store.list_settings(ORG)) == 3
