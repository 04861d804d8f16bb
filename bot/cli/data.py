"""``channelmind recall``, ``forget`` and ``export``: what the memory keeps, from the command
line (the data folder, or the server that owns it: :mod:`bot.memory_access`).

Ids: a bare name (``alice``, ``general``) means the console's user or channel
(``console:alice``); a platform-qualified id (``slack:U123``, ``discord:8138...``) is taken as
is, and then ``--org`` names its Slack team or Discord guild (``slack:T123``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import memory, org, qualify, run, settings


def cmd_recall(args: argparse.Namespace) -> int:
    from bot.core.channel_memory import ChannelMemory
    from bot.core.events import Place, platform_of
    from bot.core.responder import EARLIER
    from bot.platforms.console.adapter import console_id

    config = settings()
    channel = qualify(args.channel)

    async def go() -> int:
        org_id = org(args, channel)
        platform = platform_of(channel)
        bot = console_id(config.bot_name) if platform == "console" else None
        place = Place(platform=platform, org_id=org_id, channel_id=channel, bot_id=bot)
        async with memory(config) as mem:
            await mem.wait_indexed()
            found = await ChannelMemory(mem, config).evidence(
                " ".join(args.query), "", place, top_k=args.top_k
            )
        shown = [
            item
            for lead in found.leads
            for item in [(lead.key, ""), *((k, f"  {EARLIER} ") for k in lead.earlier)]
        ]
        hits = [(e, prefix) for key, prefix in shown if (e := found.episode(key)) is not None]
        if args.json:
            print(json.dumps([json.loads(e.model_dump_json()) for e, _ in hits], indent=2))
        elif not hits:
            print(f"nothing about that in {channel}")
        else:
            for ep, prefix in hits:
                link = f"  {ep.link}" if ep.link else ""
                print(
                    f"{prefix}{ep.created_at:%Y-%m-%d %H:%M} {ep.display_name}: {ep.content}{link}"
                )
        return 0

    return run(go())


def cmd_forget(args: argparse.Namespace) -> int:
    from bot.core.channel_memory import ChannelMemory, Forgotten
    from bot.core.events import Place, platform_of
    from memory import SourceRef

    config = settings()

    async def go() -> int:
        user = qualify(args.user) if args.user else ""
        channel = qualify(args.channel) if args.channel else ""
        org_id = org(args, user, channel)
        platform = platform_of(org_id)
        async with memory(config) as mem:
            channels = ChannelMemory(mem, config)
            if user:
                done = await channels.forget_user(org_id, user)
            elif channel:
                place = Place(platform=platform_of(channel), org_id=org_id, channel_id=channel)
                done = await channels.forget_channel(place)
            else:
                ref = SourceRef(
                    org_id=org_id,
                    project_id=config.project,
                    platform=platform,
                    source_id=args.message,
                )
                found = await mem.get_by_source(ref)
                done = await channels.forget_uids(org_id, [found.uid]) if found else Forgotten()
        print(f"forgot {done.describe()}")
        return 0

    return run(go())


def cmd_export(args: argparse.Namespace) -> int:
    from memory import Scope

    config = settings()

    async def go() -> int:
        user = qualify(args.user) if args.user else ""
        channel = qualify(args.channel) if args.channel else ""
        org_id = org(args, user, channel)
        out: dict[str, Any] = {"org_id": org_id}
        async with memory(config) as mem:
            if user:
                projects = sorted({p for _, p in await mem.list_projects(org_id)})
                scopes = [Scope(org_id=org_id, project_id=p, producer=user) for p in projects]
                out["user"] = user
            else:
                scopes = [Scope(org_id=org_id, project_id=config.project, produced_for=channel)]
                out["channel"] = channel
            episodes: list[Any] = []
            facts: list[Any] = []
            for scope in scopes:
                page = 0
                while rows := await mem.list(scope, page_size=1000, page_num=page):
                    episodes += [json.loads(e.model_dump_json()) for e in rows]
                    page += 1
                got = await mem.facts(
                    org_id,
                    scope.project_id,
                    subject=user or None,
                    produced_for=channel or None,
                    include_superseded=True,
                )
                facts += [json.loads(f.model_dump_json()) for f in got]
        out["episodes"] = episodes
        out["facts"] = facts
        exported.update(out)
        return 0

    exported: dict[str, Any] = {}
    status = run(go())
    if status:
        return status
    text = json.dumps(exported, indent=2, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        n, f = len(exported["episodes"]), len(exported["facts"])
        print(f"exported {n} messages and {f} facts to {args.out}")
    else:
        print(text)
    return 0


def add(sub: Any) -> None:
    rc = sub.add_parser("recall", help="what the memory holds about a query in a channel")
    rc.add_argument("query", nargs="+")
    rc.add_argument("--channel", default="general", help="a console name or slack:C... id")
    rc.add_argument("--org", help="the Slack team / Discord guild, e.g. slack:T0123")
    rc.add_argument("--top-k", type=int, default=5)
    rc.add_argument("--json", action="store_true")
    rc.set_defaults(func=cmd_recall)

    fg = sub.add_parser("forget", help="forget a user, a channel or one message")
    what = fg.add_mutually_exclusive_group(required=True)
    what.add_argument("--user", help="everything this user said in the org, and their facts")
    what.add_argument("--channel", help="everything said in this channel")
    what.add_argument("--message", help="one message, by its source id")
    fg.add_argument("--org", help="the Slack team / Discord guild, e.g. slack:T0123")
    fg.set_defaults(func=cmd_forget)

    ex = sub.add_parser("export", help="a user's or a channel's memory as JSON")
    who = ex.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--channel")
    ex.add_argument("--org", help="the Slack team / Discord guild, e.g. slack:T0123")
    ex.add_argument("--out", type=Path, help="write to this file instead of stdout")
    ex.set_defaults(func=cmd_export)
