"""Defects 6 and 7 of issue 9: forgetting left each deleted message's embedding in Chroma's
``chroma.sqlite3`` byte for byte (its write-ahead queue ``embeddings_queue``, kept across
restarts), the channel id in collection metadata, and an edit left the old text in SQLite's
file and WAL. Anyone with the disk could confirm a guessed sentence.

Each case runs a real memory server process on a data folder, drives it through REST, and scans
every file under the folder for the forgotten text, the float32 bytes of its vectors and the
forgotten names: right after the call returns, after the process is SIGKILLed, after a restart
and after a clean stop. Before the call the same scan must find them (or it would prove
nothing). More than 1000 messages share the channel, so that Chroma has saved its HNSW files
(it does every 1000 operations) and the vectors are in them too.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from memory.model import Episode, embed_text

from .disk_scan import DenseEmbedder, scan
from .server_harness import ROOT, free_port

ORG, PROJECT, DOOMED_PROJECT = "acme-industries", "support-desk", "secretproj"
CHANNEL, KEPT_CHANNEL = "slack:CSECRETCHAN", "slack:CKEPTCHANNEL"
PERSON, FILLER_PERSON = "slack:USECRETUSER", "slack:UFILLER"
MARKER = "zorblaxquint"  # appears nowhere else; the porter stemmer leaves it alone
TAIL = MARKER[-8:]  # FTS5 stores terms prefix-compressed: look for the tail too
FILLER = 1100  # past Chroma's sync_threshold (1000): its HNSW files hold vectors


@dataclass
class Server:
    data_dir: Path
    port: int
    process: asyncio.subprocess.Process | None = None
    http: httpx.AsyncClient = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.memory_server_process",
            str(self.data_dir),
            str(self.port),
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 180)  # a hang guard
        assert line.startswith(b"READY"), line
        self.http = httpx.AsyncClient(base_url=self.url, timeout=120)

    async def stop(self, sig: int) -> None:
        assert self.process is not None
        await self.http.aclose()
        self.process.send_signal(sig)
        await asyncio.wait_for(self.process.wait(), 120)
        self.process = None

    async def post(self, route: str, body: dict[str, Any]) -> Any:
        response = await self.http.post(route, json=body)
        assert response.status_code < 300, (route, response.status_code, response.text)
        return response.json() if response.content else None


@asynccontextmanager
async def server_on(data_dir: Path) -> AsyncIterator[Server]:
    server = Server(data_dir, free_port())
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.kill()
            await server.process.wait()


def message(content: str, producer: str, channel: str, project: str = PROJECT) -> dict[str, Any]:
    return {
        "org_id": ORG,
        "project_id": project,
        "producer": producer,
        "produced_for": channel,
        "platform": "slack",
        "content": content,
    }


@dataclass
class Seeded:
    secret: list[str]  # the uids of the messages to forget
    vectors: dict[str, np.ndarray]  # their embeddings, by label
    kept: list[str]


async def seed(server: Server, project: str = PROJECT) -> Seeded:
    secret_messages = [
        message(f"the launch code is {MARKER} {i}", PERSON, CHANNEL, project) for i in range(5)
    ]
    secret = (await server.post("/api/cm/episodes/add", {"episodes": secret_messages}))["uids"]
    # Filler shares the channel (and project), so that Chroma saves its HNSW files.
    filler = [
        message(f"routine status update {i}", FILLER_PERSON, CHANNEL, project)
        for i in range(FILLER)
    ]
    filler.append(message("the kept channel stays", FILLER_PERSON, KEPT_CHANNEL))
    kept = (await server.post("/api/cm/episodes/add", {"episodes": filler}))["uids"]
    fact = {
        "org_id": ORG,
        "project_id": project,
        "subject": PERSON,
        "produced_for": CHANNEL,
        "feature": "launch_code",
        "value": f"{MARKER} is the code",
        "citations": secret[:2],
    }
    await server.post("/api/cm/facts/add", {"fact": fact})
    assert (await server.post("/api/cm/index/wait", {"timeout": 280}))["done"]
    stored = await server.post(
        "/api/cm/episodes/get", {"org_id": ORG, "project_id": project, "uids": secret}
    )
    embedder = DenseEmbedder()
    vectors = {
        f"vector of {e['uid']}": embedder.embed([embed_text(Episode(**e))])[0] for e in stored
    }
    return Seeded(secret, vectors, kept)


Action = Callable[[Server, Seeded], Awaitable[None]]
TEXT = {"text": MARKER.encode(), "text (FTS tail)": TAIL.encode()}


async def v2_episodic_delete(server: Server, seeded: Seeded) -> None:
    body = {"org_id": ORG, "project_id": PROJECT, "episodic_ids": seeded.secret}
    await server.post("/api/v2/memories/episodic/delete", body)


async def forget_producer(server: Server, seeded: Seeded) -> None:
    report = await server.post("/api/cm/forget", {"org_id": ORG, "producer": PERSON})
    assert report["episodes"] == len(seeded.secret)


async def forget_channel(server: Server, seeded: Seeded) -> None:
    body = {"org_id": ORG, "project_id": PROJECT, "produced_for": CHANNEL}
    report = await server.post("/api/cm/forget", body)
    assert report["episodes"] == len(seeded.secret) + FILLER


async def delete_project(server: Server, seeded: Seeded) -> None:
    await server.post("/api/v2/projects/delete", {"org_id": ORG, "project_id": DOOMED_PROJECT})


async def edit(server: Server, seeded: Seeded) -> None:
    for uid in seeded.secret:
        body = {"uid": uid, "org_id": ORG, "project_id": PROJECT, "content": "nothing to see"}
        assert (await server.post("/api/cm/episodes/edit", body))["episode"] is not None


#: name: (action, the project of the secret messages, what must leave every file besides
#: the secret messages' vectors)
ACTIONS: dict[str, tuple[Action, str, dict[str, bytes]]] = {
    "v2 episodic delete": (v2_episodic_delete, PROJECT, TEXT),
    "forget producer": (forget_producer, PROJECT, {**TEXT, "producer name": PERSON.encode()}),
    "forget channel": (
        forget_channel,
        PROJECT,
        {**TEXT, "channel name": CHANNEL.encode(), "filler text": b"routine status update"},
    ),
    "v2 project delete": (
        delete_project,
        DOOMED_PROJECT,
        {**TEXT, "project name": DOOMED_PROJECT.encode(), "filler text": b"routine status"},
    ),
    "edit": (edit, PROJECT, TEXT),
}


@pytest.mark.parametrize("name", list(ACTIONS))
async def test_forgotten_text_vectors_and_names_leave_every_file(tmp_path: Path, name: str) -> None:
    action, project, needles = ACTIONS[name]
    data_dir = tmp_path / "data"
    async with server_on(data_dir) as server:
        seeded = await seed(server, project)
        # The scan finds everything before, or it would prove nothing.
        before = scan(data_dir, needles, seeded.vectors)
        for label in [*needles, *seeded.vectors]:
            assert any(hit.endswith(f": {label}") for hit in before), f"{label} not on disk"
        assert any(hit.startswith("chroma/") for hit in before), "no vector in Chroma's files"
        # Chroma's files never name an org, project, channel or person, even while they exist
        # (collection names and vector metadata are keyed hashes).
        names = {n: n.encode() for n in (ORG, project, CHANNEL, KEPT_CHANNEL, PERSON)}
        assert scan(data_dir / "chroma", names) == []
        assert len(scan(data_dir, names)) >= len(names)  # they are in SQLite

        await action(server, seeded)
        # After the call returned, the server still running.
        assert scan(data_dir, needles, seeded.vectors) == []
        # Killed at once: nothing was left for a later step to clean up.
        await server.stop(signal.SIGKILL)
        assert scan(data_dir, needles, seeded.vectors) == []
        # Restarted (Chroma replays its queue), and stopped cleanly.
        await server.start()
        await check_still_works(server)
        assert scan(data_dir, needles, seeded.vectors) == []
        await server.stop(signal.SIGTERM)
    assert scan(data_dir, needles, seeded.vectors) == []


async def check_still_works(server: Server) -> None:
    scope = {"org_id": ORG, "project_id": PROJECT, "produced_for": KEPT_CHANNEL}
    for mode in ("keyword", "vector"):
        found = await server.post(
            "/api/cm/search", {"query": "the kept channel stays", "scope": scope, "mode": mode}
        )
        assert [h["episode"]["content"] for h in found["hits"]] == ["the kept channel stays"]
    assert (await server.post("/api/cm/index/wait", {"timeout": 120}))["done"]
