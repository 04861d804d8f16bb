"""A writer killed with SIGKILL mid-ingest loses nothing it acknowledged, and leaves no
vector without its row: the next open re-indexes what Chroma missed and applies the
deletions' tombstones."""

from __future__ import annotations

import asyncio
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from memory.engine import MemoryEngine
from memory.model import Scope, embed_text
from tests.crash_writer import CHANNELS, ORG, PROJECT

ROOT = Path(__file__).resolve().parent.parent
#: Run as a module from the repository root: run as a script, its folder (tests/) would come
#: first on sys.path, and tests/memory/ would shadow the memory package.
WRITER = "tests.crash_writer"
BATCHES, BATCH_SIZE = 400, 40
MIN_ACKS = 12


@dataclass
class Ledger:
    """What the killed writer acknowledged."""

    words: dict[str, str] = field(default_factory=dict)  # uid -> its unique word
    deleted: set[str] = field(default_factory=set)
    in_doubt: set[str] = field(default_factory=set)  # a delete was under way at the kill
    acks: int = 0
    done: bool = False

    def read(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        parts = rest.split()
        if kind == "ACK":
            self.acks += 1
            self.words.update(zip(parts[::2], parts[1::2], strict=True))
        elif kind == "DELETING":
            self.in_doubt |= set(parts)
        elif kind == "DEL":
            self.in_doubt -= set(parts)
            self.deleted |= set(parts)
        elif kind == "DONE":
            self.done = True

    @property
    def present(self) -> set[str]:
        return set(self.words) - self.deleted - self.in_doubt


def db_counts(data_dir: Path) -> tuple[int, int]:
    """(indexed rows, pending rows), read by another process's view of the store."""
    pg = os.environ.get("CHANNELMIND_DATABASE_URL")
    if pg is not None:
        return ThreadPoolExecutor(1).submit(asyncio.run, pg_counts(pg)).result()
    path = data_dir / "memory.sqlite3"
    if not path.exists():
        return 0, 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT indexed, count(*) FROM episodes GROUP BY indexed")
            counts = dict(rows.fetchall())
    except sqlite3.OperationalError:  # schema not created yet
        return 0, 0
    return counts.get(1, 0), counts.get(0, 0)


async def pg_counts(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT index_state, count(*) FROM episodes GROUP BY 1")
    except asyncpg.UndefinedTableError:  # schema not created yet
        return 0, 0
    finally:
        await conn.close()
    counts = {r[0]: r[1] for r in rows}
    return counts.get(1, 0), counts.get(0, 0)


def run_and_kill(data_dir: Path, run: int, ledger: Ledger) -> tuple[int, int]:
    """Start the writer, SIGKILL it once it has acknowledged enough and the indexer has
    indexed something, then read every line it managed to write. Returns the row counts
    (indexed, pending) seen just before the kill."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHANNELMIND_CHROMA_URL": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", WRITER, str(data_dir), str(run), str(BATCHES), str(BATCH_SIZE)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    counts = (0, 0)
    acks_at_start = ledger.acks
    deadline = time.monotonic() + 120
    try:
        while True:
            assert time.monotonic() < deadline, "the writer never got going"
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            assert line is not None, "the writer exited before it was killed"
            if line.endswith("\n"):
                ledger.read(line.strip())
            assert not ledger.done, "the writer finished before it was killed"
            if ledger.acks - acks_at_start >= MIN_ACKS:
                counts = db_counts(data_dir)
                if counts[0] > 0:  # the indexer is at work
                    break
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    # Lines written before the kill are acknowledgements too; a torn last line is not.
    while (line := lines.get(timeout=30)) is not None:
        if line.endswith("\n"):
            ledger.read(line.strip())
    assert proc.returncode == -signal.SIGKILL
    return counts


async def check_recovered(data_dir: Path, ledger: Ledger) -> None:
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        await engine.wait_indexed(timeout=180)
        stats = await engine.stats()
        assert stats.pending_index == 0

        # Every acknowledged message is there (and every acknowledged delete is applied).
        present = sorted(ledger.present)
        got = await engine.get(ORG, PROJECT, present)
        assert {e.uid for e in got} == set(present)
        assert await engine.get(ORG, PROJECT, sorted(ledger.deleted)) == []

        # ...and findable by its unique word.
        scope = Scope(org_id=ORG, project_id=PROJECT)
        for uid in present:
            hits = await engine.search(ledger.words[uid], scope, top_k=3, mode="keyword")
            assert [h.episode.uid for h in hits.hits] == [uid], ledger.words[uid]
        # ...and each has the vector of its own text, tagged with its channel: read by uid,
        # exactly (a row re-indexed after the kill must not get another row's vector).
        by_uid = {e.uid: e for e in got}
        assert engine.index is not None
        texts = [embed_text(by_uid[uid]) for uid in present]
        expected = await engine.embedding.embed(texts)
        for uid, want in zip(present, expected, strict=True):
            stored = engine.index.vector(ORG, PROJECT, by_uid[uid].produced_for, uid)
            assert stored is not None, uid
            assert float(stored @ want) > 0.9999, uid

        # A search by meaning finds them. HNSW is approximate, and more so on these synthetic
        # near-duplicates ("message 27 of batch 93 says ..."): its graph leaves a few vectors
        # out of every walk even with no kill, no delete and no update (16 of 5,952 such
        # messages written in batches of 64 into a fresh collection; in a loop of this test, 3
        # runs of 60 drew one into the sample: issue 15's note). So most of a sample, not all.
        found = 0
        for uid in random.Random(7).sample(present, 25):
            hits = await engine.search(by_uid[uid].content, scope, top_k=3, mode="vector")
            found += uid in [h.episode.uid for h in hits.hits]
        assert found >= 23, f"only {found} of 25 found by meaning"

        # Vectors: exactly the rows, in the project collection and in each channel's.
        rows = {e.uid: e for e in await engine.list(scope, page_size=10_000)}
        assert set(present) <= set(rows)
        assert engine.index.ids(ORG, PROJECT) == set(rows)
        for channel in CHANNELS:
            in_channel = {u for u, e in rows.items() if e.produced_for == channel}
            assert engine.index.ids(ORG, PROJECT, channel) == in_channel
        orphans = engine.index.vector_ids() - set(rows)
        assert not orphans, f"{len(orphans)} vectors without a row"
        assert stats.vectors == stats.episodes == len(rows)
    finally:
        await engine.close()


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("each_store")
async def test_sigkill_mid_ingest_loses_no_acknowledged_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On each store. On PostgreSQL the killed writer's claims are leases that end: short
    here (CHANNELMIND_CLAIM_LEASE_SECONDS), so that the recovery takes its rows soon."""
    monkeypatch.setenv("CHANNELMIND_CLAIM_LEASE_SECONDS", "10")
    data_dir = tmp_path / "data"
    ledger = Ledger()
    for run in range(2):  # killed twice on the same folder: recovery composes
        indexed, pending = run_and_kill(data_dir, run, ledger)
        assert indexed > 0, f"killed before the indexer ran ({pending} rows pending)"
        assert ledger.acks >= MIN_ACKS * (run + 1)
        assert ledger.deleted, "no acknowledged delete to check"
        await check_recovered(data_dir, ledger)
