"""Issue 15, disk per message: a folder this version creates keeps 8-character tokens in its
vectors' metadata (48 bits of the keyed hash, a prefix of the 11-character form), and says so
in the store's meta; a folder made before keeps its 11-character tokens, in new vectors too.
Every scope finds its messages either way."""

from __future__ import annotations

import functools
import sqlite3
from contextlib import closing
from pathlib import Path

from memory.engine import MemoryEngine
from memory.index.chroma import ChromaIndex, close_chroma, open_chroma, short_id
from memory.model import Scope
from memory.store.sqlite.store import uid_of
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, episode
from tests.memory.index.test_token_upgrade import tokens_in_metadata

THREAD = "1700000000.000100"
MESSAGES = [
    ("the nightly backup runs at three", GENERAL, BOB, None),
    ("alice keeps the backup keys", GENERAL, ALICE, THREAD),
    ("the backup of the espresso rota", RANDOM, BOB, None),
]


async def _add(engine: MemoryEngine, rows: dict[str, tuple[str, str, str | None]]) -> None:
    for text, channel, producer, thread in MESSAGES:
        fields = {"produced_for": channel, "producer": producer, "thread_id": thread}
        (uid,) = await engine.add([episode(f"{text} {len(rows)}", **fields)])
        rows[uid] = (channel, producer, thread)
    await engine.wait_indexed()


async def _check_scopes(engine: MemoryEngine, rows: dict[str, tuple[str, str, str | None]]) -> None:
    for channel, producer, thread in [
        (GENERAL, None, None),
        (RANDOM, BOB, None),
        (None, ALICE, None),
        (GENERAL, None, THREAD),
        (None, None, None),
    ]:
        expected = {
            u
            for u, r in rows.items()
            if channel in (None, r[0]) and producer in (None, r[1]) and thread in (None, r[2])
        }
        scope = Scope(
            org_id=ORG,
            project_id=PROJECT,
            produced_for=channel,
            producer=producer,
            thread_id=thread,
        )
        found = await engine.search("backup", scope, top_k=50, mode="vector")
        assert {h.episode.uid for h in found.hits} == expected, (channel, producer, thread)


def _as_before(data_dir: Path, key: bytes) -> None:
    """Turn a folder of this version into one made before: 11-character tokens in every
    vector, no token length in the store's meta."""
    long = ChromaIndex(functools.partial(open_chroma, str(data_dir / "chroma")), key)
    try:
        (collection,) = long.client.list_collections()
        got = collection.get(include=["metadatas"])
        ids, metas = got["ids"], got["metadatas"] or []
    finally:
        long.close()
    with closing(sqlite3.connect(data_dir / "memory.sqlite3")) as conn:
        rows = conn.execute("SELECT uid, produced_for, producer, thread_id FROM episodes")
        rows = [(uid_of(r[0]), *r[1:]) for r in rows]  # a uid is kept as 16 bytes
        stored = {r[0]: r[1] for r in rows}
        producers = {r[0]: r[2] for r in rows}
        threads = {r[0]: r[3] for r in rows}
        with conn:
            conn.execute("DELETE FROM meta WHERE key = 'index_token_chars'")
    by_short = {short_id(uid): uid for uid in stored}
    new_metas = []
    for stored_id, meta in zip(ids, metas, strict=True):
        uid = by_short.get(stored_id, stored_id)
        assert meta is not None
        fresh = {
            "c": long.channel_token(ORG, PROJECT, stored[uid]),
            "p": long.token("producer", producers[uid]),
        }
        if threads[uid]:
            fresh["t"] = long.token("thread", threads[uid])
        new_metas.append(fresh)
    client = open_chroma(str(data_dir / "chroma"))
    try:
        (collection,) = client.list_collections()
        collection.update(ids=ids, metadatas=new_metas)  # type: ignore[arg-type]
    finally:
        close_chroma(client, embedded=True)


async def test_a_new_folder_holds_8_character_tokens(data_dir: Path) -> None:
    rows: dict[str, tuple[str, str, str | None]] = {}
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        await _add(engine, rows)
        assert await engine.store.get_meta("index_token_chars") == "8"
        await _check_scopes(engine, rows)
    finally:
        await engine.close()
    tokens = tokens_in_metadata(data_dir / "chroma")
    assert {len(t) for t in tokens} == {8} and len(tokens) == 2 + 2 + 1  # c, p, t


async def test_a_folder_made_before_keeps_11_character_tokens(data_dir: Path) -> None:
    rows: dict[str, tuple[str, str, str | None]] = {}
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        await _add(engine, rows)
        assert engine.index is not None
        key = engine.index.key
    finally:
        await engine.close()
    _as_before(data_dir, key)
    assert {len(t) for t in tokens_in_metadata(data_dir / "chroma")} == {11}
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        assert await engine.store.get_meta("index_token_chars") == "11"
        await _check_scopes(engine, rows)
        await _add(engine, rows)  # new vectors in the old form
        await _check_scopes(engine, rows)
    finally:
        await engine.close()
    assert {len(t) for t in tokens_in_metadata(data_dir / "chroma")} == {11}
