"""PostgreSQL, the source of truth past one machine: :class:`PostgresStore` implements
:class:`memory.store.base.Store` with asyncpg.

Why asyncpg (rather than psycopg 3's async API): its pool is built in, its binary protocol and
statement cache make the hot paths (batched inserts through ``unnest``, keyword search) cheap,
and ``copy_records_to_table`` is there for ``migrate``. Measured here on 20k-row batched
inserts and point reads, both drivers were within the noise of each other; asyncpg needs no
second package for pooling. (Behind pgbouncer in transaction mode, pass
``statement_cache_size=0``.)

Every write goes through :meth:`PostgresStore._write`, the one transaction helper: one
transaction, rolled back on any exception, retried when PostgreSQL reports a deadlock or a
serialization failure (two workers adding overlapping batches in different orders).

Forgetting: rows are gone for every reader in every process when the transaction commits.
:meth:`purge` (which the engine calls after a forget) then VACUUMs the tables a forget touches,
so that dead tuples are pruned and their space is reusable. What it cannot do while serving
is documented in README "Running at scale" (see :data:`PURGE_LIMITS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import asyncpg

from memory.filters import Filter
from memory.model import NAME_KEY, Added, Brief, Episode, Fact, InvalidInput, Scope, TimeRange

from ..base import (
    DATABASE_URL_SETTING,
    Adjacent,
    Claim,
    Context,
    Counts,
    Deleted,
    Found,
    KeywordHit,
    Project,
    ProjectRef,
    Row,
    Setting,
    StoreUnavailable,
    Tombstone,
)
from ..shared import (
    MAX_ATTEMPTS,
    dump_json,
    from_epoch,
    keyword_terms,
    narrowest_token,
    project_wide,
    scope_tokens,
    to_epoch,
)
from .filters import Params, to_pg_sql
from .schema import FTS_CONFIG, MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Set in the transaction that deletes or edits episodes, cleared once the vector index's
#: files hold nothing of them (see :meth:`memory.store.base.IndexQueue.needs_scrub`).
_SCRUB_KEY = "vector_scrub_pending"
_NEEDS_SCRUB = f"INSERT INTO cm_meta VALUES ('{_SCRUB_KEY}', '1') ON CONFLICT (key) DO NOTHING"
#: Tables a forget writes to; :meth:`PostgresStore.purge` vacuums them.
PURGED_TABLES = ("episodes", "fact_citations", "facts", "vector_tombstones", "set_aside")
PURGE_LIMITS = (
    "VACUUM prunes dead tuples but does not zero the freed space in a page, GIN keeps a "
    "forgotten word as an index key until the index is rebuilt, and the WAL holds the text "
    "until its segments are recycled and overwritten: a maintenance window runs "
    "`VACUUM (FULL) episodes` and `REINDEX TABLE episodes` to rewrite the files."
)
#: bm25's parameters (SQLite FTS5's defaults).
BM25_K1 = 1.2
BM25_B = 0.75
Ranking = Literal["bm25", "ts_rank_cd"]

COLUMNS = (
    "id, uid, org_id, project_id, producer, produced_for, role, content, created_at, platform,"
    " source_id, thread_id, episode_type, metadata"
)
FACT_FIELDS = ("uid", "org_id", "project_id", "subject", "produced_for", "category", "tag",
               "feature", "value")  # fmt: skip
#: New episodes this process stores before it refreshes the planner's statistics
#: (:meth:`PostgresStore._stored`). Small, so that a new database has statistics early: an
#: ANALYZE of a few thousand rows takes milliseconds, and a bigger table waits for a tenth.
ANALYSE_EVERY = 1_000
#: The share of ``episodes`` (by the planner's statistics) a project must hold for its
#: project-wide keyword searches to match the words alone (:meth:`PostgresStore._words_alone`).
WORDS_ALONE_SHARE = 0.5
#: The projects that hold at least :data:`WORDS_ALONE_SHARE` of the table, by the most common
#: values of ``project_id`` in the planner's statistics (none before the first ANALYZE).
_BIG_PROJECTS = (
    "SELECT v.project_id FROM pg_stats s, unnest(s.most_common_vals::text::text[],"
    " s.most_common_freqs) AS v(project_id, share) WHERE s.schemaname = current_schema()"
    " AND s.tablename = 'episodes' AND s.attname = 'project_id' AND v.share >= $1"
)
_RETRY = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
#: What PostgreSQL says about text it cannot hold (a NUL character, in text or in jsonb).
_UNSTORABLE = (
    asyncpg.exceptions.CharacterNotInRepertoireError,
    asyncpg.exceptions.UntranslatableCharacterError,
)
_NUL_MESSAGE = "text contains a NUL character, which the PostgreSQL store cannot hold"


class _Queries:
    """The pool's query methods, with text PostgreSQL cannot hold reported as bad input
    (a 4xx at the API) rather than a server error."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except _UNSTORABLE:
            raise InvalidInput(_NUL_MESSAGE) from None

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        try:
            return await self._pool.fetchrow(sql, *args)
        except _UNSTORABLE:
            raise InvalidInput(_NUL_MESSAGE) from None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self._pool.fetchval(sql, *args)
        except _UNSTORABLE:
            raise InvalidInput(_NUL_MESSAGE) from None

    async def execute(self, sql: str, *args: Any) -> str:
        try:
            return str(await self._pool.execute(sql, *args))
        except _UNSTORABLE:
            raise InvalidInput(_NUL_MESSAGE) from None


#: What a search's candidates are read with (:class:`memory.model.Brief`).
BRIEF_COLUMNS = "id, uid, producer, content, created_at, metadata"


def cols(alias: str, columns: str = COLUMNS) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def row_episode(r: asyncpg.Record, offset: int = 0) -> Episode:
    """An Episode from a record whose columns start with :data:`COLUMNS` at ``offset``."""
    v = list(r.values())[offset : offset + 14]
    return Episode.model_construct(
        uid=v[1],
        org_id=v[2],
        project_id=v[3],
        producer=v[4],
        produced_for=v[5],
        role=v[6],
        content=v[7],
        created_at=from_epoch(v[8]),
        platform=v[9],
        source_id=None if v[10] == v[1] else v[10],
        thread_id=v[11],
        episode_type=v[12],
        metadata=json.loads(v[13]),
    )


