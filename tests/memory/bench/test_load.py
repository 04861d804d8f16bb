"""``channelmind bench load`` starts the real server, drives it with concurrent clients over
the REST API v2 and prints its figures: run as a user would, as a subprocess, for two seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memory.store.postgres.cluster import find_bindir


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
    assert (result["replicas"], result["store"], result["chroma"]) == (1, "sqlite", "embedded")
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


@pytest.mark.timeout(400)
def test_bench_load_spreads_clients_over_two_replicas_on_postgresql(tmp_path: Path) -> None:
    """`--database-url temp --replicas 2`: a throwaway PostgreSQL and `chroma run`, two `serve`
    processes on them, the clients spread over both; nothing left behind."""
    if find_bindir() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("PostgreSQL 15 is not installed; .ci/run should have installed it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    done = subprocess.run(
        [*channelmind(), "bench", "load", "--clients", "4", "--seconds", "2", "--warmup", "0.5",
         "--seed-messages", "40", "--embedder", "hash", "--json",
         "--database-url", "temp", "--replicas", "2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=360,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert (result["replicas"], result["store"], result["chroma"]) == (2, "postgresql", "server")
    assert result["errors"] == 0, result["error_examples"]
    assert result["adds"] > 0 and result["searches"] > 0
    assert 0 < result["add_ms_p50"] <= result["add_ms_p95"]
    assert result["server_cpu_s"] >= 0
    assert not list(tmp_path.iterdir())


def test_bench_load_refuses_replicas_without_a_database() -> None:
    done = subprocess.run(
        [*channelmind(), "bench", "load", "--replicas", "2"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--database-url" in done.stderr
