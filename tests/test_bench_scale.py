"""The scale benchmark runs end to end at a tiny size and reports sane numbers."""

from __future__ import annotations

import json

import pytest

from bot.cli import main


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
    assert result["rss_mb"] > 0
