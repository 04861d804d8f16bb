"""``channelmind bench answers``: what the bot answers, not only what search finds.

Each scenario file (YAML, in ``scenarios/`` beside this module) is a channel's chat followed by
questions. The chat is played through the real conversation core without an LLM, on a real
memory (SQLite + Chroma in a temporary folder; the hashing embedder unless ``--embedder local``):

- ``"name: text"`` is a person writing in the channel (not to the bot); ``"name: /remember x"``
  and the other commands run as commands;
- ``"@bot: text"`` is an earlier answer of the bot, stored as the bot stores its replies;
- ``{agent: name, role: r, text: t}`` is a memory another agent adds through the memory API;
- ``{channel: x}`` switches the channel the following lines are said in.

Each question (``ask: "name: question"``, optional ``channel``) is then put to the bot, which
answers extractively; the benchmark reads the first thing the answer cites (a message or one
of the asker's facts) and checks it against ``expect`` (a substring of the expected message or
fact) and ``superseded`` (substrings of messages a later one replaced). Beside it, the same
questions answered by plain search order (the first hit of a hybrid search of the channel, as
it stands when the question is asked) are the baseline. Questions and bot replies count as
such when first, for both.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import yaml

from bot.core.events import Author, CommandEvent, CommandName, MessageEvent, NullWorking, Place
from bot.core.responder import Answer, AnswerContext, Responder
from bot.platforms.console.adapter import COMMANDS, console_id
from bot.settings import Settings
from memory import Episode, Fact, MemoryEngine, Scope
from memory.embedders import Embedder
from memory.model import NAME_KEY, utcnow
from memory.text import asks

SCENARIOS = Path(__file__).parent / "scenarios"
ORG = "console:bench"
BOT_NAME = "ChannelMind"
BOT = console_id(BOT_NAME)
BASELINE_TOP_K = 8


class ScenarioError(ValueError):
    """A scenario file the benchmark cannot read, with the file and what is wrong."""


@dataclass(frozen=True)
class Line:
    """One chat line of a scenario, in order."""

    channel: str
    speaker: str  # a person's name, "@bot", or "agent:<name>"
    text: str
    role: str = "user"


@dataclass(frozen=True)
class Question:
    asker: str
    text: str
    channel: str
    expect: str
    superseded: tuple[str, ...] = ()


@dataclass
class Scenario:
    name: str
    path: Path
    chat: list[Line]
    questions: list[Question]


@dataclass
class Outcome:
    """How one question was answered, by the bot and by plain search order."""

    scenario: str
    question: Question
    bot: str | None  # the text of the first cited message or fact, None if nothing was cited
    bot_asks: bool  # the first citation is a question or the bot's own reply
    search: str | None
    search_asks: bool

    def correct(self, first: str | None) -> bool:
        return first is not None and self.question.expect.lower() in first.lower()

    def superseded(self, first: str | None) -> bool:
        return first is not None and any(
            s.lower() in first.lower() for s in self.question.superseded
        )


def _said(value: str, where: str) -> tuple[str, str]:
    name, sep, text = value.partition(":")
    if not sep or not name.strip() or not text.strip():
        raise ScenarioError(f"{where}: expected 'name: text', got {value!r}")
    return name.strip(), text.strip()


def load(path: Path) -> Scenario:
    """Read and check one scenario file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}" if mark is not None else "somewhere"
        raise ScenarioError(f"{path}: not YAML ({exc.problem}, {where})") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("chat"), list):
        raise ScenarioError(f"{path}: needs a 'chat' list and a 'questions' list")
    channel = str(data.get("channel") or "general")
    first_channel = channel
    chat: list[Line] = []
    for i, item in enumerate(data["chat"], 1):
        where = f"{path.name}, chat line {i}"
        if isinstance(item, str):
            speaker, text = _said(item, where)
            chat.append(Line(channel, speaker, text, "assistant" if speaker == "@bot" else "user"))
        elif isinstance(item, dict) and set(item) == {"channel"}:
            channel = str(item["channel"])
        elif isinstance(item, dict) and {"agent", "text"} <= set(item) <= {"agent", "role", "text"}:
            role = str(item.get("role") or "user")
            chat.append(Line(channel, f"agent:{item['agent']}", str(item["text"]), role))
        else:
            raise ScenarioError(f"{where}: expected 'name: text', {{channel}} or {{agent, text}}")
    questions: list[Question] = []
    for i, item in enumerate(data.get("questions") or [], 1):
        where = f"{path.name}, question {i}"
        if not isinstance(item, dict) or "ask" not in item or "expect" not in item:
            raise ScenarioError(f"{where}: needs 'ask' and 'expect'")
        asker, text = _said(str(item["ask"]), where)
        superseded = item.get("superseded") or []
        if not isinstance(superseded, list):
            raise ScenarioError(f"{where}: 'superseded' is a list of texts")
        questions.append(
            Question(
                asker,
                text,
                str(item.get("channel") or first_channel),
                str(item["expect"]),
                tuple(str(s) for s in superseded),
            )
        )
    if not questions:
        raise ScenarioError(f"{path}: no questions")
    return Scenario(str(data.get("name") or path.stem), path, chat, questions)


