"""/recall, /forget, /remember, /memory through the core, on a real engine."""

from __future__ import annotations

import pytest

from bot.app import PLATFORMS
from bot.core import commands
from bot.core.events import Author, Place
from bot.platforms.base import MessageRef, Platforms
from memory import MemoryEngine, Scope, SourceRef
from tests.bot.helpers import (
    ALICE,
    BOB,
    CAROL,
    DISCORD_GUILD,
    DISCORD_ORG,
    SLACK_ORG,
    Channel,
    RecordingReplier,
    conversation,
    grounded,
    responder,
    slack_permalink,
)
from tests.fakes.openai.server import FakeOpenAI

pytestmark = pytest.mark.timeout(60)
PROJECT = "channelmind"


def scope(**narrow: str) -> Scope:
    return Scope(org_id=SLACK_ORG, project_id=PROJECT, **narrow)


def ref(source_id: str, platform: str = "slack", org: str = SLACK_ORG) -> SourceRef:
    return SourceRef(org_id=org, project_id=PROJECT, platform=platform, source_id=source_id)


# -- /recall ----------------------------------------------------------------------------------


async def test_recall_lists_author_date_and_link(engine: MemoryEngine) -> None:
    ch, other = Channel("CENG", "engineering"), Channel("CMKT", "marketing")
    conv = conversation(engine)
    said = ch.message(ALICE, "We're using PostgreSQL for the new project")
    await conv.handle_message(said, RecordingReplier())
    await conv.handle_message(ch.message(BOB, "Lunch at noon"), RecordingReplier())
    await conv.handle_message(
        other.message(CAROL, "PostgreSQL ads budget approved"), RecordingReplier()
    )
    await engine.wait_indexed()

    r = RecordingReplier()
    text = await conv.handle_command(ch.command(BOB, "recall", "PostgreSQL"), r)
    assert r.ephemerals == [text] and r.replies == []
    assert text.startswith("What I remember about “PostgreSQL” in #engineering:")
    day = said.created_at.strftime("%Y-%m-%d")
    assert f"• Alice, <{slack_permalink(said.source_id)}|{day}>: We're using PostgreSQL" in text
    assert "ads budget" not in text and "Lunch" not in text

    empty = await conv.handle_command(ch.command(BOB, "recall", "kubernetes"), RecordingReplier())
    assert empty == "I don't remember anything about “kubernetes” in #engineering."
    usage = await conv.handle_command(ch.command(BOB, "recall", ""), RecordingReplier())
    assert usage.startswith("Usage: /recall")


# -- /forget me -------------------------------------------------------------------------------


async def test_forget_me_leaves_nothing_of_the_user(engine: MemoryEngine) -> None:
    eng_ch, mkt = Channel("CENG", "engineering"), Channel("CMKT", "marketing")
    conv = conversation(engine)
    await conv.handle_message(
        eng_ch.message(ALICE, "My favourite editor is Helix"), RecordingReplier()
    )
    await conv.handle_message(
        mkt.message(ALICE, "Helix keybindings cheat sheet is pinned"), RecordingReplier()
    )
    await conv.handle_message(
        eng_ch.message(BOB, "Deploy freeze starts Friday"), RecordingReplier()
    )
    await conv.handle_command(
        eng_ch.command(ALICE, "remember", "editor: Helix"), RecordingReplier()
    )
    await engine.wait_indexed()
    # Alice asks the bot; Bob's question makes the bot quote Alice.
    await conv.handle_message(
        eng_ch.message(ALICE, "What about the deploy freeze?", addressed=True), RecordingReplier()
    )
    await conv.handle_message(
        eng_ch.message(BOB, "Which editor does Helix mean here?", addressed=True),
        RecordingReplier(),
    )
    assert await engine.count(scope(producer=ALICE.id)) == 3

    text = await conv.handle_command(mkt.command(ALICE, "forget", "me"), RecordingReplier())
    assert text == (
        "Done. I forgot everything you said in this workspace: 3 messages and 1 fact,"
        " plus 2 bot answers that used them."
    )
    assert await engine.count(scope(producer=ALICE.id)) == 0
    everything = await engine.list(scope(), page_size=1000)
    assert all(e.producer != ALICE.id for e in everything)
    assert not any(w in e.content for e in everything for w in ("favourite", "keybindings"))
    assert [e.content for e in everything] == [
        "Deploy freeze starts Friday",
        "Which editor does Helix mean here?",
    ]
    await engine.wait_indexed()
    for ch in (eng_ch, mkt):
        hits = await engine.search(
            "Helix editor keybindings", scope(produced_for=ch.place.channel_id)
        )
        assert all(
            h.episode.producer != ALICE.id and "favourite" not in h.episode.content
            for h in hits.hits
        )
    assert await engine.facts(SLACK_ORG, PROJECT, subject=ALICE.id, include_superseded=True) == []

    again = await conv.handle_command(mkt.command(ALICE, "forget", "me"), RecordingReplier())
    assert again == "I had nothing from you in this workspace: nothing to forget."


