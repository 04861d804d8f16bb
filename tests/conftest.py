"""Shared fixtures for the memory engine's tests: real SQLite and real Chroma in temp folders,
the hashing embedder (fast, deterministic) unless a module asks for the real model."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from memory.engine import MemoryEngine
from memory.model import Episode
from tests.chroma_server import chroma_server, chroma_url  # noqa: F401  (fixtures for all)
from tests.postgres import (  # noqa: F401  (fixtures for every folder of tests)
    each_store,
    new_database,
    new_pg_database,
    pg_cluster,
    pg_url,
)

ORG = "T0ORG"
PROJECT = "channelmind"
ALICE = "slack:UALICE"
BOB = "slack:UBOB"
GENERAL = "slack:CGENERAL"
RANDOM = "slack:CRANDOM"
#: A fixed "now" for tests that need ordered timestamps (recent enough for recency to matter
#: equally to every row, far enough from the real clock not to depend on it).
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

_source_ids = count(1)


def episode(content: str, **fields: Any) -> Episode:
    """A valid chat message with sensible defaults; any field can be overridden."""
    values: dict[str, Any] = {
        "org_id": ORG,
        "project_id": PROJECT,
        "producer": ALICE,
        "produced_for": GENERAL,
        "platform": "slack",
        "source_id": f"1700000000.{next(_source_ids):06d}",
        "content": content,
    }
    values.update(fields)
    return Episode(**values)


def at(minutes: float) -> datetime:
    """``T0`` plus some minutes: a readable way to order messages in time."""
    return T0 + timedelta(minutes=minutes)


#: Settings a test must choose itself. slack-bolt also falls back to the SLACK_* ones
#: (SLACK_CLIENT_ID/SECRET would even switch on OAuth); MM_* pin an MCP identity.
AMBIENT = (
    "CHANNELMIND_CHROMA_URL",
    "CHANNELMIND_EMBEDDER",
    "CHANNELMIND_DATA_DIR",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_API_URL",
    "SLACK_CLIENT_ID",
    "SLACK_CLIENT_SECRET",
    "SLACK_VERIFICATION_TOKEN",
    "DISCORD_TOKEN",
    "CHANNELMIND_MEMORY_API_KEY",
    "CHANNELMIND_DATABASE_URL",
    "MM_USER_ID",
    "MM_ORG_ID",
    "MM_PROJ_ID",
)


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their own data folder, embedder, Chroma and chat platform; the
    environment must not."""
    for name in AMBIENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def engine(data_dir: Path) -> AsyncIterator[MemoryEngine]:
    """An engine on a fresh folder with the hashing embedder and the background indexer."""
    eng = await MemoryEngine.open(data_dir, "hash")
    try:
        yield eng
    finally:
        await eng.close()


@pytest.fixture
def make_episode() -> Callable[..., Episode]:
    return episode


@contextmanager
def raw_db(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection on the engine's database file (outside the engine)."""
    with closing(sqlite3.connect(data_dir / "memory.sqlite3")) as conn:
        yield conn


async def raw_write(data_dir: Path, sql: str, params: tuple[object, ...]) -> None:
    """One statement through :func:`raw_db`, committed, from a thread: while an engine serves
    in this event loop, a blocking write here would stop the loop that must finish the
    engine's own transaction, and SQLite would answer "database is locked"."""

    def write() -> None:
        with raw_db(data_dir) as conn:
            conn.execute(sql, params)
            conn.commit()

    await asyncio.to_thread(write)


# -- a run that always ends -------------------------------------------------------------------

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A connection a failing test left open keeps a non-daemon worker thread (aiosqlite's)
    waiting forever, and the interpreter would wait for it after the summary: a run that never
    ends. Name the threads, give them a moment, then end with pytest's own status."""
    leftover = [
        t for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]  # fmt: skip
    for thread in leftover:
        thread.join(timeout=5)
    leftover = [t for t in leftover if t.is_alive()]
    if leftover and _exit_status:
        names = ", ".join(sorted(t.name for t in leftover))
        print(f"\nthreads still running after the tests (leaked by a test): {names}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