def load_all(folder: Path = SCENARIOS) -> list[Scenario]:
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise ScenarioError(f"no scenario files (*.yaml) in {folder}")
    return [load(p) for p in files]


class _Recording(Responder):
    """The extractive responder, keeping its last answer for the benchmark to read."""

    last: Answer | None = None

    async def respond(self, ctx: AnswerContext) -> Answer:
        self.last = await super().respond(ctx)
        return self.last


class _Quiet:
    """A Replier that keeps nothing: the benchmark reads the answer, not the text."""

    async def reply(self, text: str) -> str | None:
        return None

    async def ephemeral(self, text: str) -> None:
        return None

    def working(self) -> NullWorking:
        return NullWorking()

    async def permalink(self, source_id: str) -> str | None:
        return None


def _first(answer: Answer | None) -> tuple[str | None, Episode | None]:
    """The text of what an answer cites first, and its message (None for a fact)."""
    if answer is None or answer.lead is None:
        return None, None
    lead = answer.lead
    if isinstance(lead, Fact):
        return f"{lead.feature}: {lead.value}", None
    return lead.episode.content, lead.episode


def _asks(ep: Episode | None) -> bool:
    return ep is not None and (ep.producer == BOT or asks(ep.content))


def settings() -> Settings:
    """The bot's defaults, with no LLM and nothing read from the environment's LLM or .env."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        openai_api_key=None,
        openai_base_url=None,
        semantic=False,
        retention_days=None,
        admins=[],
        bot_name=BOT_NAME,
    )


async def run_scenario(memory: MemoryEngine, scenario: Scenario, org: str) -> list[Outcome]:
    """Play one scenario in its own org of ``memory``; one outcome per question."""
    from bot.app import PLATFORMS
    from bot.core.conversation import Conversation

    config = settings()
    responder = _Recording(None, bot_name=BOT_NAME)
    core = Conversation(memory, responder, config, platforms=PLATFORMS)
    clock = utcnow() - timedelta(days=1)
    step = timedelta(minutes=3)
    n = 0

    def place(channel: str) -> Place:
        return Place(
            platform="console",
            org_id=org,
            channel_id=console_id(channel),
            channel_name=channel,
            bot_id=BOT,
        )

    async def say(where: Place, name: str, text: str, addressed: bool) -> None:
        nonlocal n
        n += 1
        author = Author(console_id(name), name)
        word, _, rest = text.partition(" ")
        if word.startswith("/") and word[1:].lower() in COMMANDS:
            name_ = cast(CommandName, word[1:].lower())
            command = CommandEvent(where, author, name_, rest.strip(), is_channel_admin=False)
            await core.handle_command(command, _Quiet())
            return
        event = MessageEvent(where, author, text, f"m{n}", clock + n * step, addressed)
        await core.handle_message(event, _Quiet())

    for line in scenario.chat:
        where = place(line.channel)
        if line.speaker == "@bot" or line.speaker.startswith("agent:"):
            n += 1
            producer = BOT if line.speaker == "@bot" else line.speaker
            name = BOT_NAME if line.speaker == "@bot" else line.speaker.split(":", 1)[1]
            await memory.add(
                [
                    Episode(
                        org_id=org,
                        project_id=config.project,
                        producer=producer,
                        produced_for=where.channel_id,
                        role=line.role,
                        content=line.text,
                        created_at=clock + n * step,
                        platform="console" if line.speaker == "@bot" else "api",
                        source_id=f"m{n}",
                        metadata={NAME_KEY: name},
                    )
                ]
            )
        else:
            await say(where, line.speaker, line.text, addressed=False)
    await memory.wait_indexed()

    outcomes = []
    for q in scenario.questions:
        where = place(q.channel)
        scope = Scope(org_id=org, project_id=config.project, produced_for=where.channel_id)
        plain = await memory.search(q.text, scope, top_k=BASELINE_TOP_K)
        top = plain.hits[0].episode if plain.hits else None
        responder.last = None
        await say(where, q.asker, q.text, addressed=True)
        await memory.wait_indexed()
        text, ep = _first(responder.last)
        outcomes.append(
            Outcome(
                scenario.name,
                q,
                text,
                _asks(ep),
                top.content if top else None,
                _asks(top),
            )
        )
    await core.close()
    return outcomes


async def run(scenarios: Sequence[Scenario], embedder: Embedder | str = "hash") -> list[Outcome]:
    """Each scenario on a memory of its own, so that none changes another's word statistics."""
    outcomes: list[Outcome] = []
    for scenario in scenarios:
        with tempfile.TemporaryDirectory(prefix="cm-bench-answers-") as tmp:
            memory = await MemoryEngine.open(Path(tmp), embedder)
            try:
                outcomes += await run_scenario(memory, scenario, ORG)
            finally:
                await memory.close()
    return outcomes


