"""Forgetting leaves nothing behind: not in the store's rows, not in its full-text index, not
in Chroma, not in the facts, and (SQLite) not in the bytes of the database file or its WAL.
The same forgets run on PostgreSQL, checked through a connection of their own."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import chromadb
import pytest

from memory.engine import MemoryEngine
from memory.index.chroma import long_id
from memory.model import Fact, Scope
from memory.store.sqlite.store import uid_key
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, episode, raw_db

#: A word that appears nowhere else, and that the porter stemmer leaves as it is.
MARKER = "zorblaxquint"
#: Rows of PostgreSQL's full-text index that match a word.
PG_MATCHES = "SELECT count(*) FROM episodes WHERE tsv @@ plainto_tsquery('channelmind', $1)"
#: FTS5 stores terms prefix-compressed (a term's head may be shared with the term before it),
#: so the raw index bytes are searched for the marker's tail as well.
TAIL = MARKER[-8:]
THREAD = "1700000000.000500"

Action = Callable[[MemoryEngine, list[str]], Awaitable[list[str]]]


async def _delete(engine: MemoryEngine, secret: list[str]) -> list[str]:
    return await engine.delete(ORG, PROJECT, secret)


async def _forget_producer(engine: MemoryEngine, secret: list[str]) -> list[str]:
    return (await engine.forget(ORG, producer=ALICE)).uids


async def _forget_channel(engine: MemoryEngine, secret: list[str]) -> list[str]:
    return (await engine.forget(ORG, project_id=PROJECT, produced_for=RANDOM)).uids


async def _forget_thread(engine: MemoryEngine, secret: list[str]) -> list[str]:
    return (
        await engine.forget(ORG, project_id=PROJECT, produced_for=GENERAL, thread_id=THREAD)
    ).uids


async def _forget_filter(engine: MemoryEngine, secret: list[str]) -> list[str]:
    return (await engine.forget(ORG, project_id=PROJECT, filters="metadata.secret = true")).uids


async def seed(engine: MemoryEngine, kind: str) -> tuple[list[str], list[str]]:
    """Messages that carry the marker (to be forgotten) and messages that must stay."""
    secret_fields: dict[str, dict[str, object]] = {
        "delete": {},
        "producer": {"producer": ALICE},
        "channel": {"produced_for": RANDOM},
        "thread": {"thread_id": THREAD},
        "filter": {"metadata": {"secret": True}},
    }
    base = secret_fields[kind]
    secret_eps = [episode(f"the launch code is {MARKER} {i}", **base) for i in range(3)]
    if kind == "producer":  # the same person, in another project of the org
        secret_eps.append(episode(f"{MARKER} again", producer=ALICE, project_id="second"))
    kept_eps = [
        episode("the cafeteria opens at nine", producer=BOB),
        episode("unrelated note in the thread", producer=BOB, thread_id="1700000000.000999"),
        episode("bob's note in another channel", producer=BOB, produced_for="slack:COTHER"),
    ]
    secret = await engine.add(secret_eps)
    kept = await engine.add(kept_eps)
    return secret, kept


def chroma_ids(data_dir: Path) -> dict[str, set[str]]:
    """Every id in every collection, read by a separate Chroma client on the folder."""
    # Same settings as the engine's client: Chroma shares one system per folder and process.
    settings = chromadb.Settings(anonymized_telemetry=False, allow_reset=True)
    client = chromadb.PersistentClient(path=str(data_dir / "chroma"), settings=settings)
    out: dict[str, set[str]] = {}
    try:
        for entry in client.list_collections():
            name = entry if isinstance(entry, str) else entry.name
            ids = client.get_collection(name).get(include=[])["ids"]
            out[name] = {long_id(i) for i in ids}  # as stored: a short id is its uid's
    finally:
        client.close()
    return out


def fts_rows(conn: sqlite3.Connection, word: str) -> list[int]:
    return [
        r[0]
        for r in conn.execute("SELECT rowid FROM episodes_fts WHERE episodes_fts MATCH ?", (word,))
    ]


def fts_vocab(conn: sqlite3.Connection, prefix: str) -> list[tuple[str, int]]:
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.v USING fts5vocab(main, episodes_fts, 'row')"
    )
    return list(conn.execute("SELECT term, cnt FROM temp.v WHERE term LIKE ?", (prefix + "%",)))


def fts_blobs(conn: sqlite3.Connection) -> bytes:
    return b"".join(r[0] for r in conn.execute("SELECT block FROM episodes_fts_data") if r[0])


async def pg_count(url: str, sql: str, *args: object) -> int:
    """One count from PostgreSQL, on a connection of the test's own."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


