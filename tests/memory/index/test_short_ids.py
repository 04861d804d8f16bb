"""Issue 15, disk per message: a project collection this version creates stores each uid that
is a UUID as 22 URL-safe base64 characters instead of 36 (Chroma keeps an id in its
``embeddings`` row, that row's unique index and twice in ``index_metadata.pickle``); any
other uid behind a ``~``. A collection made by an earlier version keeps its long ids (an id
cannot be renamed without inserting its vector into HNSW again) and works as before.

Driven through the engine on real SQLite and real embedded Chroma; Chroma's ids are read by a
separate client on the folder, as they are on disk."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import chromadb
import pytest

from memory import MemoryEngine, Scope
from memory.index.chroma import COLLECTION_METADATA, long_id, short_id
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, episode

TEXTS = {
    "backup": ("the nightly backup failed on the storage cluster", ALICE, GENERAL),
    "coffee": ("the coffee machine on floor three needs descaling", BOB, GENERAL),
    "deploy": ("friday deploy freeze starts at noon", BOB, RANDOM),
}


def stored_ids(data_dir: Path) -> dict[str, list[str]]:
    """Every collection's ids exactly as Chroma stores them."""
    settings = chromadb.Settings(anonymized_telemetry=False, allow_reset=True)
    client = chromadb.PersistentClient(path=str(data_dir / "chroma"), settings=settings)
    try:
        out: dict[str, list[str]] = {}
        for entry in client.list_collections():
            name = entry if isinstance(entry, str) else entry.name
            out[name] = list(client.get_collection(name).get(include=[])["ids"])
        return out
    finally:
        client.close()


async def fill(engine: MemoryEngine, named: str | None = None) -> dict[str, str]:
    """Add the texts (one with the uid ``named``, when given); their uids by key."""
    keys = list(TEXTS)
    eps = [episode(TEXTS[k][0], producer=TEXTS[k][1], produced_for=TEXTS[k][2]) for k in keys]
    if named is not None:
        eps[0] = eps[0].model_copy(update={"uid": named})
    uids = await engine.add(eps)
    await engine.wait_indexed()
    return dict(zip(keys, uids, strict=True))


async def check_search(engine: MemoryEngine, uids: dict[str, str]) -> None:
    """Vector search finds each text by uid, project-wide and in its channel."""
    for key, (text, _, channel) in TEXTS.items():
        for scope in (
            Scope(org_id=ORG, project_id=PROJECT),
            Scope(org_id=ORG, project_id=PROJECT, produced_for=channel),
        ):
            found = await engine.search(text, scope, mode="vector", top_k=3)
            assert found.hits[0].episode.uid == uids[key]


def test_short_id_round_trips() -> None:
    u = str(uuid.uuid4())
    assert len(short_id(u)) == 22 and long_id(short_id(u)) == u
    odd = (
        "note-1",
        u.upper(),
        u.replace("-", ""),
        "~x",
        "a" * 22,
        "{" + u[1:-1] + "}",  # 36 characters, not a UUID's
        u[:8] + "-" + u[9:13] + "-" + u[14:18] + "-" + u[19:23] + "-" + u[24:35] + "g",
        u[:9] + " " + u[10:],  # bytes.fromhex skips spaces: still not canonical
        u[:35] + "\u00e9",
        "-" * 36,
    )
    for other in odd:
        assert short_id(other) == "~" + other and long_id(short_id(other)) == other
    assert long_id(u) == u  # a long id (an old collection's) reads as itself
    for _ in range(200):  # the same bytes as the uuid module's, both ways
        v = uuid.uuid4()
        stored = base64.urlsafe_b64encode(v.bytes).decode("ascii").rstrip("=")
        assert short_id(str(v)) == stored and long_id(stored) == str(v)
    for stored in ("A" * 21 + "=", "!" * 22, "A" * 20 + "  "):  # 22 characters, not base64
        assert long_id(stored) == stored


@pytest.mark.parametrize("named", [None, "note-1"])
async def test_a_new_collection_stores_short_ids_and_searches_and_forgets(
    data_dir: Path, named: str | None
) -> None:
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        uids = await fill(engine, named)
        await check_search(engine, uids)
        [ids] = [v for n, v in stored_ids(data_dir).items() if n.startswith("cmp_")]
        assert sorted(ids) == sorted(short_id(u) for u in uids.values())
        for uid in uids.values():
            on_disk = short_id(uid)
            assert len(on_disk) == (22 if uid != "note-1" else len("~note-1"))
            assert uid not in ids  # not in the long form
        assert engine.index is not None
        assert engine.index.vector_ids() == set(uids.values())

        report = await engine.forget(ORG, producer=BOB)
        assert sorted(report.uids) == sorted([uids["coffee"], uids["deploy"]])
        [ids] = [v for n, v in stored_ids(data_dir).items() if n.startswith("cmp_")]
        assert ids == [short_id(uids["backup"])]
    finally:
        await engine.close()

    engine = await MemoryEngine.open(data_dir, "hash")  # reopened: the same ids read back
    try:
        assert engine.index is not None
        assert engine.index.vector_ids() == {uids["backup"]}
        found = await engine.search(TEXTS["backup"][0], Scope(org_id=ORG, project_id=PROJECT))
        assert [h.episode.uid for h in found.hits] == [uids["backup"]]
    finally:
        await engine.close()


async def test_a_collection_of_an_earlier_version_keeps_long_ids(data_dir: Path) -> None:
    engine = await MemoryEngine.open(data_dir, "hash")
    assert engine.index is not None
    name = engine.index.project_collection(ORG, PROJECT)
    await engine.close()
    # The project's collection as earlier versions made it: no short-id mark.
    settings = chromadb.Settings(anonymized_telemetry=False, allow_reset=True)
    client = chromadb.PersistentClient(path=str(data_dir / "chroma"), settings=settings)
    try:
        client.create_collection(name, metadata=COLLECTION_METADATA, embedding_function=None)
    finally:
        client.close()

    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        uids = await fill(engine)
        await check_search(engine, uids)
        assert sorted(stored_ids(data_dir)[name]) == sorted(uids.values())  # long, as before
        await engine.forget(ORG, producer=BOB)
        assert stored_ids(data_dir)[name] == [uids["backup"]]
        await check_search_one(engine, uids["backup"])
    finally:
        await engine.close()


async def check_search_one(engine: MemoryEngine, uid: str) -> None:
    found = await engine.search(TEXTS["backup"][0], Scope(org_id=ORG, project_id=PROJECT))
    assert [h.episode.uid for h in found.hits] == [uid]
