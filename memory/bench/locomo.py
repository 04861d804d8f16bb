"""LoCoMo retrieval benchmark: recall@k and all@k of the engine against two baselines.

Scoring follows shared/data/locomo/README.md: each conversation is its own scope (one
``produced_for``), one episode per turn with the speaker as producer and the session's date as
time, the image caption appended. For every question of categories 1-4 with a valid evidence
id, search the scope and take the first k turns returned. The baselines run through the same
engine: keyword only (FTS5 bm25) and vector only (the same embedder, Chroma).

``--cv`` also scores the ranking leave-one-conversation-out: the features the engine computes
for every question's candidates are collected once, then for each conversation the weights and
the calibration are fit on the other four (memory/ranking_fit.py) and that conversation is
ranked with them by the engine's own ranking code. ``--fit PATH`` fits on all of them and
writes the model (memory/ranking.json is made this way). Questions of category 5 (the
conversation does not hold the answer) and each conversation's questions asked in another
conversation's channel give the score-calibration table: where the best hit's score falls
for answerable and unanswerable questions, and the threshold that separates them best.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..embedders import Embedder
from ..engine import SEARCH_DEPTH, MemoryEngine
from ..model import Episode, Scope, SearchMode
from ..ranking_fit import Labelled, fit_calibration, fit_weights
from ..retrieval import Ranking, RankingModel
from .scale import percentile

ORG = "locomo"
PROJECT = "dev"
_EVIDENCE = re.compile(r"^D(\d+):(\d+)$")
_DATE = re.compile(r"(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+(\w+),?\s+(\d{4})", re.I)
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        "january february march april may june july august september october november"
        " december".split()
    )
}


def parse_session_date(text: str) -> datetime:
    """'1:56 pm on 8 May, 2023' -> an aware UTC datetime."""
    m = _DATE.search(text)
    if not m:
        raise ValueError(f"unrecognised session date {text!r}")
    hour, minute, ampm, day, month, year = m.groups()
    h = int(hour) % 12 + (12 if ampm.lower() == "pm" else 0)
    return datetime(int(year), _MONTHS[month.lower()], int(day), h, int(minute), tzinfo=UTC)


@dataclass
class Question:
    scope: Scope
    text: str
    category: int
    evidence: set[str]


@dataclass
class Conversation:
    sample_id: str
    episodes: list[Episode]
    questions: list[Question] = field(default_factory=list)
    unanswerable: list[Question] = field(default_factory=list)  # category 5


def load(path: Path) -> list[Conversation]:
    data = json.loads(path.read_text())
    out: list[Conversation] = []
    for item in data:
        conv = item["conversation"]
        sid = item["sample_id"]
        episodes: list[Episode] = []
        n = 1
        while f"session_{n}" in conv:
            when = parse_session_date(conv[f"session_{n}_date_time"])
            for i, turn in enumerate(conv[f"session_{n}"]):
                text = turn["text"]
                if turn.get("blip_caption"):
                    text = f"{text} [shares an image: {turn['blip_caption']}]"
                episodes.append(
                    Episode(
                        org_id=ORG,
                        project_id=PROJECT,
                        producer=turn["speaker"],
                        produced_for=sid,
                        content=text,
                        # turns share their session's time; keep their order with seconds
                        created_at=datetime.fromtimestamp(when.timestamp() + i, UTC),
                        platform="locomo",
                        source_id=f"{sid}:{turn['dia_id']}",
                        metadata={"display_name": turn["speaker"], "dia_id": turn["dia_id"]},
                    )
                )
            n += 1
        known = {e.metadata["dia_id"] for e in episodes}
        scope = Scope(org_id=ORG, project_id=PROJECT, produced_for=sid)
        questions = []
        unanswerable = []
        for qa in item["qa"]:
            if qa.get("category") == 5 and qa.get("question"):
                unanswerable.append(Question(scope, qa["question"], 5, set()))
            if qa.get("category") not in (1, 2, 3, 4):
                continue
            evidence = {
                e.strip() for e in qa.get("evidence", []) if _EVIDENCE.match(e.strip())
            } & known
            if evidence:
                questions.append(Question(scope, qa["question"], int(qa["category"]), evidence))
        out.append(Conversation(sid, episodes, questions, unanswerable))
    return out


def _summary(
    ranked: list[list[str | None]], questions: list[Question], ks: list[int]
) -> dict[str, Any]:
    """recall@k and all@k overall and by category, from each question's ranked dia ids."""
    recall: dict[int, list[float]] = {k: [] for k in ks}
    all_k: dict[int, list[float]] = {k: [] for k in ks}
    per_cat: dict[int, dict[str, list[float]]] = {}
    for got, q in zip(ranked, questions, strict=True):
        cat = per_cat.setdefault(q.category, {})
        for k in ks:
            top = set(got[:k])
            share = len(q.evidence & top) / len(q.evidence)
            whole = 1.0 if q.evidence <= top else 0.0
            recall[k].append(share)
            all_k[k].append(whole)
            cat.setdefault(f"recall@{k}", []).append(share)
            cat.setdefault(f"all@{k}", []).append(whole)
    out: dict[str, Any] = {}
    for k in ks:
        out[f"recall@{k}"] = round(statistics.fmean(recall[k]), 4) if recall[k] else 0.0
        out[f"all@{k}"] = round(statistics.fmean(all_k[k]), 4) if all_k[k] else 0.0
    out["by_category"] = {
        str(c): {name: round(statistics.fmean(v), 4) for name, v in sorted(d.items())}
        for c, d in sorted(per_cat.items())
    }
    return out