def raw_bytes(data_dir: Path) -> dict[str, bytes]:
    files = {}
    for suffix in ("", "-wal", "-journal"):
        path = data_dir / f"memory.sqlite3{suffix}"
        if path.exists():
            files[path.name] = path.read_bytes()
    return files


@pytest.mark.parametrize(
    ("kind", "action"),
    [
        ("delete", _delete),
        ("producer", _forget_producer),
        ("channel", _forget_channel),
        ("thread", _forget_thread),
        ("filter", _forget_filter),
    ],
)
@pytest.mark.usefixtures("each_store")
async def test_forgotten_content_is_gone_everywhere(
    engine: MemoryEngine, data_dir: Path, kind: str, action: Action
) -> None:
    secret, kept = await seed(engine, kind)
    # Facts: one cites only forgotten messages, one cites a forgotten and a kept one.
    only_secret = await engine.add_fact(
        Fact(
            org_id=ORG,
            project_id=PROJECT,
            subject=BOB,
            feature="code",
            value="known",
            citations=secret[:2],
        )
    )
    mixed = await engine.add_fact(
        Fact(
            org_id=ORG,
            project_id=PROJECT,
            subject=BOB,
            feature="cafeteria",
            value="nine",
            citations=[secret[0], kept[0]],
        )
    )
    await engine.wait_indexed()

    # The marker is really everywhere before, or the checks below would prove nothing.
    pg = os.environ.get("CHANNELMIND_DATABASE_URL")
    if pg is None:
        with raw_db(data_dir) as conn:
            assert len(fts_rows(conn, MARKER)) == len(secret)
            assert fts_vocab(conn, MARKER)
            assert TAIL.encode() in fts_blobs(conn)
        assert any(MARKER.encode() in blob for blob in raw_bytes(data_dir).values())
    else:
        assert await pg_count(pg, PG_MATCHES, MARKER) == len(secret)
    assert all(any(u in ids for ids in chroma_ids(data_dir).values()) for u in secret)

    forgotten = await action(engine, secret)
    assert sorted(forgotten) == sorted(secret)

    if pg is not None:  # PostgreSQL: rows, citations, tombstones and the tsvector index
        assert await pg_count(pg, "SELECT count(*) FROM episodes WHERE content LIKE $1",
                              f"%{MARKER}%") == 0  # fmt: skip
        assert await pg_count(pg, "SELECT count(*) FROM episodes WHERE uid = ANY($1)",
                              secret) == 0  # fmt: skip
        assert await pg_count(pg, "SELECT count(*) FROM episodes") == len(kept)
        assert await pg_count(pg, "SELECT count(*) FROM fact_citations"
                              " WHERE episode_uid = ANY($1)", secret) == 0  # fmt: skip
        assert await pg_count(pg, PG_MATCHES, MARKER) == 0
        assert await pg_count(pg, "SELECT count(*) FROM vector_tombstones") == 0
    if pg is None:
        # SQLite rows.
        with raw_db(data_dir) as conn:
            assert conn.execute(
                "SELECT count(*) FROM episodes WHERE content LIKE ?", (f"%{MARKER}%",)
            ).fetchone() == (0,)
            marks = ",".join("?" * len(secret))
            assert conn.execute(
                f"SELECT count(*) FROM episodes WHERE uid IN ({marks})",
                [uid_key(u) for u in secret],
            ).fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM episodes").fetchone() == (len(kept),)
            assert conn.execute(
                f"SELECT count(*) FROM fact_citations WHERE episode_uid IN ({marks})", secret
            ).fetchone() == (0,)
            # FTS index: no match, and the term is not in its vocabulary.
            assert fts_rows(conn, MARKER) == []
            assert fts_vocab(conn, MARKER) == []
            # ...and not in its segments either (a delete only adds a tombstone segment).
            assert TAIL.encode() not in fts_blobs(conn)
            assert conn.execute("SELECT count(*) FROM vector_tombstones").fetchone() == (0,)
    # Engine's view.
    scope = Scope(org_id=ORG, project_id=PROJECT)
    for mode in ("hybrid", "keyword", "vector"):
        hits = (await engine.search(f"launch code {MARKER}", scope, mode=mode)).hits
        assert not any(MARKER in h.episode.content for h in hits), mode
    assert [e.uid for e in await engine.get(ORG, PROJECT, kept)] == kept

    # Chroma: the uids are in no collection (the engine's view and a separate client's).
    assert engine.index is not None
    for ids in (engine.index.all_ids(), chroma_ids(data_dir)):
        assert ids, "no collections at all: the check would be empty"
        for name, members in ids.items():
            assert not set(secret) & members, name
        assert set(kept) <= set().union(*ids.values())

    # Facts: the one citing only forgotten messages is gone; the other loses the citation.
    facts = {f.uid: f for f in await engine.facts(ORG, PROJECT)}
    assert only_secret not in facts
    assert facts[mixed].citations == [kept[0]]
    assert facts[mixed].value == "nine"

    # Bytes on disk: neither the database file nor its WAL holds the marker any more, nor
    # the forgotten uids, as text or as the 16 bytes a row keeps.
    for name, blob in raw_bytes(data_dir).items():  # none on PostgreSQL
        assert MARKER.encode() not in blob, f"{MARKER} still in {name}"
        assert TAIL.encode() not in blob, f"{TAIL} still in {name}"
        for uid in secret:
            key = uid_key(uid)
            assert isinstance(key, bytes) and key not in blob, f"{uid} still in {name}"
            assert uid.encode() not in blob, f"{uid} still in {name}"
    # Content never goes to Chroma at all (only vectors and scope metadata).
    for path in (data_dir / "chroma").rglob("*"):
        if path.is_file():
            assert TAIL.encode() not in path.read_bytes(), path


