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

import pytest

from memory.model import Fact, Scope
from memory.store.shared import channel_token, project_token
from memory.store.sqlite import SQLiteStore
from memory.store.sqlite.store import folder_token
from tests.conftest import GENERAL, ORG, PROJECT, episode


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
        await store.writer.set_trace_callback(statements.append)
        store.loop_writer.set_trace_callback(statements.append)
        await store.reader.set_trace_callback(statements.append)
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
            steps = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            plan = " / ".join(steps)
            assert "(uid=?)" in plan, (sql, plan)
            # The project's key is looked up once in ``scopes``; the rows never by project.
            rows = [step for step in steps if "scopes" not in step]
            assert not any("org_id=?" in r or "project_key=?" in r for r in rows), (sql, plan)


def _plan(db: Path, sql: str) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]


async def test_a_project_wide_keyword_search_ranks_in_the_full_text_index_then_reads_rows(
    tmp_path: Path,
) -> None:
    """Every row of a project holds its token, and FTS5's bm25 walks the posting list of every
    phrase of a query to count its rows: with the token in the MATCH, a project-wide search
    read the whole project's list. And joined to the rows before its LIMIT, it read every
    matching row with its text. So a project-wide search matches the words alone, ranks in
    the full-text index, then reads the best rows by primary key; when rows of another project
    took some of the ``limit``, the joined query (the project checked before the LIMIT)
    answers instead. Either way the hits are the project's best, scored as a channel search
    scores them."""
    db = tmp_path / "memory.sqlite3"
    store = SQLiteStore(db)
    await store.open()
    statements: list[str] = []
    everywhere = Scope(org_id=ORG, project_id=PROJECT)
    general = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)
    try:
        await store.add(
            [episode(f"a longer message about zorblat number {i}") for i in range(5)]
            + [episode(f"filler {i}", produced_for="slack:CRANDOM") for i in range(30)]
        )
        await store.reader.set_trace_callback(statements.append)
        alone = await store.keyword_search(everywhere, None, None, "zorblat", 3)
        single = [s for s in statements if "MATCH" in s]
        statements.clear()  # fewer matches than the limit: still the one statement
        assert len(await store.keyword_search(everywhere, None, None, "zorblat", 10)) == 5
        assert len([s for s in statements if "MATCH" in s]) == 1
        # Another project's rows are shorter: bm25 ranks them first over the whole table.
        await store.add(
            [episode("zorblat", project_id="other", source_id=f"2.{i}") for i in range(20)]
        )
        statements.clear()
        hits = await store.keyword_search(everywhere, None, None, "zorblat", 3)
        shared = [s for s in statements if "MATCH" in s]
        in_channel = await store.keyword_search(general, None, None, "zorblat", 3)
        channel = [s for s in statements if "MATCH" in s][len(shared) :]
    finally:
        await store.close()
    assert len(hits) == 3 and all(h.episode.content.startswith("a longer") for h in hits)
    assert [h.key for h in alone] == [h.key for h in hits] == [h.key for h in in_channel]
    assert [h.score for h in hits] == pytest.approx([h.score for h in in_channel])
    assert hits[0].score > 0.1  # a real bm25, not the floor of a word every row holds
    # Alone in the folder: one statement, ranked inside the full-text index (a subquery
    # with the LIMIT), the rows read by primary key after it.
    [ranked_first] = single
    plan = _plan(db, ranked_first)
    assert plan[:2] == ["CO-ROUTINE f", "SCAN episodes_fts VIRTUAL TABLE INDEX 0:M2"], plan
    assert "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    # Beside another project: the same first, then the joined query, which ranks in a
    # subquery (the scope checked before its LIMIT) and reads the best rows' columns after it.
    assert len(shared) == 2 and shared[0] == ranked_first
    joined = _plan(db, shared[1])
    assert joined[0] == "CO-ROUTINE t", joined
    assert joined[1].startswith("SCAN episodes_fts VIRTUAL TABLE"), joined
    assert "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)" in joined, joined
    for sql in (*single, *shared):
        assert project_token(ORG, PROJECT) not in sql
    # narrower tokens stay (short, in a folder this version created)
    assert folder_token(channel_token(ORG, PROJECT, GENERAL), short=True) in channel[0]
