"""``channelmind import slack`` and ``import discord``: history from platform exports, into the
memory (the data folder, or the server that owns it), stored exactly as the live bot stores it
(see :mod:`bot.importers`)."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import UsageError, indexed, memory, run, settings

if TYPE_CHECKING:
    from bot.importers.sink import Tally
    from memory import MemoryEngine
    from memory.client import MemoryClient


def _date(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since takes a date like 2025-01-31, not {text!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _names(text: str) -> frozenset[str]:
    return frozenset(n.strip().lstrip("#") for n in text.split(",") if n.strip())


def cmd_import(args: argparse.Namespace) -> int:
    from bot.core.channel_memory import ChannelMemory
    from bot.importers.discord_export import DiscordImport, import_discord
    from bot.importers.slack_export import ExportError, SlackImport, import_slack

    config = settings()
    progress = not args.quiet

    async def go() -> int:
        # Storing only: the embedding follows when the bot runs (or now, with --embed).
        async with memory(config, background=False) as mem:
            channels = ChannelMemory(mem, config)
            started = time.perf_counter()
            try:
                if args.platform == "slack":
                    options = SlackImport(
                        args.export,
                        team=args.team,
                        channels=args.channels,
                        since=args.since,
                        bot_user=args.bot_user,
                        progress=progress,
                    )
                    org, tally, notes = await import_slack(options, channels)
                    where = f"{org} (project {config.project})"
                else:
                    missing = [p for p in args.exports if not p.is_file()]
                    if missing:
                        raise UsageError(f"no such file: {missing[0]}")
                    d_options = DiscordImport(
                        args.exports, since=args.since, bot_user=args.bot_user, progress=progress
                    )
                    tally, notes = await import_discord(d_options, channels)
                    where = f"project {config.project}"
            except ExportError as exc:
                raise UsageError(str(exc)) from None
            _summary(tally, notes, where, time.perf_counter() - started)
            await _indexing(mem, embed=args.embed, progress=progress)
        return 0

    return run(go())


def _summary(tally: Tally, notes: list[str], where: str, seconds: float) -> None:
    rate = tally.seen / seconds if seconds > 0 else 0.0
    print(
        f"Imported into {where}: {tally.seen:,} messages read in {seconds:.1f} s"
        f" ({rate:,.0f} messages/s)"
    )
    for line in tally.lines():
        print(line)
    for note in notes:
        print(f"note: {note}")


async def _indexing(mem: MemoryEngine | MemoryClient, *, embed: bool, progress: bool) -> None:
    from bot.settings import mask_url
    from memory import MemoryEngine

    if isinstance(mem, MemoryEngine):
        await (_embed(mem, progress) if embed else _pending(mem))
        return
    if embed:  # the server embeds in the background; wait for it
        await indexed(mem)
        print(f"embedded by the memory server at {mask_url(mem.base_url)}")
    else:
        print(
            f"the memory server at {mask_url(mem.base_url)} embeds them in the background:"
            " keyword search finds them now, search by meaning as it goes"
        )


async def _pending(engine: MemoryEngine) -> None:
    pending = await engine.store.count_pending()
    if pending:
        print(
            f"{pending:,} messages wait to be embedded: keyword search finds them now; search"
            " by meaning follows as the bot (channelmind run) embeds them in the background,"
            " or run the import with --embed."
        )


async def _embed(engine: MemoryEngine, progress: bool) -> None:
    from tqdm import tqdm

    total = await engine.store.count_pending()
    with tqdm(total=total, unit="msg", desc="embedding", disable=not progress) as bar:
        while True:
            before = await engine.store.count_pending()
            if not await engine.index_step():
                break
            bar.update(before - await engine.store.count_pending())
    print(f"embedded {total:,} messages with {engine.embedder.fingerprint}")


def add(sub: Any) -> None:
    imp = sub.add_parser("import", help="import history from a Slack or Discord export")
    platforms = imp.add_subparsers(dest="platform", required=True)

    slack = platforms.add_parser("slack", help="a Slack workspace export (zip or folder)")
    slack.add_argument("export", type=Path, help="the export's .zip, or its unzipped folder")
    slack.add_argument("--team", help="the workspace id (T0123...), if the messages lack it")
    slack.add_argument(
        "--channels", type=_names, default=frozenset(), help="only these (names or ids): a,b"
    )
    discord = platforms.add_parser("discord", help="DiscordChatExporter JSON files")
    discord.add_argument("exports", type=Path, nargs="+", help="one JSON file per channel")
    for p in (slack, discord):
        p.add_argument("--since", type=_date, help="only messages from this date on")
        p.add_argument("--bot-user", help="the bot's user id there (found by its name if not)")
        p.add_argument("--embed", action="store_true", help="embed now instead of in the bot")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=cmd_import)
