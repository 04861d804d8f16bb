"""``channelmind bench import``: how fast a Slack export is parsed and stored, in how much memory.

It writes a synthetic workspace export (a zip, written member by member), then, each in its own
process so that peak memory is its own:

* the baseline: the same number of ready-made episodes added to a fresh memory in batches
  (the store alone, nothing parsed or mapped);
* ``channelmind import slack`` on the export (unzip, parse, map, privacy checks, store).

It prints messages per second for both, their ratio, and each process's peak RSS, at two
export sizes, so that flat memory shows as the same peak for ten times the messages; and,
with ``--embed N``, how fast the configured embedder turns stored messages into vectors (the
time until imported history is searchable by meaning).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TEAM = "T0BENCH01"
WORDS = (
    "deploy database migration vendor contract budget review release friday staging"
    " latency customer invoice roadmap incident outage design meeting schedule"
).split()


def write_export(path: Path, messages: int, channels: int, days: int = 60) -> int:
    """A Slack export zip with ``messages`` messages spread over channels and days (a thread
    reply every 7th message, a join every 50th). Returns the number of messages written."""
    users = [
        {"id": f"U{i:08d}", "name": f"user{i}", "profile": {"display_name": f"User {i}"}}
        for i in range(50)
    ]
    chans = [{"id": f"C{i:08d}", "name": f"chan-{i}"} for i in range(channels)]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    per_day = max(1, messages // (channels * days))
    written = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("users.json", json.dumps(users))
        z.writestr("channels.json", json.dumps(chans))
        for c in chans:
            for d in range(days):
                if written >= messages:
                    break
                day = start + timedelta(days=d)
                batch: list[dict[str, Any]] = []
                parent = None
                for k in range(min(per_day, messages - written)):
                    ts = f"{day.timestamp() + k * 7:.6f}"
                    n = written + k
                    m: dict[str, Any] = {
                        "type": "message",
                        "user": users[n % 50]["id"],
                        "ts": ts,
                        "team": TEAM,
                        "text": " ".join(WORDS[(n * 7 + i) % len(WORDS)] for i in range(12)),
                    }
                    if n % 50 == 49:
                        m["subtype"] = "channel_join"
                    elif n % 7 == 6 and parent:
                        m["thread_ts"] = parent
                    else:
                        parent = ts
                    batch.append(m)
                written += len(batch)
                z.writestr(f"{c['name']}/{day:%Y-%m-%d}.json", json.dumps(batch))
    return written


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    output: str


def _child(argv: list[str], env: dict[str, str]) -> Run:
    """Run a child process and measure its own wall time and peak RSS (wait4's rusage)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({proc.returncode}):\n{out[-2000:]}")
    return Run(seconds, usage.ru_maxrss / 1024, out)


BASELINE = """
import asyncio, sys, time
from datetime import UTC, datetime
from memory import Episode, MemoryEngine
async def main(n):
    eng = await MemoryEngine.open(sys.argv[2], "hash", background=False)
    t = time.perf_counter()
    for s in range(0, n, 500):
        await eng.add([Episode(org_id="slack:T", project_id="channelmind", producer="slack:U1",
            produced_for="slack:C1", platform="slack", source_id=f"C1:{i}", content=f"msg {i} x",
            created_at=datetime.now(UTC), metadata={"display_name": "User"})
            for i in range(s, min(n, s + 500))])
    print("SECONDS", time.perf_counter() - t)
    await eng.close()
asyncio.run(main(int(sys.argv[1])))
"""


def _seconds(run: Run) -> float:
    for line in run.output.splitlines():
        if line.startswith("SECONDS"):
            return float(line.split()[1])
    return run.seconds


def measure(messages: int, channels: int, work: Path) -> dict[str, Any]:
    export = work / f"export-{messages}.zip"
    written = write_export(export, messages, channels)
    env = {**os.environ, "CHANNELMIND_EMBEDDER": "hash"}
    base = _child(
        [sys.executable, "-c", BASELINE, str(written), str(work / f"base-{messages}")], env
    )
    data = work / f"data-{messages}"
    imp = _child(
        [sys.executable, "-m", "bot.cli", "import", "slack", str(export), "--quiet"],
        {**env, "CHANNELMIND_DATA_DIR": str(data)},
    )
    # the import's own time (parse + map + store), without the process start
    import_seconds = next(
        float(line.split(" read in ")[1].split(" s")[0])
        for line in imp.output.splitlines()
        if " read in " in line
    )
    stored = next(
        (
            int(line.split()[1].replace(",", ""))
            for line in imp.output.splitlines()
            if line.strip().startswith("stored")
        ),
        0,
    )
    base_rate = written / _seconds(base)
    rate = written / import_seconds
    return {
        "messages": written,
        "stored": stored,
        "export_mb": round(export.stat().st_size / 1e6, 1),
        "store_only_msgs_per_s": round(base_rate),
        "import_msgs_per_s": round(rate),
        "import_vs_store_only": round(rate / base_rate, 2),
        "import_seconds": round(import_seconds, 1),
        "import_peak_rss_mb": round(imp.peak_rss_mb),
        "store_only_peak_rss_mb": round(base.peak_rss_mb),
    }


async def embed_rate(n: int, embedder: str, work: Path) -> dict[str, Any]:
    from datetime import datetime as dt

    from memory import Episode, MemoryEngine

    engine = await MemoryEngine.open(work / "embed", embedder, background=False)
    try:
        texts = [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)) for i in range(n)]
        await engine.add(
            [
                Episode(
                    org_id="slack:T",
                    project_id="channelmind",
                    producer="slack:U1",
                    produced_for="slack:C1",
                    platform="slack",
                    source_id=f"C1:{i}",
                    content=t,
                    created_at=dt.now(UTC),
                    metadata={"display_name": "User"},
                )
                for i, t in enumerate(texts)
            ]
        )
        started = time.perf_counter()
        while await engine.index_step():
            pass
        seconds = time.perf_counter() - started
    finally:
        await engine.close()
    rate = n / seconds
    return {
        "embedder": embedder,
        "embedded": n,
        "embed_msgs_per_s": round(rate, 1),
        "minutes_for_100k": round(100_000 / rate / 60, 1),
    }


def main(messages: int, channels: int, embed: int, embedder: str, as_json: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="cm-bench-import-") as tmp:
        work = Path(tmp)
        small = measure(max(1000, messages // 10), channels, work)
        large = measure(messages, channels, work)
        result: dict[str, Any] = {"small": small, "large": large}
        if embed:
            result["embedding"] = asyncio.run(embed_rate(embed, embedder, work))
    if as_json:
        print(json.dumps(result))
        return 0
    for name, r in (("small", small), ("large", large)):
        print(
            f"{name:>5}: {r['messages']:>7,} messages ({r['export_mb']} MB zip)"
            f" | import {r['import_msgs_per_s']:>6,} msg/s in {r['import_seconds']} s,"
            f" peak RSS {r['import_peak_rss_mb']} MB"
            f" | store only {r['store_only_msgs_per_s']:>6,} msg/s,"
            f" peak RSS {r['store_only_peak_rss_mb']} MB"
            f" | import/store-only {r['import_vs_store_only']}"
        )
    growth = large["import_peak_rss_mb"] - small["import_peak_rss_mb"]
    print(f"peak RSS grows {growth} MB for {large['messages'] - small['messages']:,} more messages")
    if embed:
        e = result["embedding"]
        print(
            f"embedding ({e['embedder']}): {e['embed_msgs_per_s']} msg/s;"
            f" 100k messages searchable by meaning in ~{e['minutes_for_100k']} min"
        )
    return 0
