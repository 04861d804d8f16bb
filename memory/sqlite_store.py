"""SQLite, the source of truth: episodes, their FTS5 index, facts, and the index bookkeeping.

One writer connection (serialised by a lock, so that no two coroutines interleave inside one
transaction) and one reader connection; WAL mode lets them run side by side without
"database is locked". ``secure_delete`` overwrites forgotten content instead of leaving it in
free pages, and forgetting checkpoints the WAL for the same reason.

Scope tags: every row carries ``fts_tags``, tokens derived from its org/project, channel,
producer and thread, indexed in the FTS table's second column. A channel-scoped keyword search
then matches ``fts_tags : <channel token>`` inside FTS5 itself instead of filtering afterwards,
which is what keeps it fast past 100k rows (see shared/reference/measurements.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import uuid
from collections.abc import Awaitable, Generator, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from .filters import Filter, to_sql
from .model import Episode, Fact, InvalidInput, Scope, TimeRange
from .text import terms

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE episodes (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            org_id TEXT NOT NULL,
            project_id TEXT NOT NULL,
            producer TEXT NOT NULL,
            produced_for TEXT NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at REAL NOT NULL,
            platform TEXT NOT NULL,
            source_id TEXT NOT NULL,
            thread_id TEXT,
            episode_type TEXT NOT NULL,
            metadata TEXT NOT NULL,
            fts_tags TEXT NOT NULL,
            indexed INTEGER NOT NULL DEFAULT 0,
            edited_at REAL,
            UNIQUE (org_id, project_id, platform, source_id)
        )""",
        "CREATE INDEX ep_channel ON episodes (org_id, project_id, produced_for, created_at)",
        "CREATE INDEX ep_producer ON episodes (org_id, project_id, producer, created_at)",
        "CREATE INDEX ep_time ON episodes (org_id, project_id, created_at)",
        "CREATE INDEX ep_thread ON episodes (org_id, project_id, produced_for, thread_id,"
        " created_at) WHERE thread_id IS NOT NULL",
        "CREATE INDEX ep_pending ON episodes (indexed) WHERE indexed = 0",
        """CREATE VIRTUAL TABLE episodes_fts USING fts5(
            content, fts_tags, content='episodes', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2')""",
        """CREATE TRIGGER episodes_ai AFTER INSERT ON episodes BEGIN
            INSERT INTO episodes_fts(rowid, content, fts_tags)
            VALUES (new.id, new.content, new.fts_tags);
        END""",
        """CREATE TRIGGER episodes_ad AFTER DELETE ON episodes BEGIN
            INSERT INTO episodes_fts(episodes_fts, rowid, content, fts_tags)
            VALUES ('delete', old.id, old.content, old.fts_tags);
        END""",
        """CREATE TRIGGER episodes_au AFTER UPDATE OF content, fts_tags ON episodes BEGIN
            INSERT INTO episodes_fts(episodes_fts, rowid, content, fts_tags)
            VALUES ('delete', old.id, old.content, old.fts_tags);
            INSERT INTO episodes_fts(rowid, content, fts_tags)
            VALUES (new.id, new.content, new.fts_tags);
        END""",
        # Vectors whose rows are gone, to be dropped from the vector index. Written in the
        # same transaction as the delete, so a crash in between cannot orphan a vector.
        """CREATE TABLE vector_tombstones (
            uid TEXT NOT NULL, org_id TEXT NOT NULL, project_id TEXT NOT NULL,
            produced_for TEXT NOT NULL)""",
        """CREATE TABLE facts (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            org_id TEXT NOT NULL,
            project_id TEXT NOT NULL,
            subject TEXT NOT NULL,
            produced_for TEXT NOT NULL,
            category TEXT NOT NULL,
            tag TEXT NOT NULL,
            feature TEXT NOT NULL,
            value TEXT NOT NULL,
            created_at REAL NOT NULL,
            superseded_at REAL,
            superseded_by TEXT,
            metadata TEXT NOT NULL
        )""",
        "CREATE INDEX facts_subject ON facts (org_id, project_id, subject, produced_for)",
        """CREATE TABLE fact_citations (
            fact_uid TEXT NOT NULL REFERENCES facts(uid) ON DELETE CASCADE,
            episode_uid TEXT NOT NULL,
            PRIMARY KEY (fact_uid, episode_uid))""",
        "CREATE INDEX fact_citations_episode ON fact_citations (episode_uid)",
        """CREATE TABLE projects (
            org_id TEXT NOT NULL, project_id TEXT NOT NULL, description TEXT NOT NULL,
            config TEXT NOT NULL, created_at REAL NOT NULL,
            PRIMARY KEY (org_id, project_id))""",
        """CREATE TABLE settings (
            org_id TEXT NOT NULL, project_id TEXT NOT NULL, subject TEXT NOT NULL,
            key TEXT NOT NULL, value TEXT NOT NULL,
            PRIMARY KEY (org_id, project_id, subject, key))""",
    ],
    2: [
        # pending() takes rows channel by channel; this lets it read them in that order
        # instead of sorting every pending row on each batch (a bulk load of 1M rows).
        "CREATE INDEX ep_pending_channel ON episodes (org_id, project_id, produced_for, id)"
        " WHERE indexed = 0",
        "DROP INDEX ep_pending",
    ],
    3: [
        # Records set aside: stored but unreadable (e.g. a time written before the valid range
        # was enforced) or unembeddable. They are skipped, counted, logged once, and deletable;
        # an episode set aside is also marked ``indexed = 2`` so that the indexer skips it.
        """CREATE TABLE set_aside (
            uid TEXT PRIMARY KEY, kind TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL)""",
    ],
}
#: Set in the transaction that deletes or edits episodes, cleared once the vector index's
#: files hold nothing of them: a crash in between scrubs on the next open.
_SCRUB_KEY = "vector_scrub_pending"
_NEEDS_SCRUB = f"INSERT OR REPLACE INTO meta VALUES ('{_SCRUB_KEY}', '1')"
#: ``episodes.indexed``: waiting for its vector, in the vector index, set aside.
PENDING, INDEXED, SET_ASIDE = 0, 1, 2
#: What a broken row raises when it is turned into a record.
_UNREADABLE = (ValueError, OverflowError, OSError, TypeError, IndexError)

