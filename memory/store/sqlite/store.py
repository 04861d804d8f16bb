"""SQLite, the embedded default: :class:`SQLiteStore` implements :class:`memory.store.base.Store`
on one file in the data folder (``memory.sqlite3``) with aiosqlite.

One writer connection (serialised by a lock, so that no two coroutines interleave inside one
transaction) and one reader connection; WAL mode lets them run side by side without
"database is locked". Every write goes through :meth:`SQLiteStore._write`, the one transaction
helper (``BEGIN IMMEDIATE`` under the write lock, roll back on any exception).

Forgetting: ``secure_delete`` overwrites deleted content instead of leaving it in free pages,
a delete merges the FTS segments in its transaction (an FTS5 delete only adds a tombstone), and
:meth:`SQLiteStore.purge` folds and truncates the WAL, so forgotten text leaves the file and its
log when the engine's call returns. A new file is made with ``auto_vacuum=INCREMENTAL`` and
gives free pages back to the file system after indexing and forgetting (see
:meth:`SQLiteStore._give_back_free_pages`).

One process owns a data folder (:mod:`memory.folder`), so the embedding queue's claims live in
that process (:class:`_Leases`) instead of in the file: the write lock orders them, a claim
taken before an edit is told apart by the row's content and edit time, and a process that dies
takes its leases with it. The file is the one earlier versions wrote (schema 3).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from memory.filters import Filter
from memory.model import NAME_KEY, Added, Brief, Episode, Fact, InvalidInput, Scope, TimeRange
from memory.uids import canonical_bytes, uuid_text

from ..base import (
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
    UNREADABLE,
    from_epoch,
    keyword_terms,
    narrowest_token,
    project_token,
    project_wide,
    scope_tokens,
    to_epoch,
)
from .connections import (
    BUSY_TIMEOUT_MS,
    LOOP_WRITE_ROWS,
    AtomicReader,
    LoopReader,
    loop_connection,
    transaction,
)
from .filters import project_of, to_sql
from .schema import INDEXED, MIGRATIONS, PENDING, SCHEMA_VERSION, SET_ASIDE, UPGRADES

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Set in the transaction that deletes or edits episodes, cleared once the vector index's
#: files hold nothing of them: a crash in between scrubs on the next open.
_SCRUB_KEY = "vector_scrub_pending"
_NEEDS_SCRUB = f"INSERT OR REPLACE INTO meta VALUES ('{_SCRUB_KEY}', '1')"
#: Bound variables per statement, well under SQLite's limit.
_CHUNK = 500
_WAL_ATTEMPTS = 100  # about four minutes of waiting in all, far past any migration
#: Free pages (4 KiB each) a file keeps for its next writes before it gives the rest back.
SPARE_PAGES = 64

COLUMNS = (
    "id",
    "uid",
    "org_id",
    "project_id",
    "producer",
    "produced_for",
    "role",
    "content",
    "created_at",
    "platform",
    "source_id",
    "thread_id",
    "episode_type",
    "metadata",
)


#: What a search's candidates are read with (:class:`memory.model.Brief`).
BRIEF_COLUMNS = ("id", "uid", "producer", "content", "created_at", "metadata")


#: The key of an org and project in ``scopes`` (schema 7), from the parameters
#: ``(org_id, project_id)``: SQLite evaluates it once per statement, and looks
#: ``project_key = KEY_OF`` up in an index like a constant.
KEY_OF = "(SELECT key FROM scopes WHERE org_id = ? AND project_id = ?)"


def cols(alias: str, columns: Sequence[str] = COLUMNS) -> str:
    """The columns of ``alias``'s rows, the org and project read from ``scopes``."""
    return ", ".join(
        f"({project_of(alias, c)})" if c in ("org_id", "project_id") else f"{alias}.{c}"
        for c in columns
    )


def row_to_episode(row: Sequence[Any]) -> Episode:
    """An Episode from a row whose first columns are :data:`COLUMNS`."""
    _, key, org, proj, producer, produced_for, role, content, created, platform, source = row[:11]
    thread_id, episode_type, metadata = row[11:14]
    uid = uid_of(key)
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


def _row(row: Sequence[Any]) -> Row:
    return Row(int(row[0]), row_to_episode(row))


def name_sql(alias: str) -> str:
    """A row's author name as :func:`memory.model.display_name` reads it from the metadata,
    worked out in SQL for the metadata a store writes (a JSON object whose ``display_name``
    is a string, null, false or absent), so that a search's candidates need no
    ``json.loads``. NULL for any other metadata (not RFC 8259 JSON, e.g. a NaN; not an
    object; a name that is a number, true, a list or an object; a NUL character anywhere,
    where SQLite's strings end): :func:`row_to_found` reads those in Python, as every row
    was read before, so every row gets the name it had."""
    m, name = f"{alias}.metadata", f"{alias}.metadata, '$.{NAME_KEY}'"
    return (
        f"CASE WHEN json_valid({m}) AND json_type({m}) = 'object' AND instr({m}, '\\u0000') = 0"
        " THEN"
        f" CASE coalesce(json_type({name}), 'absent')"
        f" WHEN 'text' THEN coalesce(nullif(json_extract({name}), ''), {alias}.producer)"
        f" WHEN 'absent' THEN {alias}.producer WHEN 'null' THEN {alias}.producer"
        f" WHEN 'false' THEN {alias}.producer END END"
    )


def adjacent_sql(alias: str) -> str:
    """The row keys just before and just after ``alias``'s row in its channel, in time order
    (two columns). Each is one lookup in the channel index, which holds all it needs (channel,
    project, time and row key): no neighbour's row is read."""
    same = f"n.produced_for = {alias}.produced_for AND n.project_key = {alias}.project_key"
    return (
        f"(SELECT n.id FROM episodes n WHERE {same} AND (n.created_at, n.id) <"
        f" ({alias}.created_at, {alias}.id) ORDER BY n.created_at DESC, n.id DESC LIMIT 1),"
        f" (SELECT n.id FROM episodes n WHERE {same} AND (n.created_at, n.id) >"
        f" ({alias}.created_at, {alias}.id) ORDER BY n.created_at ASC, n.id ASC LIMIT 1)"
    )


def candidate_sql(alias: str, neighbours: bool = True) -> str:
    """What a search's candidates are read with, the columns :func:`row_to_found` reads:
    :data:`BRIEF_COLUMNS`, the author's name (:func:`name_sql`) and the row's neighbours
    (:func:`adjacent_sql`; two NULLs when not ``neighbours``), so that ranking needs no
    second query for them."""
    around = adjacent_sql(alias) if neighbours else "NULL, NULL"
    return f"{cols(alias, BRIEF_COLUMNS)}, {name_sql(alias)}, {around}"


def row_to_found(row: Sequence[Any], neighbours: bool = True) -> Found:
    """A search candidate from a row whose first columns are :func:`candidate_sql`'s. Reads
    what :func:`row_to_episode` reads of a broken row (time, metadata), so the same rows are
    set aside whichever of the two reads them first: metadata SQLite found well-formed is
    JSON ``json.loads`` reads, and is parsed only if the metadata is ever asked for."""
    key, uid, producer, content, created, metadata, name, before, after = row[:9]
    # Metadata that is not JSON at all raises there: the row is set aside.
    brief = Brief.stored(uid_of(uid), producer, content, created, metadata, name)
    return Found(int(key), brief, Adjacent(before, after) if neighbours else None)


