"""``channelmind migrate --to postgresql://...`` as an operator runs it: the CLI as a
subprocess, an embedded data folder written by the engine, a throwaway PostgreSQL cluster,
and ``channelmind serve`` on the migrated memory answering searches through REST API v2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from memory.embedders import OnnxEmbedder, default_backend
from memory.engine import MemoryEngine
from memory.folder import FolderLock
from memory.model import Fact
from memory.store.postgres.cluster import TempCluster
from memory.store.sqlite.store import uid_key, uid_of
from tests.conftest import ALICE, BOB, GENERAL, ORG, PROJECT, RANDOM, at, episode
from tests.postgres import psql
from tests.server_harness import ROOT, channelmind_serve, free_port

pytestmark = pytest.mark.timeout(300)

SECRET = "pw-s3cret-do-not-print"
YEAR_10000 = 253402300800.0  # a stored time no record can hold: the row is unreadable


def migrate(*argv: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        migrate_argv(*argv, data_dir=data_dir), env=environ(**env), cwd=ROOT,
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def migrate_argv(*argv: str, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bot.cli", "migrate", "--data-dir", str(data_dir), *argv]


def environ(**env: str) -> dict[str, str]:
    values = {**os.environ, "CHANNELMIND_EMBEDDER": "hash", **env}
    for name in (
        "CHANNELMIND_DATABASE_URL",
        "CHANNELMIND_CHROMA_URL",
        "CHANNELMIND_DATA_DIR",
        "CHANNELMIND_EMBEDDER_BACKEND",
    ):
        values.pop(name, None)
    return values


async def fill(folder: Path, messages: int = 40) -> list[str]:
    """An embedded folder as `serve` leaves it: messages in two channels (some threaded) of
    two projects, a superseded fact, settings, a described project, everything indexed; and
    one message made unreadable afterwards (set aside on reading). Returns the uids."""
    engine = await MemoryEngine.open(folder, "hash")
    try:
        await engine.store.create_project(ORG, "alpha", "the alpha team", {"lang": "en"})
        uids = await engine.add(
            [
                episode(
                    f"status note {i} about the ticket queue",
                    produced_for=GENERAL if i % 2 else RANDOM,
                    producer=ALICE if i % 3 else BOB,
                    thread_id="1700000000.000001" if i % 5 == 0 else None,
                    metadata={"name": "Alice" if i % 3 else "Bob", "n": i},
                    created_at=at(i),
                )
                for i in range(messages)
            ]
            + [
                episode("the backup rotation moved to fridays", created_at=at(messages + 1)),
                episode("quarterly budget review is on tuesday", created_at=at(messages + 2)),
                episode("alpha launches the café menu", project_id="alpha", created_at=at(1)),
                episode("this one becomes unreadable", created_at=at(messages + 3)),
            ]
        )
        tea = await engine.store.add_fact(
            Fact(org_id=ORG, project_id=PROJECT, subject=ALICE, feature="drink", value="tea",
                 citations=[uids[1]], created_at=at(2))
        )  # fmt: skip
        coffee = await engine.store.add_fact(
            Fact(org_id=ORG, project_id=PROJECT, subject=ALICE, feature="drink", value="coffee",
                 citations=[uids[4], uids[7]], created_at=at(8))
        )  # fmt: skip
        assert await engine.store.supersede_fact(ORG, PROJECT, tea, coffee, at(8))
        await engine.store.set_setting(ORG, PROJECT, BOB, "opt_out", "1")
        await engine.store.set_setting(ORG, PROJECT, GENERAL, "notice", "2025-03-01")
        await engine.wait_indexed(120)
    finally:
        await engine.close()
    with closing(sqlite3.connect(folder / "memory.sqlite3")) as db, db:
        db.execute(
            "UPDATE episodes SET created_at = ? WHERE uid = ?", (YEAR_10000, uid_key(uids[-1]))
        )
    return uids


async def one_message(folder: Path) -> None:
    async with await MemoryEngine.open(folder, "hash") as engine:
        await engine.add([episode(f"a message in {folder.name}")])


def search(url: str, query: str, project: str = PROJECT) -> tuple[list[str], list[str]]:
    """The top message (uid and content) and the facts a REST v2 search answers."""
    found = httpx.post(
        f"{url}/api/v2/memories/search",
        json={"org_id": ORG, "project_id": project, "query": query, "top_k": 5},
        timeout=60,
    )
    assert found.status_code == 200, found.text
    content = found.json()["content"]
    episodes = content["episodic_memory"]["long_term_memory"]["episodes"]
    facts = sorted(json.dumps(f, sort_keys=True) for f in content.get("semantic_memory") or [])
    return [episodes[0]["uid"], episodes[0]["content"]], facts


QUERIES = [
    ("backup rotation", PROJECT),
    ("budget review tuesday", PROJECT),
    ("what does alice drink", PROJECT),
    ("cafe menu", "alpha"),
]


#: Stored times (epoch seconds), printed alike by both databases.
PG_TIME, SQLITE_TIME = "round(created_at::numeric, 6)", "printf('%.6f', created_at)"
READABLE = f"created_at < {YEAR_10000}"
#: SQLite's rows with their org and project ids (a row names them by a key, schema 7).
SQLITE_EPISODES = "episodes JOIN scopes ON scopes.key = episodes.project_key"


def rows(cluster: TempCluster, database: str, sql: str) -> list[str]:
    return sorted(psql(cluster, sql, database).splitlines())


def sqlite_rows(folder: Path, sql: str) -> list[str]:
    """Rows as text; a uid the file keeps as 16 bytes as the uid it stands for."""

    def text(v: object) -> str:
        return "" if v is None else uid_of(v) if isinstance(v, bytes) else str(v)

    with closing(sqlite3.connect(folder / "memory.sqlite3")) as db:
        return sorted("|".join(text(v) for v in r) for r in db.execute(sql))


def test_the_migrated_memory_answers_the_same_searches(
    tmp_path: Path, pg_url: str, pg_cluster: TempCluster
) -> None:
    folder = tmp_path / "data"
    uids = asyncio.run(fill(folder))
    with channelmind_serve(folder) as (_, url):
        before = [search(url, q, p) for q, p in QUERIES]
    assert before[0][0][1] == "the backup rotation moved to fridays"

    done = migrate("--to", pg_url, "--chroma-url", "embedded", data_dir=folder)
    assert done.returncode == 0, done.stderr
    assert "episodes: 43 copied" in done.stdout and "facts: 2 copied" in done.stdout
    assert "counts match" in done.stdout
    assert f"{ORG}/{PROJECT}" in done.stdout and "unreadable, not copied: 1 episodes" in done.stdout
    # The folder's own index already holds every vector, under the naming key carried over.
    assert "vectors: 43 kept from" in done.stdout and "0 messages embedded" in done.stdout

    with channelmind_serve(folder, CHANNELMIND_DATABASE_URL=pg_url) as (_, url):
        after = [search(url, q, p) for q, p in QUERIES]
    assert after == before

    database = pg_url.rsplit("/", 1)[1]
    columns = "uid, org_id, project_id, producer, produced_for, platform, source_id, thread_id"
    copied = rows(pg_cluster, database, f"SELECT {columns}, {PG_TIME} FROM episodes")
    source = sqlite_rows(folder, f"SELECT {columns}, {SQLITE_TIME} FROM {SQLITE_EPISODES}")
    assert len(copied) == 43 and set(copied) <= set(source)
    assert uids[-1] not in "".join(copied)  # the unreadable row stayed behind
    assert rows(pg_cluster, database, "SELECT * FROM settings") == sqlite_rows(
        folder, "SELECT * FROM settings"
    )
    assert rows(pg_cluster, database, "SELECT uid, superseded_by FROM facts") == sqlite_rows(
        folder, "SELECT uid, superseded_by FROM facts"
    )
    assert psql(
        pg_cluster, "SELECT description FROM projects WHERE project_id = 'alpha'", database
    ) == ("the alpha team")
    assert psql(pg_cluster, "SELECT count(*) FROM episodes WHERE index_state = 0", database) == "0"
    # The vectors kept hold the folder's 8-character tokens: the target is told so.
    token_chars = "SELECT value FROM cm_meta WHERE key = 'index_token_chars'"
    assert psql(pg_cluster, token_chars, database) == "8"

    again = migrate("--to", pg_url, "--chroma-url", "embedded", data_dir=folder)
    assert again.returncode == 0, again.stderr
    assert "nothing to copy" in again.stdout and "counts match" in again.stdout


def test_a_folder_keeps_its_local_backend_when_none_is_set(
    tmp_path: Path, pg_url: str, pg_cluster: TempCluster
) -> None:
    """CHANNELMIND_EMBEDDER=local, no backend set: a folder indexed with the local backend that
    is not the default here (float32 onnx from before int8 became the default on VNNI) is
    migrated with its own backend, as `serve` runs it: its vectors kept, none embedded again."""
    folder = tmp_path / "data"
    written = OnnxEmbedder(int8=default_backend() == "onnx")

    async def write() -> None:
        async with await MemoryEngine.open(folder, written) as engine:
            await engine.add([episode(f"note {i} about the release train") for i in range(3)])
            await engine.wait_indexed()

    asyncio.run(write())
    done = migrate(
        "--to", pg_url, "--chroma-url", "embedded", data_dir=folder, CHANNELMIND_EMBEDDER="local"
    )
    assert done.returncode == 0, done.stderr
    assert "vectors: 3 kept from" in done.stdout and "0 messages embedded" in done.stdout
    stored = psql(
        pg_cluster, "SELECT value FROM cm_meta WHERE key = 'embedder'", pg_url.rsplit("/", 1)[1]
    )
    assert stored == written.fingerprint


def test_into_a_chroma_server_the_messages_are_embedded_again(
    tmp_path: Path, pg_url: str, chroma_url: str
) -> None:
    folder = tmp_path / "data"
    asyncio.run(fill(folder))
    with channelmind_serve(folder) as (_, url):
        before = [search(url, q, p) for q, p in QUERIES]

    done = migrate("--to", pg_url, "--chroma-url", chroma_url, data_dir=folder)
    assert done.returncode == 0, done.stderr
    assert "vectors: 0 kept from the Chroma server" in done.stdout
    assert "43 messages embedded into it" in done.stdout and "counts match" in done.stdout
    assert "43 vectors in the Chroma server" in done.stdout

    # A replica with a folder of its own: everything it answers is in PostgreSQL and Chroma.
    replica = {"CHANNELMIND_DATABASE_URL": pg_url, "CHANNELMIND_CHROMA_URL": chroma_url}
    with channelmind_serve(tmp_path / "replica", **replica) as (_, url):
        assert [search(url, q, p) for q, p in QUERIES] == before


def test_a_run_killed_mid_copy_is_finished_by_the_next(
    tmp_path: Path, pg_url: str, pg_cluster: TempCluster
) -> None:
    folder = tmp_path / "data"
    asyncio.run(fill(folder, messages=3000))
    database = pg_url.rsplit("/", 1)[1]
    process = subprocess.Popen(
        migrate_argv("--to", pg_url, "--batch", "10", "--quiet", data_dir=folder),
        env=environ(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        count = 0
        while count == 0 and process.poll() is None:  # until the copy of episodes has begun
            try:
                count = int(psql(pg_cluster, "SELECT count(*) FROM episodes", database))
            except subprocess.CalledProcessError:  # the schema is not there yet
                pass
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    interrupted = int(psql(pg_cluster, "SELECT count(*) FROM episodes", database))
    assert 0 < interrupted < 3003, "the kill did not land inside the copy of episodes"

    done = migrate("--to", pg_url, data_dir=folder)
    assert done.returncode == 0, done.stderr
    assert f"episodes: {3003 - interrupted} copied, {interrupted} already" in done.stdout
    assert "counts match" in done.stdout
    columns = "uid, org_id, project_id, producer, produced_for, role, content, platform,"
    columns += " source_id, thread_id, episode_type"
    assert rows(pg_cluster, database, f"SELECT {columns}, {PG_TIME} FROM episodes") == (
        sqlite_rows(
            folder, f"SELECT {columns}, {SQLITE_TIME} FROM {SQLITE_EPISODES} WHERE {READABLE}"
        )
    )
    assert psql(pg_cluster, "SELECT count(*) FROM episodes WHERE index_state = 0", database) == "0"

    again = migrate("--to", pg_url, data_dir=folder)
    assert again.returncode == 0 and "nothing to copy" in again.stdout, again.stderr


def test_a_row_the_target_refuses_is_named_and_the_rest_is_copied(
    tmp_path: Path, pg_url: str
) -> None:
    folder = tmp_path / "data"

    async def write() -> None:
        engine = await MemoryEngine.open(folder, "hash")
        try:  # SQLite keeps a NUL inside metadata; PostgreSQL's jsonb cannot hold it
            await engine.add([episode("fine one"), episode("odd one", metadata={"k": "a\x00b"})])
            await engine.add([episode("fine two")])
        finally:
            await engine.close()

    asyncio.run(write())
    done = migrate("--to", pg_url, data_dir=folder)
    assert done.returncode == 1
    assert "episodes: 2 copied" in done.stdout
    assert "refused episode" in done.stderr and "NUL" in done.stderr
    assert f"counts differ: {ORG}/{PROJECT}: episodes 3 in the source, 2 in the target" in (
        done.stderr
    )


def unreachable() -> str:
    return f"postgresql://alice:{SECRET}@127.0.0.1:{free_port()}/memory"


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("mysql", "--to is a mysql: URL"),
        ("bad port", "--to is not a valid URL"),
        ("unreachable", "cannot reach PostgreSQL at 127.0.0.1"),
        ("no folder", "no embedded memory in"),
        ("owned", "is in use by process"),
        ("chroma", "cannot reach the Chroma server"),
        ("embedder", "was indexed with the embedder"),
    ],
)
def test_operator_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, pg_url: str, pg_cluster: TempCluster, case: str, says: str
) -> None:
    folder = tmp_path / "data"
    argv = ["--to", pg_url]
    env: dict[str, str] = {}
    if case != "no folder":
        asyncio.run(one_message(folder))
    lock = FolderLock.acquire(folder) if case == "owned" else None
    try:
        if case == "mysql":
            argv = ["--to", f"mysql://alice:{SECRET}@db.example/memory"]
        elif case == "bad port":
            argv = ["--to", f"postgresql://alice:{SECRET}@127.0.0.1:notaport/memory"]
        elif case == "unreachable":
            argv = ["--to", unreachable()]
        elif case == "chroma":
            argv += ["--chroma-url", f"http://127.0.0.1:{free_port()}"]
        elif case == "embedder":  # the folder was indexed with another model
            with closing(sqlite3.connect(folder / "memory.sqlite3")) as db, db:
                db.execute("UPDATE meta SET value = 'local:other:384' WHERE key = 'embedder'")
        done = migrate(*argv, data_dir=folder, **env)
    finally:
        if lock is not None:
            lock.release()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert SECRET not in done.stderr + done.stdout
    tables = "SELECT count(*) FROM pg_tables WHERE tablename = 'episodes'"
    assert psql(pg_cluster, tables, pg_url.rsplit("/", 1)[1]) == "0"  # nothing was set up


def test_a_target_holding_another_memory_is_refused(tmp_path: Path, pg_url: str) -> None:
    for name in ("one", "two"):
        asyncio.run(one_message(tmp_path / name))
    assert migrate("--to", pg_url, data_dir=tmp_path / "one").returncode == 0
    done = migrate("--to", pg_url, data_dir=tmp_path / "two")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "already holds a memory that was not copied from" in lines[0]
