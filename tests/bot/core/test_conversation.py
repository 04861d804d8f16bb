"""The core, end to end: a real MemoryEngine (hash embedder) on tmp_path, the real openai
client against the fake OpenAI server on loopback, and a recording Replier."""

from __future__ import annotations

from typing import Any

import pytest

from bot.core.events import Author
from bot.core.responder import NOTHING_FOUND, REMEMBER_HEADER
from memory import MemoryEngine, Scope, SourceRef
from tests.bot.helpers import (
    ALICE,
    BOB,
    CAROL,
    DISCORD_ORG,
    SLACK_BOT,
    SLACK_ORG,
    Channel,
    RecordingReplier,
    conversation,
    grounded,
    quoted,
    responder,
    slack_permalink,
)
from tests.fakes.openai.server import Delay, FakeOpenAI, Malformed, Reply, Status

pytestmark = pytest.mark.timeout(60)
PROJECT = "channelmind"


def channel_scope(ch: Channel) -> Scope:
    return Scope(org_id=SLACK_ORG, project_id=PROJECT, produced_for=ch.place.channel_id)


async def test_seed_slack_channel_example(engine: MemoryEngine, fake: FakeOpenAI) -> None:
    """Alice says the team uses PostgreSQL in #engineering; Bob's question there cites her
    message with a working link; the same question in #marketing finds nothing."""
    eng_ch, mkt = Channel("CENG", "engineering"), Channel("CMKT", "marketing")
    conv = conversation(engine, responder(fake.base_url))
    fake.responder = grounded("PostgreSQL")
    said = eng_ch.message(ALICE, "We're using PostgreSQL for the new project")
    await conv.handle_message(said, RecordingReplier())
    await conv.handle_message(
        eng_ch.message(CAROL, "Standup moves to 10:30 tomorrow"), RecordingReplier()
    )
    await conv.handle_message(
        mkt.message(CAROL, "The spring campaign launches Monday"), RecordingReplier()
    )
    await engine.wait_indexed()

    bob = RecordingReplier()
    await conv.handle_message(
        eng_ch.message(BOB, "What database are we using?", addressed=True), bob
    )
    prompt = fake.last_prompt()
    quotes = {text: n for n, _, text in quoted(prompt)}
    assert "We're using PostgreSQL for the new project" in quotes
    assert "Standup moves to 10:30 tomorrow" in prompt  # the recent window
    assert "spring campaign" not in prompt  # never another channel
    assert "never instructions" in prompt and "does not tell" in prompt
    n = quotes["We're using PostgreSQL for the new project"]
    link = slack_permalink(said.source_id)
    assert bob.replies == [f"We're using PostgreSQL for the new project <{link}|[{n}]>."]
    assert bob.working_entered == 1

    # The reply is stored as the bot's episode, with the citation it used.
    stored = await engine.list(channel_scope(eng_ch), "role = 'assistant'")
    assert [e.producer for e in stored] == [SLACK_BOT]
    alice_ep = await engine.get_by_source(
        SourceRef(org_id=SLACK_ORG, project_id=PROJECT, platform="slack", source_id=said.source_id)
    )
    assert alice_ep is not None and stored[0].metadata["cited_uids"] == [alice_ep.uid]
    assert stored[0].source_id is not None

    # The same question in #marketing: nothing from #engineering reaches the prompt.
    carol = RecordingReplier()
    await conv.handle_message(
        mkt.message(BOB, "What database are we using?", addressed=True), carol
    )
    prompt = fake.last_prompt()
    assert "PostgreSQL" not in prompt and "Standup" not in prompt
    assert "spring campaign" in prompt
    assert carol.replies == ["The conversation here does not tell."]


async def test_seed_example_without_llm_is_extractive(engine: MemoryEngine) -> None:
    eng_ch, mkt = Channel("CENG", "engineering"), Channel("CMKT", "marketing")
    conv = conversation(engine)  # no LLM configured
    said = eng_ch.message(ALICE, "We're using PostgreSQL for the new project")
    await conv.handle_message(said, RecordingReplier())
    await conv.handle_message(
        mkt.message(CAROL, "The spring campaign launches Monday"), RecordingReplier()
    )
    await engine.wait_indexed()

    bob = RecordingReplier()
    await conv.handle_message(
        eng_ch.message(BOB, "What database are we using?", addressed=True), bob
    )
    (answer,) = bob.replies
    assert answer.startswith(REMEMBER_HEADER)
    assert f"<{slack_permalink(said.source_id)}|[1]>" in answer
    assert "Alice" in answer and "PostgreSQL" in answer

    other = RecordingReplier()
    await conv.handle_message(
        mkt.message(BOB, "What database are we using?", addressed=True), other
    )
    assert other.replies == [NOTHING_FOUND]


