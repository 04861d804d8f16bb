"""``channelmind serve`` runs on uvloop (:mod:`memory.server.event_loop`), or on asyncio's own
loop when ``CHANNELMIND_EVENT_LOOP=asyncio``, and serves adds and searches on either. The real
command in its own process; it says which loop it runs when it starts."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.server_harness import channelmind_serve


def started_line(log: Path) -> str:
    for _ in range(600):  # a start-up guard, not a timing
        lines = [line for line in log.read_text().splitlines() if "is running at" in line]
        if lines:
            return lines[0]
        time.sleep(0.1)
    raise AssertionError(log.read_text()[-3000:])


@pytest.mark.parametrize(
    ("setting", "loop"), [({}, "uvloop"), ({"CHANNELMIND_EVENT_LOOP": "asyncio"}, "asyncio")]
)
def test_serve_runs_on_the_chosen_loop_and_answers(
    tmp_path: Path, setting: dict[str, str], loop: str
) -> None:
    log = tmp_path / "serve.log"
    with (
        log.open("w") as out,
        channelmind_serve(tmp_path / "data", out, **setting) as (_, url),
    ):
        assert f"({loop} event loop)" in started_line(log)
        with httpx.Client(base_url=url, timeout=60) as http:
            message = {"content": "the deploy failed at noon", "producer": "alice"}
            body = {"org_id": "o", "project_id": "p", "messages": [message]}
            assert http.post("/api/v2/memories", json=body).status_code == 200
            query = {"org_id": "o", "project_id": "p", "query": "deploy failed"}
            found = http.post("/api/v2/memories/search", json=query).json()
    episodes = found["content"]["episodic_memory"]["long_term_memory"]["episodes"]
    assert [e["content"] for e in episodes] == ["the deploy failed at noon"]
