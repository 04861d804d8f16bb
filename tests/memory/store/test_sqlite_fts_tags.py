"""Issue 15, disk per message: a new SQLite row's ``fts_tags`` holds a two-letter placeholder
where it held its project's 22-character scope token, which no query matches any more (a
project-wide keyword search keeps its project by the WHERE). Rows written before keep the
token and are found and scored exactly as new ones: FTS5's bm25 counts tokens over every
column, so the placeholder keeps each row's length as it was."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from memory.model import Scope
from memory.store.shared import channel_token, producer_token, project_token
from memory.store.sqlite import SQLiteStore
from memory.store.sqlite.store import PROJECT_PLACEHOLDER, folder_token
from tests.conftest import ALICE, GENERAL, ORG, PROJECT, RANDOM, episode

TEXT = "the nightly backup failed on the storage cluster"


async def test_new_rows_hold_no_project_token_and_score_as_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    try:
        added = await store.add(
            [
                episode(TEXT, source_id="1.1"),
                episode(TEXT, source_id="1.2"),
                episode("an unrelated note about lunch", source_id="1.3", produced_for=RANDOM),
            ]
        )
        new, old, _ = (a.uid for a in added)
        with closing(sqlite3.connect(path)) as conn:
            tags = dict(conn.execute("SELECT uid, fts_tags FROM episodes").fetchall())
            project = project_token(ORG, PROJECT)
            assert all(project not in t for t in tags.values())
            assert tags[new].split() == [
                PROJECT_PLACEHOLDER,
                folder_token(channel_token(ORG, PROJECT, GENERAL), short=True),
                folder_token(producer_token(ORG, PROJECT, ALICE), short=True),
            ]
            # One row as earlier versions wrote it (the FTS triggers re-index it).
            with conn:
                conn.execute(
                    "UPDATE episodes SET fts_tags = ? WHERE uid = ?",
                    (tags[old].replace(PROJECT_PLACEHOLDER, project, 1), old),
                )
        for scope in (
            Scope(org_id=ORG, project_id=PROJECT),
            Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL),
            Scope(org_id=ORG, project_id=PROJECT, producer=ALICE),
        ):
            hits = await store.keyword_search(scope, None, None, "backup cluster", 10)
            assert sorted(h.episode.uid for h in hits) == sorted([new, old])
            assert hits[0].score == hits[1].score  # the same length: the same bm25
        elsewhere = Scope(org_id=ORG, project_id=PROJECT, produced_for=RANDOM)
        assert await store.keyword_search(elsewhere, None, None, "backup", 10) == []
    finally:
        await store.close()
