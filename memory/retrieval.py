"""Ranking: keyword and vector candidates turned into one score in [0, 1].

The engine gathers candidates under the search's scope (bm25 from FTS5, cosine from Chroma,
at least 100 of each: fewer cost recall, see README) and asks ``Ranking`` to order them.

0. names      when the question names people who wrote some of the candidates ("what did
              Alice paint?"), the engine searches the vectors again without their names
              (:func:`named_authors`, :func:`without_names`) and keeps that list. A message is
              embedded with its author's name, so a name in the question pulls that author's
              messages closer whatever they say, the short ones most, and the vector list
              fills with their small talk; the authors stage below carries the name instead
              (LoCoMo recall@10 cross-validated 0.782-0.784 -> 0.791-0.795). To spare a search
              in series, the engine searches the query without its capitalised words
              (:func:`name_like`) alongside the first one and uses that list when the guess
              was right.

The pipeline, one named stage each, every feature in [0, 1]:

1. normalise  bm25 and cosine against each list's best (and the cosine list's floor), so the
              two lists speak the same scale whatever the query;
2. neighbours in a chat the answer often sits right before or after the turn that matches the
              question's words ("where did you go?" / "to the lake!"): each candidate takes
              the best fused score of its direct neighbours;
3. sessions   a chat talks about one thing for a while, so a message written in the same
              stretch of conversation as other good matches is more likely on topic than a
              lone match: each candidate takes the mean of the two best fused scores among
              the candidates written within an hour of it (itself included). With the
              statement feature of stage 6, LoCoMo recall@10 cross-validated 0.796 -> 0.808,
              every conversation up, most in single-hop and open-domain questions;
4. authors    questions about people name them ("what did Alice say about the deploy?");
5. dates      a question that names a date ("in June", "on 3 May 2023") is about messages
              written around then;
6. substance  a message that says something is longer than "haha nice!", and states rather
              than asks: answers are statements, while a question repeats the question's
              words without the answer (:func:`memory.text.asks`); without it the sessions
              stage lifts the question turns amid good matches too;
7. recency    a small fixed nudge to newer messages in live channels (gone after months);
8. combine    a weighted sum of the above (weights below);
9. exact      a rare identifier, number, code or name the question quotes verbatim puts the
              messages holding it first: people search for "order 48213" by its string, and
              a vector neighbour must not outrank it;
10. calibrate a logistic map of a message's place in the order (rank, and how far it is
              behind the query's best) and of how well the query matched at all (its best
              cosine and best bm25) to the probability
              that the message is what the question is after: comparable across queries, so
              an unrelated query scores low and ``score_threshold`` means the same thing for
              every query (a per-query min-max would give every query's best hit the same
              score, however poor the match).

The weights and the calibration live in ``ranking.json`` beside this file, plain numbers with
how they were fit: coordinate ascent on recall@10 over the LoCoMo development conversations,
validated leave-one-conversation-out, refit with ``channelmind bench locomo --data ... --fit``.
Every feature is generic chat structure (words, meaning, turn order, authors, time, length);
nothing names LoCoMo.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import mul
from pathlib import Path
from typing import Any

import numpy as np

from .model import Brief
from .query_dates import periods, without_dates
from .text import WORD, asks, words

MODEL_PATH = Path(__file__).with_name("ranking.json")
FEATURES = (
    "keyword",
    "vector",
    "neighbour",
    "session",
    "author",
    "when",
    "substance",
    "statement",
)
# A token appearing verbatim in more candidates than this is not an identifier to match.
EXACT_RARE = 3
SUBSTANCE_WORDS = 100  # messages this long (in words) count as fully substantive
AUTHOR_WORDS_KEPT = 10_000  # name words of authors met that an AuthorsMet keeps per project
TEXT_FEATURES_KEPT = 50_000  # messages whose substance features a Ranking keeps (~12 MB)
SESSION_SECONDS = 3600.0  # candidates this close in time count as one stretch of conversation
_NO_FEATURE = (0.0,) * len(FEATURES)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Whitespace-separated query tokens, trimmed of surrounding punctuation.
_TOKEN = re.compile(r"[^\s\"'`“”‘’()\[\]{}<>,;!?]+")
_INNER_MARK = re.compile(r"[^\W_][_./#:@][^\W_]")
_DATE_WORD = re.compile(
    r"(?i)january|february|march|april|may|june|july|august|september|october|november"
    r"|december|(mon|tues|wednes|thurs|fri|satur|sun)day|\d{1,2}(st|nd|rd|th)|(19|20)\d\d"
)


@dataclass(slots=True)
class Candidate:
    row_id: int
    episode: Brief
    keyword: float | None = None  # bm25, larger is better
    vector: float | None = None  # cosine similarity
    features: dict[str, float] = field(default_factory=dict)
    exact: float = 0.0  # share of the query's rare verbatim tokens this message holds
    recency: float = 0.0
    combined: float = 0.0  # stage 8 (+ stage 9)
    score: float = 0.0  # stage 10, in [0, 1]
    # The row keys before and after it in its channel, as the store read them with the row
    # (memory.store.base.Found.adjacent); None when not looked up (stage 3 reads none).
    adjacent: tuple[int | None, int | None] | None = None
    # Worked out once per candidate (several stages read them): see the properties below.
    _author_words: frozenset[str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def stamp(self) -> float:
        """The message's time as a POSIX timestamp (:attr:`memory.model.Brief.stamp`)."""
        return self.episode.stamp

    @property
    def author_words(self) -> frozenset[str]:
        """The words of its author's display name (longer than one letter)."""
        if self._author_words is None:
            self._author_words = _name_words(self.episode.display_name)
        return self._author_words


