"""``channelmind import slack|discord`` as a user runs it (a subprocess), on exports the tests
build, into a real embedded memory; then the memory is opened and checked record by record."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from memory import Episode, MemoryEngine, Scope, SourceRef
from tests.bot.importers.exports import (
    ALICE,
    BOB,
    BOT_ID,
    BOT_USER,
    CAROL,
    DM,
    GENERAL,
    RANDOM,
    SECRET,
    START,
    TEAM,
    SlackExportBuilder,
    dce_file,
    dce_message,
    dce_user,
    ts,
)

pytestmark = pytest.mark.timeout(240)

ORG = f"slack:{TEAM}"
PROJECT = "channelmind"


def cli(data_dir: Path, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CHANNELMIND_", "OPENAI_"))}
    environ.update(CHANNELMIND_DATA_DIR=str(data_dir), CHANNELMIND_EMBEDDER="hash", **env)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "import", *map(str, args), "--quiet"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=200,
        check=False,
    )


def count(output: str, label: str) -> int:
    for line in output.splitlines():
        if line.strip().startswith(label):
            return int(line.split(label, 1)[1].split()[0].replace(",", ""))
    raise AssertionError(f"no {label!r} line in:\n{output}")


async def episode(data_dir: Path, source: str, org: str = ORG, platform: str = "slack") -> Episode:
    async with await MemoryEngine.open(data_dir, "hash", background=False) as engine:
        found = await engine.get_by_source(
            SourceRef(org_id=org, project_id=PROJECT, platform=platform, source_id=source)
        )
    assert found is not None, f"{source} was not stored"
    return found


async def channel_count(data_dir: Path, org: str, channel: str) -> int:
    async with await MemoryEngine.open(data_dir, "hash", background=False) as engine:
        return await engine.count(Scope(org_id=org, project_id=PROJECT, produced_for=channel))


def workspace(n: int = 3000) -> tuple[SlackExportBuilder, dict[str, Any]]:
    """A workspace with several channels, threads, edits, bots (the bot's own answers too),
    housekeeping subtypes, files, a DM, a broken day file and ``n`` ordinary messages."""
    b = SlackExportBuilder()
    day0 = START
    people = [ALICE, BOB, CAROL]
    for i in range(n):
        when = day0 + timedelta(days=i % 25, seconds=i)
        b.say(
            "general",
            when,
            user=people[i % 3],
            ts=ts(when, i % 1000),
            text=f"status update number {i} about the <#C0RANDOM1|random> plans",
        )
    parent = b.say(
        "general",
        day0,
        user=ALICE,
        ts=ts(day0, 900_001),
        text="What did we decide about the vendor contract?",
        thread_ts=ts(day0, 900_001),
        reply_count=2,
    )
    reply = b.say(
        "general",
        day0,
        user=BOB,
        ts=ts(day0, 900_002),
        thread_ts=parent["ts"],
        text="We signed with <@U0ALICE01>'s pick, Initech",
    )
    edited = b.say(
        "general",
        day0,
        user=CAROL,
        ts=ts(day0, 900_003),
        text="The launch moves to Tuesday",
        edited={"user": CAROL, "ts": "1.0"},
    )
    own = b.say(
        "general",
        day0,
        user=BOT_USER,
        bot_id=BOT_ID,
        ts=ts(day0, 900_004),
        thread_ts=parent["ts"],
        text="You decided on Initech [1]",
    )
    other_bot = b.say(
        "general",
        day0,
        subtype="bot_message",
        bot_id="B0DEPLOY1",
        username="deploybot",
        ts=ts(day0, 900_005),
        text="Deployed v2.3",
    )
    shared = b.say(
        "general",
        day0,
        subtype="file_share",
        user=ALICE,
        ts=ts(day0, 900_006),
        text="numbers attached",
        files=[{"name": "q3.pdf", "title": "Q3 budget"}],
    )
    for k, sub in enumerate(("channel_join", "channel_leave", "channel_topic")):
        b.say("general", day0, subtype=sub, user=BOB, ts=ts(day0, 900_010 + k), text="x")
    b.say("general", day0, user=ALICE, text="no ts here")
    b.say("general", day0, ts=ts(day0, 900_020), text="no user here")
    b.say("random", day0, user=BOB, ts=ts(day0, 1), text="random chatter about lunch")
    b.say("secret", day0, user=CAROL, ts=ts(day0, 1), text="the private roadmap")
    dm = b.say(DM, day0, user=ALICE, ts=ts(day0, 1), text="a private question for the bot")
    b.broken["general/2000-01-01.json"] = b"{ this is not json"
    marks = dict(
        parent=parent,
        reply=reply,
        edited=edited,
        own=own,
        other_bot=other_bot,
        shared=shared,
        dm=dm,
    )
    return b, marks


async def test_a_slack_export_is_stored_as_the_live_adapter_stores_it(tmp_path: Path) -> None:
    builder, m = workspace()
    export = builder.zip(tmp_path / "export.zip")
    data = tmp_path / "data"
    async with await MemoryEngine.open(data, "hash", background=False) as engine:
        await engine.set_setting(ORG, PROJECT, f"slack:{CAROL}", "memory", "off")

    done = cli(data, "slack", export)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = done.stdout
    # 3,000 ordinary messages, a third each; Carol opted out (also of her edit and #secret).
    # Stored: Alice's and Bob's 2,000, the thread's question and reply, the bot's own answer,
    # the other bot, the file, #random and the DM.
    assert count(out, "stored") == 2000 + 7
    assert count(out, "opted out") == 1000 + 2
    assert "1 opted-out person" in out
    skipped = next(line for line in out.splitlines() if "skipped" in line)
    for kind in (
        "channel_join",
        "channel_leave",
        "channel_topic",
        "no ts",
        "no user",
        "day file not JSON",
    ):
        assert kind in skipped, skipped
    assert count(out, "skipped") == 6

    # One message of each kind, field by field.
    plain = await episode(data, f"{GENERAL}:{ts(START, 0)}")
    assert (plain.org_id, plain.producer, plain.produced_for, plain.role) == (
        ORG,
        f"slack:{ALICE}",
        f"slack:{GENERAL}",
        "user",
    )
    assert plain.thread_id is None and plain.platform == "slack"
    assert plain.metadata == {"display_name": "Alice", "is_dm": False}
    assert plain.content == "status update number 0 about the #random plans"
    assert plain.created_at.timestamp() == float(ts(START, 0))
    reply = await episode(data, f"{GENERAL}:{m['reply']['ts']}")
    assert reply.thread_id == f"slack:{m['parent']['ts']}"
    assert reply.content == "We signed with @Alice's pick, Initech"
    assert reply.metadata["display_name"] == "Bob Stone"  # real name when no display name
    own = await episode(data, f"{GENERAL}:{m['own']['ts']}")
    assert (own.role, own.producer) == ("assistant", f"slack:{BOT_USER}")
    assert own.metadata["display_name"] == "ChannelMind"
    bot = await episode(data, f"{GENERAL}:{m['other_bot']['ts']}")
    assert (bot.producer, bot.role) == ("slack:B0DEPLOY1", "user")
    assert bot.metadata["is_bot"] is True and bot.metadata["display_name"] == "deploybot"
    shared = await episode(data, f"{GENERAL}:{m['shared']['ts']}")
    assert shared.content == "numbers attached [file: Q3 budget]"
    dm = await episode(data, f"{DM}:{m['dm']['ts']}", org="slack:dm")
    assert dm.produced_for == f"slack:{DM}" and dm.metadata["is_dm"] is True
    assert await channel_count(data, ORG, f"slack:{DM}") == 0  # never in the workspace
    assert await channel_count(data, ORG, f"slack:{SECRET}") == 0  # Carol opted out
    assert await channel_count(data, ORG, f"slack:{RANDOM}") == 1

    # A second import of the same export changes nothing.
    before = await channel_count(data, ORG, f"slack:{GENERAL}")
    again = cli(data, "slack", export)
    assert again.returncode == 0, again.stderr
    assert count(again.stdout, "stored") == 0
    assert count(again.stdout, "already present") == count(out, "stored")
    assert await channel_count(data, ORG, f"slack:{GENERAL}") == before


async def test_choices_and_the_retention_apply(tmp_path: Path) -> None:
    builder, _ = workspace(300)
    export = builder.folder(tmp_path / "unzipped")
    data = tmp_path / "data"
    done = cli(data, "slack", export, "--channels", "random,#secret")
    assert done.returncode == 0, done.stderr
    assert count(done.stdout, "stored") == 2
    assert await channel_count(data, ORG, f"slack:{GENERAL}") == 0
    # Retention counts from a message's own time: 300 messages span 25 days.
    kept = cli(data, "slack", export, "--channels", "general", CHANNELMIND_RETENTION_DAYS="20")
    assert kept.returncode == 0, kept.stderr
    assert "older than the retention" in kept.stdout
    async with await MemoryEngine.open(data, "hash", background=False) as engine:
        rows = await engine.list(
            Scope(org_id=ORG, project_id=PROJECT, produced_for=f"slack:{GENERAL}"), page_size=1000
        )
    assert rows and min(r.created_at for r in rows) >= START + timedelta(days=9)
    since = cli(
        tmp_path / "d2", "slack", export, "--since", (START + timedelta(days=20)).date().isoformat()
    )
    assert since.returncode == 0, since.stderr
    assert 0 < count(since.stdout, "stored") < 200


@pytest.mark.parametrize(
    ("make", "says"),
    [
        ("truncated", "not a readable zip file"),
        ("not_export", "not a Slack workspace export"),
        ("no_team", "--team"),
        ("missing", "no such file"),
    ],
)
def test_bad_exports_are_one_line_and_status_2(tmp_path: Path, make: str, says: str) -> None:
    builder, _ = workspace(50)
    path = tmp_path / "export.zip"
    if make == "truncated":
        whole = builder.zip(tmp_path / "whole.zip").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif make == "not_export":
        path.write_bytes(SlackExportBuilder().zip(tmp_path / "x.zip").read_bytes())
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "hello")
    elif make == "no_team":
        builder.team = None
        for days in builder.days.values():
            for messages in days.values():
                for message in messages:
                    message.pop("team", None)
        builder.zip(path)
    done = cli(tmp_path / "data", "slack", path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("channelmind import: ") and says in lines[0], lines
    if make == "no_team":
        assert cli(tmp_path / "data", "slack", path, "--team", "T0GIVEN01").returncode == 0


async def test_discord_exports_are_stored_as_the_discord_adapter_stores_them(
    tmp_path: Path,
) -> None:
    guild, channel, thread, dm_channel = (
        "900000000000000001",
        "900000000000000010",
        "900000000000000020",
        "900000000000000030",
    )
    bot = dce_user("900000000000000099", "ChannelMind", bot=True)
    alice = dce_user("900000000000000100", "alice", "Alice A.")
    bob = dce_user("900000000000000200", "bob")
    t = START
    own = dce_message("910000000000000003", t, bot, "The vendor is Initech")
    messages: list[dict[str, Any]] = [
        dce_message(
            "910000000000000001", t, alice, "@ChannelMind who is the vendor?", mentions=[bot]
        ),
        dce_message(
            "910000000000000002",
            t,
            alice,
            "see the contract",
            attachments=[{"id": "1", "url": "x", "fileName": "contract.pdf", "fileSizeBytes": 10}],
        ),
        own,
        dce_message(
            "910000000000000004",
            t,
            bob,
            "thanks!",
            type="Reply",
            reference={"messageId": own["id"], "channelId": channel, "guildId": guild},
        ),
        dce_message("910000000000000005", t, alice, "", type="ThreadCreated"),
        dce_message("910000000000000006", t, bob, "joined", type="GuildMemberJoin"),
    ]
    general = dce_file(
        tmp_path / "general.json",
        guild=(guild, "Acme"),
        channel={"id": channel, "type": "GuildTextChat", "name": "general"},
        messages=messages,
    )
    in_thread = dce_file(
        tmp_path / "thread.json",
        guild=(guild, "Acme"),
        channel={
            "id": thread,
            "type": "GuildPublicThread",
            "name": "vendor talk",
            "categoryId": channel,
            "category": "general",
        },
        messages=[
            dce_message(
                "910000000000000007", t + timedelta(minutes=1), bob, "Initech signed on Monday"
            )
        ],
    )
    dm = dce_file(
        tmp_path / "dm.json",
        guild=("0", "Direct Messages"),
        channel={"id": dm_channel, "type": "DirectTextChat", "name": "alice"},
        messages=[dce_message("910000000000000008", t, alice, "just between us")],
    )
    junk = tmp_path / "junk.json"
    junk.write_text("{ not json", encoding="utf-8")
    data = tmp_path / "data"
    done = cli(data, "discord", general, in_thread, dm, junk)
    assert done.returncode == 0, done.stderr
    assert count(done.stdout, "stored") == 6
    assert "junk.json: skipped" in done.stdout
    assert "ThreadCreated" in done.stdout and "GuildMemberJoin" in done.stdout
    org = f"discord:{guild}"
    asked = await episode(data, "910000000000000001", org=org, platform="discord")
    assert asked.content == "who is the vendor?"
    assert asked.metadata == {
        "display_name": "Alice A.",
        "is_dm": False,
        "channel_name": "general",
        "permalink": f"https://discord.com/channels/{guild}/{channel}/910000000000000001",
        "mentions_bot": True,
    }
    assert (asked.producer, asked.produced_for) == (f"discord:{alice['id']}", f"discord:{channel}")
    files = await episode(data, "910000000000000002", org=org, platform="discord")
    assert files.content == "see the contract [file: contract.pdf]"
    mine = await episode(data, own["id"], org=org, platform="discord")
    assert (mine.role, mine.producer) == ("assistant", f"discord:{bot['id']}")
    thanks = await episode(data, "910000000000000004", org=org, platform="discord")
    assert thanks.metadata["mentions_bot"] is True  # a reply to the bot's message
    threaded = await episode(data, "910000000000000007", org=org, platform="discord")
    assert (
        threaded.thread_id == f"discord:{thread}" and threaded.produced_for == f"discord:{channel}"
    )
    assert threaded.link == f"https://discord.com/channels/{guild}/{thread}/910000000000000007"
    private = await episode(data, "910000000000000008", org="discord:dm", platform="discord")
    assert private.link == f"https://discord.com/channels/@me/{dm_channel}/910000000000000008"
    again = cli(data, "discord", general, in_thread, dm)
    assert count(again.stdout, "stored") == 0 and count(again.stdout, "already present") == 6
