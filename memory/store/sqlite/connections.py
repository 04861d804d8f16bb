"""How the SQLite store reaches its file: whole-query reads, on the event loop's thread when
they are quick, and the connection its groups of adds are written with on that thread.

Every read runs to completion in one call (no statement is left half-read between two awaits,
see :class:`AtomicReader`). Where it runs is :class:`LoopReader`'s choice: on the event loop's
own thread, in a plain ``sqlite3`` connection, as long as it takes less than
:data:`LOOP_READ_BUDGET_S`; a read that takes longer is stopped there (SQLite's progress
handler) and run again on aiosqlite's reader thread, so a slow query (a common word in a large
project, a long listing) never holds up the other requests for long.

Why not the thread for every read: the event loop and the reader thread share the GIL, and
Python's ``sqlite3`` lets go of it around each step of a statement (each row). Under load the
loop holds the GIL most of the time, so a thread reading 100 rows waited for it about as many
times. At 40 clients (``channelmind bench load``, hash embedder) a read of 61+ rows took
3.0 ms on the reader thread against 1.0 ms of its CPU, the thread was busy 80% of the time,
and each of a search's five reads waited 50-60 ms in its queue. Run on the loop, the same
reads cost their CPU time and no waiting. The same holds for the transaction that stores a
group of adds (:meth:`memory.store.sqlite.store.SQLiteStore.add`), which is written on the loop
too; other writes stay on aiosqlite's writer thread.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")

#: How long a connection that may wait for another's lock waits (SQLite's busy timeout).
BUSY_TIMEOUT_MS = 30_000
#: The longest a read may hold the event loop; then it is stopped and run on the reader thread.
LOOP_READ_BUDGET_S = 0.004
#: The most adds one group may hold to be written on the loop: about 1 ms of work for 25,
#: 15-22 ms for 500 (a bulk import's batch), which is written on a thread instead.
LOOP_WRITE_ROWS = 64
#: SQLite virtual-machine steps between two looks at the clock: well under a millisecond of
#: work, so that most reads never look at all.
CHECK_EVERY = 20_000
#: Why a read on the loop gives way to the reader thread: it ran past its budget, or another
#: connection holds a lock it would have to wait for (the loop never waits).
_GIVE_WAY = {sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


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


def loop_connection(path: str, write: bool = False) -> sqlite3.Connection:
    """A connection for the event loop's thread (the file is in WAL mode already): read-only
    for :class:`LoopReader`, or with the writer's settings (``write``). It never waits for a
    lock (``busy_timeout`` 0): its caller gives way to a thread that does."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    pragmas = (
        ("PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON", "PRAGMA secure_delete=ON")
        if write
        else ("PRAGMA query_only=ON", "PRAGMA cache_size=-65536")
    )
    try:
        for pragma in (*pragmas, "PRAGMA busy_timeout=0"):
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def transaction(
    conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], *, wait: bool = False
) -> T:
    """``work(conn)`` in one ``BEGIN IMMEDIATE`` transaction, committed when it returns and
    rolled back if it raises. ``wait``: for the write lock as long as aiosqlite's connections
    do (a connection from :func:`loop_connection` does not wait: on a thread only)."""
    if wait:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return out
    finally:
        if wait:
            conn.execute("PRAGMA busy_timeout=0")


class LoopReader:
    """Whole-query reads on the event loop's thread, each stopped after
    :data:`LOOP_READ_BUDGET_S` and then run on ``thread`` instead (module docstring). A read
    on the loop runs start to finish without an await, so none is ever left half-read, and
    each sees every write committed before it began."""

    def __init__(self, conn: sqlite3.Connection, thread: AtomicReader) -> None:
        self.conn = conn
        self.thread = thread
        self._deadline = 0.0
        conn.set_progress_handler(self._past_deadline, CHECK_EVERY)

    async def set_trace_callback(self, trace: Callable[[str], object] | None) -> None:
        """Have ``trace`` see every statement this reader runs, on the loop or the thread
        (SQLite's trace callback; None: stop)."""
        self.conn.set_trace_callback(trace)
        await self.thread.conn.set_trace_callback(trace)  # type: ignore[arg-type]  # None: stop

    def _past_deadline(self) -> bool:
        return time.perf_counter() > self._deadline

    def execute(self, sql: str, parameters: Iterable[Any] = ()) -> _Query:
        return _Query(self._rows(sql, parameters))

    async def _rows(self, sql: str, parameters: Iterable[Any]) -> list[Any]:
        params: Sequence[Any] = (
            parameters if isinstance(parameters, list | tuple) else list(parameters)
        )
        self._deadline = time.perf_counter() + LOOP_READ_BUDGET_S
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in _GIVE_WAY:
                raise
        return list(await self.thread.conn.execute_fetchall(sql, params))
