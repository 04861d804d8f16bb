"""A data folder written by an earlier version (every vector stored twice: in its project's
collection and in a collection of its channel) opens without operator action: the index is
converted in place, once, with one line in the log, and no message is embedded again."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest

from memory.engine import MemoryEngine
from memory.index.chroma import OLD_CHANNEL_PREFIX, close_chroma, long_id, open_chroma
from memory.model import Scope
from tests.conftest import BOB, GENERAL, ORG, PROJECT, RANDOM, episode
from tests.memory.index.test_token_upgrade import old_token

TEXTS = {
    GENERAL: ["the nightly backup runs at three", "alice keeps the backup keys"],
    RANDOM: ["the espresso machine needs descaling", "the backup of the espresso rota"],
}


def write_old_layout(chroma: Path, project: str, long_tokens: dict[str, str]) -> None:
    """Rewrite the index as earlier versions laid it out: the project collection without
    channel tags, and a copy of each vector in a collection per channel (``cmc_`` + token),
    tokens in their long form (``long_tokens``: today's token -> the long one)."""
    client = open_chroma(str(chroma))
    try:
        current = client.get_collection(project, embedding_function=None)
        got = current.get(include=["embeddings", "metadatas"])
        # Earlier versions stored uids as they are (this version's collection: short ids).
        ids = [long_id(i) for i in got["ids"]]
        vectors = np.asarray(got["embeddings"], dtype=np.float32)
        metas = [dict(m or {}) for m in got["metadatas"] or []]
        channels = [long_tokens[m.pop("c")] for m in metas]
        for m in metas:  # earlier versions' producer tokens were the long form too
            m["p"] = long_tokens[str(m["p"])]
        client.delete_collection(project)
        old = client.create_collection(
            project, metadata={"hnsw:space": "cosine"}, embedding_function=None
        )
        old.upsert(ids=ids, embeddings=vectors, metadatas=metas)  # type: ignore[arg-type]
        for token in set(channels):
            rows = [i for i, c in enumerate(channels) if c == token]
            copy = client.create_collection(
                OLD_CHANNEL_PREFIX + token,
                metadata={"hnsw:space": "cosine"},
                embedding_function=None,
            )
            copy.upsert(
                ids=[ids[i] for i in rows],
                embeddings=vectors[rows],
                metadatas=[metas[i] for i in rows],  # type: ignore[misc]
            )
    finally:
        close_chroma(client, embedded=True)


def collections_and_segments(chroma: Path) -> tuple[list[str], int, int]:
    """Collection names, segment folders, and queue rows still holding a vector."""
    with sqlite3.connect(chroma / "chroma.sqlite3") as conn:
        names = sorted(r[0] for r in conn.execute("SELECT name FROM collections"))
        with_vector = conn.execute(
            "SELECT count(*) FROM embeddings_queue WHERE vector IS NOT NULL"
            " AND topic NOT IN (SELECT 'persistent://default/default/' || id FROM collections)"
        ).fetchone()[0]
    folders = 0
    for entry in chroma.iterdir():
        try:
            uuid.UUID(entry.name)
        except ValueError:
            continue
        folders += entry.is_dir()
    return names, folders, int(with_vector)


async def test_an_old_two_copy_folder_is_converted_once_without_reembedding(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        uids = {
            channel: await engine.add(
                [episode(text, produced_for=channel, producer=BOB) for text in texts]
            )
            for channel, texts in TEXTS.items()
        }
        await engine.wait_indexed()
        assert engine.index is not None
        project = engine.index.project_collection(ORG, PROJECT)
        key = engine.index.key
        long_tokens = {
            engine.index.channel_token(ORG, PROJECT, c): old_token(key, "channel", ORG, PROJECT, c)
            for c in TEXTS
        }
        long_tokens[engine.index.token("producer", BOB)] = old_token(key, "producer", BOB)
    finally:
        await engine.close()
    write_old_layout(data_dir / "chroma", project, long_tokens)
    names, folders, _ = collections_and_segments(data_dir / "chroma")
    assert len(names) == 3 and folders >= 3  # the old layout really is on disk

    caplog.set_level(logging.INFO)
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        said = [r.getMessage() for r in caplog.records if "second copy" in r.getMessage()]
        assert len(said) == 1 and "converting 2 channel collections" in said[0]
        assert await engine.store.count_pending() == 0  # nothing to embed again
        for channel, expected in uids.items():
            found = await engine.search(
                "backup", Scope(org_id=ORG, project_id=PROJECT, produced_for=channel), mode="vector"
            )
            assert {h.episode.uid for h in found.hits} == set(expected)
        everywhere = await engine.search("backup", Scope(org_id=ORG, project_id=PROJECT))
        assert {h.episode.uid for h in everywhere.hits} >= {u for us in uids.values() for u in us}
    finally:
        await engine.close()
    names, folders, stale = collections_and_segments(data_dir / "chroma")
    assert names == [project]  # the channel copies are gone...
    assert folders == 1 and stale == 0  # ...from the files too

    caplog.clear()
    engine = await MemoryEngine.open(data_dir, "hash")  # converted once only
    await engine.close()
    assert not [r for r in caplog.records if "second copy" in r.getMessage()]
