"""Ranking as users meet it: exact identifiers first (over REST), scores in [0, 1] that a
threshold can use, dates named in a question, and the LoCoMo benchmark's cross-validation
driven through the CLI on a small synthetic conversation file."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from memory.bench import exact as bench_exact
from memory.engine import MemoryEngine
from memory.model import Scope
from memory.retrieval import FEATURES, RankingModel
from memory.store.sqlite import SQLiteStore

from .conftest import GENERAL, ORG, PROJECT, at, episode
from .server_harness import running

CHANNEL = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)


async def test_identifiers_come_first_over_rest(engine: MemoryEngine) -> None:
    episodes, needles = bench_exact.corpus(messages=400, per_kind=25)
    await engine.add(episodes)
    await engine.wait_indexed()
    asked = needles[::7]  # every kind: orders, error codes, tickets, versions, hosts, names
    assert {n.kind for n in asked} == {"order", "error code", "ticket", "version", "host", "name"}
    misses = []
    async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        for needle in asked:
            body = {
                "org_id": bench_exact.ORG,
                "project_id": bench_exact.PROJECT,
                "query": needle.question,
                "top_k": 3,
                "types": ["episodic"],
            }
            found = (await http.post("/api/v2/memories/search", json=body)).json()
            hits = found["content"]["episodic_memory"]["long_term_memory"]["episodes"]
            if not hits or hits[0]["content"] != needle.message:
                misses.append(needle.question)
    assert misses == []


async def test_scores_are_probabilities_and_a_threshold_drops_unrelated(
    engine: MemoryEngine,
) -> None:
    await engine.add(
        [
            episode("I prefer dark mode in every editor", created_at=at(0)),
            episode("the deploy to prod failed at 3pm, rolling back", created_at=at(1)),
            episode("lunch at the ramen place on Friday?", created_at=at(2)),
            episode("the deploy failed because the migration timed out", created_at=at(3)),
        ]
    )
    await engine.wait_indexed()
    related = await engine.search("why did the deploy fail?", CHANNEL, top_k=4)
    unrelated = await engine.search("banana bread recipe", CHANNEL, top_k=4)
    for hit in related.hits + unrelated.hits:
        assert 0.0 <= hit.score <= 1.0
    assert related.hits[0].episode.content.startswith("the deploy")
    best_unrelated = max((h.score for h in unrelated.hits), default=0.0)
    assert related.hits[0].score > best_unrelated
    # A threshold between the two keeps the answer and drops everything for the other query.
    threshold = (related.hits[0].score + best_unrelated) / 2
    kept = await engine.search("why did the deploy fail?", CHANNEL, score_threshold=threshold)
    dropped = await engine.search("banana bread recipe", CHANNEL, score_threshold=threshold)
    assert kept.hits and dropped.hits == []


async def test_a_date_in_the_question_prefers_messages_from_then(engine: MemoryEngine) -> None:
    march = datetime(2024, 3, 14, 10, 0, tzinfo=UTC)
    await engine.add(
        [
            episode("we picked the blue logo for the launch", created_at=march),
            episode("we picked the green logo for the launch", created_at=march + timedelta(90)),
        ]
    )
    await engine.wait_indexed()
    found = await engine.search("which logo did we pick on 14 March?", CHANNEL, top_k=2)
    assert found.hits[0].episode.content == "we picked the blue logo for the launch"
    later = await engine.search("which logo did we pick in June 2024?", CHANNEL, top_k=2)
    assert later.hits[0].episode.content == "we picked the green logo for the launch"


def _tiny_locomo() -> list[dict[str, Any]]:
    """Three small conversations in LoCoMo's format: sessions of turns, questions of every
    category with evidence ids, and unanswerable (category 5) ones."""
    topics = [
        ("pottery", "I made a blue bowl in my pottery class", "What did {a} make in class?"),
        ("hiking", "We hiked to the waterfall near the lake", "Where did {b} hike?"),
        ("piano", "I started piano lessons with my daughter", "What lessons did {a} start?"),
        ("garden", "The tomatoes in my garden finally turned red", "What grew in the garden?"),
    ]
    out = []
    for n, (a, b) in enumerate([("Ana", "Ben"), ("Cleo", "Dev"), ("Eli", "Fay")]):
        conv: dict[str, Any] = {"speaker_a": a, "speaker_b": b}
        qa = []
        for s, (topic, line, question) in enumerate(topics, start=1):
            conv[f"session_{s}_date_time"] = f"1:56 pm on {s + n} May, 2023"
            turns = [
                {"speaker": b, "dia_id": f"D{s}:1", "text": f"Hey {a}, anything new?"},
                {"speaker": a, "dia_id": f"D{s}:2", "text": line},
                {"speaker": b, "dia_id": f"D{s}:3", "text": f"Wow, {topic} sounds great!"},
                {"speaker": a, "dia_id": f"D{s}:4", "text": "Thanks, talk soon!"},
            ]
            conv[f"session_{s}"] = turns
            qa.append(
                {
                    "question": question.format(a=a, b=b),
                    "answer": topic,
                    "evidence": [f"D{s}:2"],
                    "category": s,
                }
            )
        qa.append({"question": f"What did {b} bake?", "evidence": ["D1:2"], "category": 5})
        out.append({"sample_id": f"conv-{n}", "conversation": conv, "qa": qa})
    return out


def test_bench_locomo_cv_and_fit_through_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "tiny.json"
    data.write_text(json.dumps(_tiny_locomo()))
    fitted = tmp_path / "ranking.json"
    cli = Path(sys.executable).with_name("channelmind")
    args = ["bench", "locomo", "--data", str(data), "--embedder", "hash", "--cv", "--json"]
    done = subprocess.run(
        [str(cli), *args, "--fit", str(fitted)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("recall@5", "recall@10", "recall@20", "all@10"):
        assert key in result and key in result["cv"]
    assert {"search_ms_p50", "search_ms_p95", "baselines", "by_category"} <= set(result)
    assert set(result["cv"]["by_category"]) == {"1", "2", "3", "4"}
    assert "all@10" in result["cv"]["by_category"]["1"]
    assert set(result["cv"]["folds"]) == {"conv-0", "conv-1", "conv-2"}
    assert result["questions"] == 12
    assert result["calibration"]["quantiles"]["unanswerable"]["n"] == 3
    # Every question's evidence is a single, distinctive turn: the engine finds it.
    assert result["recall@10"] == 1.0
    model = RankingModel.load(fitted)
    assert set(model.weights) == set(FEATURES)
    assert set(model.calibration) == {"bias", "gap", "rank", "exact", "vector_top", "keyword_top"}
    assert json.loads(fitted.read_text())["fit"]["data"].startswith("tiny.json")


async def test_a_threshold_filters_short_term_memory_too_over_rest(engine: MemoryEngine) -> None:
    """Issue 14: ``score_threshold`` emptied long-term memory while short-term memory still
    returned every recent episode. Now a recent episode is returned only if the search
    scored it at or above the threshold."""
    await engine.add(
        [
            episode("the deploy to prod failed at 3pm, rolling back", created_at=at(0)),
            episode("the deploy failed because the migration timed out", created_at=at(1)),
            episode("I prefer dark mode in every editor", created_at=at(2)),
            episode("lunch at the ramen place on Friday?", created_at=at(3)),
        ]
    )
    await engine.wait_indexed()
    related = await engine.search("why did the deploy fail?", CHANNEL, top_k=4)
    unrelated = await engine.search("banana bread recipe", CHANNEL, top_k=4)
    threshold = (related.hits[0].score + max(h.score for h in unrelated.hits)) / 2

    async def layers(query: str, threshold: float | None) -> tuple[list[str], list[str]]:
        body: dict[str, Any] = {
            "org_id": ORG,
            "project_id": PROJECT,
            "query": query,
            "top_k": 1,
            "types": ["episodic"],
            "score_threshold": threshold,
        }
        got = (await http.post("/api/v2/memories/search", json=body)).json()
        memory = got["content"]["episodic_memory"]
        return (
            [e["content"] for e in memory["long_term_memory"]["episodes"]],
            [e["content"] for e in memory["short_term_memory"]["episodes"]],
        )

    async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        # The control: with no threshold the recent episode comes back whatever the query.
        long_term, short_term = await layers("banana bread recipe", None)
        assert "lunch at the ramen place on Friday?" in long_term + short_term
        assert await layers("banana bread recipe", threshold) == ([], [])
        long_term, short_term = await layers("why did the deploy fail?", threshold)
        assert long_term and long_term[0].startswith("the deploy")
        assert short_term == []  # the latest message is about lunch: below the threshold
        # A recent episode the search scores high enough is kept.
        await engine.add([episode("the deploy failed again tonight", created_at=at(4))])
        await engine.wait_indexed()
        long_term, short_term = await layers("why did the deploy fail?", 0.0)
        assert len(long_term) == 1 and short_term in ([], ["the deploy failed again tonight"])
        assert "the deploy failed again tonight" in long_term + short_term


async def test_a_name_in_the_question_does_not_bury_what_its_author_said(
    data_dir: Path,
) -> None:
    """Stage 0 of the ranking, over REST with MiniLM: messages are embedded with their
    author's name, so "what did Dana paint?" sits closer to every short "ok" Dana wrote than
    to her one message about a watercolour, which shares no word with the question. Searched
    without the name, the vector list finds it; the authors stage still favours Dana."""
    small_talk = ["ok", "sure", "lol", "yes!", "haha", "nice", "cool", "thanks", "see you"]
    small_talk += ["yep", "hmm", "true", "omg", "same", "wow", "great", "yay", "right?", "ha"]
    answer = (
        "I spent the whole weekend finishing a watercolour of the harbour at dusk,"
        " the light on the boats was lovely"
    )
    messages = []
    for who in ("Dana", "Bob") * 6:
        messages += [(who, text) for text in small_talk]
    messages.insert(60, ("Dana", answer))
    engine = await MemoryEngine.open(data_dir, "local")
    try:
        await engine.add(
            [
                episode(
                    text,
                    producer=f"slack:U{who.upper()}",
                    metadata={"display_name": who},
                    created_at=at(i),
                )
                for i, (who, text) in enumerate(messages)
            ]
        )
        await engine.wait_indexed()
        assert len(messages) > 200  # more of Dana's small talk than one vector list holds
        async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url) as http:
            body = {
                "org_id": ORG,
                "project_id": PROJECT,
                "query": "What did Dana paint?",
                "top_k": 3,
                "types": ["episodic"],
            }
            found = (await http.post("/api/v2/memories/search", json=body)).json()
        hits = found["content"]["episodic_memory"]["long_term_memory"]["episodes"]
        assert [h["content"] for h in hits][:1] == [answer]
    finally:
        await engine.close()


async def _search_uids(engine: MemoryEngine, query: str, top_k: int) -> list[str]:
    """The uids of long-term hits for ``query`` over REST, best first."""
    async with running(engine) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        body = {
            "org_id": ORG,
            "project_id": PROJECT,
            "query": query,
            "top_k": top_k,
            "types": ["episodic"],
        }
        found = (await http.post("/api/v2/memories/search", json=body)).json()
    return [h["uid"] for h in found["content"]["episodic_memory"]["long_term_memory"]["episodes"]]


async def test_a_match_amid_talk_on_its_topic_outranks_a_lone_one_over_rest(
    engine: MemoryEngine,
) -> None:
    """The sessions stage: the same words said twice, once in an hour of talk about the boat
    trip and once days later between unrelated messages. The first is where the trip was
    discussed; without the stage the later one would win on recency alone."""
    said = "the boat trip on the lake was lovely"
    stretch = [
        "we booked the boat trip on the lake for saturday",
        "can someone water the plants",
        said,
        "the printer is out of toner again",
        "photos from the boat trip on the lake are up",
    ]
    later = ["can someone water the plants", said, "the printer is out of toner again"]
    uids = await engine.add(
        [episode(text, created_at=at(10 * i)) for i, text in enumerate(stretch)]
        + [episode(text, created_at=at(3 * 24 * 60 + 10 * i)) for i, text in enumerate(later)]
    )
    await engine.wait_indexed()
    amid, lone = uids[2], uids[len(stretch) + 1]
    hits = await _search_uids(engine, "how was the boat trip on the lake?", 8)
    assert amid in hits and lone in hits
    assert hits.index(amid) < hits.index(lone)


async def test_the_answer_outranks_the_same_words_asked_over_rest(engine: MemoryEngine) -> None:
    """The substance stage's statement feature: an answer states, a question asks with the
    same words but does not hold the answer. Here the question is newer, so without the
    feature it would win on recency alone."""
    stated = "the migration broke the deploy on friday"
    asked = "the migration broke the deploy on friday?"
    uids = await engine.add(
        [episode(stated, created_at=at(0)), episode(asked, created_at=at(3 * 24 * 60))]
    )
    await engine.wait_indexed()
    hits = await _search_uids(engine, "what broke the deploy on friday", 2)
    assert hits == uids


async def test_text_features_follow_an_edit(engine: MemoryEngine) -> None:
    """Ranking keeps each message's substance features between searches; an edited message
    (the same row, new words) is judged by its new text."""
    [uid] = await engine.add([episode("the deploy moves to friday")])
    await engine.add([episode("lunch is at noon")])
    await engine.wait_indexed()
    scope = Scope(org_id=ORG, project_id=PROJECT)

    async def features() -> dict[str, float]:
        candidates, _ = await engine.candidates("deploy friday", scope)
        [found] = [c for c in candidates.values() if c.episode.uid == uid]
        return found.features

    before = await features()
    assert before["statement"] == 1.0
    assert await features() == before  # the kept features are the ones worked out
    await engine.edit(
        uid, "does the deploy still move to friday or later?", org_id=ORG, project_id=PROJECT
    )
    await engine.wait_indexed()
    after = await features()
    assert after["statement"] == 0.0
    assert after["substance"] > before["substance"]


async def test_a_search_reads_neighbours_with_its_candidates(engine: MemoryEngine) -> None:
    """Ranking's neighbours stage needs each candidate's previous and next message in its
    channel. The store reads them in the queries that read the candidates (keyword hits, and
    the vector list's rows by uid), not in a query of its own after them: that round trip was
    1.2% of the server's event loop at 40 clients (issue 15). What the candidates carry is
    what :meth:`adjacent` says."""
    await engine.add(
        [episode(f"the deploy note number {i}", created_at=at(i)) for i in range(12)]
        + [episode("lunch at the ramen place?", created_at=at(20))]
    )
    await engine.wait_indexed()
    store = engine.store
    assert isinstance(store, SQLiteStore)
    statements: list[str] = []
    await store.reader.set_trace_callback(statements.append)
    try:
        result = await engine.search("what did the deploy note say?", CHANNEL, top_k=5)
    finally:
        await store.reader.set_trace_callback(None)
    assert len(result.hits) == 5
    reads = [s for s in statements if "FROM episodes" in s or "JOIN episodes" in s]
    neighbours = [s for s in reads if "(n.created_at, n.id) <" in s]
    keyword = [s for s in neighbours if "MATCH" in s]
    by_uid = [s for s in neighbours if "wanted(uid)" in s]
    assert keyword and by_uid, reads  # both candidate lists carry them...
    assert len(neighbours) == len(keyword) + len(by_uid), reads  # ...and nothing else asks
    assert not any(s.lstrip().startswith("WITH c(id)") for s in reads), reads

    candidates, _ = await engine.candidates("what did the deploy note say?", CHANNEL)
    adjacent = await store.adjacent(list(candidates))
    assert len(candidates) >= 12
    assert {k: c.adjacent for k, c in candidates.items()} == {
        k: (a.before, a.after) for k, a in adjacent.items()
    }