@dataclass(frozen=True)
class Query:
    """What the stages need to know about the query, worked out once."""

    text: str
    words: frozenset[str]
    vector_top: float  # the best cosine of the query as asked (0 without vectors)
    keyword_top: float  # the best bm25 among the candidates (0 without keyword matches)


@dataclass(frozen=True)
class RankingModel:
    weights: Mapping[str, float]
    calibration: Mapping[str, float]  # bias, gap, rank, exact, vector_top, keyword_top
    recency: float = 0.05
    recency_half_life_days: float = 30.0

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> RankingModel:
        data = json.loads(path.read_text())
        return cls(weights=data["weights"], calibration=data["calibration"])

    def save(self, path: Path, fit: Mapping[str, Any]) -> None:
        data = {
            "about": "Ranking weights and score calibration for memory/retrieval.py; see its"
            " docstring. Refit: channelmind bench locomo --data <locomo.json> --fit <this file>",
            "weights": {k: round(float(self.weights[k]), 4) for k in FEATURES},
            "calibration": {k: round(float(v), 4) for k, v in self.calibration.items()},
            "fit": dict(fit),
        }
        path.write_text(json.dumps(data, indent=2) + "\n")


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def exact_tokens(query: str) -> list[str]:
    """Query tokens people search for by their exact string: anything with a digit or with
    capitals past the first letter (48213, ERR, iOS, PROJ-12, db-prod-07), a word joined by
    ``_ . / # : @`` (pay_v2, example.com), and a capitalised word not at the start of the
    query (names: "Edinburgh", "Falcon"). Dates are left to the dates stage, and ordinary
    hyphenated words ("self-care") are words."""
    out: list[str] = []
    for i, m in enumerate(_TOKEN.finditer(without_dates(query))):
        token = m.group(0).strip(".:-_/#@")
        if len(token) < 2 or _DATE_WORD.fullmatch(token):
            continue
        specific = (
            any(ch.isdigit() for ch in token)
            or _INNER_MARK.search(token) is not None
            or any(ch.isupper() for ch in token[1:])
            or (i > 0 and token[0].isupper() and "-" not in token)
        )
        if specific and token.lower() not in out:
            out.append(token.lower())
    return out


def _holds(text: str, token: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(token)}(?!\w)", text, re.IGNORECASE) is not None


@lru_cache(maxsize=4096)
def _name_words(display_name: str) -> frozenset[str]:
    return frozenset(w for w in words(display_name) if len(w) > 1)


def named_authors(candidates: Iterable[Candidate], query: str) -> frozenset[str]:
    """The words of the candidates' author names that the query names ("what did Alice
    say?" names alice when Alice wrote some of them)."""
    asked = frozenset(words(query))
    named: set[str] = set()
    for c in candidates:
        named |= c.author_words & asked
    return frozenset(named)


