"""Issue 9, item 10: two processes on one data folder.

One process owns an embedded data folder. A command that finds it owned by a running server
(``channelmind serve``, or ``channelmind run``, which records its URL once it listens) works
through that server's API: nothing opens the folder a second time, so the server's search by
meaning keeps working and sees what the command did. A command that finds it owned by a process
that does not serve, and ``run`` or ``serve`` beside a server, stop with one line naming the
owner and what to do. Everything here is the CLI as a subprocess beside a real server process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from memory.folder import read_owner
from tests.fakes.slack.server import FakeSlack
from tests.polling import eventually

from .processes import (
    channelmind,
    command,
    environment,
    one_line,
    serving,
    slack_environment,
    started,
    stop,
)

pytestmark = pytest.mark.timeout(600)

SCRIPT = """\
alice: the deploy key is in the blue vault
bob: where is the deploy key?
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def served(data_dir: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with serving(data_dir, tmp_path) as (process, url):
        yield process, url


def stats(url: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{url}/api/cm/stats", timeout=30).json()
    return found


def test_commands_on_a_served_folder_work_through_the_server(
    data_dir: Path, tmp_path: Path, served: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, url = served
    env = environment(data_dir)

    def cli(*args: str) -> str:
        result = channelmind(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    script = tmp_path / "script.txt"
    script.write_text(SCRIPT, encoding="utf-8")
    out = cli("chat", "--script", str(script))
    assert "[1] alice" in out and "the deploy key is in the blue vault" in out
    # The server holds what the chat said (the question and the bot's answer too).
    assert stats(url)["episodes"] == 4

    out = cli("recall", "deploy", "key")
    assert "alice: the deploy key is in the blue vault" in out
    exported = json.loads(cli("export", "--channel", "general"))
    assert "the deploy key is in the blue vault" in [e["content"] for e in exported["episodes"]]
    assert json.loads(cli("stats", "--json")) == stats(url)

    out = cli("reindex")
    assert out.strip() == (
        f"reindexed 4 messages with hash:384:v1, inside the memory server at {url}"
    )
    after = stats(url)
    assert (after["episodes"], after["vectors"], after["pending_index"]) == (4, 4, 0)
    body = {
        "query": "deploy key",
        "scope": {"org_id": "console:local", "project_id": "channelmind"},
        "mode": "vector",
    }
    hits = httpx.post(f"{url}/api/cm/search", json=body, timeout=30).json()["hits"]
    assert hits, "search by meaning still works in the server after the reindex"

    assert cli("forget", "--channel", "general").startswith("forgot ")
    assert stats(url)["episodes"] == 0

    # Throughout, the server kept the folder: no command took it over.
    owner = read_owner(data_dir)
    assert owner is not None and (owner.pid, owner.url) == (process.pid, url)


async def test_mcp_stdio_beside_a_server_relays_the_tools_with_the_pinned_identity(
    data_dir: Path, tmp_path: Path, served: tuple[subprocess.Popen[bytes], str]
) -> None:
    _, url = served
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "bot.cli", "mcp-stdio"],
        env=environment(data_dir, MM_USER_ID="alice"),
        cwd=str(tmp_path),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        names = {t.name for t in (await session.list_tools()).tools}
        assert names == {"add_memory", "search_memory", "delete_memory", "recall_channel"}
        added = await session.call_tool("add_memory", {"content": "alice drinks green tea"})
        assert added.structuredContent == {"status": 200, "message": "Success"}
        found = await session.call_tool("search_memory", {"query": "green tea"})
        assert found.structuredContent is not None
        episodes = found.structuredContent["content"]["episodic_memory"]["long_term_memory"]
        assert [e["content"] for e in episodes["episodes"]] == ["alice drinks green tea"]
        # MM_USER_ID pins the identity through the relay as over stdio.
        other = await session.call_tool("search_memory", {"query": "tea", "user_id": "bob"})
        assert other.structuredContent is not None
        assert other.structuredContent["status"] == 403

    # It is in the server's memory, in alice's project.
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = {"org_id": "mcp-universal", "project_id": "mcp-alice", "type": "episodic"}
        listed = (await http.post("/api/v2/memories/list", json=body)).json()
    assert [e["content"] for e in listed["content"]["episodic_memory"]] == [
        "alice drinks green tea"
    ]


def test_a_folder_owned_by_a_process_that_does_not_serve_stops_commands(
    data_dir: Path, tmp_path: Path
) -> None:
    """``mcp-stdio`` on a free folder owns it without serving it: a command beside it can
    neither open the folder nor reach an API, and says so in one line."""
    owner = subprocess.Popen(
        command("mcp-stdio"),
        env=environment(data_dir),
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(1200):  # a start-up guard, not a timing
            found = read_owner(data_dir)
            if found is not None and found.pid == owner.pid:
                break
            assert owner.poll() is None, "mcp-stdio exited"
            time.sleep(0.1)
        env = environment(data_dir)
        for args in (["stats"], ["recall", "anything"], ["reindex"], ["export", "--user", "a"]):
            line = one_line(channelmind(*args, env=env, cwd=tmp_path))
            assert line == (
                f"channelmind {args[0]}: data folder {data_dir} is in use by process"
                f" {owner.pid}, which does not serve the memory API; stop it first, or run"
                " `channelmind serve` on the folder (commands then work through it)"
            )
    finally:
        assert owner.stdin is not None
        owner.stdin.close()  # end of input: mcp-stdio ends
        owner.wait(60)


def test_run_and_serve_beside_a_server_say_what_to_do(
    data_dir: Path, tmp_path: Path, served: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, url = served
    env = environment(data_dir, SLACK_BOT_TOKEN="xoxb-fake", SLACK_APP_TOKEN="xapp-1-fake")
    line = one_line(channelmind("run", "--port", "0", env=env, cwd=tmp_path))
    assert line == (
        f"channelmind run: data folder {data_dir} is in use by process {process.pid} (serving"
        f" {url}); stop it, or set CHANNELMIND_MEMORY_URL={url} to run the bot on that server"
    )
    line = one_line(channelmind("serve", "--port", "0", env=env, cwd=tmp_path))
    assert line == (
        f"channelmind serve: data folder {data_dir} is in use by process {process.pid}"
        f" (serving {url}); stop it first (one process serves a data folder)"
    )


def test_a_key_the_owner_refuses_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    with serving(data_dir, tmp_path, CHANNELMIND_API_KEYS="right-key:*") as (_, url):
        for key in ("", "wrong-key"):
            env = environment(data_dir, CHANNELMIND_MEMORY_API_KEY=key)
            line = one_line(channelmind("stats", env=env, cwd=tmp_path))
            assert line == (
                f"channelmind stats: the memory server at {url} refused the key (401); set"
                " CHANNELMIND_MEMORY_API_KEY to one of its CHANNELMIND_API_KEYS"
            )
        # Control: its key is taken.
        env = environment(data_dir, CHANNELMIND_MEMORY_API_KEY="right-key")
        result = channelmind("stats", "--json", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout)["episodes"] == 0


async def test_run_records_its_url_so_that_commands_go_through_it(
    data_dir: Path, tmp_path: Path
) -> None:
    async with FakeSlack() as fake:
        env = slack_environment(data_dir, fake.api_url)
        run = await started("run", "--port", "0", env=env, cwd=tmp_path)
        try:
            await fake.wait_connected(timeout=120)
            owner = await eventually(lambda: _serving_owner(data_dir, run.pid), within=120)
            stats_run = await started(
                "stats", "--json", env=environment(data_dir), cwd=tmp_path, capture=True
            )
            out, err = await stats_run.communicate()
            assert stats_run.returncode == 0, err.decode()[-3000:]
            assert json.loads(out)["episodes"] == 0
            assert read_owner(data_dir) == owner  # still run's
        finally:
            if run.returncode is None:
                run.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(run.wait(), 60) == 0
    assert read_owner(data_dir) is None


def _serving_owner(data_dir: Path, pid: int) -> Any:
    owner = read_owner(data_dir)
    ok = owner is not None and owner.pid == pid and owner.url is not None
    return owner if ok else None


def test_serve_records_the_port_it_was_given_by_the_kernel(data_dir: Path, tmp_path: Path) -> None:
    """``serve --port 0`` used to record no URL (the port was not known in the app): now the
    bound port is recorded, so commands find it (:func:`serving` waits for exactly that)."""
    with serving(data_dir, tmp_path) as (process, url):
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert os.path.exists(data_dir / "channelmind.lock")
        status = stop(process)
    assert status == 0
    assert read_owner(data_dir) is None