# -- /forget <message> ------------------------------------------------------------------------


async def test_forget_own_message_by_slack_permalink(engine: MemoryEngine) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine)
    mine = ch.message(ALICE, "Oops, the staging password is hunter2")
    theirs = ch.message(BOB, "Please don't post passwords")
    for event in (mine, theirs):
        await conv.handle_message(event, RecordingReplier())

    refused = await conv.handle_command(
        ch.command(ALICE, "forget", slack_permalink(theirs.source_id)), RecordingReplier()
    )
    assert "not yours" in refused
    assert await engine.get_by_source(ref(theirs.source_id)) is not None

    done = await conv.handle_command(
        ch.command(ALICE, "forget", f"<{slack_permalink(mine.source_id)}>"), RecordingReplier()
    )
    assert done == "Done. I forgot 1 message and 0 facts."
    assert await engine.get_by_source(ref(mine.source_id)) is None

    gone = await conv.handle_command(
        ch.command(ALICE, "forget", slack_permalink(mine.source_id)), RecordingReplier()
    )
    assert "no such message" in gone


async def test_forget_this_message_shortcut(engine: MemoryEngine) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine)
    mine, theirs = ch.message(ALICE, "typo-filled message"), ch.message(BOB, "Bob's message")
    for event in (mine, theirs):
        await conv.handle_message(event, RecordingReplier())
    refused = await conv.handle_command(
        ch.command(ALICE, "forget", target=theirs.source_id), RecordingReplier()
    )
    assert "not yours" in refused
    done = await conv.handle_command(
        ch.command(ALICE, "forget", target=mine.source_id), RecordingReplier()
    )
    assert done.startswith("Done. I forgot 1 message")
    assert await engine.count(scope()) == 1


async def test_forget_by_discord_jump_url(engine: MemoryEngine) -> None:
    ch = Channel("555", "general", platform="discord", org=DISCORD_ORG, bot_id="discord:1")
    alice = Author("discord:42", "Alice")
    conv = conversation(engine)
    said = ch.message(alice, "my address is 1 Main St")
    await conv.handle_message(said, RecordingReplier("discord"))
    other_guild = f"https://discord.com/channels/999/555/{said.source_id}"
    refused = await conv.handle_command(
        ch.command(alice, "forget", other_guild), RecordingReplier("discord")
    )
    assert "another server" in refused
    slack_link = await conv.handle_command(
        ch.command(alice, "forget", "https://acme.slack.com/archives/C1/p1700000000000100"),
        RecordingReplier("discord"),
    )
    assert "from slack" in slack_link
    url = f"https://discord.com/channels/{DISCORD_GUILD}/555/{said.source_id}"
    done = await conv.handle_command(ch.command(alice, "forget", url), RecordingReplier("discord"))
    assert done.startswith("Done. I forgot 1 message")
    assert await engine.get_by_source(ref(said.source_id, "discord", DISCORD_ORG)) is None


def parse_message_ref(text: str, place: Place) -> MessageRef | None:
    """A message link or id as the core reads it, with every platform's links known."""
    return commands.parse_message_ref(text, place, Platforms(PLATFORMS))


