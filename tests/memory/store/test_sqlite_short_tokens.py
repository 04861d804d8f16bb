"""Issue 15, disk per message: in a SQLite folder this version creates, a row's scope tokens
(``fts_tags`` of the full-text index: channel, producer, thread) are 15 characters (``z``,
the kind's letter, 13 digits) instead of 22; the folder says so in ``meta``. A folder an
earlier version created keeps the long form for its old rows, its new rows and its queries.
Either way a keyword search finds the same rows with the same scores: the tokens weigh 0 and
each row keeps its number of tokens."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from memory.model import Episode, Scope
from memory.store.shared import channel_token, producer_token, thread_token
from memory.store.sqlite import SQLiteStore
from memory.store.sqlite.store import PROJECT_PLACEHOLDER
from tests.conftest import ALICE, GENERAL, ORG, PROJECT, RANDOM, episode
from tests.memory.store.fts_rows import indexed_tags

THREAD = "1700000000.000001"
SCOPES = (
    Scope(org_id=ORG, project_id=PROJECT),
    Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL),
    Scope(org_id=ORG, project_id=PROJECT, producer=ALICE),
    Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL, thread_id=THREAD),
    Scope(org_id=ORG, project_id=PROJECT, produced_for=RANDOM),
)


def _rows() -> list[Episode]:
    return [
        episode("the nightly backup failed on the storage cluster", source_id="1.1"),
        episode("backup again, in the thread", source_id="1.2", thread_id=THREAD),
        episode("a backup elsewhere", source_id="1.3", produced_for=RANDOM, producer="slack:UB"),
        episode("lunch at noon", source_id="1.4"),
    ]


async def _searches(path: Path, forget_marker: bool) -> tuple[list[str], list[object]]:
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    if forget_marker:  # as a folder created before this version has it
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("DELETE FROM meta WHERE key = 'scope_tokens'")
    store = SQLiteStore(path)
    await store.open()
    try:
        rows = _rows()
        source = {ep.content: ep.source_id for ep in rows}
        await store.add(rows)
        found = []
        for scope in SCOPES:
            hits = await store.keyword_search(scope, None, None, "backup storage", 10)
            found.append([(source[h.episode.content], round(h.score, 9)) for h in hits])
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert {r[0] for r in conn.execute("SELECT fts_tags FROM episodes")} == {""}
        tags = [" ".join(t) for _, t in sorted(indexed_tags(conn).items())]
    return tags, found


async def test_a_new_folder_holds_short_tokens_and_an_old_one_long(tmp_path: Path) -> None:
    short_tags, short_found = await _searches(tmp_path / "new.sqlite3", forget_marker=False)
    long_tags, long_found = await _searches(tmp_path / "old.sqlite3", forget_marker=True)
    channel = channel_token(ORG, PROJECT, GENERAL)
    producer = producer_token(ORG, PROJECT, ALICE)
    thread = thread_token(ORG, PROJECT, GENERAL, THREAD)
    assert short_tags[1].split() == [
        PROJECT_PLACEHOLDER,
        channel[:2] + channel[-13:],
        producer[:2] + producer[-13:],
        thread[:2] + thread[-13:],
    ]
    assert long_tags[1].split() == [PROJECT_PLACEHOLDER, channel, producer, thread]
    assert all(len(t) == 15 for row in short_tags for t in row.split()[1:])
    assert all(len(t) == 22 for row in long_tags for t in row.split()[1:])
    # The same rows, in the same order, with the same scores, in every scope.
    assert short_found == long_found
    assert [[s for s, _ in hits] for hits in short_found] == [
        ["1.1", "1.3", "1.2"],
        ["1.1", "1.2"],
        ["1.1", "1.2"],
        ["1.2"],
        ["1.3"],
    ]