async def score(
    engine: MemoryEngine, conversations: list[Conversation], ks: list[int], mode: SearchMode
) -> dict[str, Any]:
    depth = max(ks)
    ranked: list[list[str | None]] = []
    questions: list[Question] = []
    latencies: list[float] = []
    for conv in conversations:
        for q in conv.questions:
            start = time.perf_counter()
            result = await engine.search(q.text, q.scope, top_k=depth, mode=mode)
            latencies.append((time.perf_counter() - start) * 1000)
            ranked.append([h.episode.metadata.get("dia_id") for h in result.hits])
            questions.append(q)
    out = _summary(ranked, questions, ks)
    out["search_ms_p50"] = round(percentile(latencies, 50), 2)
    out["search_ms_p95"] = round(percentile(latencies, 95), 2)
    out["questions"] = len(latencies)
    return out


# -- calibration: are scores comparable across queries? ----------------------------------------


def calibration_table(top: dict[str, list[float]]) -> dict[str, Any]:
    """Quantiles of the best hit's score per kind of question, and the threshold on it that
    best tells answerable from unanswerable questions (balanced accuracy)."""
    out: dict[str, Any] = {"quantiles": {}}
    for name, values in top.items():
        out["quantiles"][name] = {
            f"p{p}": round(percentile(values, p), 4) for p in (10, 25, 50, 75, 90)
        } | {"n": len(values)}
    yes = top.get("answerable", [])
    no = top.get("unanswerable", []) + top.get("other channel", [])
    best = (0.0, 0.0)
    for t in sorted(set(yes + no)):
        tpr = sum(v >= t for v in yes) / max(1, len(yes))
        tnr = sum(v < t for v in no) / max(1, len(no))
        if (tpr + tnr) / 2 > best[0]:
            best = ((tpr + tnr) / 2, t)
    out["best_threshold"] = round(best[1], 4)
    out["balanced_accuracy"] = round(best[0], 4)
    for name in ("unanswerable", "other channel"):
        values = top.get(name, [])
        if values and yes:
            b = sum(v < best[1] for v in values) / len(values)
            out[f"balanced_accuracy_{name.replace(' ', '_')}"] = round(
                (sum(v >= best[1] for v in yes) / len(yes) + b) / 2, 4
            )
    return out


def _other_channel(conversations: list[Conversation]) -> list[Question]:
    """Each conversation's questions asked in the next conversation's channel: unrelated."""
    out = []
    for i, conv in enumerate(conversations[:-1] if len(conversations) == 2 else conversations):
        target = conversations[(i + 1) % len(conversations)]
        if target is conv:
            continue
        scope = Scope(org_id=ORG, project_id=PROJECT, produced_for=target.sample_id)
        out += [Question(scope, q.text, 0, set()) for q in conv.questions]
    return out


async def top_scores(engine: MemoryEngine, conversations: list[Conversation]) -> dict[str, Any]:
    top: dict[str, list[float]] = {"answerable": [], "unanswerable": [], "other channel": []}
    kinds = [("answerable", q) for c in conversations for q in c.questions]
    kinds += [("unanswerable", q) for c in conversations for q in c.unanswerable]
    kinds += [("other channel", q) for q in _other_channel(conversations)]
    for kind, q in kinds:
        result = await engine.search(q.text, q.scope, top_k=1)
        top[kind].append(result.hits[0].score if result.hits else 0.0)
    return calibration_table(top)


