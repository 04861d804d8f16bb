"""Defect 13 of issue 9: every MCP HTTP session close logged ``ERROR ... Error in standalone
SSE writer`` with an ``anyio.ClosedResourceError`` traceback. A client ending its session is
an ordinary disconnect: it is now a DEBUG line, and real errors still log."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from memory.engine import MemoryEngine
from memory.server.mcp_tools import OrdinaryDisconnect, quiet_ordinary_disconnects
from tests.server_harness import running

pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client`:DeprecationWarning")


def closed_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.getMessage() == "MCP session stream closed by the client"
    ]


async def test_closing_an_mcp_session_logs_no_error_traceback(
    engine: MemoryEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(engine) as server:
        for _ in range(3):
            async with (
                streamablehttp_client(server.url + "/mcp/") as (read, write, _),
                ClientSession(read, write) as client,
            ):
                await client.initialize()
                assert (await client.list_tools()).tools
        # The server notices each close on its own; wait until it has (a guard, not a timing).
        for _ in range(500):
            if len(closed_lines(caplog)) >= 3:
                break
            await asyncio.sleep(0.02)
    assert len(closed_lines(caplog)) >= 3, "the sessions' close was never seen by the server"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_other_sdk_errors_still_log(caplog: pytest.LogCaptureFixture) -> None:
    quiet_ordinary_disconnects()
    sdk = logging.getLogger("mcp.server.streamable_http")
    assert any(isinstance(f, OrdinaryDisconnect) for f in sdk.filters)
    try:
        raise ValueError("a real failure")
    except ValueError:
        sdk.exception("Error in standalone SSE writer")
    sdk.error("Error handling POST request")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "Error in standalone SSE writer",
        "Error handling POST request",
    ]
