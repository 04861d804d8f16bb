"""Store-level benchmark: the PostgreSQL store against the SQLite store, side by side.

    python -m memory.bench.stores scale --episodes 100000 [--database-url postgresql://...]
    python -m memory.bench.stores locomo --data ../shared/data/locomo/locomo-dev.json

``scale`` writes the synthetic chat of ``channelmind bench scale`` (same generator, same
seed) into each store through ``add`` in batches of 1,000, then times keyword search (the
store's part of a hybrid search: 50 candidates) for the same questions scoped to a channel and
to the whole project, and a forget of one message with what makes it complete (SQLite: WAL
checkpoint; PostgreSQL: VACUUM). PostgreSQL runs three ways: as built (scope tokens in the
tsvector, bm25 in SQL), with ``ts_rank_cd`` instead of bm25, and with the scope as a plain
WHERE beside the full-text match. ``locomo`` loads each LoCoMo conversation into both stores
and reports keyword-only recall@10, the number the ranking choice rests on.

Without ``--database-url`` a throwaway PostgreSQL cluster with default (durable) settings is
started in a temporary folder. This measures the stores, not the engine: no embedding, no
vectors, no fusion. ``channelmind bench scale --database-url`` is for the whole engine, once
the engine takes a store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

from memory.model import Brief, Episode, Scope
from memory.store.base import Store
from memory.store.postgres import PostgresStore
from memory.store.postgres.cluster import TempCluster
from memory.store.sqlite import SQLiteStore

from .scale import ORG, PROJECT, Corpus, percentile

DEPTH = 50  # candidates the engine asks the store for (max(50, 5 * top_k))


class Side:
    """One store under test, behind the few calls this benchmark makes."""

    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self.store = store

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def add(self, episodes: list[Episode]) -> None:
        await self.store.add(episodes)

    async def search(self, scope: Scope, text: str) -> list[tuple[Brief, float]]:
        hits = await self.store.keyword_search(scope, None, None, text, DEPTH)
        return [(h.episode, h.score) for h in hits]

    async def forget_one(self, scope: Scope) -> None:
        [victim] = await self.store.list_episodes(scope, None, None, 1, 0)
        await self.store.delete(scope.org_id, scope.project_id, [victim.uid])
        await self.store.purge()


def sqlite_side(folder: Path) -> Side:
    return Side("sqlite", SQLiteStore(folder / "memory.sqlite3"))


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    await call()
    return (time.perf_counter() - began) * 1000.0


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 2), "p95": round(percentile(values, 95), 2)}


async def _search_times(side: Side, corpus: Corpus, queries: int) -> dict[str, Any]:
    asked = corpus.queries(queries)
    everywhere = Scope(org_id=ORG, project_id=PROJECT)
    for text, _ in asked[:5]:  # warm caches as a running server has them
        await side.search(everywhere, text)
    channel_ms: list[float] = []
    project_ms: list[float] = []
    for text, channel in asked:
        scope = Scope(org_id=ORG, project_id=PROJECT, produced_for=channel)
        channel_ms.append(await _timed(lambda s=scope, t=text: side.search(s, t)))  # type: ignore[misc]
        project_ms.append(await _timed(lambda t=text: side.search(everywhere, t)))  # type: ignore[misc]
    forget_ms = []
    for _, channel in asked[:5]:
        scope = Scope(org_id=ORG, project_id=PROJECT, produced_for=channel)
        forget_ms.append(await _timed(lambda s=scope: side.forget_one(s)))  # type: ignore[misc]
    return {
        "channel_ms": _ms(channel_ms),
        "project_ms": _ms(project_ms),
        "forget_ms_median": round(statistics.median(forget_ms), 1),
    }


async def scale(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="cm-store-bench-") as tmp:
        sides: list[tuple[Side, list[Side]]] = [
            (sqlite_side(Path(tmp)), []),
            (
                Side("postgresql", PostgresStore(url)),
                [
                    Side("postgresql ts_rank_cd", PostgresStore(url, ranking="ts_rank_cd")),
                    Side("postgresql scope as WHERE", PostgresStore(url, scope_tokens=False)),
                ],
            ),
        ]
        for writer, variants in sides:
            corpus = Corpus(args.episodes, args.channels)
            async with AsyncExitStack() as stack:
                for side in (writer, *variants):
                    await side.open()
                    stack.push_async_callback(side.close)
                began = time.perf_counter()
                for batch in corpus.batches(1000):
                    await writer.add(batch)
                write_s = time.perf_counter() - began
                print(f"[{writer.name}] {args.episodes:,} written in {write_s:.1f} s",
                      file=sys.stderr)  # fmt: skip
                if isinstance(writer.store, PostgresStore):
                    # autovacuum would analyze after a bulk load; do it now, as it would
                    await writer.store.pool.execute("VACUUM ANALYZE episodes", timeout=None)
                for side in (writer, *variants):
                    row = {"store": side.name, "episodes": args.episodes,
                           "channels": args.channels, "queries": args.queries}  # fmt: skip
                    if side is writer:
                        row["write_per_s"] = round(args.episodes / write_s, 1)
                    row |= await _search_times(side, corpus, args.queries)
                    results.append(row)
                    print(json.dumps(row), flush=True)
    return results


async def locomo(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    from .locomo import load

    conversations = load(args.data)
    results = []
    with tempfile.TemporaryDirectory(prefix="cm-store-bench-") as tmp:
        sides: list[Side] = [
            sqlite_side(Path(tmp)),
            Side("postgresql", PostgresStore(url)),
            Side("postgresql ts_rank_cd", PostgresStore(url, ranking="ts_rank_cd")),
        ]
        for i, side in enumerate(sides):
            await side.open()
            try:
                if i < 2:  # the ts_rank_cd side reads what the bm25 side wrote
                    for conv in conversations:
                        await side.add(conv.episodes)
                recalls: dict[int, list[float]] = {5: [], 10: []}
                by_conversation: dict[str, list[float]] = {}
                for conv in conversations:
                    for q in conv.questions:
                        found = await side.search(q.scope, q.text)
                        for k, values in recalls.items():
                            ids = {ep.metadata.get("dia_id") for ep, _ in found[:k]}
                            values.append(len(q.evidence & ids) / len(q.evidence))
                        by_conversation.setdefault(conv.sample_id, []).append(recalls[10][-1])
                row = {"store": side.name, "questions": len(recalls[10])}
                row |= {f"recall@{k}": round(statistics.fmean(v), 3) for k, v in recalls.items()}
                row["recall@10_by_conversation"] = {
                    sid: round(statistics.fmean(v), 3) for sid, v in by_conversation.items()
                }
                results.append(row)
                print(json.dumps(row), flush=True)
            finally:
                await side.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m memory.bench.stores",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    sc = sub.add_parser("scale", help="writes and keyword search at size, PostgreSQL vs SQLite")
    sc.add_argument("--episodes", type=int, default=100_000)
    sc.add_argument("--channels", type=int, default=200)
    sc.add_argument("--queries", type=int, default=200)
    lo = sub.add_parser("locomo", help="keyword-only recall on LoCoMo, PostgreSQL vs SQLite")
    lo.add_argument("--data", type=Path, required=True)
    for p in (sc, lo):
        p.add_argument("--database-url", help="an empty PostgreSQL database (default: a"
                       " throwaway cluster in a temporary folder)")  # fmt: skip
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = args.database_url
        if not url:
            url = stack.enter_context(TempCluster(fast=False)).url()
        run = scale if args.what == "scale" else locomo
        asyncio.run(run(args, url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