class AuthorsMet:
    """The name words of the authors a project's searches have met among their candidates:
    a guess, before a search, at which words of its query :func:`named_authors` will find
    (ranking stage 0 searches the query without them too, and a right guess lets both
    searches go to the index at once). Bounded per project; a wrong guess costs a search."""

    def __init__(self, kept: int = AUTHOR_WORDS_KEPT) -> None:
        self.kept = kept
        self._words: dict[tuple[str, str], set[str]] = {}

    def note(self, project: tuple[str, str], candidates: Iterable[Candidate]) -> None:
        met = self._words.setdefault(project, set())
        for c in candidates:
            met |= c.author_words
        if len(met) > self.kept:
            met.clear()

    def named(self, project: tuple[str, str], query: str) -> list[str]:
        met = self._words.get(project, set())
        return [w for w in dict.fromkeys(words(query)) if w in met]

    def forget(self) -> None:
        """Keep no name once something was forgotten (the words of a forgotten author)."""
        self._words.clear()


def name_like(query: str) -> list[str]:
    """Words of the query that look like someone's name: capitalised, not the first word,
    not all capitals or with digits (acronyms, codes). A guess, checked against the authors
    of the candidates before it is used."""
    out: list[str] = []
    for i, m in enumerate(WORD.finditer(query)):
        word = m.group(0)
        if i and word[0].isupper() and not word.isupper() and word.isalpha():
            out.append(word.lower())
    return out


def without_names(query: str, names: Iterable[str]) -> str | None:
    """The query with these names (and their possessive 's) taken out, for the vector search;
    None when there is nothing to take out or nothing would be left."""
    text = query
    for name in names:
        text = re.sub(rf"(?i)(?<!\w){re.escape(name)}(?:['’]s)?(?!\w)", " ", text)
    text = " ".join(text.split())
    return text if text != " ".join(query.split()) and WORD.search(text) else None


def _text_features(content: str) -> tuple[float, float]:
    """A message's ``substance`` and ``statement`` features."""
    substance = min(1.0, math.log1p(len(WORD.findall(content))) / math.log1p(SUBSTANCE_WORDS))
    return substance, 0.0 if asks(content) else 1.0


