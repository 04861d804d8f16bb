"""``channelmind migrate --to postgresql://...``: move an embedded data folder to PostgreSQL.

The folder is owned (:mod:`memory.folder`) while its records are copied: a running server
that owns it is refused rather than gone through, because a copy can only be verified when
nothing writes the source meanwhile, and the memory API has no way to list settings or stream
every record. Then the target's indexer embeds the copied messages into the vector index the
migrated memory will serve from: a Chroma server (``--chroma-url``, default
``CHANNELMIND_CHROMA_URL``), or the folder's embedded Chroma (``--chroma-url embedded``), in
which case ``serve`` on the target must keep this data folder. See :mod:`memory.migrate` for
what is copied and how a second run resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import UsageError, run, settings

if TYPE_CHECKING:
    from memory.migrate import Migration

EMBEDDED = "embedded"


def check_chroma(url: str) -> None:
    """One line unless a Chroma server answers at ``url`` (checked before anything is copied,
    so that a wrong URL does not show only after the records are in)."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/api/v2/heartbeat", timeout=10)
    except (httpx.HTTPError, ValueError) as exc:
        raise UsageError(
            f"cannot reach the Chroma server at {url} ({type(exc).__name__}); start it"
            " (`chroma run`), correct --chroma-url, or give --chroma-url embedded"
        ) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    from bot.memory_access import build_embedder
    from bot.settings import mask_url
    from memory import MemoryEngine
    from memory.embedders import folder_embedder
    from memory.folder import FolderInUse, FolderLock
    from memory.migrate import adopt_vectors, claim_target, copy_records, embed_pending
    from memory.store.factory import SQLITE_FILE, check_database_url
    from memory.store.postgres import PostgresStore
    from memory.store.postgres.store import redact
    from memory.store.sqlite import SQLiteStore

    config = settings()
    folder = Path(args.data_dir) if args.data_dir else config.data_dir
    check_database_url(args.to, setting="--to")
    chroma = args.chroma_url if args.chroma_url is not None else config.chroma_url
    chroma = None if chroma in (None, "", EMBEDDED) else chroma
    if not (folder / SQLITE_FILE).is_file():
        raise UsageError(
            f"no embedded memory in {folder} (no {SQLITE_FILE}); give --data-dir or set"
            " CHANNELMIND_DATA_DIR to the folder `channelmind serve` uses"
        )
    where = f"PostgreSQL at {redact(args.to)}"
    progress = not args.quiet

    async def go() -> int:
        if chroma:
            await asyncio.to_thread(check_chroma, chroma)
        embedder = await asyncio.to_thread(build_embedder, config)
        try:
            lock = await asyncio.to_thread(FolderLock.acquire, folder)
        except FolderInUse as exc:
            raise UsageError(
                f"data folder {folder} is in use by {exc.owner.describe()}; stop it first"
                " (a folder is migrated while nothing writes it)"
            ) from None
        source = SQLiteStore(folder / SQLITE_FILE)
        target = PostgresStore(args.to, setting="--to")
        started = time.monotonic()
        try:
            await source.open()
            stored = await source.get_meta("embedder")
            if stored is not None and stored != embedder.fingerprint:
                found = await asyncio.to_thread(
                    folder_embedder, stored, embedder, config.embedder_backend
                )
                if found is None:
                    raise UsageError(
                        f"{folder} was indexed with the embedder {stored!r} but"
                        f" {embedder.fingerprint!r} is configured; set CHANNELMIND_EMBEDDER (and"
                        " CHANNELMIND_EMBEDDING_MODEL) as `channelmind serve` has them for it"
                    )
                embedder = found  # the folder's own local backend, as `serve` runs it
            await target.open()
            await claim_target(source, target, where, str(folder))
            print(f"migrating {folder} to {where}", flush=True)
            result = await copy_records(source, target, batch=args.batch, progress=progress)
        finally:
            try:
                await source.close()
                await target.close()
            finally:
                lock.release()
        copied_s = time.monotonic() - started

        engine = await MemoryEngine.open(
            folder,
            embedder,
            settings=config.model_copy(update={"chroma_url": chroma}),
            store=PostgresStore(args.to),
            background=False,
            claim_lease_s=30.0,  # a killed run's rows are taken again soon by the next one
        )
        try:
            adopted = await adopt_vectors(engine) if result.vectors_current else 0
            embedded = await embed_pending(engine, progress)
            vectors = (await engine.stats()).vectors
        finally:
            await engine.close()

        index = f"the Chroma server at {mask_url(chroma)}" if chroma else f"{folder}/chroma"
        return report(result, (adopted, embedded, vectors), index, where, str(folder), copied_s)

    return run(go())


def report(
    result: Migration,
    vectors: tuple[int, int, int],
    index: str,
    where: str,
    folder: str,
    seconds: float,
) -> int:
    """Print what was copied and the per-project counts; 1 when they differ. ``vectors``:
    kept from the index, embedded, and in the index at the end."""
    adopted, embedded, held = vectors
    episodes = result.tallies["episodes"]
    if result.copied == 0 and adopted == 0 and embedded == 0:
        print(f"nothing to copy: {where} already holds everything in {folder}")
    else:
        for kind, tally in result.tallies.items():
            print(f"{kind:>9}: {tally.copied} copied, {tally.present} already in the target")
        rate = episodes.copied / seconds if seconds > 0 else 0.0
        print(f"records copied in {seconds:.1f} s ({rate:.0f} episodes/s)")
        print(f"  vectors: {adopted} kept from {index}, {embedded} messages embedded into it")
    print(f"{'org/project':<40} {'episodes source/target':>23} {'facts source/target':>20}")
    for c in result.checks:
        name = f"{c.org_id}/{c.project_id}"
        print(
            f"{name:<40} {c.source_episodes:>11}/{c.target_episodes:<11}"
            f" {c.source_facts:>9}/{c.target_facts:<10}"
        )
        if c.unreadable_episodes or c.unreadable_facts:
            print(
                f"  (set aside in the source as unreadable, not copied: {c.unreadable_episodes}"
                f" episodes, {c.unreadable_facts} facts)"
            )
    print(f"{held} vectors in {index}")
    for kind, tally in result.tallies.items():
        for uid, reason in tally.refused[:20]:
            print(f"refused {kind[:-1]} {uid}: {reason}", file=sys.stderr)
    differences = result.differences()
    if differences:
        print(f"counts differ: {'; '.join(differences)}", file=sys.stderr)
        return 1
    print("counts match")
    return 0


def add(sub: Any) -> None:
    from memory.store.factory import URL_SHAPE

    mg = sub.add_parser(
        "migrate",
        help="copy an embedded data folder into PostgreSQL (resumable; verifies counts)",
    )
    mg.add_argument("--to", required=True, metavar="URL", help=URL_SHAPE)
    mg.add_argument(
        "--chroma-url",
        metavar="URL|embedded",
        help="the vector index the migrated memory serves from: a Chroma server, or"
        " 'embedded' (the folder's own Chroma); default CHANNELMIND_CHROMA_URL, else embedded",
    )
    mg.add_argument("--data-dir", help="the folder to copy; default CHANNELMIND_DATA_DIR")
    mg.add_argument("--batch", type=int, default=1000, help=argparse.SUPPRESS)
    mg.add_argument("--quiet", action="store_true", help="no progress bars")
    mg.set_defaults(func=cmd_migrate)
