"""The SQLite file gives back the pages it no longer uses (after indexing and after a forget)
instead of keeping them free inside the file; a file written before this (no
``auto_vacuum``) opens and works as it is."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from memory.engine import MemoryEngine
from memory.model import Scope
from memory.store.sqlite.store import SPARE_PAGES
from tests.conftest import GENERAL, ORG, PROJECT, RANDOM, episode


def pragmas(path: Path) -> tuple[int, int, int]:
    """auto_vacuum mode, free pages, all pages."""
    with closing(sqlite3.connect(path)) as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(f"PRAGMA {p}").fetchone()[0])
            for p in ("auto_vacuum", "freelist_count", "page_count")
        )


async def fill_and_forget(data_dir: Path) -> int:
    """Store and index a busy channel and a quiet one, forget the busy one; the pages the
    file had before the forget."""
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        busy = [
            episode(
                f"deploy note {i}: the staging build {i * 7} passed its checks",
                produced_for=GENERAL,
                source_id=f"g{i}",
            )
            for i in range(3000)
        ]
        await engine.add(busy)
        await engine.add([episode("the espresso machine needs descaling", produced_for=RANDOM)])
        await engine.wait_indexed()
        with closing(sqlite3.connect(data_dir / "memory.sqlite3")) as conn:
            before = int(conn.execute("PRAGMA page_count").fetchone()[0])
        await engine.forget(ORG, project_id=PROJECT, produced_for=GENERAL)
        found = await engine.search("espresso", Scope(org_id=ORG, project_id=PROJECT))
        assert [h.episode.content for h in found.hits] == ["the espresso machine needs descaling"]
    finally:
        await engine.close()
    return before


async def test_forgetting_a_channel_gives_its_pages_back(data_dir: Path) -> None:
    before = await fill_and_forget(data_dir)
    mode, free, pages = pragmas(data_dir / "memory.sqlite3")
    assert mode == 2  # incremental
    assert free <= SPARE_PAGES and pages < before / 2


async def test_a_file_without_auto_vacuum_works_as_it_is(data_dir: Path) -> None:
    engine = await MemoryEngine.open(data_dir, "hash")
    await engine.close()
    with closing(sqlite3.connect(data_dir / "memory.sqlite3", isolation_level=None)) as conn:
        conn.execute("PRAGMA auto_vacuum=NONE")
        conn.execute("VACUUM")  # as earlier versions made it
    assert pragmas(data_dir / "memory.sqlite3")[0] == 0
    await fill_and_forget(data_dir)
    mode, free, _ = pragmas(data_dir / "memory.sqlite3")
    assert mode == 0 and free > SPARE_PAGES  # its pages stay free inside the file, as before
