"""Issue 15, disk per message: a SQLite row names its org and project by a small integer key
into ``scopes`` (schema 7) instead of repeating both ids in the row and in the source and
time indexes. Outside the store nothing changes: every read gives the org and project back,
a source id is unique within its project only, a project's rows stay apart from another's,
and deleting a project leaves none of its ids in the file. A folder of an earlier schema has
its table rebuilt when it is opened (one log line), and gives the old table's pages back."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from memory.model import Scope
from memory.store.sqlite import SQLiteStore
from memory.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, UPGRADES
from memory.store.sqlite.store import SPARE_PAGES, _episode_row, uid_key
from tests.conftest import GENERAL, ORG, PROJECT, episode

OTHER = "zz-hidden-project"


def _columns(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [r[1] for r in conn.execute("PRAGMA table_info(episodes)")]


async def _same_source_twice(store: SQLiteStore) -> None:
    """A source id is unique within its project, not across projects."""
    again = await store.add([episode("repeat", source_id="1.1")])
    assert not again[0].new
    elsewhere = await store.add([episode("repeat", source_id="1.1", project_id=OTHER)])
    assert elsewhere[0].new
    found = await store.find_source(ORG, OTHER, "slack", "1.1")
    assert found is not None and found.project_id == OTHER and found.content == "repeat"


async def test_rows_name_their_project_by_a_key(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.add([episode(f"kiwi {i}", source_id=f"1.{i}") for i in range(1, 6)])
        await _same_source_twice(store)
        assert "org_id" not in _columns(path) and "project_key" in _columns(path)
        here = Scope(org_id=ORG, project_id=PROJECT)
        there = Scope(org_id=ORG, project_id=OTHER)
        listed = await store.list_episodes(here, None, None, 100, 0)
        assert len(listed) == 5 and {(e.org_id, e.project_id) for e in listed} == {(ORG, PROJECT)}
        assert [e.content for e in await store.list_episodes(there, None, None, 100, 0)] == [
            "repeat"
        ]
        hits = await store.keyword_search(here, None, None, "kiwi repeat", 10)
        assert len(hits) == 5
        counts = await store.counts()
        assert (counts.orgs, counts.projects, counts.channels) == (1, 2, 2)
        assert await store.channels(ORG, OTHER) == [GENERAL]
        # Deleting a project takes its key: none of its ids is left in the file.
        gone = await store.delete_project(ORG, OTHER)
        assert len(gone.uids) == 1
        await store.clear_tombstones()  # as the engine does once the vectors are gone
        await store.purge()
        assert await store.list_episodes(there, None, None, 100, 0) == []
        assert len(await store.list_episodes(here, None, None, 100, 0)) == 5
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT org_id, project_id FROM scopes").fetchall() == [(ORG, PROJECT)]
    for suffix in ("", "-wal"):
        if (tmp_path / f"memory.sqlite3{suffix}").exists():
            assert OTHER.encode() not in (tmp_path / f"memory.sqlite3{suffix}").read_bytes()


async def test_an_older_folder_is_rebuilt_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "memory.sqlite3"
    with closing(sqlite3.connect(path)) as conn:  # as version 6 left a folder it created
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.create_function("cm_uid_key", 1, uid_key, deterministic=True)
        with conn:
            for version in range(1, 7):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema_version', '6')")
            conn.execute("INSERT INTO meta VALUES ('scope_tokens', 'short')")
            for i in range(1, 3001):
                project = PROJECT if i % 3 else OTHER
                ep = episode(f"kiwi {i} " + "padding " * 20, source_id=f"1.{i}")
                row = _episode_row(ep.model_copy(update={"project_id": project}), short=True)
                conn.execute(
                    "INSERT INTO episodes (uid, org_id, project_id, producer, produced_for,"
                    " role, content, created_at, platform, source_id, thread_id, episode_type,"
                    " metadata, fts_tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                    (uid_key(row[0]), *row[1:13]),
                )
                conn.execute(
                    "INSERT INTO episodes_fts (rowid, content, fts_tags) VALUES (?, ?, ?)",
                    (i, row[6], row[13]),
                )
    store = SQLiteStore(path)
    with caplog.at_level(logging.INFO, logger="memory.store.sqlite.store"):
        await store.open()
    try:
        [upgraded] = [r.message for r in caplog.records if "schema" in r.message]
        assert upgraded.startswith(f"{path}: schema 6 -> {SCHEMA_VERSION} in ")
        assert UPGRADES[7] in upgraded
        assert "org_id" not in _columns(path)
        here = Scope(org_id=ORG, project_id=PROJECT)
        there = Scope(org_id=ORG, project_id=OTHER)
        assert await store.count(here) == 2000 and await store.count(there) == 1000
        listed = await store.list_episodes(there, None, None, 2000, 0)
        assert {(e.org_id, e.project_id) for e in listed} == {(ORG, OTHER)}
        hits = await store.keyword_search(there, None, None, "kiwi", 2000)
        assert len(hits) == 1000
        assert (await store.counts()).projects == 2
        await store.add([episode("new kiwi", source_id="1.9999")])
        await _same_source_twice(store)
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # The old table's pages went back to the file system.
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] <= SPARE_PAGES