#: The row keys just before and just after a row of ``e`` in its channel, in time order.
ADJACENT_SQL = (
    "(SELECT n.id FROM episodes n WHERE {same} AND (n.created_at, n.id) < (e.created_at, e.id)"
    " ORDER BY n.created_at DESC, n.id DESC LIMIT 1) AS before,"
    " (SELECT n.id FROM episodes n WHERE {same} AND (n.created_at, n.id) > (e.created_at, e.id)"
    " ORDER BY n.created_at ASC, n.id ASC LIMIT 1) AS after"
).format(
    same="n.org_id = e.org_id AND n.project_id = e.project_id AND n.produced_for = e.produced_for"
)

#: A row of ``e``'s author name as :func:`memory.model.display_name` reads it from the
#: metadata, worked out in SQL when the metadata is an object whose ``display_name`` is a
#: string, null, false or absent (what stores write), so that a search's candidates need no
#: ``json.loads``; NULL for any other metadata, which :func:`row_found` reads in Python.
NAME_SQL = (
    "CASE WHEN jsonb_typeof(e.metadata) = 'object' THEN"
    f" CASE coalesce(jsonb_typeof(e.metadata -> '{NAME_KEY}'), 'absent')"
    f" WHEN 'string' THEN coalesce(nullif(e.metadata ->> '{NAME_KEY}', ''), e.producer)"
    " WHEN 'absent' THEN e.producer WHEN 'null' THEN e.producer"
    f" WHEN 'boolean' THEN CASE WHEN e.metadata -> '{NAME_KEY}' = 'false'::jsonb"
    " THEN e.producer END END END AS name"
)

#: What a search's candidates are read with (over alias ``e``), the columns
#: :func:`row_found` reads: :data:`BRIEF_COLUMNS`, the author's name and the row's
#: neighbours, so that ranking needs no second query for them.
CANDIDATE_SQL = f"{cols('e', BRIEF_COLUMNS)}, {NAME_SQL}, {ADJACENT_SQL}"
#: :data:`CANDIDATE_SQL` for a search that does not rank by neighbours: not looked up.
CANDIDATE_SQL_ALONE = (
    f"{cols('e', BRIEF_COLUMNS)}, {NAME_SQL}, NULL::bigint AS before, NULL::bigint AS after"
)


def row_found(r: asyncpg.Record, neighbours: bool = True) -> Found:
    """A search candidate from a record whose columns start with :data:`CANDIDATE_SQL`'s.
    The metadata is parsed only if it is ever asked for, unless it is of a kind the SQL
    leaves to Python."""
    brief = Brief.stored(r[1], r[2], r[3], r[4], r[5], r[6])
    return Found(int(r[0]), brief, Adjacent(r[7], r[8]) if neighbours else None)


def _candidates(neighbours: bool) -> str:
    return CANDIDATE_SQL if neighbours else CANDIDATE_SQL_ALONE


def scope_where(
    scope: Scope, time: TimeRange | None, filt: Filter | None, p: Params, alias: str = "e"
) -> str:
    """The WHERE clause that keeps a query inside its scope, time range and filter."""
    clauses = [f"{alias}.org_id = {p(scope.org_id)}", f"{alias}.project_id = {p(scope.project_id)}"]
    for column in ("producer", "produced_for", "thread_id"):
        value = getattr(scope, column)
        if value is not None:
            clauses.append(f"{alias}.{column} = {p(value)}")
    if time and time.since:
        clauses.append(f"{alias}.created_at >= {p(to_epoch(time.since), 'float8')}")
    if time and time.until:
        clauses.append(f"{alias}.created_at <= {p(to_epoch(time.until), 'float8')}")
    if filt is not None:
        sql, _ = to_pg_sql(filt, alias, p)
        clauses.append(sql)
    return " AND ".join(clauses)


def redact(url: str) -> str:
    """host:port/database of a connection URL, without user or password."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port or 5432
    except ValueError:
        return "(an invalid URL)"
    return f"{host}:{port}{parts.path or '/'}"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection handed back, beyond what asyncpg always does (roll
    back a transaction left open): nothing.

    asyncpg's default sends a reset query (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL``) on every release, a second round trip for every pooled query. This store
    leaves no session state to reset: it takes only transaction-scoped advisory locks, opens
    no cursors outside a transaction, never LISTENs and never SETs a session variable. Under
    40 clients (``channelmind bench load --database-url temp``) that reset was a quarter of
    the server's socket writes. Code that does change session state must not use this pool."""