@dataclass
class Score:
    questions: int = 0
    correct: int = 0
    superseded: int = 0
    asks: int = 0
    misses: list[str] = field(default_factory=list)

    def share(self, n: int) -> float:
        return n / self.questions if self.questions else 0.0


def score(outcomes: Sequence[Outcome]) -> dict[str, Score]:
    scores = {"search": Score(), "bot": Score()}
    for o in outcomes:
        for name, first, first_asks in (
            ("search", o.search, o.search_asks),
            ("bot", o.bot, o.bot_asks),
        ):
            s = scores[name]
            s.questions += 1
            s.correct += o.correct(first)
            s.superseded += o.superseded(first)
            s.asks += first_asks
            if not o.correct(first):
                s.misses.append(
                    f"[{o.scenario}] {o.question.asker}: {o.question.text} -> {first!r}"
                    f" (expected {o.question.expect!r})"
                )
    return scores


def report(outcomes: Sequence[Outcome], embedder: str, scenarios: int) -> dict[str, Any]:
    scores = score(outcomes)
    return {
        "scenarios": scenarios,
        "questions": len(outcomes),
        "embedder": embedder,
        **{
            name: {
                "first_correct": round(s.share(s.correct), 4),
                "superseded_first": round(s.share(s.superseded), 4),
                "question_or_bot_first": round(s.share(s.asks), 4),
                "misses": s.misses,
            }
            for name, s in scores.items()
        },
    }


def format_report(result: dict[str, Any], *, misses: bool = True) -> str:
    n = result["questions"]
    lines = [
        f"bench answers: {result['scenarios']} scenarios, {n} questions, embedder"
        f" {result['embedder']}, no LLM",
        f"{'':28}{'first cited is expected':>26}{'superseded first':>19}{'question/bot first':>21}",
    ]
    for name, label in (("search", "plain search order"), ("bot", "channelmind answers")):
        r = result[name]
        lines.append(
            f"{label:28}{_pct(r['first_correct'], n):>26}{_pct(r['superseded_first'], n):>19}"
            f"{_pct(r['question_or_bot_first'], n):>21}"
        )
    if misses and result["bot"]["misses"]:
        lines.append("channelmind misses:")
        lines += [f"  {m}" for m in result["bot"]["misses"]]
    return "\n".join(lines)


def _pct(share: float, n: int) -> str:
    return f"{round(share * n)}/{n} ({share:.1%})"


def main(folder: Path, embedder: str, as_json: bool) -> int:
    from memory.embedders import make_embedder

    scenarios = load_all(folder)
    outcomes = asyncio.run(run(scenarios, make_embedder(embedder)))
    result = report(outcomes, embedder, len(scenarios))
    print(json.dumps(result) if as_json else format_report(result))
    return 0