# -- leave-one-conversation-out ----------------------------------------------------------------


async def collect(
    engine: MemoryEngine, conversations: list[Conversation]
) -> list[tuple[Labelled, Question]]:
    """Every question's candidates with the engine's features (hybrid, as search does):
    answerable, unanswerable (category 5) and asked in another conversation's channel."""
    kinds = [("answerable", q) for c in conversations for q in c.questions]
    kinds += [("unanswerable", q) for c in conversations for q in c.unanswerable]
    kinds += [("other channel", q) for q in _other_channel(conversations)]
    items: list[tuple[Labelled, Question]] = []
    for kind, q in kinds:
        cands, query = await engine.candidates(q.text, q.scope, depth=SEARCH_DEPTH)
        relevant = {
            rid for rid, c in cands.items() if c.episode.metadata.get("dia_id") in q.evidence
        }
        cat = q.category if kind == "answerable" else 0
        group = q.scope.produced_for or ""
        labelled = Labelled(
            group, cat, kind, query, list(cands.values()), relevant, len(q.evidence)
        )
        items.append((labelled, q))
    return items


def fit(items: list[Labelled], k: int = 10) -> RankingModel:
    ranking = Ranking()
    weights = fit_weights(items, ranking, k)
    return RankingModel(weights=weights, calibration=fit_calibration(items, ranking, weights))


def cross_validate(
    pairs: list[tuple[Labelled, Question]], conversations: list[Conversation], ks: list[int]
) -> dict[str, Any]:
    """Fit on all conversations but one, rank that one with the engine's ranking code."""
    ranked_all: list[list[str | None]] = []
    questions: list[Question] = []
    folds: dict[str, Any] = {}
    top: dict[str, list[float]] = {"answerable": [], "unanswerable": [], "other channel": []}
    for conv in conversations:
        model = fit([it for it, _ in pairs if it.group != conv.sample_id])
        ranking = Ranking(model)
        fold_ranked: list[list[str | None]] = []
        fold_q: list[Question] = []
        for it, q in pairs:
            if it.group != conv.sample_id:
                continue
            ranking.combine(it.candidates, model.weights)
            ranked = ranking.calibrate(it.candidates, it.query)
            top[it.kind].append(ranked[0].score if ranked else 0.0)
            if it.category:
                fold_ranked.append([c.episode.metadata.get("dia_id") for c in ranked])
                fold_q.append(q)
        folds[conv.sample_id] = {
            "recall@10": _summary(fold_ranked, fold_q, [10])["recall@10"],
            "questions": len(fold_q),
            "weights": {f: round(v, 3) for f, v in model.weights.items()},
        }
        ranked_all += fold_ranked
        questions += fold_q
    out = _summary(ranked_all, questions, ks)
    out["fold_mean_recall@10"] = round(statistics.fmean(f["recall@10"] for f in folds.values()), 4)
    out["folds"] = folds
    out["calibration"] = calibration_table(top)
    return out


async def run(
    data: Path,
    ks: list[int],
    embedder: Embedder,
    data_dir: Path | None = None,
    *,
    cv: bool = False,
    fit_path: Path | None = None,
) -> dict[str, Any]:
    conversations = load(data)
    with tempfile.TemporaryDirectory(prefix="channelmind-locomo-") as tmp:
        engine = await MemoryEngine.open(data_dir or Path(tmp), embedder, background=False)
        try:
            start = time.perf_counter()
            for conv in conversations:
                await engine.add(conv.episodes)
            written = time.perf_counter()
            await engine.wait_indexed(timeout=None)
            indexed = time.perf_counter()
            result = await score(engine, conversations, ks, "hybrid")
            result["baselines"] = {
                "keyword": await score(engine, conversations, ks, "keyword"),
                "vector": await score(engine, conversations, ks, "vector"),
            }
            result["calibration"] = await top_scores(engine, conversations)
            items = await collect(engine, conversations) if cv or fit_path else []
        finally:
            await engine.close()
    if cv:
        result["cv"] = cross_validate(items, conversations, ks)
    if fit_path is not None:
        model = fit([it for it, _ in items])
        info: dict[str, Any] = {
            "data": f"{data.name}: {len(conversations)} conversations,"
            f" {sum(len(c.questions) for c in conversations)} questions",
            "embedder": embedder.fingerprint,
            "method": "coordinate ascent on recall@10 from memory/ranking_fit.py START;"
            " logistic calibration of the first 20 candidates, with category-5 questions and"
            " questions asked in another conversation's channel as negatives",
        }
        if "cv" in result:
            info["cv_recall@10"] = result["cv"].get("recall@10")
        model.save(fit_path, info)
        result["fit"] = {"path": str(fit_path), **info}
    turns = sum(len(c.episodes) for c in conversations)
    result["conversations"] = len(conversations)
    result["turns"] = turns
    result["ingest_s"] = round(written - start, 3)
    result["index_s"] = round(indexed - written, 3)
    result["embedder"] = embedder.fingerprint
    return result


