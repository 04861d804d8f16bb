"""LoCoMo retrieval benchmark: recall@k and all@k of the engine against two baselines.

Scoring follows shared/data/locomo/README.md: each conversation is its own scope (one
``produced_for``), one episode per turn with the speaker as producer and the session's date as
time, the image caption appended. For every question of categories 1-4 with a valid evidence
id, search the scope and take the first k turns returned. The baselines run through the same
engine: keyword only (FTS5 bm25) and vector only (the same embedder, Chroma).
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

from .bench_scale import percentile
from .embedders import Embedder
from .engine import MemoryEngine, SearchMode
from .model import Episode, Scope

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
        for qa in item["qa"]:
            if qa.get("category") not in (1, 2, 3, 4):
                continue
            evidence = {
                e.strip() for e in qa.get("evidence", []) if _EVIDENCE.match(e.strip())
            } & known
            if evidence:
                questions.append(Question(scope, qa["question"], int(qa["category"]), evidence))
        out.append(Conversation(sid, episodes, questions))
    return out


async def score(
    engine: MemoryEngine, conversations: list[Conversation], ks: list[int], mode: SearchMode
) -> dict[str, Any]:
    depth = max(ks)
    recall: dict[int, list[float]] = {k: [] for k in ks}
    all_k: dict[int, list[float]] = {k: [] for k in ks}
    per_cat: dict[int, dict[int, list[float]]] = {}
    latencies: list[float] = []
    for conv in conversations:
        for q in conv.questions:
            start = time.perf_counter()
            result = await engine.search(q.text, q.scope, top_k=depth, mode=mode)
            latencies.append((time.perf_counter() - start) * 1000)
            got = [h.episode.metadata.get("dia_id") for h in result.hits]
            for k in ks:
                top = set(got[:k])
                share = len(q.evidence & top) / len(q.evidence)
                recall[k].append(share)
                all_k[k].append(1.0 if q.evidence <= top else 0.0)
                per_cat.setdefault(q.category, {kk: [] for kk in ks})[k].append(share)
    out: dict[str, Any] = {}
    for k in ks:
        out[f"recall@{k}"] = round(statistics.fmean(recall[k]), 4) if recall[k] else 0.0
        out[f"all@{k}"] = round(statistics.fmean(all_k[k]), 4) if all_k[k] else 0.0
    out["by_category"] = {
        str(cat): {f"recall@{k}": round(statistics.fmean(v[k]), 4) for k in ks}
        for cat, v in sorted(per_cat.items())
    }
    out["search_ms_p50"] = round(percentile(latencies, 50), 2)
    out["search_ms_p95"] = round(percentile(latencies, 95), 2)
    out["questions"] = len(latencies)
    return out


async def run(
    data: Path, ks: list[int], embedder: Embedder, data_dir: Path | None = None
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
        finally:
            await engine.close()
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
    head = f"{'':22}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
    head += "".join(f"{'all@' + str(k):>8}" for k in ks) + f"{'p50 ms':>9}{'p95 ms':>9}"
    lines = [
        f"LoCoMo retrieval: {result['conversations']} conversations, {result['turns']} turns,"
        f" {result['questions']} questions; embedder {result['embedder']}",
        f"ingest {result['ingest_s']} s (SQLite), index {result['index_s']} s (embed + Chroma)",
        head,
    ]
    for name, r in rows:
        line = f"{name:22}" + "".join(f"{r[f'recall@{k}']:8.3f}" for k in ks)
        line += "".join(f"{r[f'all@{k}']:8.3f}" for k in ks)
        lines.append(line + f"{r['search_ms_p50']:9.1f}{r['search_ms_p95']:9.1f}")
    lines.append("recall@k by category (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop):")
    for cat in result["by_category"]:
        parts = [
            f"{name.split()[0]} "
            + "/".join(f"{r['by_category'].get(cat, {}).get(f'recall@{k}', 0):.3f}" for k in ks)
            for name, r in rows
        ]
        lines.append(f"  cat {cat}: " + "  ".join(parts))
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