FACT_COLUMNS = (
    "f.uid, f.org_id, f.project_id, f.subject, f.produced_for, f.category, f.tag, f.feature,"
    " f.value, f.created_at, f.superseded_at, f.superseded_by, f.metadata,"
    " (SELECT json_group_array(episode_uid) FROM fact_citations c WHERE c.fact_uid = f.uid)"
)


def row_to_fact(r: Sequence[Any]) -> Fact:
    """A Fact from a row selected with :data:`FACT_COLUMNS`."""
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
    """The WHERE clause (over alias ``e``) that keeps a query inside its scope and filters.

    It names the one index the query should walk: the thread's, else the channel's, else the
    producer's (each leads with its own column, schema migration 4), else the project's time
    index. Every other scope column is compared with a unary ``+``, which SQLite does not
    look up in an index: without statistics its planner counts the equal columns an index
    starts with, and would walk (project_key, created_at), every row of the project, rather
    than (produced_for, created_at). The channel's index holds the project key after the
    channel (schema migration 8), so a channel query looks both up in it, and walks one
    project's rows of the channel in time order."""
    narrowest = next(
        (c for c in ("thread_id", "produced_for", "producer") if getattr(scope, c) is not None),
        None,
    )
    keep = "+" if narrowest in ("thread_id", "producer") else ""
    clauses = [f"{keep}e.project_key = {KEY_OF}"]
    params: list[Any] = [scope.org_id, scope.project_id]
    for column in ("producer", "produced_for", "thread_id"):
        value = getattr(scope, column)
        if value is not None:
            clauses.append(f"{'' if column == narrowest else '+'}e.{column} = ?")
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


#: Digits of a scope token in a folder this version created (meta ``scope_tokens`` =
#: ``short``): ``z``, the kind's letter and the token's last 13 digits, 15 characters where
#: :mod:`memory.store.shared` makes 22. 10**13 values (43 bits): two scopes that share a
#: token only cost a search the joined query (every ranked row's scope is checked in the
#: WHERE), never a wrong hit.
SHORT_TOKEN_DIGITS = 13
#: The ``meta`` key and value that mark a folder whose rows hold short scope tokens.
SHORT_TOKENS = ("scope_tokens", "short")


def folder_token(token: str, short: bool) -> str:
    """A scope token as the folder's rows hold it: :data:`SHORT_TOKEN_DIGITS` digits in a
    folder created by this version, all 20 in a folder an earlier version created (its rows
    keep theirs, so its new rows and queries keep the long form too)."""
    return token[:2] + token[-SHORT_TOKEN_DIGITS:] if short else token


def scope_match(scope: Scope, terms: list[str], short: bool = False) -> str:
    """An FTS5 MATCH expression: any of the terms, inside the scope's narrowest token, but
    for a search of a whole project, which matches the terms alone.

    Why not the project token: every row of the project holds it, and FTS5's bm25 counts the
    rows of every phrase of the query for its idf (``xQueryPhrase`` over the whole posting
    list), the token's included although its column weighs 0. That walk grew with the
    project: at a million rows it was more than half of a keyword query. The query's WHERE
    (:func:`scope_sql`, over the joined row) keeps the project instead; the scores are the
    same (the token's weight is 0). Narrower tokens (a channel, an author, a thread) hold few
    rows and stay: they are what keeps a channel search from reading other channels' rows."""
    words = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
    if project_wide(scope):
        return f"content : ({words})"
    return f"fts_tags : {folder_token(narrowest_token(scope), short)} AND content : ({words})"


def _matched_in_scope(scope: Scope) -> bool:
    """Whether every row :func:`scope_match` matches is inside ``scope`` but for its org and
    project: the scope names nothing its narrowest token leaves out (a producer inside a
    channel, a thread without its channel)."""
    if scope.thread_id is not None:
        return scope.produced_for is not None and scope.producer is None
    return scope.produced_for is None or scope.producer is None


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def uid_key(uid: str) -> str | bytes:
    """How ``episodes.uid`` holds a uid (schema 6): a UUID in its canonical form (lower-case,
    36 characters, what the store makes) as its 16 bytes, any other uid as the text it is.
    16 bytes instead of 36 in the row and again in the uid index: about 42 bytes per message.
    Exactly one form per uid (a text uid is never a canonical UUID), so lookups by key are
    exact; :func:`uid_of` gives the uid back."""
    raw = canonical_bytes(uid)
    return uid if raw is None else raw


def uid_of(key: str | bytes) -> str:
    """The uid a stored :func:`uid_key` stands for."""
    return uuid_text(key) if isinstance(key, bytes) else key


def _keys(uids: Iterable[str]) -> list[str | bytes]:
    return [uid_key(u) for u in uids]


def _hex_key(uid: str) -> str:
    """SQLite's ``hex(uid)`` of a stored uid (JSON, which a claim's leases are passed in,
    holds no bytes)."""
    key = uid_key(uid)
    return (key if isinstance(key, bytes) else key.encode()).hex().upper()


def _keys_in_project(keys: Sequence[Any]) -> str:
    """:func:`_uids_in_project` for episodes, whose rows name their project by its key and
    their uid by :func:`uid_key`; the same parameters, the uids as keys."""
    return f"uid IN ({_marks(keys)}) AND +project_key = {KEY_OF}"


def _uids_in_project(uids: Sequence[Any]) -> str:
    """The WHERE clause for rows of one org and project named by uid; its parameters are the
    uids, then org_id and project_id.

    The ``+`` keeps SQLite from reading the rows through an (org_id, project_id, ...) index:
    without statistics its planner preferred that to the uid index, and walked every row of
    the project for each call (565 ms per 256 uids at a million rows against 0.7 ms; it was
    what slowed indexing as a project grew, README "Speed at size")."""
    return f"uid IN ({_marks(uids)}) AND +org_id = ? AND +project_id = ?"


