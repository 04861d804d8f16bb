"""Stores under test, at the store's level: SQLite in a temp folder, or a fresh database on
the session's throwaway PostgreSQL cluster (the cluster fixtures are in tests/postgres.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from memory.store.base import Store
from memory.store.postgres import PostgresStore
from memory.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Which store a conformance test runs on: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'memory.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


def make_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite:///")))
    return PostgresStore(url, pool_size=4)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = make_store(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
