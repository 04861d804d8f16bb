"""The ranking stages give the same numbers as their plain versions.

:class:`memory.retrieval.Ranking` was made cheaper (numpy for the sessions stage, fewer
Python calls in the others) because ranking was about half of a search's work on the memory
server's event loop at 40 clients. Search results must not move: every feature, the combined
score, the calibrated score and the order must be equal, bit for bit, to what the stages
computed before. The plain versions are kept here, as they were in ``memory/retrieval.py``.
"""

from __future__ import annotations

import copy
import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import pytest

from memory.model import Brief
from memory.retrieval import (
    FEATURES,
    SESSION_SECONDS,
    Candidate,
    Query,
    Ranking,
    _name_words,
    named_authors,
    sigmoid,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NAMES = ["Alice Smith", "Bob", "carol", "Dave O'Neil", "", "Zoë"]

# -- the stages as they were ---------------------------------------------------------------


def plain_neighbours(
    candidates: Mapping[int, Candidate], adjacent: Mapping[int, tuple[int | None, int | None]]
) -> None:
    base = {
        rid: (c.features["keyword"] + c.features["vector"]) / 2 for rid, c in candidates.items()
    }
    for rid, c in candidates.items():
        near = [base.get(n, 0.0) for n in adjacent.get(rid, (None, None)) if n is not None]
        c.features["neighbour"] = max(near, default=0.0)


def plain_sessions(candidates: Mapping[int, Candidate]) -> None:
    stamps = [c.episode.created_at.timestamp() for c in candidates.values()]
    by_time = sorted(
        zip(
            stamps,
            [(c.features["keyword"] + c.features["vector"]) / 2 for c in candidates.values()],
            strict=True,
        )
    )
    times = [t for t, _ in by_time]
    fused = [f for _, f in by_time]
    for c, at in zip(candidates.values(), stamps, strict=True):
        lo = bisect_left(times, at - SESSION_SECONDS)
        hi = bisect_right(times, at + SESSION_SECONDS)
        best = sorted(fused[lo:hi])[-2:]
        c.features["session"] = sum(best) / 2


def plain_authors(candidates: Mapping[int, Candidate], q: Query) -> None:
    for c in candidates.values():
        c.features["author"] = 1.0 if _name_words(c.episode.display_name) & q.words else 0.0


def plain_recency(ranking: Ranking, candidates: Mapping[int, Candidate], now: datetime) -> None:
    half_life = ranking.model.recency_half_life_days * 86400.0
    for c in candidates.values():
        age = max(0.0, (now - c.episode.created_at).total_seconds())
        c.recency = math.exp(-math.log(2) * age / half_life)


def plain_combine(ranking: Ranking, candidates: Iterable[Candidate]) -> None:
    weights = ranking.model.weights
    margin = 1.0 + sum(w for w in weights.values() if w > 0) + ranking.model.recency
    for c in candidates:
        c.combined = sum(weights[f] * c.features.get(f, 0.0) for f in FEATURES)
        c.combined += ranking.model.recency * c.recency + margin * c.exact


def plain_calibrate(ranking: Ranking, candidates: Iterable[Candidate], q: Query) -> list[Candidate]:
    cal = ranking.model.calibration
    offset = cal["bias"] + cal["vector_top"] * q.vector_top
    offset += cal["keyword_top"] * math.log1p(q.keyword_top)
    group = sorted(
        candidates, key=lambda c: (-c.combined, -c.episode.created_at.timestamp(), -c.row_id)
    )
    best = group[0].combined if group else 0.0
    for rank, c in enumerate(group):
        z = offset + cal["gap"] * max(-1.0, c.combined - best) + cal["exact"] * c.exact
        c.score = sigmoid(z - cal["rank"] * math.log1p(rank))
    return group


def plain_describe_and_rank(
    ranking: Ranking,
    candidates: dict[int, Candidate],
    adjacent: Mapping[int, tuple[int | None, int | None]],
    query: str,
) -> tuple[Query, list[Candidate]]:
    q = ranking.normalise(candidates, query)
    plain_neighbours(candidates, adjacent)
    plain_sessions(candidates)
    plain_authors(candidates, q)
    ranking.dates(candidates, q)
    ranking.substance(candidates)
    plain_recency(ranking, candidates, NOW)
    ranking.exact(candidates, q)
    plain_combine(ranking, candidates.values())
    return q, plain_calibrate(ranking, candidates.values(), q)


# -- candidate sets --------------------------------------------------------------------------


def candidate_set(
    rng: random.Random, n: int, *, spread_s: float, ties: bool
) -> tuple[dict[int, Candidate], dict[int, tuple[int | None, int | None]]]:
    """``n`` candidates over ``spread_s`` seconds; with ``ties``, few distinct times (some
    exactly an hour apart) and few distinct keyword / vector scores."""
    start = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    words = ["deploy", "ramen", "Friday", "order", "48213", "lake", "what", "did", "we"]
    out: dict[int, Candidate] = {}
    for i in range(n):
        rid = rng.randrange(1, 10 * n + 10)
        while rid in out:
            rid += 1
        if ties:
            at = start + timedelta(seconds=SESSION_SECONDS * rng.randrange(0, 4) / 2)
        else:
            at = start + timedelta(microseconds=rng.randrange(int(spread_s * 1e6)))
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 12)))
        if rng.random() < 0.3:
            text += "?"
        name = rng.choice(NAMES)
        brief = Brief(f"u{rid}", f"p{i % 5}", text, at, {"display_name": name} if name else {})
        c = Candidate(rid, brief)
        pick = [0.0, 0.5, 1.0, 2.5] if ties else None
        if rng.random() < 0.7:
            c.keyword = rng.choice(pick) if pick else rng.uniform(0.0, 12.0)
        if c.keyword is None or rng.random() < 0.6:
            c.vector = rng.choice(pick) if pick else rng.uniform(-0.2, 0.9)
        out[rid] = c
    keys = list(out)
    adjacent = {
        rid: (
            rng.choice([None, rng.choice(keys), 10**9]),
            rng.choice([None, rng.choice(keys), 10**9 + 1]),
        )
        for rid in keys
        if rng.random() < 0.8
    }
    return out, adjacent