@pytest.mark.usefixtures("each_store")
async def test_forgetting_a_producer_drops_facts_about_them(engine: MemoryEngine) -> None:
    [said] = await engine.add([episode("I love hiking", producer=ALICE)])
    about_alice = await engine.add_fact(
        Fact(org_id=ORG, project_id=PROJECT, subject=ALICE, feature="hobby", value="hiking")
    )
    about_bob = await engine.add_fact(
        Fact(org_id=ORG, project_id=PROJECT, subject=BOB, feature="hobby", value="chess")
    )
    report = await engine.forget(ORG, producer=ALICE)
    assert report.uids == [said]
    assert report.facts == 1
    assert [f.uid for f in await engine.facts(ORG, PROJECT)] == [about_bob]
    assert about_alice not in [
        f.uid for f in await engine.facts(ORG, PROJECT, include_superseded=True)
    ]


async def test_forgetting_survives_a_restart(data_dir: Path) -> None:
    """Deleted while the indexer is off: the tombstone is applied on the next open."""
    eng = await MemoryEngine.open(data_dir, "hash")
    try:
        [gone, kept] = await eng.add([episode(f"{MARKER} here"), episode("stays here")])
        await eng.wait_indexed()
    finally:
        await eng.close()
    with raw_db(data_dir) as conn:  # another writer deleted the row and left a tombstone
        conn.execute("DELETE FROM episodes WHERE uid = ?", (uid_key(gone),))
        conn.execute(
            "INSERT INTO vector_tombstones VALUES (?, ?, ?, ?)", (gone, ORG, PROJECT, GENERAL)
        )
        conn.commit()
    eng = await MemoryEngine.open(data_dir, "hash")
    try:
        await eng.wait_indexed()
        assert eng.index is not None
        assert gone not in eng.index.vector_ids()
        assert kept in eng.index.ids(ORG, PROJECT) & eng.index.ids(ORG, PROJECT, GENERAL)
    finally:
        await eng.close()
