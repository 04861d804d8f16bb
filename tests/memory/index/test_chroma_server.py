"""The engine against a real Chroma server (``chroma run``), the way it scales past one
process: configuration, not a rewrite."""

from __future__ import annotations

import subprocess
from pathlib import Path

import chromadb
import httpx

from memory.engine import MemoryEngine
from memory.index.chroma import MARKS_PREFIX, PROJECT_PREFIX, long_id
from memory.model import Fact, Scope
from tests.conftest import BOB, GENERAL, ORG, PROJECT, episode
from tests.server_harness import channelmind_serve


async def test_engine_on_a_chroma_server(chroma_url: str, data_dir: Path) -> None:
    engine = await MemoryEngine.open(data_dir, "hash", chroma_url=chroma_url)
    try:
        scope = Scope(org_id=ORG, project_id=PROJECT)
        uids = await engine.add(
            [
                episode("the nightly backup runs at three"),
                episode("the espresso machine needs descaling", producer=BOB),
                episode("alice keeps the backup keys", produced_for="slack:COPS"),
            ]
        )
        await engine.add_fact(
            Fact(
                org_id=ORG,
                project_id=PROJECT,
                subject=BOB,
                feature="chore",
                value="descaling",
                citations=[uids[1]],
            )
        )
        await engine.wait_indexed()
        assert (await engine.stats()).vectors == 3

        found = await engine.search("nightly backup", scope, mode="vector")
        assert found.hits[0].episode.uid == uids[0]
        channel = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)
        in_channel = await engine.search("backup", channel)
        assert in_channel.hits[0].episode.uid == uids[0]
        assert uids[2] not in [h.episode.uid for h in in_channel.hits]  # another channel

        # The vectors live on the server, not in a local folder.
        assert not (data_dir / "chroma").exists()
        host, port = chroma_url.removeprefix("http://").split(":")
        client = chromadb.HttpClient(
            host=host, port=int(port), settings=chromadb.Settings(anonymized_telemetry=False)
        )
        remote = client.get_collection(engine.index.project_collection(ORG, PROJECT))
        assert {long_id(i) for i in remote.get(include=[])["ids"]} == set(uids)

        report = await engine.forget(ORG, producer=BOB)
        assert report.uids == [uids[1]]
        assert report.facts == 1
        assert {long_id(i) for i in remote.get(include=[])["ids"]} == {uids[0], uids[2]}
        general = {"c": engine.index.channel_token(ORG, PROJECT, GENERAL)}
        assert [long_id(i) for i in remote.get(where=general, include=[])["ids"]] == [uids[0]]
        # One copy of each vector; beside it only the project's channel marks (no vectors).
        marks = MARKS_PREFIX + remote.name.removeprefix(PROJECT_PREFIX)
        assert sorted(c.name for c in client.list_collections()) == sorted([remote.name, marks])
        assert set(client.get_collection(marks).get(include=[])["ids"]) == {
            engine.index.channel_token(ORG, PROJECT, channel) for channel in (GENERAL, "slack:COPS")
        }
        assert engine.index is not None
        assert uids[1] not in engine.index.vector_ids()
        assert (await engine.search("espresso descaling", scope, mode="vector")).hits[
            0
        ].episode.uid != uids[1]
        assert (await engine.stats()).vectors == 2
    finally:
        await engine.close()

    # A reopen against the same server finds the index consistent and leaves it so.
    engine = await MemoryEngine.open(data_dir, "hash", chroma_url=chroma_url)
    try:
        await engine.wait_indexed()
        assert (await engine.stats()).vectors == 2
        assert await engine.reconcile() == {"dropped_vectors": 0, "requeued_rows": 0}
    finally:
        await engine.close()


async def test_a_chroma_server_that_stops_costs_search_by_meaning_only(
    chroma_server: tuple[str, subprocess.Popen[bytes]], data_dir: Path
) -> None:
    """The vector index goes away under a running ``channelmind serve``: messages are still
    stored (acknowledged, listed) and search still answers, from keywords."""
    url, chroma = chroma_server
    scope = {"org_id": "acme", "project_id": "ops"}
    with channelmind_serve(data_dir, CHANNELMIND_CHROMA_URL=url) as (_, served):
        async with httpx.AsyncClient(base_url=served, timeout=120) as http:
            body = {**scope, "messages": [{"content": "the nightly backup runs at three"}]}
            assert (await http.post("/api/v2/memories", json=body)).status_code == 200
            assert (await http.post("/api/cm/index/wait", json={"timeout": 60})).json()["done"]

            chroma.terminate()
            chroma.wait(timeout=30)
            later = {**scope, "messages": [{"content": "the espresso machine needs descaling"}]}
            added = await http.post("/api/v2/memories", json=later)
            assert added.status_code == 200, added.text

            for query, expected in (
                ("nightly backup", "the nightly backup runs at three"),
                ("espresso descaling", "the espresso machine needs descaling"),
            ):
                found = await http.post(
                    "/api/v2/memories/search", json={**scope, "query": query, "top_k": 5}
                )
                assert found.status_code == 200, found.text
                episodes = found.json()["content"]["episodic_memory"]["long_term_memory"]
                assert [e["content"] for e in episodes["episodes"]][:1] == [expected]
