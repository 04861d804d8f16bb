"""Runs the real memory server app under uvicorn on 127.0.0.1 (port 0), in the test's own
event loop, with a real MemoryEngine (SQLite + Chroma in tmp_path, hashing embedder).

Synchronous clients (memmachine-client uses ``requests``) must run in a worker thread
(``await asyncio.to_thread(...)``): called directly they would block the loop serving them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn
from fastapi import FastAPI

from memory.engine import MemoryEngine
from memory.server.app import create_app
from memory.server.listen import listening_socket
from memory.server.settings import ServerSettings


def settings(**values: Any) -> ServerSettings:
    """Server settings from the arguments only (no .env file, no API keys unless given)."""
    values.setdefault("api_keys", None)
    values.setdefault("embedder", "hash")
    return ServerSettings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class Running:
    app: FastAPI
    url: str
    engine: MemoryEngine


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port until the block ends; yields the base URL."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before starting")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


@asynccontextmanager
async def running(engine: MemoryEngine, **values: Any) -> AsyncIterator[Running]:
    app = create_app(engine, settings(**values))
    async with serve(app) as url:
        yield Running(app=app, url=url, engine=engine)


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def channelmind_serve(
    data_dir: Path, log: IO[str] | None = None, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``channelmind serve`` on ``data_dir`` (hashing embedder, no API keys) as a user starts
    it, until the block ends (then SIGTERM); yields the process and its URL. ``log`` receives
    its output (a file: a full pipe would stall the server)."""
    port = free_port()
    environ = {
        **os.environ,
        "CHANNELMIND_DATA_DIR": str(data_dir),
        "CHANNELMIND_EMBEDDER": "hash",
        **env,
    }
    environ.pop("CHANNELMIND_API_KEYS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
        env=environ,
        cwd=ROOT,
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # a start-up guard, not a timing
            try:
                if httpx.get(f"{url}/api/v2/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "the server exited"
            time.sleep(0.1)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