class PostgresStore:
    """The memory's records in one PostgreSQL database (``postgresql://...``)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        ranking: Ranking = "bm25",
        scope_tokens: bool = True,
        setting: str = DATABASE_URL_SETTING,
        **connect: Any,
    ) -> None:
        """``ranking`` and ``scope_tokens=False`` (the scope as a plain WHERE beside the
        full-text match) exist to measure the alternatives (``python -m
        memory.bench.stores``); the defaults are the measured choice. ``setting``: where the
        operator gave ``url``, named by the one-line errors of :meth:`open`."""
        self.url = url
        self.setting = setting
        self.pool_size = pool_size
        self.ranking: Ranking = ranking
        self.scope_tokens = scope_tokens
        self._connect = connect
        self._pool: asyncpg.Pool | None = None
        self._unanalysed = 0  # episodes this process stored since it last refreshed statistics
        self._analyse_after = ANALYSE_EVERY
        self._analyse: asyncio.Task[None] | None = None
        self._big_projects: frozenset[str] = frozenset()  # see _words_alone

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        where = redact(self.url)
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=15,
                reset=_keep_session,
                **self._connect,
            )
        except (TimeoutError, OSError) as exc:
            reason = "timed out"
            if isinstance(exc, OSError):
                reason = exc.strerror or type(exc).__name__
            raise StoreUnavailable(
                f"cannot reach PostgreSQL at {where} ({reason}); start it or fix {self.setting}"
            ) from None
        except asyncpg.exceptions.InvalidAuthorizationSpecificationError as exc:
            raise StoreUnavailable(
                f"PostgreSQL at {where} refused the login ({exc.sqlstate}); check the user and"
                f" password in {self.setting}"
            ) from None
        except asyncpg.exceptions.InvalidCatalogNameError:
            raise StoreUnavailable(
                f"PostgreSQL at {where} has no such database; create it (createdb) or fix"
                f" {self.setting}"
            ) from None
        except asyncpg.PostgresError as exc:
            raise StoreUnavailable(f"PostgreSQL at {where} refused to connect: {exc}") from None
        except (ValueError, asyncpg.exceptions.ClientConfigurationError) as exc:
            # A malformed URL or option; the message names the option, never the password.
            reason = str(exc) if isinstance(exc, asyncpg.InterfaceError) else "malformed"
            raise StoreUnavailable(f"{self.setting} cannot be used ({reason}); fix it") from None
        try:
            await self._migrate()
            async with self.pool.acquire() as conn:
                await self._read_statistics(conn)
        except BaseException:
            await self.close()
            raise

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS cm_schema (version integer NOT NULL)")
            current = await conn.fetchval("SELECT max(version) FROM cm_schema") or 0
            if current > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the database at {redact(self.url)} has schema version {current}, newer"
                    f" than this ChannelMind ({SCHEMA_VERSION}); upgrade ChannelMind"
                )
            for version in sorted(v for v in MIGRATIONS if v > current):
                async with conn.transaction():
                    for statement in MIGRATIONS[version]:
                        try:
                            await conn.execute(statement)
                        except asyncpg.exceptions.InsufficientPrivilegeError as exc:
                            raise StoreUnavailable(
                                f"PostgreSQL at {redact(self.url)} does not let this user set"
                                f" up the schema ({exc}); grant it CREATE on the database"
                            ) from None
                    await conn.execute("INSERT INTO cm_schema VALUES ($1)", version)

    async def close(self) -> None:
        if self._analyse is not None:
            self._analyse.cancel()
            with contextlib.suppress(BaseException):
                await self._analyse
            self._analyse = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    @property
    def db(self) -> _Queries:
        return _Queries(self.pool)

    async def _write(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction; retry it on deadlock or serialization failure."""
        for attempt in range(5):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await work(conn)
            except _RETRY:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.01 * 2**attempt)
            except _UNSTORABLE:
                raise InvalidInput(_NUL_MESSAGE) from None
        raise AssertionError("unreachable")

    async def get_meta(self, key: str) -> str | None:
        value = await self.db.fetchval("SELECT value FROM cm_meta WHERE key = $1", key)
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO cm_meta VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2",
            key,
            value,
        )

    async def init_meta(self, key: str, value: str) -> str:
        await self.db.execute(
            "INSERT INTO cm_meta VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, value
        )
        return str(await self.db.fetchval("SELECT value FROM cm_meta WHERE key = $1", key))

    # -- writes ----------------------------------------------------------------------------

    async def add(self, episodes: Sequence[Episode]) -> list[Added]:
        if not episodes:
            return []
        uids = [ep.uid or str(uuid.uuid4()) for ep in episodes]
        columns: list[list[Any]] = [
            uids,
            [e.org_id for e in episodes],
            [e.project_id for e in episodes],
            [e.producer for e in episodes],
            [e.produced_for for e in episodes],
            [e.role for e in episodes],
            [e.content for e in episodes],
            [to_epoch(e.created_at) for e in episodes],
            [e.platform for e in episodes],
            [e.source_id or uid for e, uid in zip(episodes, uids, strict=True)],
            [e.thread_id for e in episodes],
            [e.episode_type for e in episodes],
            [dump_json(e.metadata, "metadata") for e in episodes],
            [" ".join(scope_tokens(e)) for e in episodes],
        ]
        types = ["text"] * 7 + ["float8"] + ["text"] * 6

        async def insert(conn: asyncpg.Connection) -> list[Added]:
            try:
                return await insert_rows(conn)
            except asyncpg.IntegrityConstraintViolationError as exc:
                # A record that slipped past validation (a missing field): the batch is
                # refused whole, as SQLite refuses it, and nothing is acknowledged.
                raise InvalidInput(
                    f"the batch was not stored: {exc.__class__.__name__}"
                    f" ({getattr(exc, 'column_name', None) or 'a constraint'})"
                ) from None

        async def insert_rows(conn: asyncpg.Connection) -> list[Added]:
            # One statement (one round trip) for the episodes and their projects: the
            # projects' INSERT reads the same parameters ($2 org, $3 project, $8 time).
            inserted = await conn.fetch(
                "WITH new AS (INSERT INTO episodes (uid, org_id, project_id, producer,"
                " produced_for, role, content, created_at, platform, source_id, thread_id,"
                " episode_type, metadata, scope_tags) SELECT uid, org_id, project_id, producer,"
                " produced_for, role, content, created_at, platform, source_id, thread_id,"
                " episode_type, metadata::jsonb, string_to_array(tags, ' ') FROM unnest("
                + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
                + ") WITH ORDINALITY AS i(uid, org_id, project_id, producer, produced_for, role,"
                " content, created_at, platform, source_id, thread_id, episode_type, metadata,"
                " tags, ord) ORDER BY ord ON CONFLICT DO NOTHING RETURNING uid),"
                " made AS (INSERT INTO projects (org_id, project_id, description, config,"
                " created_at) SELECT DISTINCT ON (o, p) o, p, '', '{}', c FROM unnest($2::text[],"
                " $3::text[], $8::float8[]) WITH ORDINALITY AS u(o, p, c, ord)"
                " ORDER BY o, p, ord ON CONFLICT DO NOTHING)"
                " SELECT uid FROM new",
                *columns,
            )
            new = {r["uid"] for r in inserted}
            seen: set[str] = set()
            results: list[Added | None] = []
            missing: list[int] = []
            for i, uid in enumerate(uids):
                if uid in new and uid not in seen:
                    seen.add(uid)
                    results.append(Added(uid, True))
                else:
                    results.append(None)
                    missing.append(i)
            if missing:
                found = await conn.fetch(
                    "SELECT i.ord, e.uid FROM unnest($1::text[], $2::text[], $3::text[],"
                    " $4::text[]) WITH ORDINALITY AS i(o, p, pl, s, ord) JOIN episodes e ON"
                    " e.org_id = i.o AND e.project_id = i.p AND e.platform = i.pl AND"
                    " e.source_id = i.s",
                    *([columns[c][i] for i in missing] for c in (1, 2, 8, 9)),
                )
                by_ord = {int(r["ord"]): r["uid"] for r in found}
                for n, i in enumerate(missing, start=1):
                    if n not in by_ord:
                        raise InvalidInput(
                            f"episode {uids[i]!r} was not stored: its uid belongs to another"
                            " episode"
                        )
                    results[i] = Added(by_ord[n], False)
            return [r for r in results if r is not None]

        added = await self._write(insert)
        self._stored(sum(a.new for a in added))
        return added

    def _stored(self, count: int) -> None:
        """Refresh the planner's statistics on ``episodes`` in the background once this
        process has stored :data:`ANALYSE_EVERY` new rows, or a tenth of the table if that is
        more, since it last did.

        Why: without fresh statistics the planner judges a word's or a scope's frequency from
        defaults and reads whole GIN posting lists for a channel of a few hundred messages.
        Measured at 30k episodes, channel-scoped hybrid search p50/p95 went from 50/64 ms to
        11/18 ms after an ANALYZE. Autovacuum does it too, but only after a tenth of the table
        changed and within its naptime, which a bulk import or a migration outruns. A new
        database is the worst case: with no statistics at all the planner takes every
        org/project condition for a rare one, and at 2,000 messages in one project it read the
        project's every row for each keyword search (through ``ep_time``, then ``tsv @@`` as a
        filter) and for each read of candidates by uid (``uid = ANY`` as a filter). Measured
        with ``bench load --database-url`` (2,000 seeded messages, under the 5,000 of the rule
        before), 40 clients: 17.0 ms per keyword search and 9.3 ms per candidate read inside
        PostgreSQL (pg_stat_statements), the two biggest costs of a search."""
        self._unanalysed += count
        if self._unanalysed < self._analyse_after or (
            self._analyse is not None and not self._analyse.done()
        ):
            return
        self._unanalysed = 0
        self._analyse = asyncio.create_task(self._refresh_statistics())

    async def _refresh_statistics(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                await conn.execute("ANALYZE episodes", timeout=None)
                rows = await conn.fetchval(
                    "SELECT reltuples FROM pg_class WHERE oid = 'episodes'::regclass"
                )
                await self._read_statistics(conn)
            self._analyse_after = max(ANALYSE_EVERY, int(float(rows or 0) / 10))
        except Exception as exc:  # statistics are an optimisation: never fail a write for them
            log.warning("ANALYZE episodes failed: %s", exc)

    async def _read_statistics(self, conn: asyncpg.Connection) -> None:
        """Note which projects hold most of the table (see :meth:`_words_alone`), from the
        statistics of the last ANALYZE, this process's or another's (autovacuum's). An
        optimisation: if the statistics cannot be read, every search keeps its token."""
        try:
            rows = await conn.fetch(_BIG_PROJECTS, WORDS_ALONE_SHARE)
        except asyncpg.PostgresError as exc:
            log.warning("reading the planner's statistics failed: %s", exc)
            return
        self._big_projects = frozenset(r[0] for r in rows)

    async def edit(
        self, org_id: str, project_id: str, uid: str, content: str, edited_at: datetime
    ) -> bool:
        """Replace the content; the old vector is queued for removal and facts citing only
        this episode go (they were learned from the old text). The version moves on, so a
        claim taken before the edit cannot mark the new text indexed; the lease is kept, so no
        other worker embeds the row before the claim ends."""

        async def change(conn: asyncpg.Connection) -> bool:
            found = await conn.fetchrow(
                "UPDATE episodes SET content = $1, edited_at = $2, index_state = 0,"
                " version = version + 1, attempts = 0"
                " WHERE org_id = $3 AND project_id = $4 AND uid = $5 RETURNING produced_for",
                content,
                to_epoch(edited_at),
                org_id,
                project_id,
                uid,
            )
            if found is None:
                return False
            await conn.execute("DELETE FROM set_aside WHERE uid = $1", uid)
            await conn.execute(
                "INSERT INTO vector_tombstones (uid, org_id, project_id, produced_for)"
                " VALUES ($1, $2, $3, $4)",
                uid,
                org_id,
                project_id,
                found["produced_for"],
            )
            await self._drop_citations(conn, [uid])
            await conn.execute(_NEEDS_SCRUB)
            return True

        return await self._write(change)

    async def _delete_where(self, conn: asyncpg.Connection, where: str, args: list[Any]) -> Deleted:
        """Delete episodes, tombstone their vectors, drop facts citing only them."""
        gone = await conn.fetch(
            f"WITH gone AS (DELETE FROM episodes e WHERE {where}"
            " RETURNING e.uid, e.org_id, e.project_id, e.produced_for)"
            " INSERT INTO vector_tombstones (uid, org_id, project_id, produced_for)"
            " SELECT uid, org_id, project_id, produced_for FROM gone"
            " RETURNING uid, produced_for",
            *args,
        )
        uids = [r["uid"] for r in gone]
        if not uids:
            return Deleted()
        await conn.execute("DELETE FROM set_aside WHERE uid = ANY($1::text[])", uids)
        facts = await self._drop_citations(conn, uids)
        await conn.execute(_NEEDS_SCRUB)
        channels = sorted({r["produced_for"] for r in gone})
        return Deleted(uids=uids, facts=facts, channels=channels)

    @staticmethod
    async def _drop_citations(conn: asyncpg.Connection, uids: list[str]) -> int:
        """Remove citations of these episodes; drop the facts left citing nothing (counted)."""
        cited = await conn.fetch(
            "DELETE FROM fact_citations WHERE episode_uid = ANY($1::text[]) RETURNING fact_uid",
            uids,
        )
        if not cited:
            return 0
        status = await conn.execute(
            "DELETE FROM facts f WHERE f.uid = ANY($1::text[]) AND NOT EXISTS"
            " (SELECT 1 FROM fact_citations c WHERE c.fact_uid = f.uid)",
            list({r["fact_uid"] for r in cited}),
        )
        return _rowcount(status)

    async def delete(self, org_id: str, project_id: str, uids: Sequence[str]) -> Deleted:
        if not uids:
            return Deleted()
        return await self._write(
            lambda conn: self._delete_where(
                conn,
                "e.org_id = $1 AND e.project_id = $2 AND e.uid = ANY($3::text[])",
                [org_id, project_id, list(uids)],
            )
        )

    async def forget(
        self, scope: Scope, filt: Filter | None = None, *, drop_facts: bool = False
    ) -> Deleted:
        p = Params()
        where = scope_where(scope, None, filt, p)

        async def drop(conn: asyncpg.Connection) -> Deleted:
            gone = await self._delete_where(conn, where, p.values)
            if not drop_facts:
                return gone
            about = await self._delete_facts_about(
                conn, scope.org_id, scope.project_id, scope.producer, scope.produced_for
            )
            return Deleted(gone.uids, gone.facts + about, gone.channels)

        return await self._write(drop)

    async def purge(self) -> None:
        """VACUUM the tables a forget writes to (prunes dead tuples and their index entries;
        see :data:`PURGE_LIMITS` for what stays until a rewrite)."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                f"VACUUM (INDEX_CLEANUP ON) {', '.join(PURGED_TABLES)}", timeout=None
            )

    # -- reads -----------------------------------------------------------------------------

    async def get(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[Episode]:
        if not uids:
            return []
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM episodes WHERE uid = ANY($1::text[]) AND org_id = $2"
            " AND project_id = $3",
            list(uids),
            org_id,
            project_id,
        )
        found = {r["uid"]: row_episode(r) for r in rows}
        return [found[u] for u in dict.fromkeys(uids) if u in found]

    async def existing(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[str]:
        if not uids:
            return []
        rows = await self.db.fetch(
            "SELECT uid FROM episodes WHERE uid = ANY($1::text[]) AND org_id = $2"
            " AND project_id = $3",
            list(uids),
            org_id,
            project_id,
        )
        found = {r[0] for r in rows}
        return [u for u in dict.fromkeys(uids) if u in found]

    async def get_scoped(
        self,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        uids: Sequence[str],
        *,
        neighbours: bool = True,
    ) -> dict[str, Found]:
        if not uids:
            return {}
        p = Params([list(uids)])
        where = scope_where(scope, time, filt, p)
        rows = await self.db.fetch(
            f"SELECT {_candidates(neighbours)} FROM episodes e"
            f" WHERE e.uid = ANY($1::text[]) AND {where}",
            *p.values,
        )
        return {r["uid"]: row_found(r, neighbours) for r in rows}

    async def find_source(
        self, org_id: str, project_id: str, platform: str, source_id: str
    ) -> Episode | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM episodes WHERE org_id = $1 AND project_id = $2"
            " AND platform = $3 AND source_id = $4",
            org_id,
            project_id,
            platform,
            source_id,
        )
        return None if row is None else row_episode(row)

    async def list_episodes(
        self,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        limit: int,
        offset: int,
        newest_first: bool = False,
    ) -> list[Episode]:
        p = Params()
        where = scope_where(scope, time, filt, p)
        order = "DESC" if newest_first else "ASC"
        rows = await self.db.fetch(
            f"SELECT {cols('e')} FROM episodes e WHERE {where}"
            f" ORDER BY e.created_at {order}, e.id {order}"
            f" LIMIT {p(limit, 'bigint')} OFFSET {p(offset, 'bigint')}",
            *p.values,
        )
        return [row_episode(r) for r in rows]

    async def count(self, scope: Scope, filt: Filter | None = None) -> int:
        p = Params()
        where = scope_where(scope, None, filt, p)
        return int(
            await self.db.fetchval(f"SELECT count(*) FROM episodes e WHERE {where}", *p.values)
        )

    async def keyword_search(
        self,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        text: str,
        limit: int,
        *,
        neighbours: bool = True,
    ) -> list[KeywordHit]:
        terms = ["'" + t + "'" for t in keyword_terms(text)]  # \w+ words: nothing to escape
        if not terms:
            return []
        p = Params()
        words = p(" | ".join(terms))
        match = f"e.tsv @@ to_tsquery('{FTS_CONFIG}', {words})"
        if self.scope_tokens and not self._words_alone(scope):
            tag = p("'" + narrowest_token(scope) + "'")
            match = f"e.tsv @@ (to_tsquery('{FTS_CONFIG}', {words}) && {tag}::tsquery)"
        where = scope_where(scope, time, filt, p)
        if self.ranking == "ts_rank_cd":
            # The best ids first, then their rows: a candidate's neighbours are looked up for
            # ``limit`` rows, not for every match.
            sql = (
                f"SELECT {_candidates(neighbours)}, t.score FROM (SELECT e.id,"
                f" ts_rank_cd(e.tsv, to_tsquery('{FTS_CONFIG}', {words}))"
                f" AS score FROM episodes e WHERE {match} AND {where}"
                f" ORDER BY score DESC, e.id DESC LIMIT {p(limit, 'bigint')}) t"
                " JOIN episodes e ON e.id = t.id ORDER BY t.score DESC, e.id DESC"
            )
        else:
            sql = self._bm25_sql(
                match, where, p(terms, "text[]"), p(limit, "bigint"), _candidates(neighbours)
            )
        rows = await self.db.fetch(sql, *p.values)
        found = [(row_found(r, neighbours), float(r["score"])) for r in rows]
        return [KeywordHit(f.key, f.episode, score, f.adjacent) for f, score in found]

    def _words_alone(self, scope: Scope) -> bool:
        """Whether a keyword search under ``scope`` matches the words alone, not the scope's
        token: a search of a whole project that holds at least :data:`WORDS_ALONE_SHARE` of
        the table, by the planner's statistics.

        Every row of the project holds the project's token, so requiring it kept no row of
        the project out (:func:`scope_where` keeps the search inside the project in any case,
        so the rows that match, hence bm25's counts and scores, are the same), while the GIN
        index walked the token's posting list, as long as the project: at 200k rows it was
        half of the index pages a search read (median 133 -> 69). A small project beside a
        big one keeps its token: matched by the words alone it would read the words' posting
        lists for the whole table and intersect them with ``ep_time``'s rows of the project
        (a BitmapAnd), 2-4x the time of the token's short list (2,000 rows beside 200,000:
        p50 1.0-1.4 ms with the token, 3.5-5.6 ms without). The statistics count a project id
        over every organisation, so a project id two organisations share may be taken for a
        big project: slower, never different. Channel, author and thread tokens hold few
        rows: they stay, and keep a channel search to its own rows."""
        return project_wide(scope) and scope.project_id in self._big_projects

    @staticmethod
    def _bm25_sql(match: str, where: str, terms: str, limit: str, columns: str) -> str:
        """bm25 over the rows that match: idf from how many of them hold each term (so a
        term's rarity is judged inside the scope) against the table's size, a document's
        length in distinct words, term presence as its frequency (chat rarely repeats).

        Shape, for speed at a million rows: the query terms are parsed once (``q``); one pass
        over the matching rows records which terms each holds (``hits``, no tsvector carried
        along); each term's idf is worked out once (``w``, by the term's position) and a row's
        score is the sum of its terms' idf, in the order of its terms, as the join and
        GROUP BY this replaced summed them (the same floats, so the same order of hits), but
        without joining every (row, term) pair and hashing them back together; only the best
        ``limit`` ids are joined back to their rows."""
        idf = "ln((total.n - df.n + 0.5) / (df.n + 0.5) + 1)"
        norm = f"{BM25_K1 + 1} / (1 + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * h.dl / total.avgdl))"
        return (
            f"WITH q AS MATERIALIZED (SELECT array_agg(to_tsquery('{FTS_CONFIG}', t)"
            f"  ORDER BY i) AS qs FROM unnest({terms}) WITH ORDINALITY AS u(t, i)),"
            " hits AS MATERIALIZED (SELECT e.id,"
            "  greatest(length(e.tsv) - cardinality(e.scope_tags), 1) AS dl,"
            "  ARRAY(SELECT i FROM generate_subscripts(q.qs, 1) AS i WHERE e.tsv @@ q.qs[i]) AS ts"
            f"  FROM episodes e, q WHERE {match} AND {where}),"
            " df AS MATERIALIZED (SELECT t AS i, count(*)::float8 AS n"
            "  FROM hits, unnest(hits.ts) AS t GROUP BY t),"
            " total AS (SELECT greatest((SELECT reltuples FROM pg_class"
            "  WHERE oid = 'episodes'::regclass), (SELECT count(*) FROM hits), 1)::float8 AS n,"
            "  (SELECT avg(dl) FROM hits)::float8 AS avgdl),"
            f" w AS MATERIALIZED (SELECT ARRAY(SELECT (SELECT {idf} FROM df WHERE df.i = g)"
            "  FROM generate_series(1, cardinality(q.qs)) AS g) AS idf FROM q, total),"
            " scored AS (SELECT h.id,"
            f"  (SELECT sum(w.idf[m.i]) FROM unnest(h.ts) AS m(i)) * {norm} AS score"
            "  FROM hits h, total, w WHERE cardinality(h.ts) > 0),"
            f" top AS (SELECT id, score FROM scored ORDER BY score DESC, id DESC LIMIT {limit})"
            f" SELECT {columns}, top.score FROM top"
            " JOIN episodes e ON e.id = top.id"
            " ORDER BY top.score DESC, e.id DESC"
        )

    async def adjacent(self, keys: Sequence[int]) -> dict[int, Adjacent]:
        if not keys:
            return {}
        rows = await self.db.fetch(
            f"SELECT e.id, {ADJACENT_SQL} FROM episodes e WHERE e.id = ANY($1::bigint[])",
            list(keys),
        )
        return {int(r["id"]): Adjacent(r["before"], r["after"]) for r in rows}

    async def neighbours(self, keys: Sequence[int], before: int, after: int) -> dict[int, Context]:
        out = {int(k): Context() for k in keys}
        same = (
            "n.org_id = c.org_id AND n.project_id = c.project_id"
            " AND n.produced_for = c.produced_for"
            " AND (c.thread_id IS NULL OR n.thread_id = c.thread_id)"
        )
        for count, cmp, order, side in (
            (before, "<", "DESC", "before"),
            (after, ">", "ASC", "after"),
        ):
            if not count or not keys:
                continue
            rows = await self.db.fetch(
                f"SELECT c.id AS anchor, {cols('n')} FROM episodes c CROSS JOIN LATERAL"
                f" (SELECT * FROM episodes n WHERE {same} AND (n.created_at, n.id) {cmp}"
                f" (c.created_at, c.id) ORDER BY n.created_at {order}, n.id {order} LIMIT $2) n"
                " WHERE c.id = ANY($1::bigint[])"
                f" ORDER BY c.id, n.created_at {order}, n.id {order}",
                list(keys),
                count,
            )
            for r in rows:
                context = out.get(int(r["anchor"]))
                if context is not None:
                    getattr(context, side).append(Row(int(r["id"]), row_episode(r, 1)))
        return out

    async def channels(self, org_id: str, project_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT DISTINCT produced_for FROM episodes WHERE org_id = $1 AND project_id = $2",
            org_id,
            project_id,
        )
        return [r[0] for r in rows]

    async def channel_members(
        self, org_id: str, project_id: str, produced_for: str
    ) -> list[tuple[str, str, str | None]]:
        rows = await self.db.fetch(
            "SELECT uid, producer, thread_id FROM episodes"
            " WHERE org_id = $1 AND project_id = $2 AND produced_for = $3",
            org_id,
            project_id,
            produced_for,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def all_uids(self) -> set[str]:
        return {r[0] for r in await self.db.fetch("SELECT uid FROM episodes")}

    # -- the embedding queue ---------------------------------------------------------------

    async def claim(self, limit: int, lease_s: float) -> Claim | None:
        token = str(uuid.uuid4())

        async def take(conn: asyncpg.Connection) -> Claim | None:
            now = "extract(epoch FROM clock_timestamp())"
            rows = await conn.fetch(
                "WITH picked AS (SELECT id FROM episodes WHERE index_state = 0"
                f" AND (lease_until IS NULL OR lease_until < {now})"
                " ORDER BY org_id, project_id, produced_for, id LIMIT $1"
                " FOR UPDATE SKIP LOCKED)"
                f" UPDATE episodes e SET lease_token = $2::uuid, lease_until = {now} + $3,"
                " attempts = e.attempts + 1 FROM picked WHERE e.id = picked.id"
                f" RETURNING {cols('e')}, e.version, e.attempts, e.lease_until",
                limit,
                token,
                lease_s,
            )
            poisoned = [r["uid"] for r in rows if r["attempts"] > MAX_ATTEMPTS]
            if poisoned:
                reason = f"claimed {MAX_ATTEMPTS} times without being embedded"
                await self._set_aside_in(conn, poisoned, reason)
            kept = sorted(
                (r for r in rows if r["attempts"] <= MAX_ATTEMPTS),
                key=lambda r: (r["org_id"], r["project_id"], r["produced_for"], r["id"]),
            )
            if not kept:
                return None
            return Claim(
                token=token,
                episodes=tuple(row_episode(r) for r in kept),
                lease_until=from_epoch(kept[0]["lease_until"]),
                stamps={r["uid"]: int(r["version"]) for r in kept},
            )

        return await self._write(take)

    async def complete(self, claim: Claim, uids: Sequence[str] | None = None) -> None:
        done = list(claim.stamps) if uids is None else [u for u in uids if u in claim.stamps]

        async def finish(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE episodes e SET index_state = 1, attempts = 0 FROM unnest($2::text[],"
                " $3::int[]) AS d(uid, version) WHERE e.uid = d.uid AND e.version = d.version"
                " AND e.lease_token = $1::uuid",
                claim.token,
                done,
                [claim.stamps[u] for u in done],
            )
            await conn.execute(
                "UPDATE episodes SET lease_token = NULL, lease_until = NULL"
                " WHERE lease_token = $1::uuid",
                claim.token,
            )

        await self._write(finish)

    async def release(self, claim: Claim) -> None:
        # Not the row's fault (the index or the embedder is down): the attempt does not count.
        await self.db.execute(
            "UPDATE episodes SET lease_token = NULL, lease_until = NULL,"
            " attempts = greatest(attempts - 1, 0) WHERE lease_token = $1::uuid",
            claim.token,
        )

    async def set_aside(
        self, claim: Claim, uids: Sequence[str], reason: str = "could not be embedded"
    ) -> None:
        async def mark(conn: asyncpg.Connection) -> None:
            held = await conn.fetch(
                "SELECT uid FROM episodes WHERE lease_token = $1::uuid AND uid = ANY($2::text[])",
                claim.token,
                list(uids),
            )
            await self._set_aside_in(conn, [r[0] for r in held], reason)

        await self._write(mark)

    @staticmethod
    async def _set_aside_in(conn: asyncpg.Connection, uids: list[str], reason: str) -> None:
        """Set episodes aside inside the caller's transaction: recorded with the reason (and
        logged) once, out of the queue, any vector they had queued for removal."""
        if not uids:
            return
        new = await conn.fetch(
            "INSERT INTO set_aside SELECT u, 'episode', $2, extract(epoch FROM now())"
            " FROM unnest($1::text[]) AS u ON CONFLICT DO NOTHING RETURNING uid",
            uids,
            reason[:1000],
        )
        for r in new:
            log.warning("set aside episode %s: %s", r[0], reason[:300])
        await conn.execute(
            "INSERT INTO vector_tombstones (uid, org_id, project_id, produced_for)"
            " SELECT uid, org_id, project_id, produced_for FROM episodes"
            " WHERE uid = ANY($1::text[]) AND index_state <> 2",  # any vector it had goes
            uids,
        )
        await conn.execute(
            "UPDATE episodes SET index_state = 2, lease_token = NULL, lease_until = NULL"
            " WHERE uid = ANY($1::text[])",
            uids,
        )

    async def requeue(self, uids: Sequence[str] | None = None) -> None:
        if uids is None:

            async def everything(conn: asyncpg.Connection) -> None:
                await conn.execute("UPDATE episodes SET index_state = 0, attempts = 0")
                await conn.execute("DELETE FROM set_aside WHERE kind = 'episode'")

            await self._write(everything)
        elif uids:
            await self.db.execute(
                "UPDATE episodes SET index_state = 0, attempts = 0 WHERE uid = ANY($1::text[])"
                " AND index_state <> 2",
                list(uids),
            )

    async def count_set_aside(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM set_aside"))

    async def count_pending(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM episodes WHERE index_state = 0"))

    async def count_indexed(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM episodes WHERE index_state = 1"))

    async def tombstones(self, limit: int) -> list[Tombstone]:
        rows = await self.db.fetch(
            "SELECT id, uid, org_id, project_id, produced_for FROM vector_tombstones"
            " ORDER BY id LIMIT $1",
            limit,
        )
        return [Tombstone(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    async def clear_tombstones(self, ids: Sequence[int] | None = None) -> None:
        if ids is None:
            await self.db.execute("DELETE FROM vector_tombstones")
        elif ids:
            await self.db.execute(
                "DELETE FROM vector_tombstones WHERE id = ANY($1::bigint[])", list(ids)
            )

    async def needs_scrub(self) -> bool:
        return await self.get_meta(_SCRUB_KEY) is not None

    async def request_scrub(self) -> None:
        await self.db.execute(_NEEDS_SCRUB)

    async def scrubbed(self) -> None:
        await self.db.execute("DELETE FROM cm_meta WHERE key = $1", _SCRUB_KEY)

    # -- facts -----------------------------------------------------------------------------

    async def add_fact(self, fact: Fact) -> str:
        uid = fact.uid or str(uuid.uuid4())
        metadata = dump_json(fact.metadata, "fact metadata")

        async def insert(conn: asyncpg.Connection) -> None:
            citations = list(dict.fromkeys(fact.citations))
            known = {
                r[0]
                for r in await conn.fetch(
                    "SELECT uid FROM episodes WHERE org_id = $1 AND project_id = $2"
                    " AND uid = ANY($3::text[])",
                    fact.org_id,
                    fact.project_id,
                    citations,
                )
            }
            missing = [c for c in citations if c not in known]
            if missing:
                raise InvalidInput(
                    f"citations not found in {fact.org_id}/{fact.project_id}:"
                    f" {', '.join(missing[:20])}"
                )
            await conn.execute(
                "INSERT INTO facts (uid, org_id, project_id, subject, produced_for, category,"
                " tag, feature, value, created_at, superseded_at, superseded_by, metadata)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb)",
                uid,
                *(getattr(fact, name) for name in FACT_FIELDS[1:]),
                to_epoch(fact.created_at),
                to_epoch(fact.superseded_at) if fact.superseded_at else None,
                fact.superseded_by,
                metadata,
            )
            await conn.execute(
                "INSERT INTO fact_citations SELECT $1, c, min(ord) FROM unnest($2::text[])"
                " WITH ORDINALITY AS u(c, ord) GROUP BY c ON CONFLICT DO NOTHING",
                uid,
                list(fact.citations),
            )

        try:
            await self._write(insert)
        except asyncpg.exceptions.UniqueViolationError:
            raise InvalidInput(f"a fact with uid {uid!r} exists already") from None
        return uid

    async def supersede_fact(
        self, org_id: str, project_id: str, uid: str, by: str, when: datetime
    ) -> bool:
        status = await self.db.execute(
            "UPDATE facts SET superseded_at = $1, superseded_by = $2"
            " WHERE org_id = $3 AND project_id = $4 AND uid = $5 AND EXISTS (SELECT 1 FROM"
            " facts b WHERE b.org_id = $3 AND b.project_id = $4 AND b.uid = $2)",
            to_epoch(when),
            by,
            org_id,
            project_id,
            uid,
        )
        return _rowcount(status) > 0

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
        if uids is not None and not uids:
            return []
        p = Params([org_id, project_id])
        clauses = ["f.org_id = $1", "f.project_id = $2"]
        if subject is not None:
            clauses.append(f"f.subject = {p(subject)}")
        if produced_for is not None:
            clauses.append(f"f.produced_for = {p(produced_for)}")
        if not include_superseded:
            clauses.append("f.superseded_at IS NULL")
        if uids is not None:
            clauses.append(f"f.uid = ANY({p(list(uids), 'text[]')})")
        rows = await self.db.fetch(
            "SELECT f.uid, f.org_id, f.project_id, f.subject, f.produced_for, f.category, f.tag,"
            " f.feature, f.value, f.created_at, f.superseded_at, f.superseded_by, f.metadata,"
            " ARRAY(SELECT c.episode_uid FROM fact_citations c WHERE c.fact_uid = f.uid"
            "  ORDER BY c.position) AS citations"
            f" FROM facts f WHERE {' AND '.join(clauses)}"
            f" ORDER BY f.created_at DESC, f.id DESC LIMIT {p(limit, 'bigint')}",
            *p.values,
        )
        return [
            Fact.model_construct(
                **dict(zip(FACT_FIELDS, r[:9], strict=True)),
                created_at=from_epoch(r[9]),
                superseded_at=None if r[10] is None else from_epoch(r[10]),
                superseded_by=r[11],
                metadata=json.loads(r[12]),
                citations=list(r[13]),
            )
            for r in rows
        ]

    async def delete_facts(self, org_id: str, project_id: str, uids: Sequence[str]) -> int:
        if not uids:
            return 0
        status = await self.db.execute(
            "DELETE FROM facts WHERE org_id = $1 AND project_id = $2 AND uid = ANY($3::text[])",
            org_id,
            project_id,
            list(uids),
        )
        return _rowcount(status)

    async def delete_facts_about(
        self, org_id: str, project_id: str, subject: str | None, produced_for: str | None
    ) -> int:
        return await self._write(
            lambda conn: self._delete_facts_about(conn, org_id, project_id, subject, produced_for)
        )

    @staticmethod
    async def _delete_facts_about(
        conn: asyncpg.Connection,
        org_id: str,
        project_id: str,
        subject: str | None,
        produced_for: str | None,
    ) -> int:
        p = Params([org_id, project_id])
        clauses = ["org_id = $1", "project_id = $2"]
        if subject is not None:
            clauses.append(f"subject = {p(subject)}")
        if produced_for is not None:
            clauses.append(f"produced_for = {p(produced_for)}")
        status = await conn.execute(f"DELETE FROM facts WHERE {' AND '.join(clauses)}", *p.values)
        return _rowcount(status)

    async def fact_uids(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[str]:
        if not uids:
            return []
        rows = await self.db.fetch(
            "SELECT uid FROM facts WHERE org_id = $1 AND project_id = $2 AND uid = ANY($3::text[])",
            org_id,
            project_id,
            list(uids),
        )
        found = {r[0] for r in rows}
        return [u for u in dict.fromkeys(uids) if u in found]

    async def count_facts(self, org_id: str, project_id: str) -> int:
        return int(
            await self.db.fetchval(
                "SELECT count(*) FROM facts WHERE org_id = $1 AND project_id = $2",
                org_id,
                project_id,
            )
        )

    # -- projects and settings -------------------------------------------------------------

    async def create_project(
        self, org_id: str, project_id: str, description: str, config: dict[str, Any]
    ) -> bool:
        status = await self.db.execute(
            "INSERT INTO projects VALUES ($1, $2, $3, $4::jsonb, $5) ON CONFLICT DO NOTHING",
            org_id,
            project_id,
            description,
            dump_json(config, "project config"),
            datetime.now(UTC).timestamp(),
        )
        return _rowcount(status) > 0

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        r = await self.db.fetchrow(
            "SELECT description, config, created_at FROM projects"
            " WHERE org_id = $1 AND project_id = $2",
            org_id,
            project_id,
        )
        if r is None:
            return None
        return Project(org_id, project_id, r[0], json.loads(r[1]), from_epoch(r[2]))

    async def projects(self, org_id: str | None = None) -> list[ProjectRef]:
        if org_id is None:
            rows = await self.db.fetch(
                "SELECT org_id, project_id FROM projects ORDER BY org_id, project_id"
            )
        else:
            rows = await self.db.fetch(
                "SELECT org_id, project_id FROM projects WHERE org_id = $1 ORDER BY project_id",
                org_id,
            )
        return [ProjectRef(r[0], r[1]) for r in rows]

    async def delete_project(self, org_id: str, project_id: str) -> Deleted:
        async def drop(conn: asyncpg.Connection) -> Deleted:
            gone = await self._delete_where(
                conn, "e.org_id = $1 AND e.project_id = $2", [org_id, project_id]
            )
            facts = await self._delete_facts_about(conn, org_id, project_id, None, None)
            for table in ("settings", "projects"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE org_id = $1 AND project_id = $2",
                    org_id,
                    project_id,
                )
            return Deleted(gone.uids, gone.facts + facts, gone.channels)

        return await self._write(drop)

    async def get_setting(self, org_id: str, project_id: str, subject: str, key: str) -> str | None:
        value = await self.db.fetchval(
            "SELECT value FROM settings WHERE org_id = $1 AND project_id = $2 AND subject = $3"
            " AND key = $4",
            org_id,
            project_id,
            subject,
            key,
        )
        return None if value is None else str(value)

    async def set_setting(
        self, org_id: str, project_id: str, subject: str, key: str, value: str | None
    ) -> None:
        if value is None:
            await self.db.execute(
                "DELETE FROM settings WHERE org_id = $1 AND project_id = $2 AND subject = $3"
                " AND key = $4",
                org_id,
                project_id,
                subject,
                key,
            )
        else:
            await self.db.execute(
                "INSERT INTO settings VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (org_id, project_id, subject, key) DO UPDATE SET value = $5",
                org_id,
                project_id,
                subject,
                key,
                value,
            )

    async def list_settings(self, org_id: str | None = None) -> list[Setting]:
        rows = await self.db.fetch(
            "SELECT org_id, project_id, subject, key, value FROM settings"
            " WHERE $1::text IS NULL OR org_id = $1 ORDER BY org_id, project_id, subject, key",
            org_id,
        )
        return [Setting(*r) for r in rows]

    async def counts(self) -> Counts:
        r = await self.db.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE index_state = 0),"
            " (SELECT count(*) FROM set_aside), count(DISTINCT org_id),"
            " count(DISTINCT (org_id, project_id)),"
            " count(DISTINCT (org_id, project_id, produced_for)),"
            " (SELECT count(*) FROM facts WHERE superseded_at IS NULL) FROM episodes"
        )
        assert r is not None  # an aggregate always returns a row
        return Counts(
            episodes=r[0],
            pending_index=r[1],
            set_aside=r[2],
            facts=r[6],
            orgs=r[3],
            projects=r[4],
            channels=r[5],
        )


def _rowcount(status: str) -> int:
    """Rows affected, from a command status such as ``DELETE 3`` or ``INSERT 0 1``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