def test_parse_message_refs() -> None:
    slack = Place(platform="slack", org_id=SLACK_ORG, channel_id="slack:CENG")
    discord = Place(platform="discord", org_id=DISCORD_ORG, channel_id="discord:555")
    link = "https://acme.slack.com/archives/C123ABC/p1700000000000100?thread_ts=1699999999.000200&cid=C123ABC"
    got = parse_message_ref(link, slack)
    assert got is not None and (got.platform, got.source_id) == (
        "slack",
        "C123ABC:1700000000.000100",
    )
    got = parse_message_ref(
        "<https://acme.slack.com/archives/C1/p1700000000000100|a message>", slack
    )
    assert got is not None and got.source_id == "C1:1700000000.000100"
    got = parse_message_ref("1700000000.000100", slack)
    assert got is not None and got.source_id == "CENG:1700000000.000100"
    got = parse_message_ref("https://discord.com/channels/1/2/3", discord)
    assert got is not None and (got.platform, got.source_id, got.guild) == ("discord", "3", "1")
    got = parse_message_ref("https://canary.discord.com/channels/@me/2/3", discord)
    assert got is not None and got.guild == "@me"
    assert parse_message_ref("https://example.com/x", slack) is None
    assert parse_message_ref("two words", slack) is None


# -- /forget channel --------------------------------------------------------------------------


async def test_forget_channel_needs_an_admin(engine: MemoryEngine) -> None:
    ch, other = Channel("CENG", "engineering"), Channel("CMKT", "marketing")
    conv = conversation(engine)
    await conv.handle_message(ch.message(ALICE, "Deploys on Tuesday"), RecordingReplier())
    await conv.handle_message(
        ch.message(BOB, "When are deploys?", addressed=True), RecordingReplier()
    )
    await conv.handle_message(other.message(CAROL, "Campaign on Monday"), RecordingReplier())
    await conv.handle_command(
        ch.command(ALICE, "remember", "role: release manager"), RecordingReplier()
    )

    refused = await conv.handle_command(ch.command(BOB, "forget", "channel"), RecordingReplier())
    assert refused.startswith("Only a channel admin can make me forget this whole channel.")
    assert await engine.count(scope(produced_for=ch.place.channel_id)) == 3

    done = await conv.handle_command(
        ch.command(CAROL, "forget", "channel", admin=True), RecordingReplier()
    )
    assert done == "Done. I forgot #engineering: 2 messages, 1 bot answer and 1 fact."
    assert await engine.count(scope(produced_for=ch.place.channel_id)) == 0
    assert await engine.facts(SLACK_ORG, PROJECT, produced_for=ch.place.channel_id) == []
    assert await engine.count(scope(produced_for=other.place.channel_id)) == 1


async def test_configured_admins_may_forget_a_channel(engine: MemoryEngine) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine, admins=[BOB.id])
    await conv.handle_message(ch.message(ALICE, "hello"), RecordingReplier())
    done = await conv.handle_command(ch.command(BOB, "forget", "channel"), RecordingReplier())
    assert done.startswith("Done. I forgot #engineering: 1 message")


async def test_admins_are_named_by_qualified_id_only(engine: MemoryEngine) -> None:
    """CHANNELMIND_ADMINS is one rule for every platform: a raw Slack id names no one."""
    ch = Channel("CENG", "engineering")
    conv = conversation(engine, admins=["UBOB"])
    await conv.handle_message(ch.message(ALICE, "hello"), RecordingReplier())
    refused = await conv.handle_command(ch.command(BOB, "forget", "channel"), RecordingReplier())
    assert refused.startswith("Only a channel admin")
    assert await engine.count(scope(produced_for=ch.place.channel_id)) == 1


# -- DMs --------------------------------------------------------------------------------------


async def test_a_dm_is_its_platforms_dm_org_and_forget_me_reaches_it(
    engine: MemoryEngine,
) -> None:
    ch, dm = Channel("CENG", "engineering"), Channel("DALICE", "dm", is_dm=True)
    conv = conversation(engine)
    await conv.handle_message(ch.message(ALICE, "Ship it on Friday"), RecordingReplier())
    asked = RecordingReplier()
    await conv.handle_message(dm.message(ALICE, "What do we ship on Friday?"), asked)
    assert asked.replies == ["The conversation in this channel does not tell me that."]
    dms = Scope(org_id="slack:dm", project_id=PROJECT)
    assert dm.place.org_id == "slack:dm" and await engine.count(dms) == 2  # asked, answered
    assert await engine.count(scope()) == 1  # the workspace never sees the DM

    done = await conv.handle_command(ch.command(ALICE, "forget", "me"), RecordingReplier())
    assert done == (
        "Done. I forgot everything you said in this workspace: 2 messages and 0 facts,"
        " plus 1 bot answer that used them."
    )
    assert await engine.count(dms) == 0 and await engine.count(scope()) == 0
    again = await conv.handle_command(dm.command(ALICE, "forget", "me"), RecordingReplier())
    assert again == "I had nothing from you in this conversation: nothing to forget."


