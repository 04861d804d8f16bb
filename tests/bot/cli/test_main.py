"""The console adapter and the chat / recall / forget / export / config commands, through the
real entry point (``bot.cli.main``), on the embedded default with the hash embedder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from tests.bot.helpers import grounded
from tests.fakes.openai.server import FakeOpenAI

pytestmark = pytest.mark.timeout(60)

SCRIPT = """\
# a demo: lines are "user: message"
alice: We're using PostgreSQL for the new project
bob: What database are we using?
alice: /remember role: backend engineer
bob: /recall PostgreSQL
bob: /recall kubernetes
alice: /memory
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "CHANNELMIND_CHROMA_URL",
        "CHANNELMIND_LLM_MODEL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHANNELMIND_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CHANNELMIND_EMBEDDER", "hash")
    script = tmp_path / "demo.txt"
    script.write_text(SCRIPT, encoding="utf-8")
    return script


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_chat_script_without_llm_is_extractive(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run(capsys, "chat", "--script", str(env), "--channel", "engineering")
    lines = out.splitlines()
    assert lines[0] == "alice: We're using PostgreSQL for the new project"
    assert lines[1] == "  ChannelMind: Noted. I'll remember that for this channel."  # a statement
    i = lines.index("bob: What database are we using?")
    assert lines[i + 1] == "  ChannelMind: Here is what I remember:"
    assert lines[i + 2].startswith("    • [1] alice, 20")
    assert lines[i + 2].endswith(": We're using PostgreSQL for the new project")
    assert "  ChannelMind (only you see this): Noted: “backend engineer”." in out
    assert "What I remember about “PostgreSQL” in #engineering:" in out
    assert "I don't remember anything about “kubernetes” in #engineering." in out
    assert "Memory for you in this organization: on." in out
    assert "1 fact about you used in #engineering" in out


def test_chat_script_with_llm(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = grounded("PostgreSQL")

    def llm(request: dict[str, Any]) -> str:
        return '{"facts": []}' if "response_format" in request else answer(request)

    with FakeOpenAI.in_thread(responder=llm) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("CHANNELMIND_LLM_MODEL", "fake-model")
        out = run(capsys, "chat", "--script", str(env), "--channel", "engineering")
        requests = fake.chat_requests
    assert "  ChannelMind: We're using PostgreSQL for the new project [1]." in out
    assert "    Sources:" in out and "    [1] alice, 20" in out
    answers = [r for r in requests if "response_format" not in r]
    assert answers and all(r["model"] == "fake-model" for r in answers)
    # Semantic memory ran in one batch for alice at the end of the script, not per message.
    extractions = [r for r in requests if "response_format" in r]
    assert len(extractions) == 2  # alice's batch and bob's batch


def test_recall_export_forget_commands(
    env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run(capsys, "chat", "--script", str(env), "--channel", "engineering")

    out = run(capsys, "recall", "PostgreSQL", "database", "--channel", "engineering")
    assert "alice: We're using PostgreSQL for the new project" in out

    exported = json.loads(run(capsys, "export", "--user", "alice"))
    assert exported["user"] == "console:alice"
    assert [e["content"] for e in exported["episodes"]] == [
        "We're using PostgreSQL for the new project"
    ]
    assert [f["value"] for f in exported["facts"]] == ["backend engineer"]

    target = tmp_path / "channel.json"
    out = run(capsys, "export", "--channel", "engineering", "--out", str(target))
    assert (
        out.startswith("exported ")
        and json.loads(target.read_text())["channel"] == "console:engineering"
    )

    out = run(capsys, "forget", "--user", "alice")
    assert out.startswith("forgot 1 message and 1 fact")
    assert json.loads(run(capsys, "export", "--user", "alice"))["episodes"] == []
    assert "nothing about that" in run(capsys, "recall", "PostgreSQL", "--channel", "engineering")

    assert main(["forget", "--user", "slack:U1"]) == 2  # a Slack id needs --org
    assert "give --org" in capsys.readouterr().err


def test_config_masks_secrets(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("CHANNELMIND_MEMORY_URL", "https://bot:hunter2@memory.example.com")
    monkeypatch.setenv("CHANNELMIND_ADMINS", "slack:U1, discord:2")
    out = run(capsys, "config")
    assert "very-secret" not in out and "hunter2" not in out
    assert "SLACK_BOT_TOKEN" in out and "**** (set)" in out
    assert "https://bot:****@memory.example.com" in out
    assert "CHANNELMIND_ADMINS" in out and "slack:U1, discord:2" in out
    assert "CHANNELMIND_PROJECT" in out and "channelmind" in out


def test_missing_script(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--script", str(env.parent / "nope.txt")]) == 2
    assert "no script" in capsys.readouterr().err


def test_a_bad_setting_is_one_line_and_status_2(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHANNELMIND_RETENTION_DAYS", "soon")
    for argv in (["config"], ["chat", "--script", str(env)], ["run"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "CHANNELMIND_RETENTION_DAYS" in err, argv
