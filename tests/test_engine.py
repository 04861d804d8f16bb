"""The engine's basic behaviour, end to end on real SQLite and real Chroma."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from memory.embedders import HashEmbedder
from memory.engine import EmbedderMismatch, MemoryEngine
from memory.filters import matches, parse_filter
from memory.index.base import VectorItem
from memory.model import Fact, Scope, SourceRef, TimeRange, embed_text
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, at, episode

SCOPE = Scope(org_id=ORG, project_id=PROJECT)
GENERAL_SCOPE = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)


def uids_of(result: object) -> list[str]:
    return [h.episode.uid for h in result.hits]  # type: ignore[attr-defined]


def stored_vector(engine: MemoryEngine, produced_for: str | None, uid: str) -> np.ndarray | None:
    """The vector a search of the project (None) or of one channel compares for ``uid``."""
    assert engine.index is not None
    return engine.index.vector(ORG, PROJECT, produced_for, uid)


# -- add -----------------------------------------------------------------------------------


async def test_add_returns_uuid_strings_in_order(engine: MemoryEngine) -> None:
    eps = [episode(f"message number {i}") for i in range(5)]
    uids = await engine.add(eps)
    assert len(uids) == 5
    assert len(set(uids)) == 5
    for uid in uids:
        assert isinstance(uid, str)
        assert str(uuid.UUID(uid)) == uid
    got = await engine.get(ORG, PROJECT, uids)
    assert [e.uid for e in got] == uids
    assert [e.content for e in got] == [e.content for e in eps]
    assert await engine.add([]) == []


async def test_same_source_is_stored_once(engine: MemoryEngine) -> None:
    first = episode("deploy went fine", source_id="1700000001.000100")
    retry = episode("deploy went fine", source_id="1700000001.000100")
    [uid1] = await engine.add([first])
    [uid2] = await engine.add([retry])
    assert uid1 == uid2
    # Twice in one batch too, next to a new message.
    other = episode("second message", source_id="1700000001.000200")
    uids = await engine.add([retry, other, retry])
    assert uids[0] == uids[2] == uid1
    assert uids[1] != uid1
    assert await engine.count(SCOPE) == 2
    # The key is (org, project, platform, source_id): another project or platform is new.
    elsewhere = episode("deploy went fine", source_id="1700000001.000100", project_id="other")
    on_discord = episode("deploy went fine", source_id="1700000001.000100", platform="discord")
    [uid3, uid4] = await engine.add([elsewhere, on_discord])
    assert len({uid1, uid3, uid4}) == 3
    assert (await engine.stats()).episodes == 4


# -- search --------------------------------------------------------------------------------


async def test_search_by_keyword_and_vector_with_score_and_source(engine: MemoryEngine) -> None:
    target = episode(
        "the staging cluster runs on kubernetes",
        source_id="1700000002.000001",
        metadata={"permalink": "https://example.slack.com/archives/C/p1"},
    )
    others = [
        episode("lunch is at noon on friday"),
        episode("the quarterly report is due next week"),
        episode("please review my pull request", produced_for=RANDOM),
    ]
    [uid, *_] = await engine.add([target, *others])

    found = await engine.search("kubernetes", SCOPE, mode="keyword")
    assert uids_of(found) == [uid]
    hit = found.hits[0]
    assert hit.score > 0
    assert hit.expanded is False
    assert hit.source.platform == "slack"
    assert hit.source.channel == GENERAL
    assert hit.source.source_id == "1700000002.000001"
    assert hit.source.link == "https://example.slack.com/archives/C/p1"

    await engine.wait_indexed()
    by_vector = await engine.search("staging cluster kubernetes", SCOPE, mode="vector")
    assert by_vector.hits, "vector search found nothing after indexing"
    assert by_vector.hits[0].episode.uid == uid
    assert by_vector.hits[0].score > max(h.score for h in by_vector.hits[1:])
    assert by_vector.hits[0].source.channel == GENERAL

    hybrid = await engine.search("kubernetes cluster", SCOPE)
    assert uids_of(hybrid)[0] == uid
    assert hybrid.query == "kubernetes cluster"


async def test_vector_mode_reads_the_vector_index(data_dir: Path) -> None:
    """Without the indexer, vector search has nothing; after indexing it finds the row."""
    eng = await MemoryEngine.open(data_dir, "hash", background=False)
    try:
        [uid] = await eng.add([episode("the espresso machine is broken again")])
        assert (await eng.search("espresso machine", SCOPE, mode="vector")).hits == []
        assert (await eng.stats()).pending_index == 1
        await eng.wait_indexed()
        assert (await eng.stats()).pending_index == 0
        assert uids_of(await eng.search("espresso machine", SCOPE, mode="vector")) == [uid]
    finally:
        await eng.close()


async def test_search_stays_in_scope_and_channel(engine: MemoryEngine) -> None:
    here = episode("the invoice pipeline failed")
    there = episode("the invoice pipeline failed", produced_for=RANDOM)
    other_project = episode("the invoice pipeline failed", project_id="elsewhere")
    await engine.add([here, there, other_project])
    await engine.wait_indexed()
    for mode in ("hybrid", "keyword", "vector"):
        chan = await engine.search("invoice pipeline", GENERAL_SCOPE, mode=mode)
        assert [h.episode.produced_for for h in chan.hits] == [GENERAL], mode
        proj = await engine.search("invoice pipeline", SCOPE, mode=mode)
        assert sorted(h.episode.produced_for for h in proj.hits) == [GENERAL, RANDOM], mode
        assert {h.episode.project_id for h in proj.hits} == {PROJECT}


async def test_scope_narrows_by_producer_channel_and_thread(engine: MemoryEngine) -> None:
    t1, t2 = "1700000000.000011", "1700000000.000022"
    uids = await engine.add(
        [
            episode("heron sighting", producer=ALICE, thread_id=t1),
            episode("heron sighting", producer=BOB, thread_id=t1),
            episode("heron sighting", producer=ALICE, thread_id=t2),
            episode("heron sighting", producer=ALICE),
            episode("heron sighting", producer=ALICE, produced_for=RANDOM, thread_id=t1),
        ]
    )
    await engine.wait_indexed()
    cases = {
        Scope(org_id=ORG, project_id=PROJECT, producer=ALICE): {0, 2, 3, 4},
        Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL): {0, 1, 2, 3},
        Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL, thread_id=t1): {0, 1},
        Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL, producer=BOB): {1},
        Scope(org_id=ORG, project_id=PROJECT, thread_id=t1): {0, 1, 4},
        Scope(org_id=ORG, project_id=PROJECT, producer=ALICE, thread_id=t1): {0, 4},
    }
    for scope, expected in cases.items():
        want = {uids[i] for i in expected}
        assert {e.uid for e in await engine.list(scope)} == want, scope
        for mode in ("hybrid", "keyword", "vector"):
            found = await engine.search("heron sighting", scope, mode=mode, top_k=10)
            assert set(uids_of(found)) == want, (scope, mode)


async def test_score_threshold_and_top_k(engine: MemoryEngine) -> None:
    await engine.add([episode(f"alpha note {i}", created_at=at(i)) for i in range(8)])
    assert len((await engine.search("alpha", SCOPE, top_k=3, mode="keyword")).hits) == 3
    everything = await engine.search("alpha", SCOPE, top_k=20, mode="keyword")
    assert len(everything.hits) == 8
    cut = everything.hits[3].score
    kept = await engine.search("alpha", SCOPE, top_k=20, mode="keyword", score_threshold=cut)
    assert kept.hits and all(h.score >= cut for h in kept.hits)
    assert len(kept.hits) < 8 or everything.hits[-1].score >= cut


# -- recent, get, list ---------------------------------------------------------------------


async def test_recent_returns_the_last_n_oldest_first(engine: MemoryEngine) -> None:
    # Inserted out of time order on purpose.
    minutes = [5, 1, 4, 2, 3, 6]
    eps = [episode(f"general message {m}", created_at=at(m)) for m in minutes]
    eps.append(episode("random message", produced_for=RANDOM, created_at=at(10)))
    await engine.add(eps)
    last = await engine.recent(GENERAL_SCOPE, 3)
    assert [e.content for e in last] == [f"general message {m}" for m in (4, 5, 6)]
    everything = await engine.recent(SCOPE, 100)
    assert [e.created_at for e in everything] == sorted(e.created_at for e in everything)
    assert everything[-1].content == "random message"


async def test_get_only_inside_its_org_and_project(engine: MemoryEngine) -> None:
    [mine] = await engine.add([episode("mine")])
    [theirs] = await engine.add([episode("theirs", org_id="T0OTHER")])
    got = await engine.get(ORG, PROJECT, [theirs, mine, str(uuid.uuid4())])
    assert [e.uid for e in got] == [mine]
    assert got[0].content == "mine"
    assert got[0].created_at.tzinfo is not None
    assert await engine.get(ORG, "elsewhere", [mine]) == []
    assert [e.uid for e in await engine.get("T0OTHER", PROJECT, [theirs, mine])] == [theirs]
    by_source = await engine.get_by_source(SourceRef(**_ref(got[0])))
    assert by_source is not None and by_source.uid == mine


def _ref(ep: object) -> dict[str, str]:
    return {
        "org_id": ep.org_id,  # type: ignore[attr-defined]
        "project_id": ep.project_id,  # type: ignore[attr-defined]
        "platform": ep.platform,  # type: ignore[attr-defined]
        "source_id": ep.source_id,  # type: ignore[attr-defined]
    }


async def test_list_pages_are_zero_based_and_oldest_first(engine: MemoryEngine) -> None:
    minutes = [7, 3, 1, 6, 2, 5, 4]
    await engine.add([episode(f"m{m}", created_at=at(m)) for m in minutes])
    await engine.add([episode("elsewhere", produced_for=RANDOM, created_at=at(0))])
    pages = [await engine.list(GENERAL_SCOPE, page_size=3, page_num=n) for n in range(4)]
    assert [[e.content for e in p] for p in pages] == [
        ["m1", "m2", "m3"],
        ["m4", "m5", "m6"],
        ["m7"],
        [],
    ]
    assert await engine.count(GENERAL_SCOPE) == 7
    assert [e.content for e in await engine.list(SCOPE, page_size=2)] == ["elsewhere", "m1"]


# -- edit ----------------------------------------------------------------------------------


async def test_edit_by_source_ref_reindexes_keywords_and_vector(engine: MemoryEngine) -> None:
    target = episode("the quick zebra crossed the savannah", source_id="1700000003.000001")
    other = episode("an orange kite was flying over the hill")
    [uid, _] = await engine.add([target, other])
    await engine.wait_indexed()
    assert uids_of(await engine.search("zebra", SCOPE, mode="keyword")) == [uid]

    ref = SourceRef(org_id=ORG, project_id=PROJECT, platform="slack", source_id=target.source_id)
    edited = await engine.edit(ref, "a sleepy walrus napped on the glacier")
    assert edited is not None and edited.uid == uid
    assert edited.content == "a sleepy walrus napped on the glacier"
    await engine.wait_indexed()

    [stored] = await engine.get(ORG, PROJECT, [uid])
    assert stored.content == "a sleepy walrus napped on the glacier"
    # FTS: the new words are found, the old ones are gone.
    assert uids_of(await engine.search("walrus glacier", SCOPE, mode="keyword")) == [uid]
    assert (await engine.search("zebra savannah", SCOPE, mode="keyword")).hits == []
    # Vectors: both collections hold the embedding of the new text, not of the old.
    new_vec = engine.embedder.embed([embed_text(stored)])[0]
    old_vec = engine.embedder.embed([embed_text(target)])[0]
    for channel in (None, GENERAL):
        vec = stored_vector(engine, channel, uid)
        assert vec is not None
        assert float(vec @ new_vec) == pytest.approx(1.0, abs=1e-4)
        assert float(vec @ old_vec) < 0.9
    by_vector = await engine.search("sleepy walrus napped", SCOPE, mode="vector")
    assert by_vector.hits[0].episode.uid == uid
    assert by_vector.hits[0].episode.content.startswith("a sleepy walrus")
    assert (await engine.stats()).vectors == 2


async def test_edit_by_uid_and_unknown_refs(engine: MemoryEngine) -> None:
    [uid] = await engine.add([episode("first draft")])
    edited = await engine.edit(uid, "final version", org_id=ORG, project_id=PROJECT)
    assert edited is not None and edited.content == "final version"
    assert (await engine.get(ORG, PROJECT, [uid]))[0].content == "final version"
    # A uid of another org/project is not found through this org/project.
    assert await engine.edit(uid, "hijacked", org_id="T0OTHER", project_id=PROJECT) is None
    missing = SourceRef(org_id=ORG, project_id=PROJECT, platform="slack", source_id="nope")
    assert await engine.edit(missing, "anything") is None
    assert (await engine.get(ORG, PROJECT, [uid]))[0].content == "final version"


# -- delete and forget ---------------------------------------------------------------------


async def test_delete_removes_only_its_org_and_project(engine: MemoryEngine) -> None:
    [gone, kept] = await engine.add([episode("walnut harvest"), episode("almond harvest")])
    await engine.wait_indexed()
    assert await engine.delete("T0OTHER", PROJECT, [gone]) == []
    assert len(await engine.get(ORG, PROJECT, [gone])) == 1
    assert await engine.delete(ORG, PROJECT, [gone, str(uuid.uuid4())]) == [gone]
    assert await engine.get(ORG, PROJECT, [gone]) == []
    for mode in ("hybrid", "keyword", "vector"):
        hits = await engine.search("walnut harvest", SCOPE, mode=mode)
        assert gone not in uids_of(hits), mode
    assert uids_of(await engine.search("almond", SCOPE, mode="keyword")) == [kept]
    await engine.wait_indexed()
    assert engine.index is not None
    assert gone not in engine.index.vector_ids()
    assert (await engine.stats()).vectors == 1


async def test_forget_a_producer_across_all_projects_of_an_org(engine: MemoryEngine) -> None:
    await engine.add(
        [
            episode("alice in general", producer=ALICE),
            episode("alice in another project", producer=ALICE, project_id="second"),
            episode("alice in another org", producer=ALICE, org_id="T0OTHER"),
            episode("bob in general", producer=BOB),
        ]
    )
    await engine.add_fact(
        Fact(org_id=ORG, project_id=PROJECT, subject=ALICE, feature="likes", value="tea")
    )
    await engine.add_fact(
        Fact(org_id=ORG, project_id=PROJECT, subject=BOB, feature="likes", value="coffee")
    )
    await engine.wait_indexed()
    report = await engine.forget(ORG, producer=ALICE)
    assert report.episodes == 2
    assert len(report.uids) == 2
    assert report.facts == 1
    assert await engine.count(Scope(org_id=ORG, project_id=PROJECT, producer=ALICE)) == 0
    assert await engine.count(Scope(org_id=ORG, project_id="second")) == 0
    left = await engine.list(SCOPE)
    assert [e.content for e in left] == ["bob in general"]
    other_org = await engine.list(Scope(org_id="T0OTHER", project_id=PROJECT))
    assert [e.content for e in other_org] == ["alice in another org"]
    assert [f.subject for f in await engine.facts(ORG, PROJECT)] == [BOB]
    await engine.wait_indexed()
    assert (await engine.stats()).vectors == 2


async def test_forget_a_channel(engine: MemoryEngine) -> None:
    await engine.add(
        [
            episode("general one"),
            episode("general two", producer=BOB),
            episode("random one", produced_for=RANDOM),
        ]
    )
    report = await engine.forget(ORG, project_id=PROJECT, produced_for=GENERAL)
    assert report.episodes == 2
    assert await engine.count(GENERAL_SCOPE) == 0
    assert [e.content for e in await engine.list(SCOPE)] == ["random one"]


async def test_forget_a_thread(engine: MemoryEngine) -> None:
    await engine.add(
        [
            episode("thread root", thread_id="1700000000.000001", created_at=at(0)),
            episode("thread reply", thread_id="1700000000.000001", created_at=at(1)),
            episode("other thread", thread_id="1700000000.000999", created_at=at(2)),
            episode("channel message", created_at=at(3)),
            episode(
                "same thread id, other channel",
                produced_for=RANDOM,
                thread_id="1700000000.000001",
                created_at=at(4),
            ),
        ]
    )
    report = await engine.forget(
        ORG, project_id=PROJECT, produced_for=GENERAL, thread_id="1700000000.000001"
    )
    assert report.episodes == 2
    assert [e.content for e in await engine.list(SCOPE)] == [
        "other thread",
        "channel message",
        "same thread id, other channel",
    ]


async def test_forget_with_a_filter(engine: MemoryEngine) -> None:
    await engine.add(
        [
            episode("secret plan", metadata={"kind": "secret"}),
            episode("public plan", metadata={"kind": "public"}),
        ]
    )
    report = await engine.forget(ORG, project_id=PROJECT, filters="metadata.kind = 'secret'")
    assert report.episodes == 1
    assert [e.content for e in await engine.list(SCOPE)] == ["public plan"]


# -- stats and reindex ---------------------------------------------------------------------


async def test_stats(engine: MemoryEngine) -> None:
    empty = await engine.stats()
    assert (empty.episodes, empty.vectors, empty.facts) == (0, 0, 0)
    uids = await engine.add(
        [
            episode("a"),
            episode("b", produced_for=RANDOM),
            episode("c", project_id="second"),
            episode("d", org_id="T0OTHER"),
        ]
    )
    await engine.add_fact(
        Fact(
            org_id=ORG,
            project_id=PROJECT,
            subject=ALICE,
            feature="f",
            value="v",
            citations=[uids[0]],
        )
    )
    await engine.wait_indexed()
    stats = await engine.stats()
    assert stats.episodes == 4
    assert stats.pending_index == 0
    assert stats.vectors == 4
    assert stats.facts == 1
    assert stats.orgs == 2
    assert stats.projects == 3
    assert stats.channels == 4
    assert stats.embedder == HashEmbedder().fingerprint
    assert stats.disk_bytes > 0


async def test_reindex_after_dropping_chroma(engine: MemoryEngine) -> None:
    uids = await engine.add([episode(f"note about topic{i}") for i in range(30)])
    await engine.wait_indexed()
    assert (await engine.stats()).vectors == 30
    assert engine.index is not None
    engine.index.reset()
    assert (await engine.stats()).vectors == 0
    assert (await engine.search("topic7", SCOPE, mode="vector")).hits == []
    assert await engine.reindex(progress=False) == 30
    await engine.wait_indexed()
    assert (await engine.stats()).vectors == 30
    assert engine.index.ids(ORG, PROJECT) == set(uids)
    assert engine.index.ids(ORG, PROJECT, GENERAL) == set(uids)
    assert uids_of(await engine.search("note about topic7", SCOPE, mode="vector"))[0] == uids[7]


async def test_startup_repairs_a_lost_vector_index(data_dir: Path) -> None:
    """Chroma lost its collections while the engine was down: the next open re-indexes."""
    eng = await MemoryEngine.open(data_dir, "hash")
    try:
        uids = await eng.add([episode(f"backup item{i}") for i in range(12)])
        await eng.wait_indexed()
        assert eng.index is not None
        eng.index.reset()
    finally:
        await eng.close()
    eng = await MemoryEngine.open(data_dir, "hash")
    try:
        await eng.wait_indexed()
        assert (await eng.stats()).vectors == 12
        assert eng.index is not None
        assert eng.index.ids(ORG, PROJECT) == set(uids)
    finally:
        await eng.close()


async def test_changing_the_embedder_needs_reindex(data_dir: Path) -> None:
    eng = await MemoryEngine.open(data_dir, HashEmbedder(384))
    try:
        [uid] = await eng.add([episode("persistent volume claims are pending")])
        await eng.wait_indexed()
    finally:
        await eng.close()

    with pytest.raises(EmbedderMismatch, match="channelmind reindex") as info:
        await MemoryEngine.open(data_dir, HashEmbedder(128))
    assert "hash:384:v1" in str(info.value) and "hash:128:v1" in str(info.value)
    # The failed open left the folder usable with the original embedder.
    eng = await MemoryEngine.open(data_dir, HashEmbedder(384))
    await eng.close()

    eng = await MemoryEngine.open(
        data_dir, HashEmbedder(128), allow_embedder_change=True, background=False
    )
    try:
        assert await eng.reindex(progress=False) == 1
        vec = stored_vector(eng, None, uid)
        assert vec is not None and vec.shape == (128,)
        found = await eng.search("persistent volume claims", SCOPE, mode="vector")
        assert uids_of(found) == [uid]
    finally:
        await eng.close()
    # The index now belongs to the new embedder: it opens, and the old one is refused.
    eng = await MemoryEngine.open(data_dir, HashEmbedder(128))
    await eng.close()
    with pytest.raises(EmbedderMismatch):
        await MemoryEngine.open(data_dir, HashEmbedder(384))


# -- context, time, filters ----------------------------------------------------------------


async def test_expand_context_adds_neighbours_marked_expanded(engine: MemoryEngine) -> None:
    lines = [
        "hello all",
        "anyone seen the logs",
        "the marmoset escaped",
        "oh no",
        "found it",
        "good news",
        "bye",
    ]
    uids = await engine.add([episode(t, created_at=at(i)) for i, t in enumerate(lines)])
    await engine.add([episode("the marmoset elsewhere", produced_for=RANDOM, created_at=at(2.5))])
    plain = await engine.search("marmoset", GENERAL_SCOPE, mode="keyword")
    assert uids_of(plain) == [uids[2]]
    result = await engine.search("marmoset", GENERAL_SCOPE, mode="keyword", expand_context=2)
    assert uids_of(result) == uids[0:5]
    assert [h.expanded for h in result.hits] == [True, True, False, True, True]
    match = result.hits[2]
    assert all(h.score <= match.score for h in result.hits)
    assert {h.source.channel for h in result.hits} == {GENERAL}
    # top_k counts the neighbours too.
    short = await engine.search(
        "marmoset", GENERAL_SCOPE, mode="keyword", expand_context=2, top_k=3
    )
    assert len(short.hits) == 3
    assert sum(not h.expanded for h in short.hits) == 1


async def test_expand_context_stays_in_the_thread(engine: MemoryEngine) -> None:
    t = "1700000000.000042"
    uids = await engine.add(
        [
            episode("root of thread", thread_id=t, created_at=at(0)),
            episode("channel chatter", created_at=at(1)),
            episode("the capybara reply", thread_id=t, created_at=at(2)),
            episode("more channel chatter", created_at=at(3)),
            episode("last thread reply", thread_id=t, created_at=at(4)),
        ]
    )
    result = await engine.search("capybara", GENERAL_SCOPE, mode="keyword", expand_context=1)
    assert uids_of(result) == [uids[0], uids[2], uids[4]]
    assert [h.expanded for h in result.hits] == [True, False, True]


async def test_time_range_narrows(engine: MemoryEngine) -> None:
    days = [1, 5, 10]
    uids = await engine.add(
        [episode(f"backup ran on day {d}", created_at=at(d * 1440)) for d in days]
    )
    await engine.wait_indexed()
    window = TimeRange(since=at(4 * 1440), until=at(8 * 1440))
    for mode in ("hybrid", "keyword", "vector"):
        result = await engine.search("backup ran", SCOPE, time=window, mode=mode)
        assert uids_of(result) == [uids[1]], mode
    assert [e.uid for e in await engine.list(SCOPE, time=window)] == [uids[1]]
    since = TimeRange(since=at(5 * 1440))
    assert [e.uid for e in await engine.list(SCOPE, time=since)] == uids[1:]
    until = TimeRange(until=at(5 * 1440) - timedelta(seconds=1))
    assert [e.uid for e in await engine.list(SCOPE, time=until)] == uids[:1]
    # Naive bounds are UTC.
    naive = TimeRange(since=at(4 * 1440).replace(tzinfo=None))
    assert [e.uid for e in await engine.list(SCOPE, time=naive)] == uids[1:]


async def test_filter_strings_narrow(engine: MemoryEngine) -> None:
    eps = [
        episode("deploy bug report", producer=ALICE, metadata={"kind": "bug", "sev": 3}),
        episode("deploy idea", producer=BOB, metadata={"kind": "idea"}),
        episode("deploy chatter", producer=BOB, metadata={}),
        episode(
            "deploy bug again",
            producer=BOB,
            metadata={"kind": "bug", "sev": 1},
            thread_id="1700000000.000777",
        ),
    ]
    uids = await engine.add(eps)
    await engine.wait_indexed()
    cases = {
        f"producer_id = '{BOB}'": {uids[1], uids[2], uids[3]},
        "metadata.kind = 'bug'": {uids[0], uids[3]},
        "m.kind = 'bug' AND m.sev > 2": {uids[0]},
        f"m.kind IN ('idea', 'bug') AND producer != '{ALICE}'": {uids[1], uids[3]},
        "m.kind IS NULL": {uids[2]},
        "NOT m.kind = 'bug'": {uids[1], uids[2]},
        "thread_id IS NOT NULL OR m.kind = 'idea'": {uids[1], uids[3]},
    }
    for text, expected in cases.items():
        parsed = parse_filter(text)
        listed = await engine.list(SCOPE, filters=text)
        assert {e.uid for e in listed} == expected, text
        assert all(matches(parsed, e.model_dump()) for e in listed)
        assert await engine.count(SCOPE, text) == len(expected)
        for mode in ("hybrid", "keyword", "vector"):
            found = await engine.search("deploy", SCOPE, filters=text, mode=mode, top_k=10)
            assert set(uids_of(found)) == expected, (text, mode)
            assert all(matches(parsed, h.episode.model_dump()) for h in found.hits)
    # A parsed filter is accepted as well as its text.
    parsed_filter = parse_filter("metadata.kind = 'idea'")
    assert uids_of(await engine.search("deploy", SCOPE, filters=parsed_filter)) == [uids[1]]


async def test_an_index_written_in_an_older_message_format_is_re_embedded(data_dir: Path) -> None:
    """Issue 14: how a message is written for the embedder changed (``name: "text"``); the
    embedder's fingerprint did not, so nothing would say an old index searches worse. On
    open, its rows are queued again and the indexer overwrites their vectors; a folder
    already in this format is left alone."""
    embedder = HashEmbedder(384)
    ep = episode("the quarterly report moved to Friday")
    eng = await MemoryEngine.open(data_dir, embedder)
    try:
        [uid] = await eng.add([ep])
        await eng.wait_indexed()
        assert eng.index is not None
        want = embedder.embed([embed_text(ep.model_copy(update={"uid": uid}))])[0]
        assert np.allclose(stored_vector(eng, None, uid), want, atol=1e-6)
        # What an older version left: another vector (the hash embedder ignores the quotes
        # that tell the versions apart, so another text stands in) and an older marker.
        old = embedder.embed(["written the old way"])[0]
        item = VectorItem(uid, ep.org_id, ep.project_id, ep.produced_for, ep.producer, ep.thread_id)
        eng.index.upsert([item], old.reshape(1, -1))
        assert not np.allclose(stored_vector(eng, None, uid), want, atol=1e-6)
        await eng.store.set_meta("embed_text", "1")
    finally:
        await eng.close()

    eng = await MemoryEngine.open(data_dir, embedder, background=False)
    try:
        assert await eng.store.count_pending() == 1  # queued again at open
    finally:
        await eng.close()
    eng = await MemoryEngine.open(data_dir, embedder)
    try:
        await eng.wait_indexed()
        assert np.allclose(stored_vector(eng, None, uid), want, atol=1e-6)
    finally:
        await eng.close()
    eng = await MemoryEngine.open(data_dir, embedder, background=False)
    try:
        assert await eng.store.count_pending() == 0  # in this format now: left alone
    finally:
        await eng.close()
