"""``channelmind chat``, ``recall``, ``forget``, ``export`` and ``config``.

Registered by :func:`add_commands` from ``bot/cli.py``. Like the rest of the CLI, each command
imports what it needs when it runs, so that ``channelmind --help`` stays fast.

Ids: a bare name (``alice``, ``general``) means the console's user or channel
(``console:alice``); a platform-qualified id (``slack:U123``, ``discord:8138...``) is taken as
is, and then ``--org`` names its Slack team or Discord guild (``slack:T123``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memory import MemoryEngine
    from memory.interface import Memory

    from .conversation import Conversation
    from .settings import Settings


class UsageError(Exception):
    """A command line that cannot work; printed as one line, exit status 2."""


def _settings() -> Settings:
    from .settings import Settings

    return Settings()


def _qualify(value: str) -> str:
    from .console_adapter import console_id

    return value if ":" in value else console_id(value)


def _org(args: argparse.Namespace, *ids: str) -> str:
    from .console_adapter import ORG

    if args.org:
        return str(args.org)
    platforms = {i.split(":", 1)[0] for i in ids if i}
    if platforms <= {"console"}:
        return ORG
    raise UsageError("give --org: the Slack team or Discord guild, e.g. --org slack:T0123")


@asynccontextmanager
async def _engine(settings: Settings) -> AsyncIterator[MemoryEngine]:
    from memory import MemoryEngine

    engine = await MemoryEngine.open(settings=settings)
    try:
        yield engine
    finally:
        await engine.close()


def _run(coro: Any) -> int:
    try:
        result: int = asyncio.run(coro)
    except UsageError as exc:
        print(f"channelmind: {exc}", file=sys.stderr)
        return 2
    return result


# -- chat -------------------------------------------------------------------------------------


def build_conversation(settings: Settings, engine: Memory) -> Conversation:
    """The core on a memory (the embedded engine, or a MemoryClient of a memory server) with
    its responder and, when an LLM is configured and CHANNELMIND_SEMANTIC is on, semantic
    memory (sharing the responder's OpenAI-compatible client)."""
    from memory.semantic import SemanticMemory

    from .conversation import Conversation
    from .responder import Responder

    responder = Responder.from_settings(settings)
    semantic = None
    if settings.semantic and responder.client is not None:
        semantic = SemanticMemory(
            engine,
            responder.client,
            model=settings.llm_model,
            batch_messages=settings.semantic_batch_messages,
            batch_seconds=settings.semantic_batch_seconds,
            calls_per_minute=settings.semantic_calls_per_minute,
            timeout=settings.llm_timeout,
        )
    return Conversation(engine, responder, settings, semantic)


def cmd_chat(args: argparse.Namespace) -> int:
    from .console_adapter import ConsoleAdapter

    settings = _settings()
    if args.script is not None and not args.script.is_file():
        print(f"channelmind: no script at {args.script}", file=sys.stderr)
        return 2

    async def go() -> int:
        async with _engine(settings) as engine:
            conversation = build_conversation(settings, engine)
            try:
                await conversation.purge_expired()
                adapter = ConsoleAdapter(
                    conversation,
                    channel=args.channel,
                    bot_name=settings.bot_name,
                    out=sys.stdout,
                    # Deterministic demos: what was said is searchable by meaning at once.
                    after_each=engine.wait_indexed,
                )
                if args.script is not None:
                    lines = args.script.read_text(encoding="utf-8").splitlines()
                    await adapter.run_script(lines, args.user)
                else:  # pragma: no cover - needs a terminal
                    if not settings.llm_configured:
                        print("(no LLM configured: answers are extractive; see README)")
                    await adapter.run_interactive(args.user)
                if conversation.semantic is not None:
                    await conversation.semantic.flush(force=True)
            finally:
                await conversation.close()
        return 0

    return _run(go())


# -- recall / forget / export -----------------------------------------------------------------


def cmd_recall(args: argparse.Namespace) -> int:
    from .channel_memory import ChannelMemory
    from .events import Place

    settings = _settings()
    channel = _qualify(args.channel)

    async def go() -> int:
        org = _org(args, channel)
        place = Place(platform=channel.split(":", 1)[0], org_id=org, channel_id=channel)
        async with _engine(settings) as engine:
            await engine.wait_indexed()
            found = await ChannelMemory(engine, settings).search(
                " ".join(args.query), place, top_k=args.top_k
            )
        hits = [f.episode for f in found if f.relevant]
        if args.json:
            print(json.dumps([json.loads(e.model_dump_json()) for e in hits], indent=2))
        elif not hits:
            print(f"nothing about that in {channel}")
        else:
            for ep in hits:
                link = f"  {ep.link}" if ep.link else ""
                print(f"{ep.created_at:%Y-%m-%d %H:%M} {ep.display_name}: {ep.content}{link}")
        return 0

    return _run(go())


def cmd_forget(args: argparse.Namespace) -> int:
    from memory import SourceRef

    from .channel_memory import ChannelMemory, Forgotten
    from .events import Place

    settings = _settings()

    async def go() -> int:
        user = _qualify(args.user) if args.user else ""
        channel = _qualify(args.channel) if args.channel else ""
        org = _org(args, user, channel)
        platform = org.split(":", 1)[0]
        async with _engine(settings) as engine:
            memory = ChannelMemory(engine, settings)
            if user:
                done = await memory.forget_user(org, user)
            elif channel:
                place = Place(platform=channel.split(":", 1)[0], org_id=org, channel_id=channel)
                done = await memory.forget_channel(place)
            else:
                ref = SourceRef(
                    org_id=org,
                    project_id=settings.project,
                    platform=platform,
                    source_id=args.message,
                )
                found = await engine.get_by_source(ref)
                done = await memory.forget_uids(org, [found.uid]) if found else Forgotten()
        print(f"forgot {done.describe()}")
        return 0

    return _run(go())


def cmd_export(args: argparse.Namespace) -> int:
    from memory import Scope

    settings = _settings()

    async def go() -> int:
        user = _qualify(args.user) if args.user else ""
        channel = _qualify(args.channel) if args.channel else ""
        org = _org(args, user, channel)
        out: dict[str, Any] = {"org_id": org}
        async with _engine(settings) as engine:
            if user:
                projects = sorted({p for _, p in await engine.list_projects(org)})
                scopes = [Scope(org_id=org, project_id=p, producer=user) for p in projects]
                out["user"] = user
            else:
                scopes = [Scope(org_id=org, project_id=settings.project, produced_for=channel)]
                out["channel"] = channel
            episodes: list[Any] = []
            facts: list[Any] = []
            for scope in scopes:
                page = 0
                while rows := await engine.list(scope, page_size=1000, page_num=page):
                    episodes += [json.loads(e.model_dump_json()) for e in rows]
                    page += 1
                got = await engine.facts(
                    org,
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
    status = _run(go())
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


def cmd_config(args: argparse.Namespace) -> int:
    from .settings import describe

    rows = describe(_settings())
    width = max(len(env) for _, env, _ in rows)
    for _, env, shown in rows:
        print(f"{env:<{width}}  {shown}")
    return 0


# -- parser -----------------------------------------------------------------------------------


def add_commands(sub: Any) -> None:
    """Add chat, recall, forget, export and config to the ``channelmind`` parser."""
    chat = sub.add_parser("chat", help="talk to the bot in the terminal (no platform needed)")
    chat.add_argument("--user", default=os.environ.get("USER") or "you", help="who you are")
    chat.add_argument("--channel", default="general", help="the console channel")
    chat.add_argument("--script", type=Path, help="lines 'user: message' to play, then exit")
    chat.set_defaults(func=cmd_chat)

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

    cf = sub.add_parser("config", help="the effective settings, secrets masked")
    cf.set_defaults(func=cmd_config)