EPISODE_COLUMNS = (
    "id, uid, org_id, project_id, producer, produced_for, role, content, created_at, platform,"
    " source_id, thread_id, episode_type, metadata, indexed"
)

ECOLS = ", ".join("e." + c.strip() for c in EPISODE_COLUMNS.split(","))


def _tag(kind: str, *parts: str) -> str:
    """A scope token: letters then decimal digits, untouched by the porter stemmer."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return f"z{kind}{int.from_bytes(digest, 'little'):020d}"


def project_tag(org_id: str, project_id: str) -> str:
    return _tag("o", org_id, project_id)


def channel_tag(org_id: str, project_id: str, produced_for: str) -> str:
    return _tag("c", org_id, project_id, produced_for)


def producer_tag(org_id: str, project_id: str, producer: str) -> str:
    return _tag("p", org_id, project_id, producer)


def thread_tag(org_id: str, project_id: str, produced_for: str, thread_id: str) -> str:
    return _tag("t", org_id, project_id, produced_for, thread_id)


def fts_tags(ep: Episode) -> str:
    tags = [
        project_tag(ep.org_id, ep.project_id),
        channel_tag(ep.org_id, ep.project_id, ep.produced_for),
        producer_tag(ep.org_id, ep.project_id, ep.producer),
    ]
    if ep.thread_id:
        tags.append(thread_tag(ep.org_id, ep.project_id, ep.produced_for, ep.thread_id))
    return " ".join(tags)


def keyword_terms(text: str, limit: int = 32) -> list[str]:
    """The query words worth searching for: lower-cased, deduplicated, stopwords dropped."""
    return terms(text)[:limit]


def to_epoch(value: datetime) -> float:
    return value.timestamp()


def from_epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def row_to_episode(row: Sequence[Any]) -> Episode:
    """Build an Episode from a row selected with EPISODE_COLUMNS."""
    _, uid, org, proj, producer, produced_for, role, content, created, platform, source = row[:11]
    thread_id, episode_type, metadata = row[11:14]
    return Episode.model_construct(
        uid=uid,
        org_id=org,
        project_id=proj,
        producer=producer,
        produced_for=produced_for,
        role=role,
        content=content,
        created_at=from_epoch(created),
        platform=platform,
        source_id=None if source == uid else source,
        thread_id=thread_id,
        episode_type=episode_type,
        metadata=json.loads(metadata),
    )


FACT_COLUMNS = (
    "f.uid, f.org_id, f.project_id, f.subject, f.produced_for, f.category, f.tag, f.feature,"
    " f.value, f.created_at, f.superseded_at, f.superseded_by, f.metadata,"
    " (SELECT json_group_array(episode_uid) FROM fact_citations c WHERE c.fact_uid = f.uid)"
)


def row_to_fact(r: Sequence[Any]) -> Fact:
    """Build a Fact from a row selected with FACT_COLUMNS."""
    return Fact.model_construct(
        uid=r[0],
        org_id=r[1],
        project_id=r[2],
        subject=r[3],
        produced_for=r[4],
        category=r[5],
        tag=r[6],
        feature=r[7],
        value=r[8],
        created_at=from_epoch(r[9]),
        superseded_at=from_epoch(r[10]) if r[10] is not None else None,
        superseded_by=r[11],
        metadata=json.loads(r[12]),
        citations=json.loads(r[13]) if r[13] else [],
    )


def scope_sql(scope: Scope, time: TimeRange | None, filt: Filter | None) -> tuple[str, list[Any]]:
    """The WHERE clause (over alias ``e``) that keeps a query inside its scope and filters."""
    clauses = ["e.org_id = ?", "e.project_id = ?"]
    params: list[Any] = [scope.org_id, scope.project_id]
    for column in ("producer", "produced_for", "thread_id"):
        value = getattr(scope, column)
        if value is not None:
            clauses.append(f"e.{column} = ?")
            params.append(value)
    if time and time.since:
        clauses.append("e.created_at >= ?")
        params.append(to_epoch(time.since))
    if time and time.until:
        clauses.append("e.created_at <= ?")
        params.append(to_epoch(time.until))
    if filt is not None:
        sql, fparams = to_sql(filt, "e")
        clauses.append(sql)
        params.extend(fparams)
    return " AND ".join(clauses), params


def scope_match(scope: Scope, terms: list[str]) -> str:
    """An FTS5 MATCH expression: any of the terms, inside the scope's narrowest tag."""
    words = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
    if scope.thread_id is not None and scope.produced_for is not None:
        tag = thread_tag(scope.org_id, scope.project_id, scope.produced_for, scope.thread_id)
    elif scope.produced_for is not None:
        tag = channel_tag(scope.org_id, scope.project_id, scope.produced_for)
    elif scope.producer is not None:
        tag = producer_tag(scope.org_id, scope.project_id, scope.producer)
    else:
        tag = project_tag(scope.org_id, scope.project_id)
    return f"fts_tags : {tag} AND content : ({words})"


