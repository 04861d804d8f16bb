"""The forgetting benchmark runs and reports both the baseline and the scrubbed latency (the
numbers themselves are for people to read, not for a test to judge)."""

from __future__ import annotations

import re

import pytest

from memory.bench import forget as bench_forget


def test_bench_forget_reports_baseline_and_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_forget.main(["--sizes", "60", "--repeats", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("baseline:")
    assert re.fullmatch(
        r"\s*60 messages: delete median \d+ ms -> \d+ ms \(x[\d.]+\); "
        r"edit median \d+ ms -> \d+ ms \(x[\d.]+\)",
        out[1],
    ), out
