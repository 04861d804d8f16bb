"""The servers a benchmark runs against: a scratch PostgreSQL database (on a server the user
names, or on a throwaway cluster started for the run) and a ``chroma run`` process, each
started and removed by a context manager, so a benchmark leaves nothing behind.

``--database-url temp`` starts a cluster with :class:`memory.store.postgres.cluster.TempCluster`
(the same helper the tests use) with PostgreSQL's durable defaults, since write speed is
measured. A real URL gets a scratch database created beside the one it names (the login needs
CREATEDB) and dropped afterwards, so the benchmark starts empty and touches no existing data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

#: The value of ``--database-url`` / ``--chroma-url`` that starts a throwaway server.
TEMP = "temp"


class ServerStartFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise ServerStartFailed(f"{log_path.stem} exited: " + " | ".join(tail))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise ServerStartFailed(f"no answer from {url} within 120 s")


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], cwd: Path, log_path: Path, health: str
) -> Iterator[int]:
    """A server subprocess, up once ``health`` answers 200; yields its pid, stops it after."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(health, proc, log_path)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def chroma_server(folder: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``chroma run`` on a free loopback port, its files in ``folder/chroma-server``; yields
    its URL."""
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = free_port()
    command = [chroma, "run", "--path", str(folder / "chroma-server"), "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    env = (dict(os.environ) if env is None else env) | {"ANONYMIZED_TELEMETRY": "False"}
    health = f"http://127.0.0.1:{port}/api/v2/heartbeat"
    with running(command, env, folder, folder / "chroma-server.log", health):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def chroma_for(url: str | None) -> Iterator[tuple[str | None, Path | None]]:
    """(Chroma URL, its folder when it is ours): None for embedded Chroma, a throwaway
    ``chroma run`` for ``temp``, else the URL as given."""
    if url != TEMP:
        yield url or None, None
        return
    with tempfile.TemporaryDirectory(prefix="channelmind-bench-chroma-") as tmp:
        with chroma_server(Path(tmp)) as started:
            yield started, Path(tmp) / "chroma-server"


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    from memory.store.base import StoreUnavailable

    try:
        conn = await asyncpg.connect(url, timeout=30)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        where = urlsplit(url).hostname or "the server"
        raise StoreUnavailable(
            f"--database-url: cannot connect to PostgreSQL at {where} ({type(exc).__name__});"
            " check the URL, or give `temp` for a throwaway cluster"
        ) from None
    try:
        await conn.execute(sql)
    except asyncpg.PostgresError as exc:
        raise StoreUnavailable(
            f"--database-url: PostgreSQL refused `{sql.split(' ', 2)[0]} DATABASE` ({exc});"
            " the bench needs a login with CREATEDB, or give `temp` for a throwaway cluster"
        ) from None
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """The URL of an empty database for one run: on a throwaway cluster for ``temp``, else
    created beside the database ``url`` names; dropped (and the cluster stopped) after."""
    from memory.store.factory import check_database_url

    with contextlib.ExitStack() as stack:
        if url == TEMP:
            from memory.store.postgres.cluster import TempCluster

            try:
                cluster = stack.enter_context(TempCluster(fast=False))
            except (FileNotFoundError, RuntimeError) as exc:
                from memory.store.base import StoreUnavailable

                first = str(exc).splitlines()[0]
                raise StoreUnavailable(f"--database-url temp: {first}") from None
            url = cluster.url("postgres")
        else:
            check_database_url(url, setting="--database-url")
        name = f"cm_bench_{secrets.token_hex(6)}"
        asyncio.run(_admin(url, f"CREATE DATABASE {name}"))
        parts = urlsplit(url)
        try:
            yield urlunsplit(parts._replace(path=f"/{name}"))
        finally:
            asyncio.run(_admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def database_mb(url: str) -> float:
    """The size of the database ``url`` names, in MiB."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=30)
    try:
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    return float(size) / (1024.0 * 1024.0)