class _Fetched:
    """A finished query's rows, behind the part of aiosqlite's cursor API the store uses."""

    def __init__(self, rows: Iterable[Any]) -> None:
        self._rows = list(rows)

    async def fetchall(self) -> list[Any]:
        return self._rows

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None


class _Query:
    """``async with reader.execute(...) as cur`` (or ``await``) over a whole-query call."""

    def __init__(self, rows: Awaitable[Iterable[Any]]) -> None:
        self._rows = rows

    async def __aenter__(self) -> _Fetched:
        return _Fetched(await self._rows)

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __await__(self) -> Generator[Any, None, _Fetched]:
        return self.__aenter__().__await__()


class AtomicReader:
    """A connection on which every query runs to completion in one call on aiosqlite's
    thread (``execute_fetchall``), so that no statement is left half-read between calls.

    Why: an unfinished statement keeps its connection's read snapshot open. With ``execute``
    and ``fetchall`` as separate calls, concurrent coroutines interleave on the one reader
    connection, there is nearly always an unfinished statement, and reads keep seeing a
    snapshot older than writes already acknowledged (an edit or delete right after an add did
    not find the row; tests/test_concurrency.py). It also kept ``wal_checkpoint(TRUNCATE)``
    from truncating the WAL.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Iterable[Any] = ()) -> _Query:
        return _Query(self.conn.execute_fetchall(sql, parameters))


_Queued = tuple[list[tuple[Any, ...]], "asyncio.Future[list[str]]"]


def _episode_row(ep: Episode) -> tuple[Any, ...]:
    """The INSERT parameters of an episode (a new uid if it has none)."""
    uid = ep.uid or str(uuid.uuid4())
    return (
        uid,
        ep.org_id,
        ep.project_id,
        ep.producer,
        ep.produced_for,
        ep.role,
        ep.content,
        to_epoch(ep.created_at),
        ep.platform,
        ep.source_id or uid,
        ep.thread_id,
        ep.episode_type,
        json.dumps(ep.metadata, ensure_ascii=False, default=str),
        fts_tags(ep),
    )


def settle(done: asyncio.Future[list[str]], uids: list[str]) -> None:
    if not done.done():  # its caller may have been cancelled; the write stands
        done.set_result(uids)


def raise_into(done: asyncio.Future[list[str]]) -> None:
    """Hand the exception being handled to the caller waiting on ``done``."""
    error = sys.exc_info()[1]
    if not done.done() and error is not None:
        done.set_exception(error)


class SQLiteStore:
    """Async access to the SQLite database of one data folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._set_aside_seen: set[str] = set()
        self._queued: list[_Queued] = []  # batches waiting for the next group commit
        self._group_writer: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        try:
            await self._migrate()
            self._reader = await self._connect()
            async with self.reader.execute("SELECT uid FROM set_aside") as cur:
                self._set_aside_seen = {r[0] for r in await cur.fetchall()}
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, timeout=30.0, isolation_level=None)
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA secure_delete=ON",
            "PRAGMA busy_timeout=30000",
            "PRAGMA cache_size=-65536",
        ):
            await conn.execute(pragma)
        return conn

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("the store is not open")
        return self._writer

    @property
    def reader(self) -> AtomicReader:
        if self._reader is None:
            raise RuntimeError("the store is not open")
        return AtomicReader(self._reader)

    async def _migrate(self) -> None:
        conn = self.writer
        await conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        current = int(await self.get_meta("schema_version") or 0)
        for version in sorted(v for v in MIGRATIONS if v > current):
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version]:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),)
                )
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    async def get_meta(self, key: str) -> str | None:
        conn = self.reader if self._reader is not None else AtomicReader(self.writer)
        async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write_lock:
            await self.writer.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- writes ----------------------------------------------------------------------------

    async def add(self, episodes: Sequence[Episode]) -> list[str]:
        """Insert episodes; return their uids in input order, committed when this returns.

        A duplicate ``(org_id, project_id, platform, source_id)`` - within the batch or with a
        stored row - is not inserted again; its existing uid is returned.

        Concurrent calls are committed together (group commit): the first caller that finds
        no group being written starts one, and every batch queued meanwhile goes into its
        next transaction. N one-message adds then cost one lock turn and one commit instead of
        N (40 concurrent writers: 1,400 -> 6,900 adds/s, p50 29 -> 4 ms, notes/speed.md). A
        group that fails is retried batch by batch, so only a bad batch fails.
        """
        rows = [_episode_row(ep) for ep in episodes]
        done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._queued.append((rows, done))
        if self._group_writer is None:
            self._group_writer = asyncio.create_task(self._write_groups())
        return await done

    async def _write_groups(self) -> None:
        group: list[_Queued] = []
        try:
            while self._queued:
                group, self._queued = self._queued, []
                await self._write_group(group)
        finally:
            self._group_writer = None
            for _, done in group + self._queued:  # only when cancelled mid-way
                if not done.done():
                    done.set_exception(RuntimeError("the store closed before the write ended"))

    async def _write_group(self, group: list[_Queued]) -> None:
        try:
            uids = await self._insert([row for rows, _ in group for row in rows])
        except Exception:
            if len(group) == 1:
                raise_into(group[0][1])
                return
            for rows, done in group:
                try:
                    settle(done, await self._insert(rows))
                except Exception:
                    raise_into(done)
            return
        start = 0
        for rows, done in group:
            settle(done, uids[start : start + len(rows)])
            start += len(rows)

    async def _insert(self, rows: list[tuple[Any, ...]]) -> list[str]:
        """One transaction: the rows, their projects, and the uids they ended up with."""
        async with self._write_lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.executemany(
                    "INSERT OR IGNORE INTO episodes (uid, org_id, project_id, producer,"
                    " produced_for, role, content, created_at, platform, source_id, thread_id,"
                    " episode_type, metadata, fts_tags) VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                await conn.executemany(
                    "INSERT OR IGNORE INTO projects VALUES (?, ?, '', '{}', ?)",
                    [(r[1], r[2], r[7]) for r in rows],
                )
                uids = await self._uids_for_keys(conn, rows)
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        return uids

    @staticmethod
    async def _uids_for_keys(conn: aiosqlite.Connection, rows: list[tuple[Any, ...]]) -> list[str]:
        wanted = [r[0] for r in rows]
        found: dict[str, tuple[Any, ...]] = {}  # uid -> the (org, project, platform, source) key
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            async with conn.execute(
                "SELECT uid, org_id, project_id, platform, source_id FROM episodes"
                f" WHERE uid IN ({marks})",
                chunk,
            ) as c:
                found.update((r[0], tuple(r[1:])) for r in await c.fetchall())
        uids = []
        for row in rows:
            key = (row[1], row[2], row[8], row[9])
            if found.get(row[0]) == key:
                uids.append(row[0])
                continue
            async with conn.execute(
                "SELECT uid FROM episodes WHERE org_id = ? AND project_id = ? AND platform = ?"
                " AND source_id = ?",
                key,
            ) as cur:
                existing = await cur.fetchone()
            if existing is None:
                # INSERT OR IGNORE skipped it for another reason than a duplicate source: never
                # acknowledge a write that did not happen (the whole batch is rolled back).
                raise InvalidInput(
                    f"episode {row[0]!r} was not stored: its uid belongs to another episode"
                    " or a required field is missing"
                )
            uids.append(existing[0])
        return uids

    async def edit(self, uid: str, content: str, edited_at: datetime) -> bool:
        """Replace an episode's content, leaving nothing of the old text behind: FTS follows by
        trigger and its segments are merged, the old vector is tombstoned (the row waits for a
        new one), and facts citing only this episode go, as they were learned from the old
        text. The caller checkpoints the WAL and scrubs the vector index."""
        async with self._write_lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                async with conn.execute(
                    "SELECT uid, org_id, project_id, produced_for FROM episodes WHERE uid = ?",
                    (uid,),
                ) as cur:
                    found = await cur.fetchone()
                if found is None:
                    await conn.execute("ROLLBACK")
                    return False
                await conn.execute(
                    f"UPDATE episodes SET content = ?, edited_at = ?, indexed = {PENDING}"
                    " WHERE uid = ?",
                    (content, to_epoch(edited_at), uid),
                )
                await conn.execute("DELETE FROM set_aside WHERE uid = ?", (uid,))
                await conn.execute("INSERT INTO vector_tombstones VALUES (?, ?, ?, ?)", found)
                await self._drop_citations(conn, [uid])
                await conn.execute("INSERT INTO episodes_fts(episodes_fts) VALUES ('optimize')")
                await conn.execute(_NEEDS_SCRUB)
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        self._set_aside_seen.discard(uid)
        return True

    async def delete(self, uids: Sequence[str]) -> list[str]:
        """Delete episodes, queue their vectors for removal, and drop facts that cite only
        them (citations of facts that cite others too are removed). Returns deleted uids."""
        if not uids:
            return []
        deleted: list[str] = []
        async with self._write_lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(uids), 500):
                    chunk = list(uids[start : start + 500])
                    marks = ",".join("?" * len(chunk))
                    async with conn.execute(
                        "SELECT uid, org_id, project_id, produced_for FROM episodes"
                        f" WHERE uid IN ({marks})",
                        chunk,
                    ) as cur:
                        found = list(await cur.fetchall())
                    if not found:
                        continue
                    await conn.executemany(
                        "INSERT INTO vector_tombstones VALUES (?, ?, ?, ?)",
                        [tuple(r) for r in found],
                    )
                    gone = [r[0] for r in found]
                    marks = ",".join("?" * len(gone))
                    await conn.execute(f"DELETE FROM episodes WHERE uid IN ({marks})", gone)
                    await conn.execute(f"DELETE FROM set_aside WHERE uid IN ({marks})", gone)
                    await self._drop_citations(conn, gone)
                    deleted.extend(gone)
                if deleted:
                    # FTS5 deletes only add tombstones: the old segments keep the forgotten
                    # words until they are merged. Merge them now, in the same transaction,
                    # so that no word of a forgotten message is left in the index (freed pages
                    # are then zeroed by secure_delete). Costs ~0.5 s per 200k rows.
                    await conn.execute("INSERT INTO episodes_fts(episodes_fts) VALUES ('optimize')")
                    await conn.execute(_NEEDS_SCRUB)
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        return deleted

    @staticmethod
    async def _drop_citations(conn: aiosqlite.Connection, episode_uids: list[str]) -> None:
        marks = ",".join("?" * len(episode_uids))
        async with conn.execute(
            f"SELECT DISTINCT fact_uid FROM fact_citations WHERE episode_uid IN ({marks})",
            episode_uids,
        ) as cur:
            facts = [r[0] for r in await cur.fetchall()]
        if not facts:
            return
        await conn.execute(
            f"DELETE FROM fact_citations WHERE episode_uid IN ({marks})", episode_uids
        )
        fmarks = ",".join("?" * len(facts))
        await conn.execute(
            f"DELETE FROM facts WHERE uid IN ({fmarks}) AND NOT EXISTS"
            " (SELECT 1 FROM fact_citations c WHERE c.fact_uid = facts.uid)",
            facts,
        )

    async def request_scrub(self) -> None:
        async with self._write_lock:
            await self.writer.execute(_NEEDS_SCRUB)

    async def needs_scrub(self) -> bool:
        """Whether vectors were dropped since the vector index's files were last scrubbed."""
        return await self.get_meta(_SCRUB_KEY) is not None

    async def scrubbed(self) -> None:
        async with self._write_lock:
            await self.writer.execute("DELETE FROM meta WHERE key = ?", (_SCRUB_KEY,))

    async def checkpoint(self) -> None:
        """Fold the WAL into the main file and truncate it, so forgotten text is not left in
        the log."""
        async with self._write_lock:
            await self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- index bookkeeping -----------------------------------------------------------------

    async def pending(self, limit: int) -> list[Episode]:
        """Rows waiting for their vectors, channel by channel.

        Every vector goes to its channel's collection, and Chroma's cost is per call more than
        per vector: a batch in arrival order spreads over as many collections as there are
        active channels (200 tiny upserts for 256 rows in the scale benchmark, 60 rows/s).
        Taking whole channels keeps a batch to a few collections."""
        async with self.reader.execute(
            f"SELECT {EPISODE_COLUMNS} FROM episodes WHERE indexed = 0"
            " ORDER BY org_id, project_id, produced_for, id LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [ep for _, ep in await self._episodes(rows)]

    async def mark_indexed(self, uids_and_contents: Iterable[tuple[str, str]]) -> None:
        """Mark rows as indexed, unless their content changed since they were read."""
        async with self._write_lock:
            await self.writer.executemany(
                "UPDATE episodes SET indexed = 1 WHERE uid = ? AND content = ?",
                list(uids_and_contents),
            )

    async def mark_all_pending(self) -> None:
        async with self._write_lock:
            await self.writer.execute(
                f"UPDATE episodes SET indexed = {PENDING} WHERE indexed != {SET_ASIDE}"
            )

    async def tombstones(self, limit: int) -> list[tuple[int, str, str, str, str]]:
        async with self.reader.execute(
            "SELECT rowid, uid, org_id, project_id, produced_for FROM vector_tombstones"
            " ORDER BY rowid LIMIT ?",
            (limit,),
        ) as cur:
            return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]

    async def clear_tombstones(self, rowids: Sequence[int]) -> None:
        async with self._write_lock:
            await self.writer.executemany(
                "DELETE FROM vector_tombstones WHERE rowid = ?", [(r,) for r in rowids]
            )

    async def count_indexed(self) -> int:
        return await self._scalar("SELECT count(*) FROM episodes WHERE indexed = 1")

    async def requeue(self, uids: Iterable[str]) -> None:
        """Mark rows as waiting for their vectors again."""
        async with self._write_lock:
            await self.writer.executemany(
                f"UPDATE episodes SET indexed = {PENDING} WHERE uid = ? AND indexed != {SET_ASIDE}",
                [(u,) for u in uids],
            )

    async def clear_all_tombstones(self) -> None:
        async with self._write_lock:
            await self.writer.execute("DELETE FROM vector_tombstones")

    async def count_facts(self, org_id: str, project_id: str) -> int:
        return await self._scalar(
            "SELECT count(*) FROM facts WHERE org_id = ? AND project_id = ?", (org_id, project_id)
        )

    async def count_pending(self) -> int:
        return await self._scalar("SELECT count(*) FROM episodes WHERE indexed = 0")

    async def all_uids(self) -> set[str]:
        async with self.reader.execute("SELECT uid FROM episodes") as cur:
            return {r[0] for r in await cur.fetchall()}

    # -- reads -----------------------------------------------------------------------------

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.reader.execute(sql, params) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- rows that cannot be read ----------------------------------------------------------

    async def _episodes(self, rows: Iterable[Sequence[Any]]) -> list[tuple[int, Episode]]:
        """Rows selected with EPISODE_COLUMNS as (row id, episode); a row that cannot be
        read is set aside instead of failing the whole query."""
        out: list[tuple[int, Episode]] = []
        broken: list[tuple[str, str, str]] = []
        for r in rows:
            try:
                out.append((int(r[0]), row_to_episode(r)))
            except _UNREADABLE as exc:
                broken.append((str(r[1]), "episode", f"unreadable: {type(exc).__name__}: {exc}"))
        if broken:
            await self.set_aside(broken)
        return out

    async def _facts(self, rows: Iterable[Sequence[Any]]) -> list[Fact]:
        out: list[Fact] = []
        broken: list[tuple[str, str, str]] = []
        for r in rows:
            try:
                out.append(row_to_fact(r))
            except _UNREADABLE as exc:
                broken.append((str(r[0]), "fact", f"unreadable: {type(exc).__name__}: {exc}"))
        if broken:
            await self.set_aside(broken)
        return out

    async def set_aside(self, items: Sequence[tuple[str, str, str]]) -> None:
        """Set records aside: ``(uid, kind, reason)`` with kind ``episode`` or ``fact``. Each
        is logged once (ever: the table remembers), counted, skipped by reads and by the
        indexer, and stays deletable."""
        new = [
            (uid, kind, reason) for uid, kind, reason in items if uid not in self._set_aside_seen
        ]
        if not new:
            return
        for uid, kind, reason in new:
            self._set_aside_seen.add(uid)
            log.warning("set aside %s %s: %s", kind, uid, reason[:300])
        async with self._write_lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                now = datetime.now(UTC).timestamp()
                await conn.executemany(
                    "INSERT OR IGNORE INTO set_aside VALUES (?, ?, ?, ?)",
                    [(uid, kind, reason[:1000], now) for uid, kind, reason in new],
                )
                episodes = [(uid,) for uid, kind, _ in new if kind == "episode"]
                # Any vector it had goes: the index holds exactly the indexed rows.
                await conn.executemany(
                    "INSERT INTO vector_tombstones SELECT uid, org_id, project_id, produced_for"
                    f" FROM episodes WHERE uid = ? AND indexed != {SET_ASIDE}",
                    episodes,
                )
                await conn.executemany(
                    f"UPDATE episodes SET indexed = {SET_ASIDE} WHERE uid = ?", episodes
                )
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    async def count_set_aside(self) -> int:
        return await self._scalar("SELECT count(*) FROM set_aside")

    async def existing(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[str]:
        """Which of ``uids`` are episodes of this org and project, readable or not."""
        found: set[str] = set()
        for start in range(0, len(uids), 500):
            chunk = list(uids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            async with self.reader.execute(
                "SELECT uid FROM episodes WHERE org_id = ? AND project_id = ?"
                f" AND uid IN ({marks})",
                [org_id, project_id, *chunk],
            ) as cur:
                found.update(r[0] for r in await cur.fetchall())
        return [u for u in dict.fromkeys(uids) if u in found]

    async def fact_uids(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[str]:
        """Which of ``uids`` are facts of this org and project, readable or not."""
        if not uids:
            return []
        marks = ",".join("?" * len(uids))
        async with self.reader.execute(
            f"SELECT uid FROM facts WHERE org_id = ? AND project_id = ? AND uid IN ({marks})",
            [org_id, project_id, *uids],
        ) as cur:
            found = {r[0] for r in await cur.fetchall()}
        return [u for u in dict.fromkeys(uids) if u in found]

    async def get(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[Episode]:
        """Episodes of one org and project by uid, in the order asked."""
        scope = Scope.model_construct(org_id=org_id, project_id=project_id)
        found = await self.get_scoped(scope, None, None, uids)
        return [found[u][1] for u in dict.fromkeys(uids) if u in found]

    async def get_scoped(
        self, scope: Scope, filt: Filter | None, time: TimeRange | None, uids: Sequence[str]
    ) -> dict[str, tuple[int, Episode]]:
        """Rows among ``uids`` that are inside the scope and match the filter, by uid, with
        their row id."""
        where, params = scope_sql(scope, time, filt)
        out: dict[str, tuple[int, Episode]] = {}
        for start in range(0, len(uids), 500):
            chunk = list(uids[start : start + 500])
            values = ",".join("(?)" for _ in chunk)
            # CROSS JOIN pins the join order: look the uids up first, then check the scope
            # (the planner otherwise walked the scope's index: every row of the project).
            async with self.reader.execute(
                f"WITH wanted(uid) AS (VALUES {values}) SELECT {ECOLS} FROM wanted"
                f" CROSS JOIN episodes e ON e.uid = wanted.uid WHERE {where}",
                [*chunk, *params],
            ) as cur:
                rows = await cur.fetchall()
            for rid, ep in await self._episodes(rows):
                out[ep.uid] = (rid, ep)
        return out

    async def find_source(
        self, org_id: str, project_id: str, platform: str, source_id: str
    ) -> Episode | None:
        async with self.reader.execute(
            f"SELECT {EPISODE_COLUMNS} FROM episodes WHERE org_id = ? AND project_id = ?"
            " AND platform = ? AND source_id = ?",
            (org_id, project_id, platform, source_id),
        ) as cur:
            rows = await cur.fetchall()
        found = await self._episodes(rows)
        return found[0][1] if found else None

    async def list_episodes(
        self,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        limit: int,
        offset: int,
        newest_first: bool = False,
    ) -> list[Episode]:
        where, params = scope_sql(scope, time, filt)
        order = "DESC" if newest_first else "ASC"
        async with self.reader.execute(
            f"SELECT {EPISODE_COLUMNS} FROM episodes e WHERE {where}"
            f" ORDER BY e.created_at {order}, e.id {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ) as cur:
            rows = await cur.fetchall()
        return [ep for _, ep in await self._episodes(rows)]

    async def uids_matching(
        self, scope: Scope, filt: Filter | None, time: TimeRange | None
    ) -> list[str]:
        where, params = scope_sql(scope, time, filt)
        async with self.reader.execute(f"SELECT e.uid FROM episodes e WHERE {where}", params) as c:
            return [r[0] for r in await c.fetchall()]

    async def count(self, scope: Scope, filt: Filter | None = None) -> int:
        where, params = scope_sql(scope, None, filt)
        return await self._scalar(f"SELECT count(*) FROM episodes e WHERE {where}", params)

    async def keyword_search(
        self,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        text: str,
        limit: int,
    ) -> list[tuple[int, Episode, float]]:
        """bm25 candidates under the scope: (row id, episode, positive score), best first."""
        terms = keyword_terms(text)
        if not terms:
            return []
        where, params = scope_sql(scope, time, filt)
        sql = (
            f"SELECT {', '.join('e.' + c.strip() for c in EPISODE_COLUMNS.split(','))},"
            " bm25(episodes_fts, 1.0, 0.0) AS rank FROM episodes_fts"
            " JOIN episodes e ON e.id = episodes_fts.rowid"
            f" WHERE episodes_fts MATCH ? AND {where} ORDER BY rank LIMIT ?"
        )
        async with self.reader.execute(sql, [scope_match(scope, terms), *params, limit]) as cur:
            rows = await cur.fetchall()
        rank = {int(r[0]): -float(r[-1]) for r in rows}
        return [(rid, ep, rank[rid]) for rid, ep in await self._episodes(rows)]

    async def adjacent_ids(
        self, row_ids: Sequence[int]
    ) -> dict[int, tuple[int | None, int | None]]:
        """The previous and next row id in the same channel, for each row id, in one query."""
        if not row_ids:
            return {}
        marks = ",".join("(?)" for _ in row_ids)
        same = (
            "n.org_id = e.org_id AND n.project_id = e.project_id"
            " AND n.produced_for = e.produced_for"
        )
        sql = (
            f"WITH c(id) AS (VALUES {marks}) SELECT e.id,"
            f" (SELECT n.id FROM episodes n WHERE {same} AND (n.created_at, n.id) <"
            " (e.created_at, e.id) ORDER BY n.created_at DESC, n.id DESC LIMIT 1),"
            f" (SELECT n.id FROM episodes n WHERE {same} AND (n.created_at, n.id) >"
            " (e.created_at, e.id) ORDER BY n.created_at ASC, n.id ASC LIMIT 1)"
            " FROM c JOIN episodes e ON e.id = c.id"
        )
        async with self.reader.execute(sql, list(row_ids)) as cur:
            return {int(r[0]): (r[1], r[2]) for r in await cur.fetchall()}

    async def neighbours(
        self, row_ids: Sequence[int], before: int, after: int
    ) -> dict[int, tuple[list[tuple[int, Episode]], list[tuple[int, Episode]]]]:
        """For each row id: up to ``before`` earlier and ``after`` later episodes of the same
        channel (of the same thread when the row is in one), nearest first."""
        out: dict[int, tuple[list[tuple[int, Episode]], list[tuple[int, Episode]]]] = {}
        cols = ", ".join("n." + c.strip() for c in EPISODE_COLUMNS.split(","))
        same = (
            "n.org_id = c.org_id AND n.project_id = c.project_id"
            " AND n.produced_for = c.produced_for"
            " AND (c.thread_id IS NULL OR n.thread_id = c.thread_id)"
        )
        for rid in row_ids:
            prev_rows: list[tuple[int, Episode]] = []
            next_rows: list[tuple[int, Episode]] = []
            if before:
                async with self.reader.execute(
                    f"SELECT {cols} FROM episodes c JOIN episodes n ON {same}"
                    " AND (n.created_at, n.id) < (c.created_at, c.id)"
                    " WHERE c.id = ? ORDER BY n.created_at DESC, n.id DESC LIMIT ?",
                    (rid, before),
                ) as cur:
                    rows = await cur.fetchall()
                prev_rows = await self._episodes(rows)
            if after:
                async with self.reader.execute(
                    f"SELECT {cols} FROM episodes c JOIN episodes n ON {same}"
                    " AND (n.created_at, n.id) > (c.created_at, c.id)"
                    " WHERE c.id = ? ORDER BY n.created_at ASC, n.id ASC LIMIT ?",
                    (rid, after),
                ) as cur:
                    rows = await cur.fetchall()
                next_rows = await self._episodes(rows)
            out[rid] = (prev_rows, next_rows)
        return out

    # -- facts -----------------------------------------------------------------------------

    async def add_fact(self, fact: Fact) -> str:
        """Store a fact. Every citation must be an episode of the fact's own org and project
        (InvalidInput otherwise), so that no other org's delete can take it away."""
        uid = fact.uid or str(uuid.uuid4())
        citations = list(dict.fromkeys(fact.citations))
        async with self._write_lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                if citations:
                    marks = ",".join("?" * len(citations))
                    async with conn.execute(
                        "SELECT uid FROM episodes WHERE org_id = ? AND project_id = ?"
                        f" AND uid IN ({marks})",
                        [fact.org_id, fact.project_id, *citations],
                    ) as cur:
                        known = {r[0] for r in await cur.fetchall()}
                    missing = [c for c in citations if c not in known]
                    if missing:
                        raise InvalidInput(
                            f"citations not found in {fact.org_id}/{fact.project_id}:"
                            f" {', '.join(missing[:20])}"
                        )
                async with conn.execute("SELECT 1 FROM facts WHERE uid = ?", (uid,)) as cur:
                    if await cur.fetchone() is not None:
                        raise InvalidInput(f"fact uid {uid!r} cannot be used; leave it empty")
                await conn.execute(
                    "INSERT INTO facts (uid, org_id, project_id, subject, produced_for, category,"
                    " tag, feature, value, created_at, superseded_at, superseded_by, metadata)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        uid,
                        fact.org_id,
                        fact.project_id,
                        fact.subject,
                        fact.produced_for,
                        fact.category,
                        fact.tag,
                        fact.feature,
                        fact.value,
                        to_epoch(fact.created_at),
                        to_epoch(fact.superseded_at) if fact.superseded_at else None,
                        fact.superseded_by,
                        json.dumps(fact.metadata, ensure_ascii=False, default=str),
                    ),
                )
                await conn.executemany(
                    "INSERT OR IGNORE INTO fact_citations VALUES (?, ?)",
                    [(uid, c) for c in citations],
                )
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        return uid

    async def supersede_fact(
        self, org_id: str, project_id: str, uid: str, by: str, when: datetime
    ) -> bool:
        """Mark a fact superseded by another; False unless both are facts of this org and
        project."""
        async with self._write_lock:
            cur = await self.writer.execute(
                "UPDATE facts SET superseded_at = ?, superseded_by = ? WHERE org_id = ?"
                " AND project_id = ? AND uid = ? AND EXISTS (SELECT 1 FROM facts b"
                " WHERE b.org_id = facts.org_id AND b.project_id = facts.project_id"
                " AND b.uid = ?)",
                (to_epoch(when), by, org_id, project_id, uid, by),
            )
            return cur.rowcount > 0

    async def facts(
        self,
        org_id: str,
        project_id: str,
        *,
        subject: str | None = None,
        produced_for: str | None = None,
        include_superseded: bool = False,
        uids: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[Fact]:
        clauses = ["f.org_id = ?", "f.project_id = ?"]
        params: list[Any] = [org_id, project_id]
        if subject is not None:
            clauses.append("f.subject = ?")
            params.append(subject)
        if produced_for is not None:
            clauses.append("f.produced_for = ?")
            params.append(produced_for)
        if not include_superseded:
            clauses.append("f.superseded_at IS NULL")
        if uids is not None:
            if not uids:
                return []
            clauses.append(f"f.uid IN ({','.join('?' * len(uids))})")
            params.extend(uids)
        sql = (
            f"SELECT {FACT_COLUMNS} FROM facts f WHERE {' AND '.join(clauses)}"
            " ORDER BY f.created_at DESC LIMIT ?"
        )
        async with self.reader.execute(sql, [*params, limit]) as cur:
            rows = await cur.fetchall()
        return await self._facts(rows)

    async def delete_facts(self, org_id: str, project_id: str, uids: Sequence[str]) -> int:
        if not uids:
            return 0
        marks = ",".join("?" * len(uids))
        async with self._write_lock:
            cur = await self.writer.execute(
                f"DELETE FROM facts WHERE org_id = ? AND project_id = ? AND uid IN ({marks})",
                [org_id, project_id, *uids],
            )
            return cur.rowcount

    async def delete_facts_about(
        self, org_id: str, project_id: str, subject: str | None, produced_for: str | None
    ) -> int:
        clauses = ["org_id = ?", "project_id = ?"]
        params: list[Any] = [org_id, project_id]
        if subject is not None:
            clauses.append("subject = ?")
            params.append(subject)
        if produced_for is not None:
            clauses.append("produced_for = ?")
            params.append(produced_for)
        async with self._write_lock:
            cur = await self.writer.execute(
                f"DELETE FROM facts WHERE {' AND '.join(clauses)}", params
            )
            return cur.rowcount

    # -- settings (opt-out, retention) ------------------------------------------------------

    async def get_setting(self, org_id: str, project_id: str, subject: str, key: str) -> str | None:
        async with self.reader.execute(
            "SELECT value FROM settings WHERE org_id = ? AND project_id = ? AND subject = ?"
            " AND key = ?",
            (org_id, project_id, subject, key),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_setting(
        self, org_id: str, project_id: str, subject: str, key: str, value: str | None
    ) -> None:
        async with self._write_lock:
            if value is None:
                await self.writer.execute(
                    "DELETE FROM settings WHERE org_id = ? AND project_id = ? AND subject = ?"
                    " AND key = ?",
                    (org_id, project_id, subject, key),
                )
            else:
                await self.writer.execute(
                    "INSERT OR REPLACE INTO settings VALUES (?, ?, ?, ?, ?)",
                    (org_id, project_id, subject, key, value),
                )

    # -- stats -----------------------------------------------------------------------------

    async def stats(self) -> dict[str, int]:
        return {
            "episodes": await self._scalar("SELECT count(*) FROM episodes"),
            "pending_index": await self.count_pending(),
            "facts": await self._scalar("SELECT count(*) FROM facts WHERE superseded_at IS NULL"),
            "orgs": await self._scalar("SELECT count(DISTINCT org_id) FROM episodes"),
            "projects": await self._scalar(
                "SELECT count(*) FROM (SELECT DISTINCT org_id, project_id FROM episodes)"
            ),
            "channels": await self._scalar(
                "SELECT count(*) FROM (SELECT DISTINCT org_id, project_id, produced_for"
                " FROM episodes)"
            ),
            "set_aside": await self.count_set_aside(),
        }

    # -- projects --------------------------------------------------------------------------

    async def create_project(
        self, org_id: str, project_id: str, description: str, config: dict[str, Any]
    ) -> bool:
        """Create a project; False when it exists already."""
        async with self._write_lock:
            cur = await self.writer.execute(
                "INSERT OR IGNORE INTO projects VALUES (?, ?, ?, ?, ?)",
                (
                    org_id,
                    project_id,
                    description,
                    json.dumps(config),
                    datetime.now(UTC).timestamp(),
                ),
            )
            return cur.rowcount > 0

    async def get_project(self, org_id: str, project_id: str) -> tuple[str, dict[str, Any]] | None:
        async with self.reader.execute(
            "SELECT description, config FROM projects WHERE org_id = ? AND project_id = ?",
            (org_id, project_id),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else (str(row[0]), json.loads(row[1]))

    async def projects(self, org_id: str | None = None) -> list[tuple[str, str]]:
        sql = "SELECT org_id, project_id FROM projects"
        params: list[Any] = []
        if org_id is not None:
            sql += " WHERE org_id = ?"
            params.append(org_id)
        async with self.reader.execute(sql + " ORDER BY org_id, project_id", params) as cur:
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def drop_project_row(self, org_id: str, project_id: str) -> None:
        async with self._write_lock:
            await self.writer.execute(
                "DELETE FROM projects WHERE org_id = ? AND project_id = ?", (org_id, project_id)
            )
            await self.writer.execute(
                "DELETE FROM facts WHERE org_id = ? AND project_id = ?", (org_id, project_id)
            )
            await self.writer.execute(
                "DELETE FROM settings WHERE org_id = ? AND project_id = ?", (org_id, project_id)
            )

    async def channels(self, org_id: str, project_id: str) -> list[str]:
        async with self.reader.execute(
            "SELECT DISTINCT produced_for FROM episodes WHERE org_id = ? AND project_id = ?",
            (org_id, project_id),
        ) as cur:
            return [r[0] for r in await cur.fetchall()]