def _chunks(values: Sequence[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield list(values[start : start + _CHUNK])


def _episode_row(ep: Episode, short: bool = False) -> tuple[Any, ...]:
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
        # Without the spaces json.dumps puts after ":" and ",": the same JSON, 2 bytes less
        # per key.
        json.dumps(ep.metadata, ensure_ascii=False, default=str, separators=(",", ":")),
        fts_tags(ep, short),
    )


#: The columns a row is deleted or edited by: the vector tombstone's four, then what it is
#: taken out of the full-text index with (its key, its text, what its scope tokens come
#: from: :func:`row_tags`).
_GONE = (
    "uid",
    "org_id",
    "project_id",
    "produced_for",
    "id",
    "content",
    "producer",
    "thread_id",
    "fts_tags",
)


#: What a row's ``fts_tags`` holds in the place of its project's scope token.
PROJECT_PLACEHOLDER = "zo"


def fts_tags(ep: Episode, short: bool = False) -> str:
    """The scope tokens a new row is indexed under, but for the project's own: no query
    matches that one (:func:`scope_match` keeps a project by its WHERE), so a row holds the
    constant :data:`PROJECT_PLACEHOLDER` in its place, 20 bytes less per row. A token is kept
    there, not dropped: FTS5's bm25 measures a row's length over every column (``fts_tags``
    too, although it weighs 0), so rows keep the number of tokens they had and every score
    stays what it was. Rows written before keep the project token; nothing reads it.
    ``short``: the folder's tokens are :func:`folder_token`'s short form (15 characters, not
    22: about 15 bytes less per row)."""
    project = project_token(ep.org_id, ep.project_id)
    return " ".join(
        PROJECT_PLACEHOLDER if t == project else folder_token(t, short) for t in scope_tokens(ep)
    )


def row_tags(
    org_id: str,
    project_id: str,
    produced_for: str,
    producer: str,
    thread_id: str | None,
    stored: str,
    short: bool,
) -> str:
    """What a stored row is indexed under in ``fts_tags`` of the full-text index: the tokens
    it holds (``stored``: a row written before schema 5), else :func:`fts_tags` of its ids,
    which a row's edit never changes. FTS5 deletes an external-content row only when told
    exactly what it indexed, so this is the one place that says it."""
    if stored:
        return stored
    ep = Episode.model_construct(
        content="",
        org_id=org_id,
        project_id=project_id,
        produced_for=produced_for,
        producer=producer,
        thread_id=thread_id,
    )
    return fts_tags(ep, short)


def _gone_tags(row: Sequence[Any], short: bool) -> str:
    """:func:`row_tags` of a row read with :data:`_GONE`."""
    return row_tags(row[1], row[2], row[3], row[6], row[7], row[8], short)


#: A batch waiting for the next group commit, and where its caller waits for the outcome.
_Queued = tuple[list[tuple[Any, ...]], "asyncio.Future[list[Added]]"]


async def _roll_back(conn: aiosqlite.Connection) -> None:
    """End whatever transaction a failed or cancelled write left open. SQLite has already
    rolled back after some errors (and a cancelled COMMIT may have committed), so "no
    transaction is active" is the expected answer then, not a failure."""
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "no transaction is active" not in str(exc):
            raise


def _settle(done: asyncio.Future[list[Added]], added: list[Added]) -> None:
    if not done.done():  # its caller may have been cancelled; the write stands
        done.set_result(added)


def _raise_into(done: asyncio.Future[list[Added]]) -> None:
    """Hand the exception being handled to the caller waiting on ``done``."""
    error = sys.exc_info()[1]
    if not done.done() and error is not None:
        done.set_exception(error)


class _Leases:
    """The embedding queue's claims, held by the process that owns the folder: which rows each
    claim holds and until when, and how many times each row was handed out without being
    completed (a row that keeps killing its worker is set aside)."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[str, float]] = {}  # uid -> (token, lease end)
        self._attempts: dict[str, int] = {}

    def held(self, now: float) -> list[str]:
        """Rows under a lease that has not ended (they are not claimable)."""
        return [uid for uid, (_, until) in self._rows.items() if until >= now]

    def take(self, token: str, until: float, uids: Sequence[str]) -> dict[str, int]:
        """Lease these rows to ``token``; returns each row's attempts, this one included."""
        for uid in uids:
            self._rows[uid] = (token, until)
            self._attempts[uid] = self._attempts.get(uid, 0) + 1
        return {uid: self._attempts[uid] for uid in uids}

    def holding(self, token: str, uids: Sequence[str]) -> list[str]:
        """Those of ``uids`` the claim ``token`` still holds."""
        return [u for u in uids if self._rows.get(u, ("", 0.0))[0] == token]

    def drop(self, token: str, undo_attempt: bool = False) -> None:
        for uid in [u for u, (t, _) in self._rows.items() if t == token]:
            del self._rows[uid]
            if undo_attempt and self._attempts.get(uid, 0) > 0:
                self._attempts[uid] -= 1

    def release_rows(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self._rows.pop(uid, None)
            self._attempts.pop(uid, None)

    def forget_attempts(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self._attempts.pop(uid, None)

    def clear(self) -> None:
        self._rows.clear()
        self._attempts.clear()


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[Added]:
    """The rows, their scopes and projects (in the caller's transaction), and what became of
    each row, in order.

    ``new`` comes from what the insert really changed: the write lock and ``BEGIN
    IMMEDIATE`` keep every other writer out, so a source absent before the insert and
    inserted by it was stored by this call (its first occurrence among the rows)."""
    keys = [(r[1], r[2], r[8], r[9]) for r in rows]
    before = _uids_by_key(conn, keys)
    expected: dict[tuple[str, str, str, str], str] = {}
    for key, row in zip(keys, rows, strict=True):
        if key not in before:
            expected.setdefault(key, row[0])  # the first of a source among the rows
    conn.executemany(
        "INSERT OR IGNORE INTO scopes (org_id, project_id) VALUES (?, ?)",
        list(dict.fromkeys((r[1], r[2]) for r in rows)),
    )
    # The row's scope tokens go to the full-text index only (schema 5): ``''`` here.
    inserted = conn.executemany(
        "INSERT OR IGNORE INTO episodes (uid, project_key, producer, produced_for,"
        " role, content, created_at, platform, source_id, thread_id, episode_type,"
        f" metadata, fts_tags) VALUES (?, {KEY_OF}, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
        [(uid_key(row[0]), *row[1:13]) for row in rows],
    )
    if inserted.rowcount != len(expected):
        # Some row was ignored for another reason than its source: its uid belongs to
        # another episode, or a required field is missing. Never acknowledge a write
        # that did not happen.
        stored = _uids_by_key(conn, list(expected))
        lost = [uid for key, uid in expected.items() if stored.get(key) != uid]
        raise InvalidInput(
            f"episode {lost[0]!r} was not stored: its uid belongs to another episode"
            " or a required field is missing"
        )
    tags = {row[0]: row[13] for row in rows}
    conn.executemany(
        "INSERT INTO episodes_fts (rowid, content, fts_tags)"
        " SELECT id, content, ? FROM episodes WHERE uid = ?",
        [(tags[uid], uid_key(uid)) for uid in expected.values()],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO projects VALUES (?, ?, '', '{}', ?)",
        [(r[1], r[2], r[7]) for r in rows],
    )
    out = []
    for key, row in zip(keys, rows, strict=True):
        if key in before:
            out.append(Added(before[key], False))
        else:
            before[key] = row[0]  # stored now; a repeat among the rows is not new
            out.append(Added(row[0], True))
    return out


def _mark_indexed(conn: sqlite3.Connection, marks: list[tuple[Any, ...]]) -> None:
    """Rows embedded from the text and edit time they still have: (uid key, content, edit
    time) each; a row edited since its claim stays pending."""
    conn.executemany(
        f"UPDATE episodes SET indexed = {INDEXED} WHERE uid = ? AND content = ?"
        f" AND edited_at IS ? AND indexed = {PENDING}",
        marks,
    )


def _uids_by_key(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, str, str, str]]
) -> dict[tuple[str, str, str, str], str]:
    """Stored uids by ``(org_id, project_id, platform, source_id)``."""
    found: dict[tuple[str, str, str, str], str] = {}
    for chunk in _chunks(list(dict.fromkeys(keys))):
        values = ",".join("(?, ?, ?, ?)" for _ in chunk)
        rows = conn.execute(
            f"WITH k(o, p, pl, s) AS (VALUES {values}) SELECT k.o, k.p, k.pl, k.s, e.uid"
            " FROM k JOIN scopes ON scopes.org_id = k.o AND scopes.project_id = k.p"
            " JOIN episodes e ON e.project_key = scopes.key AND e.platform = k.pl"
            " AND e.source_id = k.s",
            [v for key in chunk for v in key],
        ).fetchall()
        found.update(((r[0], r[1], r[2], r[3]), uid_of(r[4])) for r in rows)
    return found


class SQLiteStore:
    """The memory's records in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._loop_reader: LoopReader | None = None
        self._loop_writer: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._set_aside_seen: set[str] = set()
        self._leases = _Leases()
        self._claim_lock = asyncio.Lock()
        self._queued: list[_Queued] = []  # batches waiting for the next group commit
        self._group_writer: asyncio.Task[None] | None = None
        self._short_tokens = False  # the folder's scope tokens (folder_token), read on open

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        try:
            await self._migrate()
            self._short_tokens = await self.get_meta(SHORT_TOKENS[0]) == SHORT_TOKENS[1]
            self._reader = await self._connect()
            self._loop_reader = LoopReader(
                loop_connection(str(self.path)), AtomicReader(self._reader)
            )
            self._loop_writer = loop_connection(str(self.path), write=True)
            async with self.reader.execute("SELECT uid FROM set_aside") as cur:
                self._set_aside_seen = {r[0] for r in await cur.fetchall()}
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            # Before anything writes the file's first page: takes effect on a new file only;
            # files of earlier versions keep their mode (changing it takes a VACUUM) and work
            # as they are.
            await conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            # Switching a new file to WAL takes an exclusive lock and SQLite does not wait on the
            # busy handler for it, so a second process opening the same new folder at the same
            # moment is told "database is locked": wait for the other one to finish instead.
            for attempt in range(_WAL_ATTEMPTS):
                try:
                    await conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == _WAL_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))
            for pragma in (
                "PRAGMA synchronous=NORMAL",
                "PRAGMA foreign_keys=ON",
                "PRAGMA secure_delete=ON",
                f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
                "PRAGMA cache_size=-65536",
            ):
                await conn.execute(pragma)
        except BaseException:
            # An unclosed aiosqlite connection keeps a non-daemon thread alive, and the process
            # would never exit.
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._loop_reader is not None:
            self._loop_reader.conn.close()
            self._loop_reader = None
        if self._loop_writer is not None:
            self._loop_writer.close()
            self._loop_writer = None
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
    def loop_writer(self) -> sqlite3.Connection:
        if self._loop_writer is None:
            raise RuntimeError("the store is not open")
        return self._loop_writer

    @property
    def reader(self) -> LoopReader:
        if self._loop_reader is None:
            raise RuntimeError("the store is not open")
        return self._loop_reader

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` under the write lock, committed when the
        block ends, rolled back on any exception. Every write of this store goes through it."""
        async with self._write_lock:
            conn = self.writer
            try:
                # A caller cancelled while BEGIN waits for another process's lock still gets
                # its BEGIN run by aiosqlite's thread: the ROLLBACK below is queued after it,
                # so no transaction is ever left open for the next writer to trip on.
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                await _roll_back(conn)
                raise

    async def _migrate(self) -> None:
        await self.writer.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"
        )
        current = int(await self.get_meta("schema_version") or 0)
        if current > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"{self.path} has schema version {current}, newer than this ChannelMind"
                f" ({SCHEMA_VERSION}); upgrade ChannelMind"
            )
        # What migration 6 stores a uid as (only migrations call it).
        await self.writer.create_function("cm_uid_key", 1, uid_key, deterministic=True)
        began = time.perf_counter()
        for version in sorted(v for v in MIGRATIONS if v > current):
            async with self._write() as conn:
                # Another connection may have migrated since the version was read.
                async with conn.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ) as cur:
                    row = await cur.fetchone()
                if row is not None and int(row[0]) >= version:
                    continue
                for statement in MIGRATIONS[version]:
                    await conn.execute(statement)
                if version == 1:
                    # A new folder: its rows get short scope tokens (folder_token). A folder
                    # created before keeps the long ones its rows hold, in new rows too.
                    await conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", SHORT_TOKENS)
                await conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),)
                )
        noted = [UPGRADES[v] for v in sorted(UPGRADES) if v > current]
        if current and noted:  # a folder an earlier version wrote, upgraded: one line
            # A rebuilt table (schema 7) leaves the old one's pages free: a file made with
            # auto_vacuum gives them back now, not after its next indexing batch.
            await self._give_back_free_pages()
            log.info(
                "%s: schema %d -> %d in %.1f s: %s",
                self.path,
                current,
                SCHEMA_VERSION,
                time.perf_counter() - began,
                "; ".join(noted),
            )

    async def get_meta(self, key: str) -> str | None:
        conn = self._loop_reader or AtomicReader(self.writer)
        async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write() as conn:
            await conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    async def init_meta(self, key: str, value: str) -> str:
        async with self._write() as conn:
            await conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
                row = await cur.fetchone()
        assert row is not None  # written just above, in this transaction
        return str(row[0])

    # -- writes ----------------------------------------------------------------------------

    async def add(self, episodes: Sequence[Episode]) -> list[Added]:
        """Insert episodes; one :class:`Added` per input, in order, committed when this
        returns.

        Concurrent calls are committed together (group commit): the first caller that finds
        no group being written starts one, and every batch queued meanwhile goes into its
        next transaction. N one-message adds then cost one lock turn and one commit instead of
        N (40 concurrent writers: 1,400 -> 6,900 adds/s, p50 29 -> 4 ms, notes/speed.md). A
        group that fails is retried batch by batch, so only a bad batch fails."""
        if not episodes:
            return []
        done: asyncio.Future[list[Added]] = asyncio.get_running_loop().create_future()
        self._queued.append(([_episode_row(ep, self._short_tokens) for ep in episodes], done))
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
            added = await self._insert([row for rows, _ in group for row in rows])
        except Exception:
            if len(group) == 1:
                _raise_into(group[0][1])
                return
            for rows, done in group:
                try:
                    _settle(done, await self._insert(rows))
                except Exception:
                    _raise_into(done)
            return
        start = 0
        for rows, done in group:
            _settle(done, added[start : start + len(rows)])
            start += len(rows)

    async def _insert(self, rows: list[tuple[Any, ...]]) -> list[Added]:
        """One transaction: the rows, their projects, and what became of each
        (:func:`_insert_rows`), written on the event loop's thread (:meth:`_write_on_loop`):
        at 40 clients, on aiosqlite's thread, its seven calls and each row's steps waited for
        the GIL and adds took 130 ms (p50). A group too large to hold the loop for
        (:data:`LOOP_WRITE_ROWS`) is written on a thread."""
        work = functools.partial(_insert_rows, rows=rows)
        if len(rows) > LOOP_WRITE_ROWS:
            async with self._write_lock:
                return await self._write_on_thread(work)
        return await self._write_on_loop(work)

    async def _write_on_loop(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one write transaction on the event loop's own thread, as quick reads
        run (:mod:`memory.store.sqlite.connections` says why), for writes of a bounded size:
        the loop is held for as long as the transaction takes (marking an indexing batch of
        512 rows: about 3 ms). The loop never waits for a
        lock: when another process holds the file's write lock, the transaction runs on a
        thread that waits for it."""
        conn = self.loop_writer
        async with self._write_lock:
            try:
                return transaction(conn, work)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
            return await self._write_on_thread(work)

    async def _write_on_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one write transaction on the loop's write connection, run on a thread
        that waits for the write lock; the caller holds ``_write_lock``, and keeps it until
        the thread is done even if it is cancelled (the connection is not used by two at
        once)."""
        running = asyncio.ensure_future(
            asyncio.to_thread(transaction, self.loop_writer, work, wait=True)
        )
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            await asyncio.wait([running])
            raise

    async def edit(
        self, org_id: str, project_id: str, uid: str, content: str, edited_at: datetime
    ) -> bool:
        """Replace an episode's content, leaving nothing of the old text behind: the full-text
        index drops the old text and takes the new, and its segments are merged, the old
        vector is tombstoned (the row waits for a new one; its content and edit time change,
        so a claim taken before the edit cannot mark the new text indexed), and facts citing
        only this episode go, as they were learned from the old text. The caller purges the
        WAL and scrubs the vector index."""
        async with self._write() as conn:
            async with conn.execute(
                f"SELECT {cols('e', _GONE)} FROM episodes e WHERE e.uid = ?"
                f" AND +e.project_key = {KEY_OF}",
                (uid_key(uid), org_id, project_id),
            ) as cur:
                found = await cur.fetchone()
            if found is None:
                return False
            key, old = found[4], found[5]
            tags = _gone_tags(found, self._short_tokens)
            await conn.execute(
                "INSERT INTO episodes_fts (episodes_fts, rowid, content, fts_tags)"
                " VALUES ('delete', ?, ?, ?)",
                (key, old, tags),
            )
            await conn.execute(
                f"UPDATE episodes SET content = ?, edited_at = ?, indexed = {PENDING} WHERE id = ?",
                (content, to_epoch(edited_at), key),
            )
            await conn.execute(
                "INSERT INTO episodes_fts (rowid, content, fts_tags) VALUES (?, ?, ?)",
                (key, content, tags),
            )
            self._leases.forget_attempts([uid])
            await conn.execute("DELETE FROM set_aside WHERE uid = ?", (uid,))
            await conn.execute(
                "INSERT INTO vector_tombstones VALUES (?, ?, ?, ?)", (uid, *found[1:4])
            )
            await self._drop_citations(conn, [uid])
            await conn.execute("INSERT INTO episodes_fts(episodes_fts) VALUES ('optimize')")
            await conn.execute(_NEEDS_SCRUB)
        self._set_aside_seen.discard(uid)
        return True

    async def delete(self, org_id: str, project_id: str, uids: Sequence[str]) -> Deleted:
        """Delete episodes of one org and project, queue their vectors for removal, and drop
        facts that cite only them (citations of facts that cite others too are removed)."""
        if not uids:
            return Deleted()
        async with self._write() as conn:
            found: list[Any] = []
            for chunk in _chunks(uids):
                async with conn.execute(
                    f"SELECT {cols('episodes', _GONE)} FROM episodes"
                    f" WHERE {_keys_in_project(chunk)}",
                    [*_keys(chunk), org_id, project_id],
                ) as cur:
                    found += await cur.fetchall()
            return await self._delete_rows(conn, found)

    async def forget(
        self, scope: Scope, filt: Filter | None = None, *, drop_facts: bool = False
    ) -> Deleted:
        where, params = scope_sql(scope, None, filt)
        async with self._write() as conn:
            async with conn.execute(
                f"SELECT {cols('e', _GONE)} FROM episodes e WHERE {where}",
                params,
            ) as cur:
                found = list(await cur.fetchall())
            gone = await self._delete_rows(conn, found)
            if not drop_facts:
                return gone
            about = await self._delete_facts_about(
                conn, scope.org_id, scope.project_id, scope.producer, scope.produced_for
            )
            return Deleted(gone.uids, gone.facts + about, gone.channels)

    async def _delete_rows(self, conn: aiosqlite.Connection, found: Sequence[Any]) -> Deleted:
        """Delete these rows (:data:`_GONE`) inside the caller's transaction: take them out
        of the full-text index, tombstone their vectors, drop facts citing only them, merge
        FTS."""
        if not found:
            return Deleted()
        found = [(uid_of(r[0]), *r[1:]) for r in found]
        gone = [r[0] for r in found]
        facts = 0
        for chunk in _chunks(found):
            await conn.executemany(
                "INSERT INTO episodes_fts (episodes_fts, rowid, content, fts_tags)"
                " VALUES ('delete', ?, ?, ?)",
                [(r[4], r[5], _gone_tags(r, self._short_tokens)) for r in chunk],
            )
            await conn.executemany(
                "INSERT INTO vector_tombstones VALUES (?, ?, ?, ?)", [tuple(r[:4]) for r in chunk]
            )
            uids = [r[0] for r in chunk]
            keys = [r[4] for r in chunk]
            await conn.execute(f"DELETE FROM episodes WHERE id IN ({_marks(keys)})", keys)
            await conn.execute(f"DELETE FROM set_aside WHERE uid IN ({_marks(uids)})", uids)
            facts += await self._drop_citations(conn, uids)
        # FTS5 deletes only add tombstones: the old segments keep the forgotten words until
        # they are merged. Merge them now, in the same transaction, so that no word of a
        # forgotten message is left in the index (freed pages are then zeroed by
        # secure_delete). Costs ~0.5 s per 200k rows.
        await conn.execute("INSERT INTO episodes_fts(episodes_fts) VALUES ('optimize')")
        await conn.execute(_NEEDS_SCRUB)
        for uid in gone:
            self._set_aside_seen.discard(uid)
        return Deleted(uids=gone, facts=facts, channels=sorted({r[3] for r in found}))

    @staticmethod
    async def _drop_citations(conn: aiosqlite.Connection, episode_uids: list[str]) -> int:
        """Remove citations of these episodes; drop the facts left citing nothing. Returns
        the facts dropped."""
        marks = _marks(episode_uids)
        async with conn.execute(
            f"SELECT DISTINCT fact_uid FROM fact_citations WHERE episode_uid IN ({marks})",
            episode_uids,
        ) as cur:
            facts = [r[0] for r in await cur.fetchall()]
        if not facts:
            return 0
        await conn.execute(
            f"DELETE FROM fact_citations WHERE episode_uid IN ({marks})", episode_uids
        )
        cur = await conn.execute(
            f"DELETE FROM facts WHERE uid IN ({_marks(facts)}) AND NOT EXISTS"
            " (SELECT 1 FROM fact_citations c WHERE c.fact_uid = facts.uid)",
            facts,
        )
        return cur.rowcount

    async def purge(self) -> None:
        """Fold the WAL into the main file and truncate it, so forgotten text is not left in
        the log (deleted rows' pages were zeroed by ``secure_delete``), after giving the
        pages the forget freed back to the file system."""
        await self._give_back_free_pages()
        async with self._write_lock:
            await self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def _give_back_free_pages(self) -> None:
        """Return the file's free pages to the file system once there are more than
        :data:`SPARE_PAGES`: after indexing, which empties the pending-rows index as fast as a
        bulk load filled it (about 45 bytes per message of free pages at 20k messages), and
        after a forget (:meth:`purge`). Later writes would reuse them, but until then they are
        disk the folder holds for nothing. A no-op in files made before
        ``auto_vacuum=INCREMENTAL`` (their pages stay free, as before)."""
        # Counted without the write lock (a read, on the loop): an add need not wait for it
        # after every indexing step, and a count just behind another writer's only delays a
        # vacuum to the next look.
        async with (self._loop_reader or AtomicReader(self.writer)).execute(
            "PRAGMA freelist_count"
        ) as cur:
            row = await cur.fetchone()
        if row is None or int(row[0]) <= SPARE_PAGES:
            return
        async with self._write_lock:
            # Run as a script: stepped to the end, it frees every free page (one execute()
            # frees one). Outside any transaction, like every write here.
            await self.writer.executescript("PRAGMA incremental_vacuum;")

    # -- reads -----------------------------------------------------------------------------

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.reader.execute(sql, params) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def get(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[Episode]:
        scope = Scope.model_construct(org_id=org_id, project_id=project_id)
        rows = await self._readable(await self._among(scope, None, None, uids, cols("e")), _row)
        found = {row.episode.uid: row.episode for row in rows}
        return [found[u] for u in dict.fromkeys(uids) if u in found]

    async def existing(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[str]:
        found: set[str] = set()
        for chunk in _chunks(uids):
            async with self.reader.execute(
                f"SELECT uid FROM episodes WHERE {_keys_in_project(chunk)}",
                [*_keys(chunk), org_id, project_id],
            ) as cur:
                found.update(uid_of(r[0]) for r in await cur.fetchall())
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
        rows = await self._among(scope, filt, time, uids, candidate_sql("e", neighbours))
        found = await self._readable(rows, functools.partial(row_to_found, neighbours=neighbours))
        return {f.episode.uid: f for f in found}

    async def _among(
        self,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        uids: Sequence[str],
        select: str,
    ) -> list[Any]:
        """The rows among ``uids`` inside the scope, time range and filter (``select``: the
        columns, over alias ``e``)."""
        where, params = scope_sql(scope, time, filt)
        out: list[Any] = []
        for chunk in _chunks(uids):
            values = ",".join("(?)" for _ in chunk)
            # CROSS JOIN pins the join order: look the uids up first, then check the scope
            # (the planner otherwise walked the scope's index: every row of the project).
            async with self.reader.execute(
                f"WITH wanted(uid) AS (VALUES {values}) SELECT {select} FROM wanted"
                f" CROSS JOIN episodes e ON e.uid = wanted.uid WHERE {where}",
                [*_keys(chunk), *params],
            ) as cur:
                out += await cur.fetchall()
        return out

    async def find_source(
        self, org_id: str, project_id: str, platform: str, source_id: str
    ) -> Episode | None:
        async with self.reader.execute(
            f"SELECT {cols('e')} FROM episodes e WHERE e.project_key = {KEY_OF}"
            " AND e.platform = ? AND e.source_id = ?",
            (org_id, project_id, platform, source_id),
        ) as cur:
            found = await self._rows(await cur.fetchall())
        return found[0].episode if found else None

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
            f"SELECT {cols('e')} FROM episodes e WHERE {where}"
            f" ORDER BY e.created_at {order}, e.id {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ) as cur:
            rows = await cur.fetchall()
        return [row.episode for row in await self._rows(rows)]

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
        *,
        neighbours: bool = True,
    ) -> list[KeywordHit]:
        """bm25 candidates under the scope, best first (FTS5's bm25 is negative: lower is
        better; the score is its negation)."""
        terms = keyword_terms(text)
        if not terms:
            return []
        where, params = scope_sql(scope, time, filt)
        match = scope_match(scope, terms, self._short_tokens)
        rows: list[Any] | None = None
        if time is None and filt is None and _matched_in_scope(scope):
            # Rank in the full-text index alone, then read the best rows: the joined query
            # below reads every matching row (and sorts it with its text) before its LIMIT.
            # The scope can leave out only rows of another project (the MATCH names no project
            # token, see scope_match): it is read as a column, and if any of the best rows is
            # outside it, the joined query decides (fewer matches than the limit are not).
            sql = (
                f"SELECT {candidate_sql('e', neighbours)}, ({where}), f.rank"
                " FROM (SELECT rowid AS id, bm25(episodes_fts, 1.0, 0.0) AS rank FROM episodes_fts"
                " WHERE episodes_fts MATCH ? ORDER BY rank LIMIT ?) f"
                " CROSS JOIN episodes e ON e.id = f.id ORDER BY f.rank"
            )
            async with self.reader.execute(sql, [*params, match, limit]) as cur:
                ranked = await cur.fetchall()
            if all(r[-2] for r in ranked):
                rows = [(*r[:-2], r[-1]) for r in ranked]
        if rows is None:
            # The best ids first, then their rows: the columns read per candidate (its
            # neighbours: two index lookups) are read for ``limit`` rows, not every match.
            # (SQLite does not flatten a LIMITed subquery into a join; its ORDER BY is stable,
            # so rows of equal rank come in the order the inner query ranked them.)
            sql = (
                f"SELECT {candidate_sql('e', neighbours)}, t.rank FROM (SELECT e.id AS id,"
                " bm25(episodes_fts, 1.0, 0.0) AS rank FROM episodes_fts"
                " JOIN episodes e ON e.id = episodes_fts.rowid"
                f" WHERE episodes_fts MATCH ? AND {where} ORDER BY rank LIMIT ?) t"
                " CROSS JOIN episodes e ON e.id = t.id ORDER BY t.rank"
            )
            async with self.reader.execute(sql, [match, *params, limit]) as cur:
                rows = await cur.fetchall()
        rank = {int(r[0]): -float(r[-1]) for r in rows}
        found = await self._readable(rows, functools.partial(row_to_found, neighbours=neighbours))
        return [KeywordHit(f.key, f.episode, rank[f.key], f.adjacent) for f in found]

    async def adjacent(self, keys: Sequence[int]) -> dict[int, Adjacent]:
        """The previous and next row key in the same channel, for each key, in one query."""
        if not keys:
            return {}
        marks = ",".join("(?)" for _ in keys)
        sql = (
            f"WITH c(id) AS (VALUES {marks}) SELECT e.id, {adjacent_sql('e')}"
            " FROM c JOIN episodes e ON e.id = c.id"
        )
        async with self.reader.execute(sql, list(keys)) as cur:
            return {int(r[0]): Adjacent(r[1], r[2]) for r in await cur.fetchall()}

    async def neighbours(self, keys: Sequence[int], before: int, after: int) -> dict[int, Context]:
        """For each key: up to ``before`` earlier and ``after`` later episodes of the same
        channel (of the same thread when the row is in one), nearest first."""
        same = (  # through the channel index (channel, project, time)
            "n.produced_for = c.produced_for AND n.project_key = c.project_key"
            " AND (c.thread_id IS NULL OR n.thread_id = c.thread_id)"
        )
        out: dict[int, Context] = {}
        for key in keys:
            context = Context()
            for count, cmp, order, side in (
                (before, "<", "DESC", context.before),
                (after, ">", "ASC", context.after),
            ):
                if not count:
                    continue
                async with self.reader.execute(
                    f"SELECT {cols('n')} FROM episodes c JOIN episodes n ON {same}"
                    f" AND (n.created_at, n.id) {cmp} (c.created_at, c.id)"
                    f" WHERE c.id = ? ORDER BY n.created_at {order}, n.id {order} LIMIT ?",
                    (key, count),
                ) as cur:
                    side.extend(await self._rows(await cur.fetchall()))
            out[key] = context
        return out

    async def channels(self, org_id: str, project_id: str) -> list[str]:
        async with self.reader.execute(
            f"SELECT DISTINCT produced_for FROM episodes WHERE project_key = {KEY_OF}",
            (org_id, project_id),
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def channel_members(
        self, org_id: str, project_id: str, produced_for: str
    ) -> list[tuple[str, str, str | None]]:
        async with self.reader.execute(
            "SELECT uid, producer, thread_id FROM episodes"
            f" WHERE produced_for = ? AND project_key = {KEY_OF}",
            (produced_for, org_id, project_id),
        ) as cur:
            return [(uid_of(r[0]), r[1], r[2]) for r in await cur.fetchall()]

    async def all_uids(self) -> set[str]:
        async with self.reader.execute("SELECT uid FROM episodes") as cur:
            return {uid_of(r[0]) for r in await cur.fetchall()}

    # -- the embedding queue ---------------------------------------------------------------

    async def claim(self, limit: int, lease_s: float) -> Claim | None:
        """Rows waiting for their vectors, channel by channel.

        Every vector goes to its channel's collection, and the index's cost is per call more
        than per vector: a batch in arrival order spreads over as many collections as there
        are active channels (200 tiny upserts for 256 rows in the scale benchmark, 60 rows/s).
        Taking whole channels keeps a batch to a few collections."""
        token = uuid.uuid4().hex
        now = time.time()
        async with self._claim_lock:  # a read: the leases themselves live in this process
            async with self.reader.execute(
                f"SELECT {cols('e')}, e.edited_at FROM episodes e WHERE e.indexed = {PENDING}"
                " AND hex(e.uid) NOT IN (SELECT value FROM json_each(?))"
                " ORDER BY e.project_key, e.produced_for, e.id LIMIT ?",
                (json.dumps([_hex_key(u) for u in self._leases.held(now)]), limit),
            ) as cur:
                rows = [(r[0], uid_of(r[1]), *r[2:]) for r in await cur.fetchall()]
            attempts = self._leases.take(token, now + lease_s, [r[1] for r in rows])
        reason = f"claimed {MAX_ATTEMPTS} times without being embedded"
        dropped = [(r[1], "episode", reason) for r in rows if attempts[r[1]] > MAX_ATTEMPTS]
        episodes: list[Episode] = []
        stamps: dict[str, Any] = {}
        for r in rows:
            if attempts[r[1]] > MAX_ATTEMPTS:
                continue
            try:
                episodes.append(row_to_episode(r))
            except UNREADABLE as exc:
                dropped.append((r[1], "episode", _unreadable(exc)))
                continue
            stamps[r[1]] = (r[7], r[-1])  # content and edit time: what an edit changes
        if dropped:
            async with self._write() as conn:
                await self._set_aside_in(conn, dropped)
        if not episodes:
            return None if not rows else await self.claim(limit, lease_s)
        return Claim(token, tuple(episodes), from_epoch(now + lease_s), stamps)

    async def complete(self, claim: Claim, uids: Sequence[str] | None = None) -> None:
        done = list(claim.stamps) if uids is None else [u for u in uids if u in claim.stamps]
        done = self._leases.holding(claim.token, done)
        marks = [(uid_key(u), *claim.stamps[u]) for u in done]
        await self._write_on_loop(functools.partial(_mark_indexed, marks=marks))
        await self._give_back_free_pages()
        self._leases.forget_attempts(done)
        self._leases.drop(claim.token)

    async def release(self, claim: Claim) -> None:
        # Not the rows' fault (the index or the embedder is down): the attempt does not count.
        self._leases.drop(claim.token, undo_attempt=True)

    async def set_aside(
        self, claim: Claim, uids: Sequence[str], reason: str = "could not be embedded"
    ) -> None:
        held = self._leases.holding(claim.token, [u for u in uids if u in claim.stamps])
        if not held:
            return
        async with self._write() as conn:
            await self._set_aside_in(conn, [(u, "episode", reason) for u in held])

    async def requeue(self, uids: Sequence[str] | None = None) -> None:
        async with self._write() as conn:
            if uids is None:
                await conn.execute(f"UPDATE episodes SET indexed = {PENDING}")
                await conn.execute("DELETE FROM set_aside WHERE kind = 'episode'")
                self._set_aside_seen = await self._set_aside_uids(conn)
                self._leases.clear()
                return
            await conn.executemany(
                f"UPDATE episodes SET indexed = {PENDING} WHERE uid = ? AND indexed != {SET_ASIDE}",
                [(uid_key(u),) for u in uids],
            )
        self._leases.forget_attempts(uids)

    @staticmethod
    async def _set_aside_uids(conn: aiosqlite.Connection) -> set[str]:
        async with conn.execute("SELECT uid FROM set_aside") as cur:
            return {r[0] for r in await cur.fetchall()}

    async def count_pending(self) -> int:
        return await self._scalar(f"SELECT count(*) FROM episodes WHERE indexed = {PENDING}")

    async def count_indexed(self) -> int:
        return await self._scalar(f"SELECT count(*) FROM episodes WHERE indexed = {INDEXED}")

    async def count_set_aside(self) -> int:
        return await self._scalar("SELECT count(*) FROM set_aside")

    async def tombstones(self, limit: int) -> list[Tombstone]:
        async with self.reader.execute(
            "SELECT rowid, uid, org_id, project_id, produced_for FROM vector_tombstones"
            " ORDER BY rowid LIMIT ?",
            (limit,),
        ) as cur:
            return [
                Tombstone(int(r[0]), uid_of(r[1]), r[2], r[3], r[4]) for r in await cur.fetchall()
            ]

    async def clear_tombstones(self, ids: Sequence[int] | None = None) -> None:
        async with self._write() as conn:
            if ids is None:
                await conn.execute("DELETE FROM vector_tombstones")
            else:
                await conn.executemany(
                    "DELETE FROM vector_tombstones WHERE rowid = ?", [(i,) for i in ids]
                )

    async def needs_scrub(self) -> bool:
        return await self.get_meta(_SCRUB_KEY) is not None

    async def request_scrub(self) -> None:
        async with self._write() as conn:
            await conn.execute(_NEEDS_SCRUB)

    async def scrubbed(self) -> None:
        async with self._write() as conn:
            await conn.execute("DELETE FROM meta WHERE key = ?", (_SCRUB_KEY,))

    # -- rows that cannot be read ----------------------------------------------------------

    async def _rows(self, rows: Iterable[Sequence[Any]]) -> list[Row]:
        """Rows whose first columns are :data:`COLUMNS`, as records."""
        return await self._readable(rows, _row)

    async def _readable(
        self, rows: Iterable[Sequence[Any]], read: Callable[[Sequence[Any]], T]
    ) -> list[T]:
        """Episode rows (the row key, then the uid) as records; a row that cannot be read is
        set aside instead of failing the whole query."""
        out: list[T] = []
        broken: list[tuple[str, str, str]] = []
        for r in rows:
            try:
                out.append(read(r))
            except UNREADABLE as exc:
                broken.append((str(uid_of(r[1])), "episode", _unreadable(exc)))
        await self._set_aside_records(broken)
        return out

    async def _facts(self, rows: Iterable[Sequence[Any]]) -> list[Fact]:
        out: list[Fact] = []
        broken: list[tuple[str, str, str]] = []
        for r in rows:
            try:
                out.append(row_to_fact(r))
            except UNREADABLE as exc:
                broken.append((str(r[0]), "fact", _unreadable(exc)))
        await self._set_aside_records(broken)
        return out

    async def _set_aside_records(self, items: Sequence[tuple[str, str, str]]) -> None:
        """Set records aside in a transaction of their own (reads find them)."""
        if any(uid not in self._set_aside_seen for uid, _, _ in items):
            async with self._write() as conn:
                await self._set_aside_in(conn, items)

    async def _set_aside_in(
        self, conn: aiosqlite.Connection, items: Sequence[tuple[str, str, str]]
    ) -> None:
        """Set records aside (``(uid, kind, reason)``, kind ``episode`` or ``fact``) inside
        the caller's transaction. Each is logged once (ever: the table remembers), counted,
        skipped by the index queue, and stays deletable; an episode's vector, if it had one,
        is queued for removal (the index holds exactly the indexed rows)."""
        if not items:
            return
        for uid, kind, reason in items:
            if uid not in self._set_aside_seen:
                self._set_aside_seen.add(uid)
                log.warning("set aside %s %s: %s", kind, uid, reason[:300])
        now = datetime.now(UTC).timestamp()
        await conn.executemany(
            "INSERT OR IGNORE INTO set_aside VALUES (?, ?, ?, ?)",
            [(uid, kind, reason[:1000], now) for uid, kind, reason in items],
        )
        episodes = [(uid_key(uid),) for uid, kind, _ in items if kind == "episode"]
        await conn.executemany(
            "INSERT INTO vector_tombstones"
            f" SELECT {cols('e', ('uid', 'org_id', 'project_id', 'produced_for'))}"
            f" FROM episodes e WHERE e.uid = ? AND e.indexed != {SET_ASIDE}",
            episodes,
        )
        await conn.executemany(f"UPDATE episodes SET indexed = {SET_ASIDE} WHERE uid = ?", episodes)
        self._leases.release_rows([uid for uid, kind, _ in items if kind == "episode"])

    # -- facts -----------------------------------------------------------------------------

    async def add_fact(self, fact: Fact) -> str:
        uid = fact.uid or str(uuid.uuid4())
        citations = list(dict.fromkeys(fact.citations))
        async with self._write() as conn:
            if citations:
                async with conn.execute(
                    f"SELECT uid FROM episodes WHERE {_keys_in_project(citations)}",
                    [*_keys(citations), fact.org_id, fact.project_id],
                ) as cur:
                    known = {uid_of(r[0]) for r in await cur.fetchall()}
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
                "INSERT OR IGNORE INTO fact_citations VALUES (?, ?)", [(uid, c) for c in citations]
            )
        return uid

    async def supersede_fact(
        self, org_id: str, project_id: str, uid: str, by: str, when: datetime
    ) -> bool:
        async with self._write() as conn:
            cur = await conn.execute(
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
            clauses.append(f"f.uid IN ({_marks(uids)})")
            params.extend(uids)
        sql = (
            f"SELECT {FACT_COLUMNS} FROM facts f WHERE {' AND '.join(clauses)}"
            " ORDER BY f.created_at DESC, f.id DESC LIMIT ?"
        )
        async with self.reader.execute(sql, [*params, limit]) as cur:
            rows = await cur.fetchall()
        return await self._facts(rows)

    async def delete_facts(self, org_id: str, project_id: str, uids: Sequence[str]) -> int:
        if not uids:
            return 0
        async with self._write() as conn:
            cur = await conn.execute(
                f"DELETE FROM facts WHERE {_uids_in_project(uids)}",
                [*uids, org_id, project_id],
            )
            return cur.rowcount

    async def delete_facts_about(
        self, org_id: str, project_id: str, subject: str | None, produced_for: str | None
    ) -> int:
        async with self._write() as conn:
            return await self._delete_facts_about(conn, org_id, project_id, subject, produced_for)

    @staticmethod
    async def _delete_facts_about(
        conn: aiosqlite.Connection,
        org_id: str,
        project_id: str,
        subject: str | None,
        produced_for: str | None,
    ) -> int:
        clauses = ["org_id = ?", "project_id = ?"]
        params: list[Any] = [org_id, project_id]
        if subject is not None:
            clauses.append("subject = ?")
            params.append(subject)
        if produced_for is not None:
            clauses.append("produced_for = ?")
            params.append(produced_for)
        cur = await conn.execute(f"DELETE FROM facts WHERE {' AND '.join(clauses)}", params)
        return cur.rowcount

    async def count_facts(self, org_id: str, project_id: str) -> int:
        return await self._scalar(
            "SELECT count(*) FROM facts WHERE org_id = ? AND project_id = ?", (org_id, project_id)
        )

    async def fact_uids(self, org_id: str, project_id: str, uids: Sequence[str]) -> list[str]:
        if not uids:
            return []
        async with self.reader.execute(
            f"SELECT uid FROM facts WHERE {_uids_in_project(uids)}",
            [*uids, org_id, project_id],
        ) as cur:
            found = {r[0] for r in await cur.fetchall()}
        return [u for u in dict.fromkeys(uids) if u in found]

    # -- projects, settings, counts --------------------------------------------------------

    async def create_project(
        self, org_id: str, project_id: str, description: str, config: dict[str, Any]
    ) -> bool:
        async with self._write() as conn:
            cur = await conn.execute(
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

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        async with self.reader.execute(
            "SELECT description, config, created_at FROM projects"
            " WHERE org_id = ? AND project_id = ?",
            (org_id, project_id),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return Project(org_id, project_id, str(row[0]), json.loads(row[1]), from_epoch(row[2]))

    async def projects(self, org_id: str | None = None) -> list[ProjectRef]:
        sql = "SELECT org_id, project_id FROM projects"
        params: list[Any] = []
        if org_id is not None:
            sql += " WHERE org_id = ?"
            params.append(org_id)
        async with self.reader.execute(sql + " ORDER BY org_id, project_id", params) as cur:
            return [ProjectRef(r[0], r[1]) for r in await cur.fetchall()]

    async def delete_project(self, org_id: str, project_id: str) -> Deleted:
        async with self._write() as conn:
            async with conn.execute(
                f"SELECT {cols('e', _GONE)} FROM episodes e WHERE e.project_key = {KEY_OF}",
                (org_id, project_id),
            ) as cur:
                found = list(await cur.fetchall())
            gone = await self._delete_rows(conn, found)
            facts = await self._delete_facts_about(conn, org_id, project_id, None, None)
            for table in ("settings", "projects", "scopes"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE org_id = ? AND project_id = ?",
                    (org_id, project_id),
                )
            return Deleted(gone.uids, gone.facts + facts, gone.channels)

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
        async with self._write() as conn:
            if value is None:
                await conn.execute(
                    "DELETE FROM settings WHERE org_id = ? AND project_id = ? AND subject = ?"
                    " AND key = ?",
                    (org_id, project_id, subject, key),
                )
            else:
                await conn.execute(
                    "INSERT OR REPLACE INTO settings VALUES (?, ?, ?, ?, ?)",
                    (org_id, project_id, subject, key, value),
                )

    async def list_settings(self, org_id: str | None = None) -> list[Setting]:
        async with self.reader.execute(
            "SELECT org_id, project_id, subject, key, value FROM settings"
            " WHERE ? IS NULL OR org_id = ? ORDER BY org_id, project_id, subject, key",
            (org_id, org_id),
        ) as cur:
            return [Setting(*r) for r in await cur.fetchall()]

    async def counts(self) -> Counts:
        async with self.reader.execute(
            f"SELECT count(*), count(*) FILTER (WHERE indexed = {PENDING}),"
            " (SELECT count(DISTINCT org_id) FROM scopes"
            "  WHERE key IN (SELECT project_key FROM episodes)),"
            " count(DISTINCT project_key),"
            " (SELECT count(*) FROM (SELECT DISTINCT project_key, produced_for FROM episodes)),"
            " (SELECT count(*) FROM facts WHERE superseded_at IS NULL),"
            " (SELECT count(*) FROM set_aside) FROM episodes"
        ) as cur:
            r = await cur.fetchone()
        return Counts(
            episodes=r[0],
            pending_index=r[1],
            set_aside=r[6],
            facts=r[5],
            orgs=r[2],
            projects=r[3],
            channels=r[4],
        )


def _unreadable(exc: BaseException) -> str:
    return f"unreadable: {type(exc).__name__}: {exc}"
