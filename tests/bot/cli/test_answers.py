"""Issue 10 through the console, as a user types it (``channelmind chat --script``, and the
console adapter read line by line): the newest word leads, questions and the bot's replies are
not evidence, "I" is the asker, facts are used without an LLM, statements are noted, the LLM
is told the order and answers when memory holds nothing, ``/memory`` counts people's
messages, citations are numbered as shown, several people speak, ``/forget`` takes the ids the
console shows. On the embedded default with the hashing embedder; the LLM is the fake server."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import build_conversation
from bot.cli import main
from bot.platforms.console.adapter import ConsoleAdapter
from bot.settings import Settings
from memory import MemoryEngine
from tests.bot.helpers import quoted
from tests.bot.helpers import settings as bot_settings
from tests.fakes.openai.server import FakeOpenAI

pytestmark = pytest.mark.timeout(90)

DAY = r"\d{4}-\d{2}-\d{2}"
ID_LINE = re.compile(r"^  \(id (?P<id>[0-9a-f]{8})\)$")


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CHANNELMIND_LLM_MODEL", "USER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHANNELMIND_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CHANNELMIND_EMBEDDER", "hash")
    return tmp_path


def chat(capsys: pytest.CaptureFixture[str], folder: Path, script: str) -> str:
    path = folder / "script.txt"
    path.write_text(script, encoding="utf-8")
    assert main(["chat", "--script", str(path), "--channel", "engineering"]) == 0
    return capsys.readouterr().out


def answer(out: str, said: str, nth: int = 0) -> list[str]:
    """The bot's answer to the ``nth`` echo of the line ``said``: its lines, unindented, without
    the message's id line."""
    lines = out.splitlines()
    at = [i for i, line in enumerate(lines) if line == said][nth]
    block = []
    for line in lines[at + 1 :]:
        if not line.startswith("  "):
            break
        if not ID_LINE.match(line):
            block.append(line.strip())
    return block


def ids(out: str) -> dict[str, str]:
    """Each echoed line -> the id shown under it."""
    lines = out.splitlines()
    found = {}
    for i, line in enumerate(lines):
        if m := ID_LINE.match(line):
            echo = next(x for x in reversed(lines[:i]) if not x.startswith("  "))
            found[echo] = m["id"]
    return found


LAUNCH = """\
alice: Launch date for billing v2 is March 14
bob: When is the launch?
carol: Update: launch moved to March 21 because of the security audit
"""


# -- 1. corrections win ---------------------------------------------------------------------


