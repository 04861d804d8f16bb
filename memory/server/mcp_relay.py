"""``channelmind mcp-stdio`` beside a running memory server: the server's own MCP tools over
stdio, relayed to its ``/mcp/`` endpoint.

One process owns an embedded data folder (:mod:`memory.folder`); a second one must not open
it. When the folder is served (or ``CHANNELMIND_MEMORY_URL`` names a server), ``mcp-stdio``
therefore relays every tool call to that server's MCP endpoint instead of running the tools
on an engine of its own. The tools are the server's, so they behave exactly as over HTTP; the
``MM_USER_ID`` / ``MM_ORG_ID`` / ``MM_PROJ_ID`` environment is sent as the ``user-id`` /
``org-id`` / ``proj-id`` headers, which pin the identity there as the environment pins it over
stdio (:func:`memory.server.mcp_tools.resolve_identity`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mcp import ClientSession, types
from mcp.client.streamable_http import streamablehttp_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from .mcp_tools import IDENTITY_ENV, IDENTITY_HEADERS


def relay_headers(api_key: str | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers of the relayed session: the API key and the identity the environment pins."""
    env = os.environ if env is None else env
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    for key, var in IDENTITY_ENV.items():
        value = env.get(var, "").strip()
        if value:
            headers[IDENTITY_HEADERS[key]] = value
    return headers


async def relay_stdio(base_url: str, api_key: str | None = None) -> None:
    """Serve MCP over stdio, relaying the tool list and every tool call to the MCP endpoint
    of the memory server at ``base_url``, until stdin closes."""
    url = base_url.rstrip("/") + "/mcp/"
    async with (
        streamablehttp_client(url, headers=relay_headers(api_key)) as (read, write, _),
        ClientSession(read, write) as remote,
    ):
        hello = await remote.initialize()
        server: Server[Any, Any] = Server(
            hello.serverInfo.name, hello.serverInfo.version, hello.instructions
        )

        @server.list_tools()  # type: ignore[no-untyped-call, untyped-decorator]
        async def list_tools() -> list[types.Tool]:
            return (await remote.list_tools()).tools

        @server.call_tool(validate_input=False)  # type: ignore[untyped-decorator]
        async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
            return await remote.call_tool(name, arguments)

        async with stdio_server() as (stdin, stdout):
            await server.run(stdin, stdout, server.create_initialization_options())