def format_report(result: dict[str, Any], ks: list[int]) -> str:
    rows = [("hybrid (channelmind)", result)] + [
        (f"{name} only", r) for name, r in result["baselines"].items()
    ]
    if "cv" in result:
        rows.insert(1, ("hybrid, cross-validated", result["cv"]))
    head = f"{'':26}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
    head += "".join(f"{'all@' + str(k):>8}" for k in ks) + f"{'p50 ms':>9}{'p95 ms':>9}"
    lines = [
        f"LoCoMo retrieval: {result['conversations']} conversations, {result['turns']} turns,"
        f" {result['questions']} questions; embedder {result['embedder']}",
        f"ingest {result['ingest_s']} s (SQLite), index {result['index_s']} s (embed + Chroma)",
        head,
    ]
    for name, r in rows:
        line = f"{name:26}" + "".join(f"{r[f'recall@{k}']:8.3f}" for k in ks)
        line += "".join(f"{r[f'all@{k}']:8.3f}" for k in ks)
        if "search_ms_p50" in r:
            line += f"{r['search_ms_p50']:9.1f}{r['search_ms_p95']:9.1f}"
        lines.append(line)
    k = 10 if 10 in ks else ks[0]
    lines.append(
        f"recall@{k} / all@{k} by category (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop):"
    )
    for cat in result["by_category"]:
        parts = []
        for name, r in rows:
            got = r["by_category"].get(cat, {})
            parts.append(
                f"{name.split(',')[0].split()[0] + (' cv' if 'cross' in name else ''):>9}"
                f" {got.get(f'recall@{k}', 0):.3f}/{got.get(f'all@{k}', 0):.3f}"
            )
        lines.append(f"  cat {cat}: " + "  ".join(parts))
    if "cv" in result:
        folds = result["cv"]["folds"]
        lines.append(
            f"cross-validated: recall@10 {result['cv']['recall@10']:.3f} over all questions,"
            f" mean of folds {result['cv']['fold_mean_recall@10']:.3f} ("
            + ", ".join(f"{name} {f['recall@10']:.3f}" for name, f in folds.items())
            + ")"
        )
    for title, cal in [("in-sample", result.get("calibration"))] + (
        [("cross-validated", result["cv"]["calibration"])] if "cv" in result else []
    ):
        if not cal:
            continue
        lines.append(f"best hit's score ({title} calibration):")
        for name, q in cal["quantiles"].items():
            lines.append(
                f"  {name:15} n={q['n']:4}  "
                + "  ".join(f"p{p} {q[f'p{p}']:.3f}" for p in (10, 25, 50, 75, 90))
            )
        lines.append(
            f"  best threshold {cal['best_threshold']:.3f}: balanced accuracy"
            f" {cal['balanced_accuracy']:.3f}"
            + "".join(
                f", {name.split('_', 2)[2].replace('_', ' ')} only {v:.3f}"
                for name, v in cal.items()
                if name.startswith("balanced_accuracy_")
            )
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], ks: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"hybrid": result, **result["baselines"]}
    cats = list(result["by_category"])
    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 4), sharey=True)
    for ax, k in zip(axes if len(ks) > 1 else [axes], ks, strict=False):
        width = 0.8 / len(rows)
        for i, (name, r) in enumerate(rows.items()):
            values = [r["by_category"].get(c, {}).get(f"recall@{k}", 0) for c in cats]
            values.append(r[f"recall@{k}"])
            xs = [j + i * width for j in range(len(cats) + 1)]
            ax.bar(xs, values, width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats) + 1)])
        ax.set_xticklabels([f"cat {c}" for c in cats] + ["all"])
        ax.set_title(f"recall@{k}")
        ax.set_ylim(0, 1)
    (axes[0] if len(ks) > 1 else axes).legend()
    fig.suptitle("LoCoMo retrieval: channelmind hybrid vs keyword-only and vector-only")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