@dataclass
class Ranking:
    model: RankingModel = field(default_factory=RankingModel.load)
    #: :meth:`substance`'s features by (row, hash of the text).
    _text_features: dict[tuple[int, int], tuple[float, float]] = field(
        default_factory=dict, init=False, repr=False
    )

    # -- stages 1-7: features ----------------------------------------------------------------

    def describe(
        self,
        candidates: Mapping[int, Candidate],
        query: str,
        now: datetime,
        *,
        contextual: bool = True,
        asked_top: float | None = None,
    ) -> Query:
        """Set every candidate's features; returns what the query matched at best. Without
        ``contextual`` (the keyword-only and vector-only modes) a list ranks by its own score.
        ``asked_top``: the best cosine of the query as asked when the vector list was searched
        without the names in it (stage 0); the calibration judges the match by it."""
        q = self.normalise(candidates, query, asked_top)
        if contextual:
            fused = _fused(candidates)
            self.neighbours(candidates, fused)
            self.sessions(candidates, fused)
            self.authors(candidates, q)
            self.dates(candidates, q)
            self.substance(candidates)
        self.recency(candidates, now)
        self.exact(candidates, q)
        return q

    @staticmethod
    def normalise(
        candidates: Mapping[int, Candidate], query: str, asked_top: float | None = None
    ) -> Query:
        kw = [c.keyword for c in candidates.values() if c.keyword is not None]
        vec = [c.vector for c in candidates.values() if c.vector is not None]
        kw_top = max(kw, default=0.0)
        vec_top, vec_floor = max(vec, default=0.0), min(vec, default=0.0)
        for c in candidates.values():
            k = c.keyword / kw_top if c.keyword is not None and kw_top > 0 else 0.0
            v = 0.0
            if c.vector is not None:
                v = (c.vector - vec_floor) / (vec_top - vec_floor) if vec_top > vec_floor else 1.0
            c.features = {"keyword": k, "vector": v}
        named = frozenset(w for w in words(query) if len(w) > 1)
        matched = vec_top if asked_top is None else asked_top
        return Query(query, named, max(matched, 0.0), kw_top)

    @staticmethod
    def neighbours(
        candidates: Mapping[int, Candidate],
        fused: Mapping[int, float] | None = None,
    ) -> None:
        """Each candidate's best fused score (keyword and vector, halved) among its direct
        neighbours in the channel (:attr:`Candidate.adjacent`) that are candidates too (0 when
        none is)."""
        base = _fused(candidates) if fused is None else fused
        get = base.get
        for c in candidates.values():
            before, after = c.adjacent or (None, None)
            if before is None:
                best = 0.0 if after is None else get(after, 0.0)
            elif after is None:
                best = get(before, 0.0)
            else:
                best = max(get(before, 0.0), get(after, 0.0))
            c.features["neighbour"] = best

    @staticmethod
    def sessions(
        candidates: Mapping[int, Candidate], fused: Mapping[int, float] | None = None
    ) -> None:
        """Each candidate: the mean of the two best fused scores among the candidates
        written within :data:`SESSION_SECONDS` of it, itself included (its own score, halved,
        when it is alone). Each candidate's stretch is a run of the candidates in time order;
        its best and next best come from range-maximum queries on a sparse table, in numpy
        for all candidates at once (a bisect and a sort of the stretch for each candidate in
        Python was the costliest stage). tests/memory/test_ranking_stages.py checks it against
        that version, value for value."""
        base = _fused(candidates) if fused is None else fused
        items = list(candidates.values())
        n = len(items)
        if n == 0:
            return
        stamps = np.fromiter((c.stamp for c in items), dtype=np.float64, count=n)
        scores = np.fromiter((base[c.row_id] for c in items), dtype=np.float64, count=n)
        order = np.argsort(stamps, kind="stable")
        times, values = stamps[order], scores[order]
        # The stretch of each candidate: [lo, hi) in time order, as bisect_left of its time
        # less an hour and bisect_right of its time plus an hour.
        lo = np.searchsorted(times, stamps - SESSION_SECONDS, side="left")
        hi = np.searchsorted(times, stamps + SESSION_SECONDS, side="right")
        table = _argmax_table(values)
        best = _range_argmax(table, values, lo, hi - 1)
        first = values[best]
        # One of the best taken out: the next best is the best left or right of it.
        beside = _range_max(
            table, values, np.concatenate([lo, best + 1]), np.concatenate([best - 1, hi - 1])
        )
        second = np.maximum(beside[:n], beside[n:])
        # sorted(stretch)[-2:] summed: the next best plus the best (the best alone when the
        # stretch holds only the candidate itself), halved.
        out = np.where(second == -np.inf, first, second + first) / 2
        for c, value in zip(items, out.tolist(), strict=True):
            c.features["session"] = value

    @staticmethod
    def authors(candidates: Mapping[int, Candidate], q: Query) -> None:
        asked = q.words
        for c in candidates.values():
            c.features["author"] = 1.0 if c.author_words & asked else 0.0

    @staticmethod
    def dates(candidates: Mapping[int, Candidate], q: Query) -> None:
        named = periods(q.text)
        if not named:
            for c in candidates.values():
                c.features["when"] = 0.0
            return
        for c in candidates.values():
            hit = any(p.contains(c.episode.created_at) for p in named)
            c.features["when"] = 1.0 if hit else 0.0

    def substance(self, candidates: Mapping[int, Candidate]) -> None:
        """How many words a message has, and whether it states rather than asks. Both depend
        on its text alone, and the same messages are candidates of search after search, so
        they are kept by row and text hash (a number, not the text: a forgotten message leaves
        nothing readable here). Working them out was 3% of the server's CPU at 40 clients."""
        known = self._text_features
        if len(known) > TEXT_FEATURES_KEPT:
            known.clear()
        for c in candidates.values():
            key = (c.row_id, hash(c.episode.content))
            found = known.get(key)
            if found is None:
                found = known[key] = _text_features(c.episode.content)
            c.features["substance"], c.features["statement"] = found

    def recency(self, candidates: Mapping[int, Candidate], now: datetime) -> None:
        half_life = self.model.recency_half_life_days * 86400.0
        minus_ln2 = -math.log(2)
        exp = math.exp
        # In whole microseconds, as ``(now - created_at).total_seconds()`` counts them: the
        # same ages to the last bit, without making a datetime for each candidate.
        at = (now - _EPOCH) // _MICROSECOND
        for c in candidates.values():
            age = max(0.0, (at - round(c.episode.stamp * 1e6)) / 1e6)
            c.recency = exp(minus_ln2 * age / half_life)

    @staticmethod
    def exact(candidates: Mapping[int, Candidate], q: Query) -> None:
        """Stage 9's input: the share of the query's rare verbatim tokens each message holds.
        Rare means held by at most ``EXACT_RARE`` candidates; the keyword list reaches every
        message holding a rare token (bm25 weighs rare words most). Tokens that are the name
        of an author among the candidates are left to the authors stage."""
        tokens = exact_tokens(q.text)
        if tokens:
            authors: set[str] = set()
            for c in candidates.values():
                authors |= c.author_words
            tokens = [t for t in tokens if t not in authors]
        holders: dict[str, list[Candidate]] = {}
        for token in tokens:
            holders[token] = [c for c in candidates.values() if _holds(c.episode.content, token)]
        rare = [t for t, held in holders.items() if 0 < len(held) <= EXACT_RARE]
        for c in candidates.values():
            c.exact = 0.0
        for token in rare:
            for c in holders[token]:
                c.exact += 1.0 / len(rare)

    # -- stages 8-10: score -------------------------------------------------------------------

    def combine(self, candidates: Iterable[Candidate], weights: Mapping[str, float]) -> None:
        """Stages 8 and 9: the weighted sum, then a margin for exact matches larger than any
        difference the other features can make (every feature is in [0, 1])."""
        margin = 1.0 + sum(w for w in weights.values() if w > 0) + self.model.recency
        recency = self.model.recency
        ordered_weights = [weights[f] for f in FEATURES]
        for c in candidates:
            # The products summed in FEATURES order from 0, as ``sum(w * x for ...)`` does.
            c.combined = sum(map(mul, ordered_weights, map(c.features.get, FEATURES, _NO_FEATURE)))
            c.combined += recency * c.recency + margin * c.exact

    def calibrate(self, candidates: Iterable[Candidate], q: Query) -> list[Candidate]:
        """Stage 10: a candidate's place in the query's order (its rank, and how far its
        combined score is behind the best: a full point is as far as it gets), whether it
        holds an exact match, and how well the query matched at all (best cosine, best bm25),
        to a probability. Monotone in ``combined`` within a query: it keeps the order, which
        it returns."""
        cal = self.model.calibration
        offset = cal["bias"] + cal["vector_top"] * q.vector_top
        offset += cal["keyword_top"] * math.log1p(q.keyword_top)
        group = ordered(candidates)
        best = group[0].combined if group else 0.0
        gap, exact, by_rank = cal["gap"], cal["exact"], cal["rank"]
        log1p = math.log1p
        for rank, c in enumerate(group):
            z = offset + gap * max(-1.0, c.combined - best) + exact * c.exact
            c.score = sigmoid(z - by_rank * log1p(rank))
        return group

    def rank(self, candidates: Mapping[int, Candidate], q: Query) -> list[Candidate]:
        """Stages 8-10: best first, newer first on ties."""
        self.combine(candidates.values(), self.model.weights)
        return self.calibrate(candidates.values(), q)


