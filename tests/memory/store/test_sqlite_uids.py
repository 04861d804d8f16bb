"""Issue 15, disk per message: ``episodes.uid`` holds a canonical UUID (every uid the store
makes) as its 16 bytes instead of 36 characters (schema 6), in the row and in the uid index;
any other uid stays text. Outside the store a uid is the API's string everywhere: every
read gives it back, every lookup finds it, whichever form it is kept in. A folder of an
earlier schema has its uids converted when it is opened (one log line)."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from memory.filters import parse_filter
from memory.model import Fact, Scope
from memory.store.sqlite import SQLiteStore
from memory.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, UPGRADES
from memory.store.sqlite.store import _episode_row, uid_key, uid_of
from tests.conftest import GENERAL, ORG, PROJECT, T0, episode

TEXT_UIDS = ["import-42", str(uuid.uuid4()).upper(), str(uuid.uuid4()).replace("-", "")]


def _stored(path: Path) -> dict[str, tuple[str, int]]:
    """Each row's uid: the SQLite type and length it is kept with."""
    with closing(sqlite3.connect(path)) as conn:
        return {
            uid_of(u): (t, n)
            for u, t, n in conn.execute("SELECT uid, typeof(uid), length(uid) FROM episodes")
        }


def test_the_key_form_is_one_to_one() -> None:
    made = str(uuid.uuid4())
    assert uid_key(made) == uuid.UUID(made).bytes and uid_of(uid_key(made)) == made
    for uid in TEXT_UIDS:
        assert uid_key(uid) == uid and uid_of(uid) == uid


async def _every_read(store: SQLiteStore, uids: list[str]) -> None:
    """Each of ``uids`` is found and given back as itself by every read and write by uid."""
    channel = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)
    assert [e.uid for e in await store.get(ORG, PROJECT, uids)] == uids
    assert await store.existing(ORG, PROJECT, [*uids, str(uuid.uuid4())]) == uids
    assert set(await store.get_scoped(channel, None, None, uids)) == set(uids)
    assert {m[0] for m in await store.channel_members(ORG, PROJECT, GENERAL)} >= set(uids)
    assert await store.all_uids() >= set(uids)
    listed = await store.list_episodes(channel, None, None, 100, 0)
    assert {e.uid for e in listed} >= set(uids)
    assert all(e.source_id is not None for e in listed)  # a source is never read as the uid
    hits = await store.keyword_search(channel, None, None, "heron", 10)
    assert {h.episode.uid for h in hits} >= set(uids)
    # A filter on the uid compares it as text, the form the API knows.
    quoted = ", ".join(f"'{u}'" for u in uids)
    for text, want in (
        (f"uid IN ({quoted})", set(uids)),
        (f"uid = '{uids[0]}'", {uids[0]}),
        (f"uid >= '{min(uids)}'", {e.uid for e in listed}),
        (f"uid < '{min(uids)}'", set()),
    ):
        filtered = await store.list_episodes(channel, parse_filter(text), None, 100, 0)
        assert {e.uid for e in filtered} == want, text
    fact = await store.add_fact(
        Fact(org_id=ORG, project_id=PROJECT, subject="s", feature="f", value="v", citations=uids)
    )
    assert sorted((await store.facts(ORG, PROJECT, uids=[fact]))[0].citations) == sorted(uids)
    for uid in uids:
        assert await store.edit(ORG, PROJECT, uid, f"heron edited {uid}", T0)
        assert (await store.get(ORG, PROJECT, [uid]))[0].content == f"heron edited {uid}"


async def test_uids_are_kept_as_16_bytes_and_read_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    try:
        added = await store.add(
            [episode("heron one"), *[episode(f"heron {u}", uid=u) for u in TEXT_UIDS]]
        )
        made = added[0].uid
        uids = [a.uid for a in added]
        assert uids[1:] == TEXT_UIDS
        stored = _stored(path)
        assert stored[made] == ("blob", 16)
        assert all(stored[u] == ("text", len(u)) for u in TEXT_UIDS)
        # The embedding queue: a claimed row is not claimed again while its lease holds,
        # whatever form its uid is kept in; completing it marks that row.
        first = await store.claim(3, 60)
        assert first is not None and [e.uid for e in first.episodes] == uids[:3]
        second = await store.claim(10, 60)
        assert second is not None and [e.uid for e in second.episodes] == uids[3:]
        await store.complete(first)
        assert await store.count_pending() == 1 and await store.count_indexed() == 3
        await store.requeue([made])
        assert await store.count_pending() == 2
        await _every_read(store, uids)
        gone = await store.delete(ORG, PROJECT, uids)
        assert sorted(gone.uids) == sorted(uids)
        assert sorted(t.uid for t in await store.tombstones(100)) == sorted(uids * 2)
        assert await store.all_uids() == set()
    finally:
        await store.close()


async def test_an_older_folder_gets_its_uids_converted_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "memory.sqlite3"
    made = [str(uuid.uuid4()) for _ in range(3)]
    with closing(sqlite3.connect(path)) as conn, conn:  # as version 5 left it
        for version in range(1, 6):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '5')")
        conn.execute("INSERT INTO meta VALUES ('scope_tokens', 'short')")
        for i, uid in enumerate([*made, *TEXT_UIDS]):
            row = _episode_row(episode(f"heron {i}", uid=uid), short=True)
            conn.execute(
                "INSERT INTO episodes (uid, org_id, project_id, producer, produced_for, role,"
                " content, created_at, platform, source_id, thread_id, episode_type, metadata,"
                " fts_tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            conn.execute(
                "INSERT INTO episodes_fts (rowid, content, fts_tags) VALUES (?, ?, ?)",
                (i + 1, row[6], row[13]),
            )
    assert all(t == "text" for t, _ in _stored(path).values())
    store = SQLiteStore(path)
    with caplog.at_level(logging.INFO, logger="memory.store.sqlite.store"):
        await store.open()
    try:
        [upgraded] = [r.message for r in caplog.records if "schema" in r.message]
        assert upgraded.startswith(f"{path}: schema 5 -> {SCHEMA_VERSION} in ")
        assert UPGRADES[6] in upgraded
        stored = _stored(path)
        assert all(stored[u] == ("blob", 16) for u in made)
        assert all(stored[u] == ("text", len(u)) for u in TEXT_UIDS)
        await _every_read(store, [*made, *TEXT_UIDS])
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
