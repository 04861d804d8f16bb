"""A throwaway PostgreSQL 15 cluster for the session (``initdb`` in a temp folder, on
127.0.0.1), a fresh database per test, and ``each_store``: the engine's suites run once on the
embedded SQLite and once on PostgreSQL. PostgreSQL is skipped only where it is not installed
and this is not CI; in CI (``CI=true``) a missing PostgreSQL fails the run, since .ci/run
installs it."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from memory.store.postgres.cluster import SUPERUSER, TempCluster, find_bindir

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: Makes a new, empty database and returns its URL (None: the embedded SQLite).
NewDatabase = Callable[[], str | None]


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
def new_pg_database(pg_cluster: TempCluster) -> Iterator[Callable[[], str]]:
    """Makes new, empty databases on the session's cluster; drops them after the test."""
    made: list[str] = []

    def new() -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        psql(pg_cluster, f"CREATE DATABASE {name}")
        made.append(name)
        return pg_cluster.url(name)

    try:
        yield new
    finally:
        for name in made:
            psql(pg_cluster, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def pg_url(new_pg_database: Callable[[], str]) -> str:
    """A new, empty database on the session's cluster."""
    return new_pg_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest) -> NewDatabase:
    """The store a test of the engine runs on: the embedded SQLite (a factory of None), or
    new PostgreSQL databases."""
    if request.param == "sqlite":
        return lambda: None
    factory: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return factory


@pytest.fixture
def each_store(new_database: NewDatabase, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Runs the test once per store: on PostgreSQL, ``CHANNELMIND_DATABASE_URL`` names a new
    database (for the engines the test opens, and the processes it starts)."""
    url = new_database()
    if url is not None:
        monkeypatch.setenv("CHANNELMIND_DATABASE_URL", url)
    return url