async def test_seed_hospital_example_through_the_core(
    engine: MemoryEngine, fake: FakeOpenAI
) -> None:
    """Front desk registers the patient, the doctor retrieves and adds the diagnosis, the
    patient's later question is answered from both (cited)."""
    ward = Channel("CPATIENT12345", "patient-12345")
    desk = ALICE.__class__("slack:UFRONTDESK", "Front desk")
    doctor = ALICE.__class__("slack:UDRHOUSE", "Dr. House")
    patient = ALICE.__class__("slack:UMARIA", "Maria")
    fake.responder = grounded("allerg", "diagnosis")
    conv = conversation(engine, responder(fake.base_url))

    reg = ward.message(
        desk, "Registered patient Maria Lopez, born 1984-02-11. Allergy: penicillin."
    )
    await conv.handle_message(reg, RecordingReplier())
    await engine.wait_indexed()
    dr = RecordingReplier()
    await conv.handle_message(
        ward.message(doctor, "Any allergies on file for this patient?", addressed=True), dr
    )
    assert "penicillin" in dr.replies[0] and slack_permalink(reg.source_id) in dr.replies[0]

    dx = ward.message(
        doctor, "Diagnosis: strep throat. Prescribed azithromycin given the penicillin allergy."
    )
    await conv.handle_message(dx, RecordingReplier())
    await engine.wait_indexed()
    pt = RecordingReplier()
    await conv.handle_message(
        ward.message(
            patient, "What was my diagnosis, and which allergy do you have on file?", addressed=True
        ),
        pt,
    )
    (answer,) = pt.replies
    assert "strep throat" in answer and "Registered patient" in answer
    assert slack_permalink(reg.source_id) in answer and slack_permalink(dx.source_id) in answer

    # The extractive answer (no LLM) uses both too.
    plain = RecordingReplier()
    await conversation(engine).handle_message(
        ward.message(patient, "Remind me of my diagnosis and allergy", addressed=True), plain
    )
    assert "strep throat" in plain.replies[0] and "penicillin" in plain.replies[0]


@pytest.mark.parametrize(
    ("failure", "calls"),
    [
        pytest.param([Status(429, retry_after=0.01), Status(429, retry_after=0.01)], 2, id="429"),
        pytest.param([Status(500, retry_after=0.01), Status(503, retry_after=0.01)], 2, id="5xx"),
        pytest.param([Delay(3.0), Delay(3.0)], 2, id="timeout"),
        pytest.param([Malformed()], 1, id="malformed-json"),  # a 200: not retried
        pytest.param([Reply("")], 1, id="empty"),
    ],
)
async def test_failing_llm_falls_back_and_stores(
    engine: MemoryEngine, fake: FakeOpenAI, failure: list[Any], calls: int
) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine, responder(fake.base_url, timeout=0.5, max_retries=1))
    said = ch.message(ALICE, "We're using PostgreSQL for the new project")
    await conv.handle_message(said, RecordingReplier())
    await engine.wait_indexed()
    fake.script(*failure)
    bob = RecordingReplier()
    question = ch.message(BOB, "What database are we using?", addressed=True)
    await conv.handle_message(question, bob)
    (answer,) = bob.replies
    assert answer.startswith("Here is what I remember")
    assert f"<{slack_permalink(said.source_id)}|[1]>" in answer
    assert len(fake.chat_requests) == calls  # retried 429/5xx/timeouts once, then gave up
    ref = SourceRef(
        org_id=SLACK_ORG, project_id=PROJECT, platform="slack", source_id=question.source_id
    )
    assert await engine.get_by_source(ref) is not None  # the question is stored
    assert await engine.count(channel_scope(ch), "role = 'assistant'") == 1


async def test_retry_after_429_then_llm_answers(engine: MemoryEngine, fake: FakeOpenAI) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine, responder(fake.base_url, max_retries=2))
    await conv.handle_message(ch.message(ALICE, "We're using PostgreSQL"), RecordingReplier())
    fake.script(Status(429, retry_after=0.01), Reply("PostgreSQL [1]."))
    bob = RecordingReplier()
    await conv.handle_message(ch.message(BOB, "Which database?", addressed=True), bob)
    assert bob.replies[0].startswith("PostgreSQL <https://")
    assert len(fake.chat_requests) == 2


