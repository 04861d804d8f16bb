"""The SQLite store's channel, producer and thread indexes lead with their own column (schema
migration 4; the channel's holds the project key next, migration 8): a new folder has them,
an old folder gets them on open, and every scoped query still walks the index of its
narrowest scope column, never the rows of a whole project.

The plans are asked of SQLite for the statements the store really runs (recorded with a trace
callback); nothing is timed."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

from memory.model import Scope
from memory.store.sqlite import SQLiteStore
from memory.store.sqlite.schema import MIGRATIONS
from tests.conftest import ALICE, GENERAL, ORG, PROJECT, T0, episode

NARROW = {
    "ep_channel": "CREATE INDEX ep_channel ON episodes (produced_for, project_key, created_at)",
    "ep_producer": "CREATE INDEX ep_producer ON episodes (producer, created_at)",
    "ep_thread": "CREATE INDEX ep_thread ON episodes (thread_id, created_at)"
    " WHERE thread_id IS NOT NULL",
}
RANDOM = "slack:CRANDOM"
BOB = "slack:UBOB"


def _indexes(db: Path) -> dict[str, str]:
    with closing(sqlite3.connect(db)) as conn:
        return {
            name: sql
            for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND name IN"
                " ('ep_channel', 'ep_producer', 'ep_thread')"
            )
        }


def _plan(db: Path, sql: str) -> str:
    with closing(sqlite3.connect(db)) as conn:
        return " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))


def _traffic() -> list:  # type: ignore[type-arg]
    out = []
    for i in range(60):
        out.append(
            episode(
                f"message {i} about zorblat",
                produced_for=GENERAL if i % 3 else RANDOM,
                producer=ALICE if i % 2 else BOB,
                thread_id="1700000000.000001" if i % 5 == 0 and i % 3 else None,
                created_at=T0 + timedelta(minutes=i),
            )
        )
    # Another project that shares the channel and the producer: its rows must never show.
    out += [
        episode("other project zorblat", project_id="other", created_at=T0 + timedelta(hours=2))
        for _ in range(5)
    ]
    return out


async def test_a_new_folder_has_the_narrow_indexes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "memory.sqlite3")
    await store.open()
    await store.close()
    assert _indexes(tmp_path / "memory.sqlite3") == NARROW


async def test_an_old_folder_gets_them_on_open_and_reads_the_same(tmp_path: Path) -> None:
    db = tmp_path / "memory.sqlite3"
    with closing(sqlite3.connect(db)) as conn:  # what version 3 created
        for version in (1, 2, 3):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
        conn.commit()
    assert "org_id, project_id" in _indexes(db)["ep_channel"]
    store = SQLiteStore(db)
    await store.open()
    try:
        await store.add(_traffic())
        channel = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)
        listed = await store.list_episodes(channel, None, None, 100, 0)
    finally:
        await store.close()
    assert _indexes(db) == NARROW
    assert len(listed) == 40 and all(e.project_id == PROJECT for e in listed)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_every_scoped_query_walks_its_narrowest_index(tmp_path: Path) -> None:
    db = tmp_path / "memory.sqlite3"
    store = SQLiteStore(db)
    await store.open()
    statements: list[str] = []
    project = Scope(org_id=ORG, project_id=PROJECT)
    channel = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)
    producer = Scope(org_id=ORG, project_id=PROJECT, producer=BOB)
    both = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL, producer=BOB)
    thread = Scope(
        org_id=ORG, project_id=PROJECT, produced_for=GENERAL, thread_id="1700000000.000001"
    )
    try:
        await store.add(_traffic())
        await store.reader.set_trace_callback(statements.append)
        results = {}
        for name, scope in (
            ("project", project),
            ("channel", channel),
            ("producer", producer),
            ("both", both),
            ("thread", thread),
        ):
            statements.clear()
            listed = await store.list_episodes(scope, None, None, 100, 0, newest_first=True)
            counted = await store.count(scope)
            results[name] = (listed, counted, list(statements))
        statements.clear()
        members = await store.channel_members(ORG, PROJECT, GENERAL)
        hits = await store.keyword_search(channel, None, None, "zorblat", 100)
        keys = [h.key for h in hits]
        adjacent = await store.adjacent(keys)
        around = await store.neighbours(keys[:3], 2, 2)
        others = [s for s in statements if "FROM episodes" in s or "JOIN episodes" in s]
    finally:
        await store.close()

    # What each scope finds: its own project's rows only, newest first.
    sizes = {name: (len(listed), counted) for name, (listed, counted, _) in results.items()}
    assert sizes == {
        "project": (60, 60),
        "channel": (40, 40),
        "producer": (30, 30),
        "both": (20, 20),
        "thread": (8, 8),
    }
    for listed, _, _ in results.values():
        assert all(e.project_id == PROJECT for e in listed)
        times = [e.created_at for e in listed]
        assert times == sorted(times, reverse=True)
    assert len(members) == 40 and len(hits) == 40
    assert all(a.before is not None or a.after is not None for a in adjacent.values())
    assert all(c.before or c.after for c in around.values())

    wanted = {
        "project": "ep_time",
        "channel": "ep_channel",
        "producer": "ep_producer",
        "both": "ep_channel",
        "thread": "ep_thread",
    }
    for name, (_, _, sqls) in results.items():
        assert len(sqls) == 2, sqls
        for sql in sqls:
            plan = _plan(db, sql)
            assert f"USING INDEX {wanted[name]} " in plan or (
                f"USING COVERING INDEX {wanted[name]} " in plan
            ), (name, sql, plan)
            assert "SCAN e" not in plan and "TEMP B-TREE" not in plan, (name, sql, plan)
    assert len(others) >= 5, others  # members, keyword, adjacent, neighbours
    for sql in others:
        plan = _plan(db, sql)
        assert "ep_time" not in plan, (sql, plan)  # never every row of the project
        if "MATCH" not in sql:
            assert "ep_channel" in plan, (sql, plan)
    # A channel is looked up with its project (schema 8): one project's rows of the channel,
    # in time order.
    for name in ("channel", "both"):
        for sql in results[name][2]:
            assert "ep_channel (produced_for=? AND project_key=?)" in _plan(db, sql), sql
    # A candidate's neighbours come from the channel index alone: no neighbour's row is read.
    around_plans = [_plan(db, sql) for sql in others if "SELECT n.id FROM episodes n" in sql]
    assert len(around_plans) >= 2, others  # the keyword search's and adjacent's
    for plan in around_plans:
        assert "SEARCH n USING COVERING INDEX ep_channel" in plan, plan
        assert "SEARCH n USING INDEX" not in plan, plan
