"""``channelmind reindex`` and ``stats``: upkeep of the memory (the data folder, or inside the
server that owns it)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import indexed, memory, run, settings


def cmd_reindex(args: argparse.Namespace) -> int:
    from bot.memory_access import open_memory
    from bot.settings import mask_url
    from memory.client import MemoryClient

    config = settings()

    async def go() -> int:
        # Through the server that owns the folder (or CHANNELMIND_MEMORY_URL's): it rebuilds
        # its own index, with its own embedder. Otherwise this process owns the folder and
        # may switch the embedder (that is what a reindex is for).
        found = await open_memory(config, "command", background=False, allow_embedder_change=True)
        if isinstance(found, MemoryClient):
            async with found as client:
                queued = await client.rebuild_index()
                await indexed(client)
                embedder = (await client.stats()).embedder
            where = f"inside the memory server at {mask_url(client.base_url)}"
            print(f"reindexed {queued} messages with {embedder}, {where}")
            return 0
        engine = found
        try:
            done = await engine.reindex(progress=not args.quiet)
            print(f"reindexed {done} messages with {engine.embedder.fingerprint}")
        finally:
            await engine.close()
        return 0

    return run(go())


def cmd_stats(args: argparse.Namespace) -> int:
    config = settings()

    async def go() -> int:
        async with memory(config, background=False) as mem:
            stats = await mem.stats()
        if args.json:
            print(stats.model_dump_json())
        else:
            for key, value in stats.model_dump().items():
                print(f"{key:>14}: {value}")
        return 0

    return run(go())


def add(sub: Any) -> None:
    rx = sub.add_parser("reindex", help="rebuild the vector index from SQLite")
    rx.add_argument("--quiet", action="store_true")
    rx.set_defaults(func=cmd_reindex)

    st = sub.add_parser("stats", help="what the memory holds")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stats)
