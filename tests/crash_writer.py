"""A writer to be killed: ingests batches into an engine and acknowledges each one on stdout.

Usage: python -m tests.crash_writer DATA_DIR RUN BATCHES BATCH_SIZE

After ``add`` returns for a batch it prints ``ACK <uid> <word> <uid> <word> ...`` (each
message carries one unique word, unique across runs too); every fifth batch it deletes two
messages of an earlier batch, printing ``DELETING <uid> <uid>`` before and ``DEL <uid> <uid>``
after ``delete`` returns. Lines are flushed at once, so whatever the parent has read was
acknowledged before the process died.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from memory.engine import MemoryEngine
from memory.model import Episode

ORG = "T0CRASH"
PROJECT = "ingest"
CHANNELS = ["slack:C1", "slack:C2", "slack:C3"]


def unique_word(run: int, batch: int, i: int) -> str:
    return f"kw{run}r{batch:05d}x{i:04d}q"


async def main(data_dir: Path, run: int, batches: int, size: int) -> None:
    engine = await MemoryEngine.open(data_dir, "hash", index_batch=64)
    print("OPEN", flush=True)
    acked: list[list[str]] = []
    for b in range(batches):
        eps = [
            Episode(
                org_id=ORG,
                project_id=PROJECT,
                producer=f"slack:U{i % 7}",
                produced_for=CHANNELS[i % len(CHANNELS)],
                platform="slack",
                source_id=f"{run}.{b}.{i}",
                content=f"message {i} of batch {b} says {unique_word(run, b, i)} about it",
            )
            for i in range(size)
        ]
        uids = await engine.add(eps)
        words = [unique_word(run, b, i) for i in range(size)]
        print("ACK " + " ".join(f"{u} {w}" for u, w in zip(uids, words, strict=True)), flush=True)
        acked.append(uids)
        if b % 5 == 4:
            victims = acked[b - 3][:2]
            print("DELETING " + " ".join(victims), flush=True)
            await engine.delete(ORG, PROJECT, victims)
            print("DEL " + " ".join(victims), flush=True)
        await asyncio.sleep(0)  # let the indexer run between batches
    print("DONE", flush=True)
    await engine.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:5])))
