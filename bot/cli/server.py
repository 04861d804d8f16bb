"""``channelmind serve`` and ``mcp-stdio``: the memory server (REST API v2, MCP, metrics)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any


def cmd_serve(args: argparse.Namespace) -> int:
    from memory.server.app import ServeRefused, run_server
    from memory.server.auth import ApiKeyError

    try:
        run_server(args.host, args.port)
    except (ServeRefused, ApiKeyError) as exc:
        print(f"channelmind serve: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_mcp_stdio(args: argparse.Namespace) -> int:
    from memory.server.mcp_tools import run_stdio

    asyncio.run(run_stdio())
    return 0


def add(sub: Any) -> None:
    sv = sub.add_parser("serve", help="the memory server: REST API v2, MCP at /mcp/, metrics")
    sv.add_argument(
        "--host", help="default CHANNELMIND_HOST or 127.0.0.1; without API keys loopback only"
    )
    sv.add_argument("--port", type=int, help="default CHANNELMIND_PORT or 8080")
    sv.set_defaults(func=cmd_serve)

    ms = sub.add_parser("mcp-stdio", help="the memory's MCP tools over stdio")
    ms.set_defaults(func=cmd_mcp_stdio)
