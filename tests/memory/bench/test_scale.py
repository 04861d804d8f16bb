"""The scale benchmark runs end to end at a tiny size and reports sane numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from memory.bench.services import free_port
from memory.store.postgres.cluster import find_bindir


def test_bench_scale_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "scale",
            "--episodes",
            "2000",
            "--channels",
            "20",
            "--queries",
            "20",
            "--embedder",
            "hash",
            "--json",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # exactly one JSON object, nothing else on stdout
    for key in (
        "write_per_s",
        "index_per_s",
        "search_ms_p50",
        "search_ms_p95",
        "channel_search_ms_p50",
        "channel_search_ms_p95",
        "rss_mb",
        "disk_mb",
        "episodes",
        "channels",
        "embedder",
    ):
        assert key in result, key
    assert result["episodes"] == 2000
    assert result["channels"] == 20
    assert result["embedder"].startswith("hash")
    assert result["write_per_s"] > 0
    assert result["index_per_s"] > 0
    assert result["search_ms_p50"] > 0
    assert result["search_ms_p95"] >= result["search_ms_p50"]
    assert result["channel_search_ms_p50"] > 0
    assert result["channel_search_ms_p95"] >= result["channel_search_ms_p50"]
    assert result["disk_mb"] > 0
    # disk_mb is MiB: the bytes per message are 2**20 of them per MiB, not 10**6.
    assert abs(result["disk_bytes_per_message"] * 2000 - result["disk_mb"] * 2**20) < 2**20 * 0.06
    assert result["rss_mb"] > 0


def _scale_json(*extra: str) -> dict[str, Any]:
    script = shutil.which("channelmind") or str(Path(sys.executable).with_name("channelmind"))
    done = subprocess.run(
        [script, "bench", "scale", "--episodes", "300", "--channels", "5", "--queries", "8",
         "--embedder", "hash", "--json", *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.timeout(400)
def test_bench_scale_on_throwaway_postgresql_and_chroma_server() -> None:
    """One command runs the bench on PostgreSQL and `chroma run` started for it, and prints
    what the embedded run prints."""
    if find_bindir() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("PostgreSQL 15 is not installed; .ci/run should have installed it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    served = _scale_json("--database-url", "temp", "--chroma-url", "temp")
    embedded = _scale_json()
    assert set(served) == set(embedded)
    assert (served["store"], served["chroma"]) == ("postgresql", "server")
    assert (embedded["store"], embedded["chroma"]) == ("sqlite", "embedded")
    assert served["episodes"] == 300 and served["channels"] == 5
    assert served["write_per_s"] > 0 and served["index_per_s"] > 0
    assert 0 < served["channel_search_ms_p50"] <= served["channel_search_ms_p95"]
    assert 0 < served["search_ms_p50"] <= served["search_ms_p95"]
    assert served["disk_mb"] > 0


def test_bench_scale_names_an_unreachable_database_in_one_line() -> None:
    port = free_port()  # nothing listens there
    script = shutil.which("channelmind") or str(Path(sys.executable).with_name("channelmind"))
    done = subprocess.run(
        [script, "bench", "scale", "--episodes", "10", "--embedder", "hash",
         "--database-url", f"postgresql://cm:secret-pw@127.0.0.1:{port}/x"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().count("\n") == 0 and "--database-url" in done.stderr
    assert "secret-pw" not in done.stderr
