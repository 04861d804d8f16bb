"""``channelmind`` as a user runs it: a subprocess in a clean environment (no platform tokens,
no LLM, no .env), on a data folder of the test's own, with the hashing embedder.

:func:`one_line` is what an expected failure must print: exit status 2, no traceback, and
exactly one line besides the log lines ``run`` and ``serve`` write while they start.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from memory.folder import read_owner

#: Variables a test environment must not inherit: every one is chosen by the test.
INHERITED = ("CHANNELMIND_", "SLACK_", "DISCORD_", "OPENAI_", "MM_")
#: The log lines of ``run`` and ``serve`` (logging's format, and uvicorn's own).
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ |INFO: |WARNING: )")


def environment(data_dir: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED)}
    env.update(CHANNELMIND_DATA_DIR=str(data_dir), CHANNELMIND_EMBEDDER="hash")
    env.update(values)
    return env


def slack_environment(data_dir: Path, api_url: str, bot_token: str = "xoxb-fake") -> dict[str, str]:
    """:func:`environment` for ``run`` in Socket Mode against the fake Slack at ``api_url``."""
    return environment(
        data_dir, SLACK_BOT_TOKEN=bot_token, SLACK_APP_TOKEN="xapp-1-fake", SLACK_API_URL=api_url
    )


async def started(
    *args: str, env: Mapping[str, str], cwd: Path, capture: bool = False
) -> asyncio.subprocess.Process:
    """``channelmind ARGS`` running beside the test's event loop (where a fake server runs);
    its output discarded unless ``capture``."""
    out = asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        *command(*args), env=dict(env), cwd=cwd, stdout=out, stderr=out
    )


def command(*args: str, read_only: Path | None = None) -> list[str]:
    """``python -m bot.cli ARGS``; with ``read_only``, that folder is mounted read-only for it
    when we are root (permission bits do not stop root; a read-only bind mount in a user and
    mount namespace of its own does). Without root, see :func:`read_only`."""
    argv = [sys.executable, "-m", "bot.cli", *args]
    if read_only is None or os.geteuid() != 0:
        return argv
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a folder read-only")
    mount = f"mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only}"
    return ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$@"', "sh", *argv]


@contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` read-only for the commands run inside the block: by permissions when we
    are not root (as root, :func:`command` mounts it read-only)."""
    paths = [folder, *folder.rglob("*")]
    if os.geteuid() != 0:
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield folder
    finally:
        for p in paths:
            p.chmod(0o755 if p.is_dir() else 0o644)


def channelmind(
    *args: str,
    env: Mapping[str, str],
    cwd: Path,
    read_only: Path | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (the timeout only ends one that would hang)."""
    return subprocess.run(
        command(*args, read_only=read_only),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line an expected failure printed (see the module docstring)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [
        line for line in result.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)
    ]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@contextmanager
def serving(
    data_dir: Path, cwd: Path, **values: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``channelmind serve --port 0`` on ``data_dir`` until the block ends (then SIGTERM);
    yields the process and the URL its data folder's lock file names (the port is the
    kernel's choice, so that is the only way to learn it)."""
    log = cwd / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command("serve", "--port", "0"),
            env=environment(data_dir, **values),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = None
        for _ in range(1200):  # a start-up guard, not a timing
            owner = read_owner(data_dir)
            if owner is not None and owner.pid == process.pid and owner.url:
                url = owner.url
                break
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        assert url is not None, "the server did not record its URL"
        assert httpx.get(f"{url}/api/v2/health", timeout=10).status_code == 200
        yield process, url
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as a service manager stops it; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