def ordered(candidates: Iterable[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (-c.combined, -c.stamp, -c.row_id))


def _argmax_table(values: np.ndarray) -> np.ndarray:
    """A sparse table for range-maximum queries on ``values``: row ``k`` holds, for each
    start ``i``, the index of a largest value in ``values[i : i + 2**k]`` (rows padded)."""
    n = len(values)
    rows = [np.arange(n)]
    width = 1
    while 2 * width <= n:
        prev = rows[-1]
        a, b = prev[: n - 2 * width + 1], prev[width : n - width + 1]
        step = np.where(values[b] > values[a], b, a)
        rows.append(np.concatenate([step, prev[len(step) :]]))
        width *= 2
    return np.stack(rows)


def _range_argmax(table: np.ndarray, values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Any:
    """For each ``lo[j] <= hi[j]``: the index of a largest value in ``values[lo : hi + 1]``."""
    level = np.log2(hi - lo + 1).astype(np.int64)
    a = table[level, lo]
    b = table[level, hi - (1 << level) + 1]
    return np.where(values[b] > values[a], b, a)


def _range_max(table: np.ndarray, values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Any:
    """The largest value in each ``values[lo : hi + 1]``; -inf where the range is empty."""
    empty = hi < lo
    safe_lo, safe_hi = np.where(empty, 0, lo), np.where(empty, 0, hi)
    found = values[_range_argmax(table, values, safe_lo, safe_hi)]
    return np.where(empty, -np.inf, found)


def _fused(candidates: Mapping[int, Candidate]) -> dict[int, float]:
    """Each candidate's keyword and vector features, averaged (stages 2 and 3 read it)."""
    return {
        rid: (c.features["keyword"] + c.features["vector"]) / 2 for rid, c in candidates.items()
    }


def feature_rows(candidates: Sequence[Candidate]) -> list[list[float]]:
    """The feature matrix of a candidate list, in ``FEATURES`` order (for fitting)."""
    return [[c.features.get(f, 0.0) for f in FEATURES] for c in candidates]
