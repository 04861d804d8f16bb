"""``channelmind serve`` and ``mcp-stdio``: the memory server (REST API v2, MCP, metrics), and
its MCP tools over stdio."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from .common import settings


def cmd_serve(args: argparse.Namespace) -> int:
    from bot.app import main

    return main(settings(), args.host, args.port, bot=False)


def cmd_mcp_stdio(args: argparse.Namespace) -> int:
    """The tools on the data folder, or relayed to the server that owns it (or the one at
    CHANNELMIND_MEMORY_URL): see :mod:`memory.server.mcp_relay`."""
    from bot.memory_access import open_memory
    from memory.client import MemoryClient
    from memory.server.mcp_relay import relay_stdio
    from memory.server.mcp_tools import run_stdio

    config = settings()

    async def go() -> int:
        memory = await open_memory(config, "command")
        try:
            if isinstance(memory, MemoryClient):  # relay to its server
                key = config.memory_api_key
                await relay_stdio(memory.base_url, key.get_secret_value() if key else None)
            else:
                await run_stdio(memory)
        finally:
            await memory.close()
        return 0

    return asyncio.run(go())


def add(sub: Any) -> None:
    sv = sub.add_parser("serve", help="the memory server: REST API v2, MCP at /mcp/, metrics")
    sv.add_argument(
        "--host", help="default CHANNELMIND_HOST or 127.0.0.1; without API keys loopback only"
    )
    sv.add_argument("--port", type=int, help="default CHANNELMIND_PORT or 8080")
    sv.set_defaults(func=cmd_serve)

    ms = sub.add_parser("mcp-stdio", help="the memory's MCP tools over stdio")
    ms.set_defaults(func=cmd_mcp_stdio)
