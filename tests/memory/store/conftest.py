"""Stores under test: SQLite in a temp folder, and a throwaway PostgreSQL 15 cluster for the
session with a fresh database per test. PostgreSQL is skipped only where it is not installed
and this is not CI; in CI (``CI=true``) a missing PostgreSQL fails the run, since .ci/run
installs it."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from memory.store.base import Store
from memory.store.postgres import PostgresStore
from memory.store.postgres.cluster import SUPERUSER, TempCluster, find_bindir
from memory.store.sqlite import SQLiteStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[TempCluster]:
    if find_bindir() is None:
        if IN_CI:
            pytest.fail("PostgreSQL 15 is not installed; .ci/run should have installed it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with TempCluster() as cluster:
        yield cluster


def psql(cluster: TempCluster, sql: str, database: str = "postgres") -> str:
    done = subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
         "-h", "127.0.0.1", "-p", str(cluster.port), "-U", SUPERUSER, "-d", database, "-c", sql],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def pg_url(pg_cluster: TempCluster) -> Iterator[str]:
    """A new, empty database on the session's cluster."""
    name = "t_" + uuid.uuid4().hex[:12]
    psql(pg_cluster, f"CREATE DATABASE {name}")
    try:
        yield pg_cluster.url(name)
    finally:
        psql(pg_cluster, f"DROP DATABASE {name} WITH (FORCE)")


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
