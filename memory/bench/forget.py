"""What forgetting costs: the latency of deleting and of editing one message, with Chroma's
files scrubbed (what the engine does) and without (the baseline), measured in the same run on
the same data (hashing embedder, SQLite and Chroma in a temp folder).

    python -m memory.bench.forget --sizes 2000 20000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..engine import MemoryEngine
from ..index.chroma import ChromaIndex
from ..model import Episode, Scope

ORG, PROJECT = "T0BENCH", "forget"


@contextmanager
def scrubbing(enabled: bool) -> Iterator[None]:
    """The baseline: the engine as it was before it scrubbed Chroma's files."""
    original = ChromaIndex.scrub
    if not enabled:
        ChromaIndex.scrub = lambda self, collections=None: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        ChromaIndex.scrub = original  # type: ignore[method-assign]


async def measure(folder: Path, size: int, scrub: bool, repeats: int) -> tuple[float, float]:
    """Median seconds to delete one message, and to edit one, in a folder of ``size``."""
    with scrubbing(scrub):
        engine = await MemoryEngine.open(folder, "hash", index_batch=1024)
        try:
            for start in range(0, size, 2000):
                await engine.add(
                    [
                        Episode(
                            org_id=ORG,
                            project_id=PROJECT,
                            producer=f"slack:U{i % 50}",
                            produced_for=f"slack:C{i % 10}",
                            platform="slack",
                            source_id=str(i),
                            content=f"message {i} about topic {i % 97} and thing {i % 13}",
                        )
                        for i in range(start, min(size, start + 2000))
                    ]
                )
            await engine.wait_indexed(timeout=None)
            scope = Scope(org_id=ORG, project_id=PROJECT)
            uids = [e.uid for e in await engine.list(scope, page_size=2 * repeats)]
            deletes, edits = [], []
            for uid in uids[:repeats]:
                started = time.perf_counter()
                await engine.delete(ORG, PROJECT, [uid])
                deletes.append(time.perf_counter() - started)
            for uid in uids[repeats:]:
                started = time.perf_counter()
                await engine.edit(uid, "edited", org_id=ORG, project_id=PROJECT)
                edits.append(time.perf_counter() - started)
            return statistics.median(deletes), statistics.median(edits)
        finally:
            await engine.close()


async def run(sizes: list[int], repeats: int) -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory(prefix="channelmind-bench-forget-") as tmp:
        for size in sizes:
            base = await measure(Path(tmp) / f"base-{size}", size, False, repeats)
            new = await measure(Path(tmp) / f"scrub-{size}", size, True, repeats)
            lines.append(
                f"{size:>7} messages: delete median {base[0] * 1000:.0f} ms ->"
                f" {new[0] * 1000:.0f} ms (x{new[0] / base[0]:.1f}); edit median"
                f" {base[1] * 1000:.0f} ms -> {new[1] * 1000:.0f} ms (x{new[1] / base[1]:.1f})"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print("baseline: without scrubbing Chroma's files -> as the engine does it")
    for line in asyncio.run(run(args.sizes, args.repeats)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