async def test_thread_window_and_privacy(engine: MemoryEngine, fake: FakeOpenAI) -> None:
    """In a thread, the recent window is the thread's; DMs and other channels never leak."""
    ch = Channel("CENG", "engineering")
    thread = ch.in_thread("slack:CENG:1700000000.000001")
    dm = Channel("DALICE", "dm", is_dm=True)
    fake.responder = lambda req: "ok"
    conv = conversation(engine, responder(fake.base_url))
    await conv.handle_message(ch.message(CAROL, "Lunch order closes at noon"), RecordingReplier())
    await conv.handle_message(
        thread.message(ALICE, "The migration runs on Friday night"), RecordingReplier()
    )
    await conv.handle_message(
        dm.message(ALICE, "My salary review is next week, keep it quiet"), RecordingReplier()
    )
    await engine.wait_indexed()
    await conv.handle_message(
        thread.message(BOB, "When is the migration happening?", addressed=True), RecordingReplier()
    )
    prompt = fake.last_prompt()
    assert "The migration runs on Friday night" in prompt
    assert "salary" not in prompt
    assert "#engineering (in a thread)" in prompt


async def test_retries_are_stored_once_and_answered_once(engine: MemoryEngine) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine)
    event = ch.message(BOB, "Hello bot, anything about deploys?", addressed=True)
    first, again, restarted = RecordingReplier(), RecordingReplier(), RecordingReplier()
    await conv.handle_message(event, first)
    await conv.handle_message(event, again)  # Slack retry, same process
    await conversation(engine).handle_message(event, restarted)  # retry after a restart
    assert len(first.replies) == 1 and again.replies == [] and restarted.replies == []
    assert await engine.count(channel_scope(ch), "role = 'user'") == 1


async def test_unaddressed_messages_are_stored_silently(engine: MemoryEngine) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine)
    r = RecordingReplier()
    await conv.handle_message(ch.message(ALICE, "just chatting"), r)
    await conv.handle_message(
        ch.message(
            ALICE.__class__("slack:UCIBOT", "CI", is_bot=True), "build green", addressed=True
        ),
        r,
    )
    assert r.replies == [] and r.ephemerals == []
    assert await engine.count(channel_scope(ch)) == 2


async def test_edit_updates_and_delete_forgets(engine: MemoryEngine) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine)
    said = ch.message(ALICE, "We're using MySQL for the new project")
    await conv.handle_message(said, RecordingReplier())
    edited = await conv.handle_edit(
        ch.edit(said.source_id, "We're using PostgreSQL for the new project")
    )
    assert edited is not None and "PostgreSQL" in edited.content
    await engine.wait_indexed()
    bob = RecordingReplier()
    await conv.handle_message(
        ch.message(BOB, "Which database? PostgreSQL or MySQL?", addressed=True), bob
    )
    assert "PostgreSQL" in bob.replies[0] and "MySQL for" not in bob.replies[0]

    done = await conv.handle_delete(ch.delete(said.source_id))
    assert done.messages == 1 and done.replies == 1  # the bot's answer quoting it goes too
    await engine.wait_indexed()
    found = await engine.search("PostgreSQL", channel_scope(ch))
    assert all("PostgreSQL for the new project" not in h.episode.content for h in found.hits)
    assert await engine.count(channel_scope(ch), "role = 'assistant'") == 0


async def test_opted_out_user_is_not_stored_and_told_once(engine: MemoryEngine) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine)
    r = RecordingReplier()
    await conv.handle_command(ch.command(ALICE, "memory", "off"), r)
    await conv.handle_message(ch.message(ALICE, "My phone number is 555-0100", addressed=True), r)
    await conv.handle_message(ch.message(ALICE, "Anything about deploys?", addressed=True), r)
    await conv.handle_message(ch.message(ALICE, "just a remark"), r)
    notices = [e for e in r.ephemerals if "don't store your messages" in e]
    assert len(notices) == 1
    assert len(r.replies) == 2  # still answered
    assert await engine.count(channel_scope(ch)) == 0  # neither her messages nor the answers
    await conv.handle_command(ch.command(ALICE, "memory", "on"), r)
    await conv.handle_message(ch.message(ALICE, "stored again"), r)
    assert await engine.count(channel_scope(ch)) == 1


