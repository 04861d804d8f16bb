"""``CHANNELMIND_DATABASE_URL`` as an operator sets it: unset is the embedded SQLite file in the
data folder; ``postgresql://...`` puts the records in PostgreSQL; a URL that cannot work stops
``channelmind serve`` and ``channelmind run`` with one line naming the setting and what to do,
exit status 2, and no password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from memory.store.postgres.cluster import TempCluster
from tests.conftest import GENERAL, ORG, PROJECT
from tests.postgres import psql
from tests.server_harness import ROOT, channelmind_serve, free_port

pytestmark = pytest.mark.timeout(120)

SECRET = "pw-s3cret-do-not-print"


def channelmind(*argv: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "CHANNELMIND_DATA_DIR": str(data_dir),
        "CHANNELMIND_EMBEDDER": "hash",
        "DISCORD_TOKEN": "not-used-the-memory-fails-first",
        **env,
    }
    for name in ("CHANNELMIND_API_KEYS", "SLACK_BOT_TOKEN", "CHANNELMIND_MEMORY_URL"):
        environ.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *argv], env=environ, cwd=ROOT, capture_output=True,
        text=True, timeout=90,
    )  # fmt: skip


def unreachable_url() -> str:
    return f"postgresql://alice:{SECRET}@127.0.0.1:{free_port()}/memory"


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["run", "--port", "0"]])
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://alice@db.example/memory", "is a mysql: URL"),
        ("postgresql://alice@127.0.0.1:notaport/memory", "is not a valid URL"),
        ("unreachable", "cannot reach PostgreSQL at 127.0.0.1"),
    ],
)
def test_a_bad_database_url_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str], url: str, says: str
) -> None:
    if url == "unreachable":
        url = unreachable_url()
    done = channelmind(*command, data_dir=tmp_path / "data", CHANNELMIND_DATABASE_URL=url)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "CHANNELMIND_DATABASE_URL" in lines[0] and says in lines[0]
    assert SECRET not in done.stderr + done.stdout


def test_a_missing_database_is_named(tmp_path: Path, pg_cluster: TempCluster) -> None:
    url = pg_cluster.url("no_such_db")
    done = channelmind(
        "serve", "--port", "0", data_dir=tmp_path / "data", CHANNELMIND_DATABASE_URL=url
    )
    assert done.returncode == 2
    assert "no such database" in done.stderr and "CHANNELMIND_DATABASE_URL" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def add_and_find(url: str, text: str) -> list[str]:
    """Add one message through REST API v2 and search for it; the contents found."""
    body = {
        "org_id": ORG,
        "project_id": PROJECT,
        "messages": [
            {"content": text, "producer": "alice", "produced_for": GENERAL, "role": "user"}
        ],
    }
    added = httpx.post(f"{url}/api/v2/memories", json=body, timeout=30)
    assert added.status_code == 200, added.text
    found = httpx.post(
        f"{url}/api/v2/memories/search",
        json={"org_id": ORG, "project_id": PROJECT, "query": "backup rotation", "top_k": 5},
        timeout=30,
    )
    assert found.status_code == 200, found.text
    episodes = found.json()["content"]["episodic_memory"]["long_term_memory"]["episodes"]
    return [e["content"] for e in episodes]


def test_serve_keeps_its_records_where_the_setting_says(
    tmp_path: Path, pg_url: str, pg_cluster: TempCluster
) -> None:
    """With the URL set, the records are in PostgreSQL and not in the data folder; unset,
    they are in ``memory.sqlite3`` in the data folder, as before."""
    on_pg = tmp_path / "pg-data"
    with channelmind_serve(on_pg, CHANNELMIND_DATABASE_URL=pg_url) as (_, url):
        assert add_and_find(url, "backup rotation moved to fridays") == [
            "backup rotation moved to fridays"
        ]
    database = pg_url.rsplit("/", 1)[1]
    assert psql(pg_cluster, "SELECT content FROM episodes", database) == (
        "backup rotation moved to fridays"
    )
    assert not (on_pg / "memory.sqlite3").exists()

    embedded = tmp_path / "embedded"
    with channelmind_serve(embedded) as (_, url):
        assert add_and_find(url, "backup rotation moved to mondays") == [
            "backup rotation moved to mondays"
        ]
    assert b"backup rotation moved to mondays" in (embedded / "memory.sqlite3").read_bytes()
    assert psql(pg_cluster, "SELECT count(*) FROM episodes", database) == "1"