# -- /remember, /memory -----------------------------------------------------------------------


async def test_remember_is_used_in_that_channel_only(engine: MemoryEngine) -> None:
    ch, other = Channel("CENG", "engineering"), Channel("CMKT", "marketing")
    async with FakeOpenAI() as fake:
        fake.responder = grounded("nothing")
        conv = conversation(engine, responder(fake.base_url))
        noted = await conv.handle_command(
            ch.command(ALICE, "remember", "role: backend developer"), RecordingReplier()
        )
        assert noted.startswith("Noted: “backend developer”.")
        await conv.handle_command(
            ch.command(ALICE, "remember", "role: tech lead"), RecordingReplier()
        )
        await conv.handle_command(
            ch.command(ALICE, "remember", "I prefer short answers"), RecordingReplier()
        )
        same = await conv.handle_command(
            ch.command(ALICE, "remember", "I prefer short answers"), RecordingReplier()
        )
        assert same.startswith("I already know that")

        await conv.handle_message(
            ch.message(ALICE, "what should I review today?", addressed=True), RecordingReplier()
        )
        prompt = fake.last_prompt()
        assert ': role: "tech lead"' in prompt and "I prefer short answers" in prompt
        assert "backend developer" not in prompt  # superseded
        await conv.handle_message(
            other.message(CAROL, "Campaign review at 3pm"), RecordingReplier()
        )
        await conv.handle_message(
            other.message(ALICE, "what should I review today?", addressed=True), RecordingReplier()
        )
        assert "Campaign review" in fake.last_prompt() and "tech lead" not in fake.last_prompt()

    facts = await engine.facts(SLACK_ORG, PROJECT, subject=ALICE.id, include_superseded=True)
    old = next(f for f in facts if f.value == "backend developer")
    assert old.superseded_at is not None and old.superseded_by is not None


async def test_memory_status_and_opt_out(engine: MemoryEngine) -> None:
    ch = Channel("CENG", "engineering")
    conv = conversation(engine, retention_days=90)
    await conv.handle_message(ch.message(ALICE, "first"), RecordingReplier())
    await conv.handle_message(ch.message(BOB, "second"), RecordingReplier())
    await conv.handle_command(ch.command(ALICE, "remember", "team: payments"), RecordingReplier())
    status = await conv.handle_command(ch.command(ALICE, "memory"), RecordingReplier())
    assert "Memory for you in this workspace: on." in status
    assert "1 message in this workspace (1 in #engineering), 1 fact about you" in status
    assert "#engineering: 2 messages remembered" in status
    assert "kept for 90 days" in status and "/memory off" in status

    off = await conv.handle_command(ch.command(ALICE, "memory", "off"), RecordingReplier())
    assert "won't store what you say" in off and "1 message" in off
    await conv.handle_message(ch.message(ALICE, "not kept"), RecordingReplier())
    refused = await conv.handle_command(ch.command(ALICE, "remember", "x: y"), RecordingReplier())
    assert "memory is off" in refused
    assert "OFF" in await conv.handle_command(ch.command(ALICE, "memory"), RecordingReplier())
    assert await engine.count(scope(producer=ALICE.id)) == 1
    on = await conv.handle_command(ch.command(ALICE, "memory", "on"), RecordingReplier())
    assert on.startswith("Memory is on again")
    bad = await conv.handle_command(ch.command(ALICE, "memory", "sideways"), RecordingReplier())
    assert bad.startswith("Usage: /memory")


async def test_commands_report_a_failing_memory(
    engine: MemoryEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(engine, "forget", broken)
    r = RecordingReplier()
    text = await conversation(engine).handle_command(
        Channel("C1", "x").command(ALICE, "forget", "me"), r
    )
    assert "unavailable" in text and r.ephemerals == [text]
