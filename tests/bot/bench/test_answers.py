"""``channelmind bench answers``: the scenario files kept in the repository load and are as
many as the issue asks; the command plays a scenario through the real core and prints the
table beside plain search order; a bad scenario file is one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.bench.answers import SCENARIOS, load_all
from bot.cli import main

pytestmark = pytest.mark.timeout(120)

SCENARIO = """\
name: launch
channel: engineering
chat:
  - "alice: Launch date for billing v2 is March 14"
  - "bob: When is the launch?"
  - "@bot: Here is what I remember:\\n• [1] alice: Launch date for billing v2 is March 14"
  - "carol: Update: launch moved to March 21 because of the security audit"
  - "alice: /remember role: database engineer"
  - {agent: crm, role: assistant, text: 'Acme renewal is due on June 30'}
questions:
  - ask: "dave: When is the launch?"
    expect: "launch moved to March 21"
    superseded: ["March 14"]
  - ask: "alice: What is my role?"
    expect: "database engineer"
  - ask: "erin: When does Acme renew?"
    expect: "June 30"
"""


def test_the_shipped_scenarios_are_enough_and_well_formed() -> None:
    scenarios = load_all(SCENARIOS)
    assert len(scenarios) >= 12
    assert sum(len(s.questions) for s in scenarios) >= 60
    assert any(line.speaker == "@bot" for s in scenarios for line in s.chat)
    assert any(
        line.role == "assistant" and line.speaker.startswith("agent:")
        for s in scenarios
        for line in s.chat
    )
    assert any(len({line.channel for line in s.chat}) > 1 for s in scenarios)


def test_bench_answers_plays_scenarios_through_the_core_against_search_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "launch.yaml").write_text(SCENARIO, encoding="utf-8")
    assert main(["bench", "answers", "--scenarios", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["scenarios"], result["questions"]) == (1, 3)
    assert result["bot"]["first_correct"] == 1.0 and result["bot"]["misses"] == []
    assert result["bot"]["superseded_first"] == 0.0
    assert result["bot"]["question_or_bot_first"] == 0.0
    # Plain search order cannot answer "What is my role?" (a fact is no message).
    assert result["search"]["first_correct"] < 1.0

    assert main(["bench", "answers", "--scenarios", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("bench answers: 1 scenarios, 3 questions, embedder hash")
    assert table[2].startswith("plain search order")
    assert table[3].startswith("channelmind answers") and "3/3 (100.0%)" in table[3]


@pytest.mark.parametrize(
    "text",
    [
        "chat: nope\n",
        "chat:\n  - 'no colon here'\nquestions:\n  - {ask: 'a: b', expect: c}\n",
        "chat:\n  - 'a: b'\nquestions:\n  - {ask: 'a: b'}\n",
        "chat: [\n",
    ],
)
def test_a_bad_scenario_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    assert main(["bench", "answers", "--scenarios", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("channelmind bench: ") and "bad.yaml" in err
    assert len(err.splitlines()) == 1, err