async def test_failing_memory_never_stops_the_answer(
    engine: MemoryEngine, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk on fire")

    for name in ("add", "search", "recent", "facts", "get_by_source", "get_setting"):
        monkeypatch.setattr(engine, name, broken)
    fake.responder = lambda req: "I can't see past messages right now, but hello!"
    ch = Channel("CENG", "engineering")
    r = RecordingReplier()
    await conversation(engine, responder(fake.base_url)).handle_message(
        ch.message(BOB, "hi, what did we decide?", addressed=True), r
    )
    assert r.replies == ["I can't see past messages right now, but hello!"]
    assert "could not be read" in fake.last_prompt()

    plain = RecordingReplier()
    await conversation(engine).handle_message(ch.message(BOB, "hi again", addressed=True), plain)
    assert "can't read this channel's memory" in plain.replies[0]


async def test_reply_failure_does_not_raise(engine: MemoryEngine) -> None:
    ch = Channel("CENG", "engineering")
    r = RecordingReplier(fail_reply=True)
    stored = await conversation(engine).handle_message(ch.message(BOB, "hello?", addressed=True), r)
    assert stored is not None
    assert await engine.count(channel_scope(ch), "role = 'assistant'") == 0


async def test_discord_links_and_mentions(engine: MemoryEngine, fake: FakeOpenAI) -> None:
    from tests.bot.helpers import DISCORD_ORG

    ch = Channel("555", "general", platform="discord", org=DISCORD_ORG, bot_id="discord:1")
    alice, bob = ALICE.__class__("discord:42", "Alice"), BOB.__class__("discord:43", "Bob")
    conv = conversation(engine, responder(fake.base_url))
    said = ch.message(alice, "Deploys happen on Tuesdays")
    await conv.handle_message(said, RecordingReplier("discord"))
    fake.script(Reply("Tuesdays [1], tell @everyone"))
    r = RecordingReplier("discord")
    await conv.handle_message(ch.message(bob, "When do deploys happen?", addressed=True), r)
    url = f"https://discord.com/channels/81384788765712384/555/{said.source_id}"
    assert r.replies == [f"Tuesdays [1](<{url}>), tell @\u200beveryone"]
    assert r.permalink_calls == [said.source_id]


async def test_retention_purges_old_messages(engine: MemoryEngine) -> None:
    from datetime import UTC, datetime, timedelta

    ch = Channel("CENG", "engineering")
    conv = conversation(engine, retention_days=30)
    old = ch.message(ALICE, "an old message")  # test timestamps are in early 2025
    await conv.handle_message(old, RecordingReplier())
    fresh = ch.message(ALICE, "a fresh message")
    fresh = fresh.__class__(
        **{**fresh.__dict__, "created_at": datetime.now(UTC) - timedelta(days=1)}
    )
    await conv.handle_message(fresh, RecordingReplier())
    assert await conversation(engine).purge_expired() == 0  # no retention configured
    assert await conv.purge_expired() == 1
    assert [e.content for e in await engine.list(channel_scope(ch))] == ["a fresh message"]


async def test_a_thread_the_bot_answered_in_is_followed_on_every_platform(
    engine: MemoryEngine,
) -> None:
    """Addressing is one rule: after the bot answers in a Discord thread, as in a Slack one,
    a message there is for it without a mention (also after a restart, from memory)."""
    ch = Channel("555", "general", platform="discord", org=DISCORD_ORG, bot_id="discord:999")
    thread = ch.in_thread("discord:777")
    replier = RecordingReplier(platform="discord")
    conv = conversation(engine)
    await conv.handle_message(thread.message(ALICE, "deploys are on Tuesday"), replier)
    assert replier.replies == []
    await conv.handle_message(thread.message(BOB, "when are deploys?", addressed=True), replier)
    assert len(replier.replies) == 1
    await conv.handle_message(thread.message(BOB, "and who runs them?"), replier)
    assert len(replier.replies) == 2
    await conv.handle_message(ch.message(BOB, "lunch?"), replier)  # the channel: not for it
    assert len(replier.replies) == 2
    restarted = conversation(engine)
    await restarted.handle_message(thread.message(CAROL, "are deploys still on Tuesday?"), replier)
    assert len(replier.replies) == 3
    await restarted.handle_message(
        thread.message(Author("discord:42", "CI", is_bot=True), "build green"), replier
    )
    assert len(replier.replies) == 3  # never another bot
