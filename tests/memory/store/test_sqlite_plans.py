"""How SQLite reads rows named by uid: through the uid index, never by walking a project.

Without statistics SQLite's planner preferred an (org_id, project_id, ...) index to the uid
one for "this project's rows with these uids", so each such statement read every row of the
project: indexing slowed as a project grew (565 ms per 256 uids at a million rows). The test
records the statements the store really runs and asks SQLite how it plans each one; it does
not time anything."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from memory.model import Fact
from memory.store.sqlite import SQLiteStore
from tests.conftest import ORG, PROJECT, episode


async def test_rows_named_by_uid_are_found_through_the_uid_index(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "memory.sqlite3")
    await store.open()
    statements: list[str] = []
    try:
        added = await store.add([episode(f"message {i}", source_id=f"1.{i}") for i in range(50)])
        uids = [a.uid for a in added]
        fact_uid = await store.add_fact(
            Fact(
                org_id=ORG,
                project_id=PROJECT,
                subject="alice",
                feature="favourite editor",
                value="vim",
                citations=uids[:3],
            )
        )
        for conn in (store.writer, store.reader.conn):
            await conn.set_trace_callback(statements.append)
        assert await store.existing(ORG, PROJECT, uids[:10]) == uids[:10]
        assert await store.fact_uids(ORG, PROJECT, [fact_uid]) == [fact_uid]
        await store.add_fact(
            Fact(
                org_id=ORG,
                project_id=PROJECT,
                subject="alice",
                feature="favourite shell",
                value="fish",
                citations=uids[3:5],
            )
        )
        assert await store.delete_facts(ORG, PROJECT, [fact_uid]) == 1
        deleted = await store.delete(ORG, PROJECT, uids[:5])
        assert deleted is not None
        assert await store.existing(ORG, PROJECT, uids[:10]) == uids[5:10]
    finally:
        await store.close()
    by_uid = [s for s in statements if " uid IN (" in s and "org_id" in s]
    # existing (twice), fact_uids, add_fact's citations, delete_facts, delete
    assert len(by_uid) >= 6, statements
    with closing(sqlite3.connect(tmp_path / "memory.sqlite3")) as conn:
        for sql in by_uid:
            plan = " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "(uid=?)" in plan, (sql, plan)
            assert "org_id=?" not in plan, (sql, plan)
