"""A data folder whose vectors carry the 24-hex-digit tokens earlier versions wrote (channel,
producer, thread in each vector's metadata) opens without operator action: the tokens are
shortened in place, once, with one line in the log, nothing is embedded again, every scope
still finds its messages, and no vector's metadata holds an old token any more. (Chroma's
write-ahead queue may keep the original rows, with their vectors and old tokens, until its next
save: they are still current data, and a forget scrubs them like any other.)"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from memory.engine import MemoryEngine
from memory.index.chroma import SHORT_IDS, SHORT_IDS_KEY, close_chroma, open_chroma, short_id
from memory.model import Scope
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, episode


def old_token(key: bytes, kind: str, *parts: str) -> str:
    """A token as earlier versions stored it: BLAKE2b keyed with the folder's key, 12 bytes, hex."""
    data = "\x1f".join((kind, *parts)).encode("utf-8")
    return hashlib.blake2b(data, key=key, digest_size=12).hexdigest()


def tokens_in_metadata(chroma: Path) -> set[str]:
    client = open_chroma(str(chroma))
    try:
        (name,) = [c if isinstance(c, str) else c.name for c in client.list_collections()]
        got = client.get_collection(name, embedding_function=None).get(include=["metadatas"])
        return {str(v) for m in got["metadatas"] or [] for v in (m or {}).values()}
    finally:
        close_chroma(client, embedded=True)


def write_old_tokens(
    chroma: Path, key: bytes, rows: dict[str, tuple[str, str, str | None]]
) -> set[str]:
    """Rewrite every vector's tokens as earlier versions wrote them; the old tokens."""
    client = open_chroma(str(chroma))
    written: set[str] = set()
    try:
        (name,) = [c if isinstance(c, str) else c.name for c in client.list_collections()]
        collection = client.get_collection(name, embedding_function=None)
        ids = list(rows)
        metas = []
        for uid in ids:
            channel, producer, thread = rows[uid]
            meta = {
                "c": old_token(key, "channel", ORG, PROJECT, channel),
                "p": old_token(key, "producer", producer),
            }
            if thread:
                meta["t"] = old_token(key, "thread", thread)
            written.update(meta.values())
            metas.append(meta)
        if (collection.metadata or {}).get(SHORT_IDS_KEY) == SHORT_IDS:  # as stored
            ids = [short_id(uid) for uid in ids]
        collection.update(ids=ids, metadatas=metas)  # type: ignore[arg-type]
    finally:
        close_chroma(client, embedded=True)
    return written


async def test_old_long_tokens_are_shortened_once_without_reembedding(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [
        ("the nightly backup runs at three", GENERAL, BOB, None),
        ("alice keeps the backup keys", GENERAL, ALICE, "1700000000.000100"),
        ("the backup of the espresso rota", RANDOM, BOB, None),
        ("who restores the backup tonight", RANDOM, ALICE, None),
    ]
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        rows: dict[str, tuple[str, str, str | None]] = {}
        for text, channel, producer, thread in messages:
            fields = {"produced_for": channel, "producer": producer, "thread_id": thread}
            (uid,) = await engine.add([episode(text, **fields)])
            rows[uid] = (channel, producer, thread)
        await engine.wait_indexed()
        assert engine.index is not None
        key = engine.index.key
    finally:
        await engine.close()
    old = write_old_tokens(data_dir / "chroma", key, rows)
    # Earlier versions recorded no token length: their folder keeps the 11-character form.
    with closing(sqlite3.connect(data_dir / "memory.sqlite3")) as conn, conn:
        conn.execute("DELETE FROM meta WHERE key = 'index_token_chars'")
    assert tokens_in_metadata(data_dir / "chroma") == old  # really the old form

    caplog.set_level(logging.INFO)
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        said = [r.getMessage() for r in caplog.records if "longer tokens" in r.getMessage()]
        assert len(said) == 1 and "in 4 vectors" in said[0]
        assert await engine.store.count_pending() == 0  # nothing to embed again
        scopes = {
            (GENERAL, None, None): {u for u, r in rows.items() if r[0] == GENERAL},
            (RANDOM, BOB, None): {u for u, r in rows.items() if r[:2] == (RANDOM, BOB)},
            (None, ALICE, None): {u for u, r in rows.items() if r[1] == ALICE},
            (GENERAL, None, "1700000000.000100"): {u for u, r in rows.items() if r[2]},
        }
        for (channel, producer, thread), expected in scopes.items():
            scope = Scope(
                org_id=ORG,
                project_id=PROJECT,
                produced_for=channel,
                producer=producer,
                thread_id=thread,
            )
            found = await engine.search("backup", scope, mode="vector")
            assert {h.episode.uid for h in found.hits} == expected, (channel, producer, thread)
    finally:
        await engine.close()
    tokens = tokens_in_metadata(data_dir / "chroma")
    assert not tokens & old and {len(t) for t in tokens} == {11}

    caplog.clear()
    engine = await MemoryEngine.open(data_dir, "hash")  # converted once only
    await engine.close()
    assert not [r for r in caplog.records if "longer tokens" in r.getMessage()]
