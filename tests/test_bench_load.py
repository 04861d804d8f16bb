"""``channelmind bench load`` starts the real server, drives it with concurrent clients over
the REST API v2 and prints its figures: run as a user would, as a subprocess, for two seconds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def channelmind() -> list[str]:
    script = shutil.which("channelmind") or str(Path(sys.executable).with_name("channelmind"))
    return [script]


def test_bench_load_prints_its_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *channelmind(),
            "bench",
            "load",
            "--clients",
            "4",
            "--seconds",
            "2",
            "--warmup",
            "0.5",
            "--seed-messages",
            "60",
            "--embedder",
            "hash",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)  # one JSON object, nothing else on stdout
    for key in (
        "requests_per_s",
        "errors",
        "clients",
        "add_ms_p50",
        "add_ms_p95",
        "add_ms_p99",
        "search_ms_p50",
        "search_ms_p95",
        "search_ms_p99",
        "server_cpu_s",
    ):
        assert key in result, key
    assert result["clients"] == 4
    assert result["embedder"] == "hash"
    assert result["errors"] == 0, result["error_examples"]
    assert result["adds"] > 0 and result["searches"] > 0
    assert result["requests"] == result["adds"] + result["searches"]
    assert result["requests_per_s"] > 0
    assert 0 < result["add_ms_p50"] <= result["add_ms_p95"] <= result["add_ms_p99"]
    assert 0 < result["search_ms_p50"] <= result["search_ms_p95"] <= result["search_ms_p99"]
    assert not list(tmp_path.iterdir())  # the server's data folder was temporary


def test_bench_load_refuses_nonsense() -> None:
    done = subprocess.run(
        [*channelmind(), "bench", "load", "--clients", "0"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--clients" in done.stderr
