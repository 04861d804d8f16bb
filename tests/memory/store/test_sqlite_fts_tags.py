"""Issue 15, disk per message: what a SQLite row is indexed under for keyword search.

- A new row's project token is a two-letter placeholder in the full-text index (no query
  matches the project's 22-character token: a project-wide keyword search keeps its project
  by the WHERE). Rows written before keep the token and are found and scored exactly as new
  ones: FTS5's bm25 counts tokens over every column, so the placeholder keeps each row's
  length as it was.
- Since schema 5 a new row's scope tokens are in the full-text index only, not in its
  ``fts_tags`` column (about 38 bytes per message): the store computes them from the row's
  ids to index, edit and delete it. A folder of schema 4 opens (one log line), and its old
  rows, whose column holds the tokens they were indexed under, are edited and forgotten with
  those, leaving nothing of theirs in the index."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from memory.model import Episode, Scope
from memory.store.shared import channel_token, producer_token, project_token
from memory.store.sqlite import SQLiteStore
from memory.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, UPGRADES
from memory.store.sqlite.store import PROJECT_PLACEHOLDER, _episode_row, folder_token, uid_of
from tests.conftest import ALICE, GENERAL, ORG, PROJECT, RANDOM, T0, episode
from tests.memory.store.fts_rows import indexed_tags, indexed_terms

TEXT = "the nightly backup failed on the storage cluster"


def _schema_4_folder(path: Path, old: list[Episode]) -> list[str]:
    """A folder as version 4 left it (short tokens), holding ``old`` as it wrote them: the
    row's tokens in its ``fts_tags`` (the project's own token, as before the placeholder),
    put in the full-text index by its triggers. Their uids."""
    with closing(sqlite3.connect(path)) as conn, conn:
        for version in (1, 2, 3, 4):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '4')")
        conn.execute("INSERT INTO meta VALUES ('scope_tokens', 'short')")
        uids = []
        for ep in old:
            row = _episode_row(ep, short=True)
            tags = row[13].replace(PROJECT_PLACEHOLDER, project_token(ORG, PROJECT), 1)
            conn.execute(
                "INSERT INTO episodes (uid, org_id, project_id, producer, produced_for, role,"
                " content, created_at, platform, source_id, thread_id, episode_type, metadata,"
                " fts_tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row[:13], tags),
            )
            uids.append(row[0])
    return uids


async def test_new_rows_hold_no_project_token_and_score_as_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    [old] = _schema_4_folder(path, [episode(TEXT, source_id="1.2", created_at=T0)])
    store = SQLiteStore(path)
    await store.open()
    try:
        added = await store.add(
            [
                episode(TEXT, source_id="1.1", created_at=T0),
                episode("an unrelated note about lunch", source_id="1.3", produced_for=RANDOM),
            ]
        )
        new = added[0].uid
        with closing(sqlite3.connect(path)) as conn:
            keys = {uid_of(u): k for u, k in conn.execute("SELECT uid, id FROM episodes")}
            tags = indexed_tags(conn)
        project = project_token(ORG, PROJECT)
        channel = folder_token(channel_token(ORG, PROJECT, GENERAL), short=True)
        producer = folder_token(producer_token(ORG, PROJECT, ALICE), short=True)
        assert tags[keys[new]] == [PROJECT_PLACEHOLDER, channel, producer]
        assert tags[keys[old]] == [project, channel, producer]
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


async def test_rows_old_and_new_are_edited_and_forgotten_out_of_the_index(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "memory.sqlite3"
    thread = "1700000000.000001"
    old = _schema_4_folder(
        path,
        [
            episode("zebrafish ledger one", source_id="1.1"),
            episode("zebrafish ledger two", source_id="1.2", thread_id=thread),
        ],
    )
    store = SQLiteStore(path)
    with caplog.at_level(logging.INFO, logger="memory.store.sqlite.store"):
        await store.open()
    try:
        [upgraded] = [r.message for r in caplog.records if "schema" in r.message]
        assert upgraded.startswith(f"{path}: schema 4 -> {SCHEMA_VERSION} in ")
        assert UPGRADES[5] in upgraded
        with closing(sqlite3.connect(path)) as conn:
            triggers = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
            assert triggers.fetchall() == []
            before = indexed_terms(conn)  # the old rows' words and tokens
        new = [
            a.uid
            for a in await store.add(
                [
                    episode("zebrafish ledger three", source_id="1.3"),
                    episode("zebrafish ledger four", source_id="1.4", thread_id=thread),
                    episode("quokka stays", source_id="1.5", producer="slack:UBOB"),
                ]
            )
        ]
        with closing(sqlite3.connect(path)) as conn:
            stored = {uid_of(u): t for u, t in conn.execute("SELECT uid, fts_tags FROM episodes")}
        assert all(stored[u] for u in old) and not any(stored[u] for u in new)
        channel = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)
        in_thread = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL, thread_id=thread)
        hits = await store.keyword_search(in_thread, None, None, "zebrafish", 10)
        assert sorted(h.episode.uid for h in hits) == sorted([old[1], new[1]])
        # An edit: the new words are found, the old ones are gone from the index.
        for uid in (old[0], new[0]):
            assert await store.edit(ORG, PROJECT, uid, "wombat edited", T0)
        hits = await store.keyword_search(channel, None, None, "wombat", 10)
        assert sorted(h.episode.uid for h in hits) == sorted([old[0], new[0]])
        hits = await store.keyword_search(channel, None, None, "zebrafish", 10)
        assert sorted(h.episode.uid for h in hits) == sorted([old[1], new[1]])
        # Forgetting every row but one leaves in the index that row's terms only.
        gone = await store.delete(ORG, PROJECT, [*old, *new[:2]])
        assert sorted(gone.uids) == sorted([*old, *new[:2]])
        with closing(sqlite3.connect(path)) as conn:
            left = indexed_terms(conn)
            tags = indexed_tags(conn)
        bob = folder_token(producer_token(ORG, PROJECT, "slack:UBOB"), short=True)
        assert list(tags.values()) == [
            [PROJECT_PLACEHOLDER, folder_token(channel_token(ORG, PROJECT, GENERAL), True), bob]
        ]
        assert left == {"quokka", "stai", *tags[min(tags)]}
        assert not before & left - {tags[min(tags)][1]}
    finally:
        await store.close()
