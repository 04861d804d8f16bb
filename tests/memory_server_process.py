"""A memory server process for tests: the real app under uvicorn on a data folder, with the
dense test embedder (the byte scans of tests/test_forgetting_on_disk.py look for its vectors).

Usage: python -m tests.memory_server_process DATA_DIR PORT

Prints ``READY <url>`` once it serves; SIGTERM stops it cleanly (the engine closes), SIGKILL
is what the crash tests send.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvicorn

from memory.engine import MemoryEngine
from memory.server.app import create_app

from .disk_scan import DenseEmbedder
from .server_harness import settings


async def main(data_dir: Path, port: int) -> None:
    engine = await MemoryEngine.open(data_dir, DenseEmbedder())
    try:
        app = create_app(engine, settings(data_dir=data_dir))
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("uvicorn stopped before starting")
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        await engine.serving_at(url)
        print(f"READY {url}", flush=True)
        await serving
    finally:
        await engine.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
