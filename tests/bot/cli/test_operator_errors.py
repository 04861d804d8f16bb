"""Issue 9, items 11 and 12: an operator's mistake (a bad setting, a service that cannot be
reached, a read-only data folder) is one line naming the setting or the service and what to
do, with exit status 2: never a traceback (unless ``--debug`` asks for it), never a hang.
Each is the CLI as a subprocess, checked for its exit status and its exact line."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.openai.server import FakeOpenAI
from tests.fakes.slack.server import FakeSlack

from .processes import (
    channelmind,
    environment,
    one_line,
    read_only,
    slack_environment,
    started,
)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound and closed: the kernel will not hand it out
    again at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


def run(tmp_path: Path, data_dir: Path, *args: str, **env: str) -> str:
    return one_line(channelmind(*args, env=environment(data_dir, **env), cwd=tmp_path))


def check(line: str, pattern: str) -> None:
    """``line`` is exactly ``pattern``, where ``{reason}`` stands for the library's own words
    about a failed connection or file (everything else is ours, and exact)."""
    parts = [re.escape(p) for p in pattern.split("{reason}")]
    assert re.fullmatch(".+".join(parts), line), line


SLACK = {"SLACK_BOT_TOKEN": "xoxb-fake", "SLACK_APP_TOKEN": "xapp-1-fake"}


def test_an_unknown_embedder_is_one_line_from_every_command(tmp_path: Path, data_dir: Path) -> None:
    script = tmp_path / "script.txt"
    script.write_text("alice: hello\n", encoding="utf-8")
    for args in (
        ["config"],
        ["stats"],
        ["chat", "--script", str(script)],
        ["serve", "--port", "0"],
        ["run", "--port", "0"],
        ["mcp-stdio"],
        ["reindex"],
    ):
        line = run(tmp_path, data_dir, *args, CHANNELMIND_EMBEDDER="bogus", **SLACK)
        assert line == (
            f"channelmind {args[0]}: bad setting CHANNELMIND_EMBEDDER: Input should be 'local',"
            " 'openai' or 'hash'"
        )
    assert not data_dir.exists()  # nothing was opened


def test_an_unknown_event_loop_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    for cmd in ("serve", "run"):
        line = run(tmp_path, data_dir, cmd, "--port", "0", CHANNELMIND_EVENT_LOOP="uvlop", **SLACK)
        assert line == (
            f"channelmind {cmd}: bad setting CHANNELMIND_EVENT_LOOP: Input should be 'uvloop'"
            " or 'asyncio'"
        )
    assert not data_dir.exists()


def test_the_openai_embedder_without_a_key_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    for cmd in ("stats", "serve"):
        line = run(tmp_path, data_dir, cmd, CHANNELMIND_EMBEDDER="openai")
        assert line == (
            f"channelmind {cmd}: CHANNELMIND_EMBEDDER=openai needs OPENAI_API_KEY for"
            " OpenAI's endpoint (or OPENAI_BASE_URL for a server that needs no key); set it,"
            " or use CHANNELMIND_EMBEDDER=local"
        )


def test_the_openai_embedder_unreachable_is_one_line(
    tmp_path: Path, data_dir: Path, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}/v1"
    line = run(
        tmp_path,
        data_dir,
        "stats",
        CHANNELMIND_EMBEDDER="openai",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=url,
    )
    check(
        line,
        f"channelmind stats: CHANNELMIND_EMBEDDER=openai: cannot reach the embeddings endpoint"
        f" at {url} {{reason}}; check OPENAI_BASE_URL and the network, or use"
        " CHANNELMIND_EMBEDDER=local",
    )


def test_the_openai_embedder_refusing_the_key_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    with FakeOpenAI.in_thread(require_key="sk-right") as fake:
        env = {"CHANNELMIND_EMBEDDER": "openai", "OPENAI_BASE_URL": fake.base_url}
        line = run(tmp_path, data_dir, "stats", OPENAI_API_KEY="sk-wrong", **env)
        assert line == (
            f"channelmind stats: CHANNELMIND_EMBEDDER=openai: {fake.base_url} refused"
            " OPENAI_API_KEY (401); set a key it accepts"
        )
        # Control: the key it takes.
        result = channelmind(
            "stats", env=environment(data_dir, OPENAI_API_KEY="sk-right", **env), cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "openai:text-embedding-3-small:384" in result.stdout


def test_a_missing_local_model_folder_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    missing = tmp_path / "no-model-here"
    line = run(
        tmp_path,
        data_dir,
        "stats",
        CHANNELMIND_EMBEDDER="local",
        CHANNELMIND_EMBEDDING_MODEL=str(missing),
    )
    assert line == (
        f"channelmind stats: CHANNELMIND_EMBEDDER=local: the embedder cannot start: embedding"
        f" model directory {missing} does not exist; set CHANNELMIND_EMBEDDING_MODEL to a"
        " sentence-transformers model folder"
    )


def test_an_unreachable_chroma_server_is_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, data_dir: Path, closed_port: int
) -> None:
    chroma = f"http://127.0.0.1:{closed_port}"
    for cmd in ("stats", "serve"):
        line = run(tmp_path, data_dir, cmd, CHANNELMIND_CHROMA_URL=chroma)
        check(
            line,
            f"channelmind {cmd}: cannot reach the Chroma server at 127.0.0.1:{closed_port}"
            " (CHANNELMIND_CHROMA_URL): {reason}; start it (`chroma run`) or correct"
            " CHANNELMIND_CHROMA_URL",
        )
    debug = channelmind(
        "--debug", "stats", env=environment(data_dir, CHANNELMIND_CHROMA_URL=chroma), cwd=tmp_path
    )
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "StoreUnavailable" in debug.stderr


def test_an_unreachable_memory_server_is_one_line(
    tmp_path: Path, data_dir: Path, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    for args in (["recall", "anything"], ["stats"], ["run", "--port", "0"]):
        line = run(tmp_path, data_dir, *args, CHANNELMIND_MEMORY_URL=url, **SLACK)
        check(
            line,
            f"channelmind {args[0]}: cannot reach the memory server at {url}"
            " (CHANNELMIND_MEMORY_URL): {reason}; start it, or correct or unset"
            " CHANNELMIND_MEMORY_URL",
        )


def test_slack_unreachable_at_run_is_one_line(
    tmp_path: Path, data_dir: Path, closed_port: int
) -> None:
    api = f"http://127.0.0.1:{closed_port}/api/"
    line = run(tmp_path, data_dir, "run", "--port", "0", SLACK_API_URL=api, **SLACK)
    check(
        line,
        f"channelmind run: Slack: cannot reach {api} {{reason}}; check the network, or"
        " SLACK_API_URL if it is set",
    )


async def test_a_bad_slack_token_at_run_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    async with FakeSlack() as fake:
        env = slack_environment(data_dir, fake.api_url, bot_token="not-a-bot-token")
        process = await started("run", "--port", "0", env=env, cwd=tmp_path, capture=True)
        out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode is not None
    result = subprocess.CompletedProcess([], process.returncode, out.decode(), err.decode())
    assert one_line(result) == (
        "channelmind run: Slack: SLACK_BOT_TOKEN was refused: invalid_auth (a bot token starts"
        " with xoxb-)"
    )


def test_a_busy_port_and_bad_api_keys_are_one_line_for_serve(
    tmp_path: Path, data_dir: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = run(tmp_path, data_dir, "serve", "--port", str(port))
    assert line == f"channelmind serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    line = run(tmp_path, data_dir, "serve", "--port", "0", CHANNELMIND_API_KEYS="no-orgs-here")
    assert line == (
        "channelmind serve: CHANNELMIND_API_KEYS entry #1 must look like KEY:ORG[|ORG...] or KEY:*"
    )


def test_a_read_only_data_folder_is_one_line_never_a_hang(tmp_path: Path, data_dir: Path) -> None:
    script = tmp_path / "script.txt"
    script.write_text("alice: written while the folder could be written\n", encoding="utf-8")
    env = environment(data_dir, **SLACK)
    made = channelmind("chat", "--script", str(script), env=env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]  # the control: writable, it works

    with read_only(data_dir):
        for args in (
            ["chat", "--script", str(script)],
            ["stats"],
            ["serve", "--port", "0"],
            ["run", "--port", "0"],
        ):
            try:
                result = channelmind(*args, env=env, cwd=tmp_path, read_only=data_dir)
            except subprocess.TimeoutExpired:  # the old behaviour: it never exited
                pytest.fail(f"channelmind {args[0]} hung on a read-only folder")
            check(
                one_line(result),
                f"channelmind {args[0]}: data folder {data_dir} is not writable {{reason}};"
                " make it writable or set CHANNELMIND_DATA_DIR to a folder this user can write",
            )
