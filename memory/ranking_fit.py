"""Fitting the ranking weights and the score calibration of memory/retrieval.py.

Used by ``channelmind bench locomo`` for its leave-one-conversation-out figure (``--cv``) and
to refit ``memory/ranking.json`` (``--fit``). Two small fits, both on labelled candidates (the
features the engine computed for a question's candidates, and which of them are evidence):

- weights: coordinate ascent on mean recall@k, the figure the benchmark reports. Each round
  tries a few steps up and down on every weight but the keyword one (it fixes the scale),
  takes the one that raises recall most and repeats until none does; the steps halve each
  round. It starts from round design
  weights, never from a previous fit, so a held-out conversation never leaks into its fold.
- calibration: a logistic regression of "this candidate is evidence" on its rank, how far its
  combined score is behind the query's best, whether it holds an exact match, the query's
  best cosine and log(1 + its best bm25), with
  questions that have no answer in the conversation (or are asked in another conversation's
  channel) as negatives. Newton's method; six numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .retrieval import FEATURES, Candidate, Query, Ranking, feature_rows, ordered

Array = npt.NDArray[np.float64]

# Where every fit starts: the previous hand-set design (equal keyword and vector weight, a
# neighbour share a little above either, an author bonus) and nothing for the newer features.
START = {
    "keyword": 0.3,
    "vector": 0.3,
    "neighbour": 0.35,
    "session": 0.0,
    "author": 0.3,
    "when": 0.0,
    "substance": 0.0,
    "statement": 0.0,
}
STEPS = (-1.0, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1.0)
CALIBRATE_TOP = 20


@dataclass
class Labelled:
    """One question's candidates as the engine described them, and the answer key."""

    group: str  # the conversation (fold) it belongs to
    category: int  # 0 for questions with no answer in the conversation
    kind: str  # "answerable", "unanswerable" or "other channel" (calibration tables)
    query: Query
    candidates: list[Candidate]
    relevant: set[int]  # row ids of the evidence
    needed: int  # evidence turns in total (some may be missing from the candidates)

    def arrays(self, ranking: Ranking) -> tuple[Array, Array, Array]:
        x = np.asarray(feature_rows(self.candidates), dtype=np.float64).reshape(-1, len(FEATURES))
        fixed = np.array(
            [ranking.model.recency * c.recency for c in self.candidates], dtype=np.float64
        )
        exact = np.array([c.exact for c in self.candidates], dtype=np.float64)
        return x, fixed, exact


class Packed:
    """Candidates as arrays, for the many evaluations of a coordinate ascent."""

    def __init__(self, items: Sequence[Labelled], ranking: Ranking) -> None:
        self.items = [it for it in items if it.category > 0 and it.needed]
        self.rows = [it.arrays(ranking) for it in self.items]
        self.labels = [
            np.array([1.0 if c.row_id in it.relevant else 0.0 for c in it.candidates])
            for it in self.items
        ]
        self.ranking = ranking

    def recall(self, w: Array, k: int) -> float:
        if not self.items:
            return 0.0
        total = 0.0
        weights = dict(zip(FEATURES, w, strict=True))
        margin = 1.0 + sum(v for v in weights.values() if v > 0) + self.ranking.model.recency
        for (x, fixed, exact), y, it in zip(self.rows, self.labels, self.items, strict=True):
            if not len(y):
                continue
            s = x @ w + fixed + margin * exact
            top = np.argpartition(-s, k)[:k] if len(s) > k else np.arange(len(s))
            total += float(y[top].sum()) / it.needed
        return total / len(self.items)


def fit_weights(
    items: Sequence[Labelled], ranking: Ranking, k: int = 10, rounds: int = 4
) -> dict[str, float]:
    packed = Packed(items, ranking)
    w = np.array([START[f] for f in FEATURES], dtype=np.float64)
    scale = w[FEATURES.index("keyword")]
    best = packed.recall(w, k)
    for r in range(rounds):
        step = scale / (2**r)
        while True:
            # The best single move over every weight, not the first that helps: a fit that
            # took moves in feature order depended on that order (LoCoMo CV 0.802 or 0.808
            # for the same features listed differently).
            trials = [
                np.where(np.arange(len(w)) == i, max(0.0, w[i] + g * step), w)
                for i, name in enumerate(FEATURES)
                if name != "keyword"
                for g in STEPS
            ]
            value, trial = max(((packed.recall(t, k), t) for t in trials), key=lambda pair: pair[0])
            if value <= best + 1e-9:
                break
            best, w = value, trial
    return {f: float(v) for f, v in zip(FEATURES, w, strict=True)}


def fit_calibration(
    items: Sequence[Labelled],
    ranking: Ranking,
    weights: Mapping[str, float],
    top: int = CALIBRATE_TOP,
    l2: float = 1e-4,
) -> dict[str, float]:
    """Logistic regression of relevance on (gap to the query's best combined score, log of
    the rank, exact, vector_top, log1p(keyword_top)), over each question's first ``top``
    candidates: where thresholds are set, rather than the mass of obvious misses below."""
    xs: list[list[float]] = []
    ys: list[float] = []
    for it in items:
        ranking.combine(it.candidates, weights)
        ranked = ordered(it.candidates)[:top]
        best = ranked[0].combined if ranked else 0.0
        for rank, c in enumerate(ranked):
            gap = max(-1.0, c.combined - best)
            top_kw = math.log1p(it.query.keyword_top)
            xs.append([1.0, gap, -math.log1p(rank), c.exact, it.query.vector_top, top_kw])
            ys.append(1.0 if c.row_id in it.relevant else 0.0)
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    beta = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        penalty = l2 * len(y) * np.diag([0.0] + [1.0] * (len(beta) - 1))  # not the bias
        grad = x.T @ (p - y) + penalty @ beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty
        delta = np.linalg.solve(hess, grad)
        beta -= delta
        if float(np.abs(delta).max()) < 1e-8:
            break
    names = ("bias", "gap", "rank", "exact", "vector_top", "keyword_top")
    fitted = {n: float(b) for n, b in zip(names, beta, strict=True)}
    # Exact matches rank first; a negative weight would score them below what they outrank.
    fitted["exact"] = max(0.0, fitted["exact"])
    fitted["gap"] = max(0.0, fitted["gap"])
    fitted["rank"] = max(0.0, fitted["rank"])
    return fitted