def outcome(q: Query, ranked: list[Candidate]) -> list[object]:
    return [
        (q.text, sorted(q.words), q.vector_top, q.keyword_top),
        *[
            (c.row_id, sorted(c.features.items()), c.recency, c.exact, c.combined, c.score)
            for c in ranked
        ],
    ]


SIZES = [0, 1, 2, 3, 4, 5, 17, 150, 513]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", SIZES)
def test_every_stage_gives_what_the_plain_version_gave(n: int, ties: bool) -> None:
    rng = random.Random(n * 2 + ties)
    for spread_s in (600.0, 4 * 3600.0, 30 * 86400.0):
        for query in ("what did Alice say about the deploy on Friday?", "order 48213", "lake"):
            candidates, adjacent = candidate_set(rng, n, spread_s=spread_s, ties=ties)
            for rid, pair in adjacent.items():
                candidates[rid].adjacent = pair
            plain = copy.deepcopy(candidates)
            q_plain, ranked_plain = plain_describe_and_rank(Ranking(), plain, adjacent, query)
            ranking = Ranking()
            q = ranking.describe(candidates, query, NOW)
            ranked = ranking.rank(candidates, q)
            assert outcome(q, ranked) == outcome(q_plain, ranked_plain)


def test_sessions_take_the_best_two_within_the_hour_either_side() -> None:
    """By hand: an hour either side counts (both ends included), the candidate itself too,
    and a candidate alone in its hour gets half its own score."""
    start = datetime(2026, 11, 20, tzinfo=UTC)
    fused = {1: 0.2, 2: 0.8, 3: 0.6, 4: 1.0}
    offsets = {1: 0.0, 2: SESSION_SECONDS, 3: 1.5 * SESSION_SECONDS, 4: 10 * SESSION_SECONDS}
    candidates = {}
    for rid, value in fused.items():
        c = Candidate(rid, Brief(f"u{rid}", "p", "x", start + timedelta(seconds=offsets[rid]), {}))
        c.features = {"keyword": value, "vector": value}
        candidates[rid] = c
    Ranking.sessions(candidates)
    assert {rid: c.features["session"] for rid, c in candidates.items()} == {
        1: (0.2 + 0.8) / 2,  # 1 and 2 (an hour apart exactly)
        2: (0.6 + 0.8) / 2,  # 1, 2 and 3: the best two
        3: (0.6 + 0.8) / 2,  # 2 and 3 (1 is an hour and a half before)
        4: 1.0 / 2,  # alone
    }


def test_author_words_are_read_once_and_named_as_before() -> None:
    rng = random.Random(5)
    candidates, _ = candidate_set(rng, 60, spread_s=3600.0, ties=False)
    query = "did alice or carol or Zoë mention bob?"
    expected: set[str] = set()
    asked = {w for w in query.replace("?", "").lower().split()}
    for c in candidates.values():
        expected |= _name_words(c.episode.display_name) & asked
    assert named_authors(candidates.values(), query) == frozenset(expected)
    assert expected  # the set holds authors the query names
    for c in candidates.values():
        assert c.author_words == _name_words(c.episode.display_name)
        assert c.stamp == c.episode.created_at.timestamp()