def test_the_later_correction_leads_and_marks_what_it_replaced(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = chat(
        capsys,
        data,
        LAUNCH
        + "carol: When is the launch now?\n"
        + "dave: What is the launch date?\n"
        + "erin: Is billing v2 still launching on March 14?\n"
        + "bob: /recall launch\n",
    )
    for asked in (
        "carol: When is the launch now?",
        "dave: What is the launch date?",
        "erin: Is billing v2 still launching on March 14?",
    ):
        lines = answer(out, asked)
        assert lines[0] == "ChannelMind: Here is what I remember:", asked
        assert re.fullmatch(
            rf"• \[1\] carol, {DAY}: Update: launch moved to March 21 because of the security"
            " audit",
            lines[1],
        ), asked
        assert re.fullmatch(
            rf"earlier: \[2\] alice, {DAY}: Launch date for billing v2 is March 14", lines[2]
        ), asked
        assert not any("When is the launch?" in line for line in lines), asked
    recall = answer(out, "bob: /recall launch")
    assert recall[1].startswith("• carol, ") and "launch moved to March 21" in recall[1]
    assert recall[2].startswith("earlier: alice, ") and "March 14" in recall[2]


def test_an_update_the_search_did_not_rank_is_found_after_the_best_match(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one relevant message to a prompt, search finds the best match only; the answer
    still looks for what was said after it on its subject."""
    monkeypatch.setenv("CHANNELMIND_CONTEXT_TOP_K", "1")
    out = chat(capsys, data, LAUNCH + "dave: What is the launch date for billing v2?\n")
    lines = answer(out, "dave: What is the launch date for billing v2?")
    assert "Update: launch moved to March 21" in lines[1]
    assert "earlier: [2] alice" in lines[2] and "March 14" in lines[2]


# -- 2. questions and bot replies are context, not evidence ----------------------------------


def test_questions_and_bot_replies_do_not_crowd_out_what_was_said(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = chat(
        capsys,
        data,
        """\
alice: Launch date for billing v2 is March 14
bob: When is the launch?
alice: Bob owns the database migration
bob: Who owns the database migration?
alice: Carol owns the API docs
bob: who owns the database migration again?
erin: When is the launch and who owns the API docs?
dave: /recall migration
""",
    )
    lines = answer(out, "erin: When is the launch and who owns the API docs?")
    cited = " ".join(lines)
    assert "Launch date for billing v2 is March 14" in cited
    assert "Carol owns the API docs" in cited
    assert "When is the launch?" not in cited and "ChannelMind," not in cited
    assert [re.sub(r"\[\d\]", "[n]", line)[:4] for line in lines[1:]] == ["• [n", "• [n"]
    recall = answer(out, "dave: /recall migration")
    assert recall[1].startswith("• alice, ") and "Bob owns the database migration" in recall[1]
    assert "Who owns" not in " ".join(recall) and "again" not in " ".join(recall)


# -- 3. "I" is the asker ---------------------------------------------------------------------


def test_i_me_my_mean_the_asker(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = chat(
        capsys,
        data,
        """\
alice: Bob owns the database migration
bob: Who owns the database migration?
carol: I'm out next week, Dave covers my reviews
bob: What do I own?
carol: Who covers my reviews?
""",
    )
    bob = answer(out, "bob: What do I own?")
    assert re.fullmatch(rf"• \[1\] alice, {DAY}: Bob owns the database migration", bob[1])
    carol = answer(out, "carol: Who covers my reviews?")
    assert "Dave covers my reviews" in carol[1]


# -- 4. /remember is used without an LLM ------------------------------------------------------


def test_remembered_facts_answer_the_asker_without_an_llm(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = chat(
        capsys,
        data,
        """\
alice: /remember role: database engineer
bob: /remember timezone: CET
bob: /remember timezone: PST
alice: The migration runbook is in the ops repo
alice: What is my role?
bob: What is my timezone?
bob: What is my role?
""",
    )
    role = answer(out, "alice: What is my role?")
    assert re.fullmatch(rf"• you told me on {DAY}: role: database engineer", role[1])
    assert len(role) == 2  # the runbook is not about her role
    assert re.fullmatch(
        rf"• you told me on {DAY}: timezone: PST", answer(out, "bob: What is my timezone?")[1]
    )
    # Alice's facts are Alice's: Bob has told the bot no role.
    assert answer(out, "bob: What is my role?") == [
        "ChannelMind: The conversation in this channel does not tell me that."
    ]


# -- 5. statements are noted ------------------------------------------------------------------


def test_a_statement_in_the_console_is_noted_not_answered_with_memories(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = chat(
        capsys,
        data,
        """\
alice: We're using PostgreSQL for the new project
bob: The deploy freeze starts Friday for the upgrade
carol: Launch date for billing v2 is March 14
dave: Kubernetes upgrade to 1.31 is scheduled for next Tuesday
erin: What is the upgrade schedule?
""",
    )
    for said in (
        "carol: Launch date for billing v2 is March 14",
        "dave: Kubernetes upgrade to 1.31 is scheduled for next Tuesday",
    ):
        assert answer(out, said) == ["ChannelMind: Noted. I'll remember that for this channel."]
    # A question still gets what was said.
    assert "Kubernetes upgrade to 1.31" in " ".join(
        answer(out, "erin: What is the upgrade schedule?")
    )


# -- 7. with an LLM: the order and dates, and an answer when memory holds nothing -------------


@pytest.fixture
def llm(data: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    def respond(request: dict[str, Any]) -> str:
        if "response_format" in request:
            return '{"facts": []}'
        prompt = str(request["messages"][-1]["content"])
        numbers = [n for n, _, text in quoted(prompt) if "March 21" in text]
        if numbers:  # cites only the update, whatever number the prompt gave it
            return f"The launch moved to March 21 [{numbers[0]}]."
        return "Hi! I answer from what was said in this channel; ask me about it."

    with FakeOpenAI.in_thread(responder=respond) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("CHANNELMIND_SEMANTIC", "false")
        yield fake


def test_the_llm_prompt_lists_memories_oldest_first_with_dates_and_says_later_updates(
    data: Path, llm: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    out = chat(capsys, data, LAUNCH + "dave: When is the launch now?\n")
    request = llm.chat_requests[-1]
    system, prompt = (str(m["content"]) for m in request["messages"])
    assert "A later message on the same subject updates" in system
    assert '"Now", "currently" and "still" ask for the latest' in system
    relevant = prompt.split("\n\nRecent messages")[0]
    lines = [line for line in relevant.splitlines() if line.startswith("[")]
    assert re.match(rf"\[1\] {DAY} \d\d:\d\d UTC \| \"alice\" \| \"Launch date", lines[0])
    assert lines[0].endswith("(updated later by [2])")
    assert re.match(rf"\[2\] {DAY} \d\d:\d\d UTC \| \"carol\" \| \"Update: launch moved", lines[1])
    assert "When is the launch?" not in relevant  # a question is context: the recent window
    assert '| "bob" (asking) | "When is the launch?"' in prompt
    # The answer cites what it used as [1], whatever its number in the prompt.
    reply = answer(out, "dave: When is the launch now?")
    assert reply[0] == "ChannelMind: The launch moved to March 21 [1]."
    assert re.fullmatch(rf"\[1\] carol, {DAY}", reply[-1])


def test_with_an_llm_a_message_with_nothing_relevant_still_gets_an_answer(
    data: Path, llm: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    out = chat(
        capsys, data, "alice: The cafeteria is closed on Monday\nbob: hi! what can you do?\n"
    )
    assert answer(out, "bob: hi! what can you do?") == [
        "ChannelMind: Hi! I answer from what was said in this channel; ask me about it."
    ]
    prompt = llm.last_prompt()
    assert "memory holds nothing relevant to this message" in prompt
    assert "do not invent anything said or decided here" in prompt
    assert prompt.endswith("hi! what can you do?")


# -- 8. /memory, citation numbers, several people, ids ----------------------------------------


def test_memory_counts_what_people_said_not_the_bot_replies(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = chat(
        capsys,
        data,
        "alice: The launch is on March 14\nbob: When is the launch?\nalice: /memory\n",
    )
    assert answer(out, "bob: When is the launch?")[0] == "ChannelMind: Here is what I remember:"
    status = " ".join(answer(out, "alice: /memory"))
    assert "#engineering: 2 messages remembered" in status


def test_the_console_speaks_as_several_people(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = chat(
        capsys,
        data,
        """\
alice: Bob owns the database migration
/as bob
What do I own?
carol: Who owns the database migration?
""",
    )
    assert "bob: What do I own?" in out  # /as switched who speaks
    assert "Bob owns the database migration" in answer(out, "bob: What do I own?")[1]
    exported = json.loads(_run(capsys, "export", "--user", "bob"))
    assert [e["content"] for e in exported["episodes"]] == ["What do I own?"]
    carol = json.loads(_run(capsys, "export", "--user", "carol"))
    assert [e["content"] for e in carol["episodes"]] == ["Who owns the database migration?"]


async def test_typed_lines_name_who_speaks_as_in_scripts(data: Path) -> None:
    """The interactive console, read line by line as a terminal would give them."""
    typed = iter(
        [
            "alice: Launch date for billing v2 is March 14",
            "When is the launch?",  # the --user: dave
            "/as carol",
            "Correction, the launch moved to March 21: the audit is late",
            "bob: When is the launch?",
            "/quit",
        ]
    )
    prompts: list[str] = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        return next(typed)

    out = io.StringIO()
    settings: Settings = bot_settings(bot_name="ChannelMind")
    engine = await MemoryEngine.open(data / "data", "hash")
    conversation = build_conversation(settings, engine)
    try:
        console = ConsoleAdapter(
            conversation, channel="general", out=out, after_each=engine.wait_indexed
        )
        assert await console.run_interactive("dave", read) == 4
        said = await engine.list(conversation.channels.scope(console.place), "role = 'user'")
    finally:
        await conversation.close()
        await engine.close()
    assert prompts == ["dave> ", "dave> ", "dave> ", "carol> ", "carol> ", "carol> "]
    assert [(e.producer, e.content) for e in said] == [
        ("console:alice", "Launch date for billing v2 is March 14"),
        ("console:dave", "When is the launch?"),
        ("console:carol", "Correction, the launch moved to March 21: the audit is late"),
        ("console:bob", "When is the launch?"),
    ]
    text = out.getvalue()
    assert "(you are carol now)" in text
    last = text.split("ChannelMind: Here is what I remember:")[-1].splitlines()
    assert "• [1] carol" in last[1] and "earlier: [2] alice" in last[2]
    assert (
        len(ID_LINE.findall(text) if False else [x for x in text.splitlines() if ID_LINE.match(x)])
        == 4
    )


def test_forget_takes_the_id_the_console_shows_or_a_uid(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = chat(
        capsys,
        data,
        "alice: The launch is on March 14\nbob: The cafeteria is closed on Monday\n",
    )
    shown = ids(out)
    alice_id = shown["alice: The launch is on March 14"]
    bob_id = shown["bob: The cafeteria is closed on Monday"]
    bob_uid = json.loads(_run(capsys, "export", "--user", "bob"))["episodes"][0]["uid"]
    out = chat(
        capsys,
        data,
        f"bob: /forget {alice_id}\nalice: /forget {alice_id}\nbob: /forget {bob_uid}\n"
        f"bob: /forget {bob_id}\n",
    )
    assert "not yours" in " ".join(answer(out, f"bob: /forget {alice_id}"))
    assert "Done. I forgot 1 message" in answer(out, f"alice: /forget {alice_id}")[0]
    assert "Done. I forgot 1 message" in answer(out, f"bob: /forget {bob_uid}")[0]
    assert "no such message" in answer(out, f"bob: /forget {bob_id}")[0]  # gone already
    for user in ("alice", "bob"):
        kept = json.loads(_run(capsys, "export", "--user", user))["episodes"]
        assert kept == [] or all("/forget" in e["content"] for e in kept)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out
