"""Exact-match benchmark: what people search for by its exact string comes first.

``channelmind bench exact`` fills one channel with chat in which many messages carry an
identifier of the same shape: order numbers, error codes, ticket keys, versions, host names,
people's names. Each shape has a few hundred messages with the same wording around a
different identifier, so to a sentence embedder they are near neighbours of one another, and
the rest of the channel is ordinary chat. Then it asks about one identifier at a time ("what
happened to order 48213?") and counts how often the one message holding it is the first hit,
in keyword mode and in hybrid mode. The target is 100% in both.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..embedders import Embedder
from ..engine import MemoryEngine
from ..model import Episode, Scope, SearchMode
from .scale import Corpus

ORG = "T0EXACT"
PROJECT = "exact"
CHANNEL = "slack:C0EXACT"
SEED = 1500

_EVENTS = [
    "arrived damaged, refund issued",
    "was shipped to the old address",
    "is stuck in customs",
    "got cancelled by the customer",
    "was charged twice, reversed today",
    "shipped late because of the warehouse move",
]
_CAUSES = ["the cache was cold", "the token expired", "the disk filled up", "a bad config push"]
_TOPICS = ["billing", "search", "login", "payments", "mobile", "reporting"]
_FIRST = ["Thandiwe", "Ximena", "Bartholomew", "Ingrid", "Oluwaseun", "Radomir", "Siobhan"]
_SYLLABLES = "ko wal ad ey mi ha rald sen ab er na thy quil lo va ri dan cz yk ow".split()


KINDS = ("order", "error code", "ticket", "version", "host", "name")


@dataclass
class Needle:
    kind: str
    token: str
    message: str
    question: str


def needles(rng: np.random.Generator, per_kind: int) -> list[Needle]:
    """``per_kind`` messages of each shape, every one with its own identifier."""
    out: list[Needle] = []
    seen: set[str] = set()

    def pick(items: list[str]) -> str:
        return items[int(rng.integers(len(items)))]

    def make(kind: str) -> tuple[str, str, str]:
        """(identifier, message template, question template) for one shape."""
        if kind == "order":
            token = str(int(rng.integers(10000, 99999)))
            return token, "Customer says order {t} {e}", "what happened to order {t}?"
        if kind == "error code":
            token = f"ERR_{pick(_TOPICS).upper()}_{int(rng.integers(100, 999))}"
            return token, "deploy failed with {t}, looks like " + pick(_CAUSES), "what causes {t}?"
        if kind == "ticket":
            token = f"{pick(['OPS', 'WEB', 'PAY', 'APP'])}-{int(rng.integers(1000, 9999))}"
            return token, "{t} is blocked on the " + pick(_TOPICS) + " migration", "status of {t}?"
        if kind == "version":
            token = ".".join(
                str(int(rng.integers(lo, hi))) for lo, hi in ((1, 9), (0, 30), (0, 20))
            )
            template = "v{t} broke the " + pick(_TOPICS) + " client on older phones"
            return token, template, "what broke in v{t}?"
        if kind == "host":
            token = f"{pick(['db', 'api', 'cache', 'queue'])}-prod-{int(rng.integers(10, 99))}"
            return token, "{t} ran out of disk again, paged the on-call", "what's wrong with {t}?"
        surname = "".join(pick(_SYLLABLES) for _ in range(int(rng.integers(2, 4))))
        token = f"{pick(_FIRST)} {surname.capitalize()}"
        template = "{t} from the vendor asked about the " + pick(_TOPICS) + " invoice"
        return token, template, "what did {t} want?"

    for kind in KINDS:
        made = 0
        while made < per_kind:
            token, template, question = make(kind)
            if token.lower() in seen:
                continue
            seen.add(token.lower())
            event = pick(_EVENTS)
            out.append(
                Needle(kind, token, template.format(t=token, e=event), question.format(t=token))
            )
            made += 1
    return out


def corpus(messages: int = 1500, per_kind: int = 100) -> tuple[list[Episode], list[Needle]]:
    """``messages`` chat messages in one channel: the needles, then ordinary chat."""
    rng = np.random.default_rng(SEED)
    found = needles(rng, per_kind)
    filler_count = max(0, messages - len(found))
    filler: list[str] = []
    if filler_count:
        for batch in Corpus(filler_count, 1, seed=SEED).batches():
            filler += [e.content for e in batch]
    texts = [n.message for n in found] + filler
    order = rng.permutation(len(texts))
    start = datetime.now(UTC) - timedelta(days=30)
    episodes = [
        Episode(
            org_id=ORG,
            project_id=PROJECT,
            producer=f"slack:U{int(i) % 7:05d}",
            produced_for=CHANNEL,
            content=texts[int(i)],
            created_at=start + timedelta(minutes=n),
            platform="slack",
            source_id=f"{n:06d}",
            metadata={"display_name": f"member{int(i) % 7}"},
        )
        for n, i in enumerate(order)
    ]
    return episodes, found


async def run(
    embedder: Embedder, messages: int = 1500, per_kind: int = 100, queries: int = 100
) -> dict[str, Any]:
    episodes, found = corpus(messages, per_kind)
    rng = np.random.default_rng(SEED + 1)
    asked = [found[int(i)] for i in rng.choice(len(found), size=min(queries, len(found)))]
    scope = Scope(org_id=ORG, project_id=PROJECT, produced_for=CHANNEL)
    result: dict[str, Any] = {
        "messages": len(episodes),
        "queries": len(asked),
        "embedder": embedder.fingerprint,
    }
    with tempfile.TemporaryDirectory(prefix="channelmind-exact-") as tmp:
        engine = await MemoryEngine.open(Path(tmp), embedder, background=False)
        try:
            await engine.add(episodes)
            await engine.wait_indexed(timeout=None)
            modes: tuple[SearchMode, ...] = ("keyword", "hybrid")
            for mode in modes:
                first: dict[str, list[bool]] = {}
                for needle in asked:
                    res = await engine.search(needle.question, scope, top_k=3, mode=mode)
                    ok = bool(res.hits) and res.hits[0].episode.content == needle.message
                    first.setdefault(needle.kind, []).append(ok)
                every = [v for vals in first.values() for v in vals]
                result[mode] = {
                    "top1": round(sum(every) / len(every), 4),
                    "by_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(first.items())},
                }
        finally:
            await engine.close()
    return result


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"Exact matches: {result['queries']} questions about one identifier each, among"
        f" {result['messages']} messages; embedder {result['embedder']}",
        "share of questions whose message is the first hit:",
    ]
    for mode in ("keyword", "hybrid"):
        r = result[mode]
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in r["by_kind"].items())
        lines.append(f"  {mode:8} {r['top1']:.2f}  ({kinds})")
    return "\n".join(lines)


def main(embedder: Embedder, as_json: bool) -> int:
    import json

    result = asyncio.run(run(embedder))
    print(json.dumps(result) if as_json else format_report(result))
    return 0
