"""``channelmind reindex`` and ``stats``: upkeep of the embedded memory."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


def cmd_reindex(args: argparse.Namespace) -> int:
    from memory import MemoryEngine

    async def go() -> int:
        engine = await MemoryEngine.open(allow_embedder_change=True, background=False)
        try:
            done = await engine.reindex(progress=not args.quiet)
            print(f"reindexed {done} messages with {engine.embedder.fingerprint}")
        finally:
            await engine.close()
        return 0

    return asyncio.run(go())


def cmd_stats(args: argparse.Namespace) -> int:
    from memory import MemoryEngine

    async def go() -> int:
        engine = await MemoryEngine.open(background=False)
        try:
            stats = await engine.stats()
        finally:
            await engine.close()
        if args.json:
            print(stats.model_dump_json())
        else:
            for key, value in stats.model_dump().items():
                print(f"{key:>14}: {value}")
        return 0

    return asyncio.run(go())


def add(sub: Any) -> None:
    rx = sub.add_parser("reindex", help="rebuild the vector index from SQLite")
    rx.add_argument("--quiet", action="store_true")
    rx.set_defaults(func=cmd_reindex)

    st = sub.add_parser("stats", help="what the memory holds")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stats)
