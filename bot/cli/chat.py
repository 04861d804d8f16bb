"""``channelmind chat``: the bot in the terminal (its memory: :mod:`bot.memory_access`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import memory, run, settings


def cmd_chat(args: argparse.Namespace) -> int:
    from bot.app import build_conversation
    from bot.platforms.console.adapter import ConsoleAdapter

    config = settings()
    user = args.user or config.chat_user
    if args.script is not None and not args.script.is_file():
        print(f"channelmind: no script at {args.script}", file=sys.stderr)
        return 2

    async def go() -> int:
        async with memory(config) as mem:
            conversation = build_conversation(config, mem)
            try:
                await conversation.purge_expired()
                adapter = ConsoleAdapter(
                    conversation,
                    channel=args.channel,
                    bot_name=config.bot_name,
                    out=sys.stdout,
                    # Deterministic demos: what was said is searchable by meaning at once.
                    after_each=mem.wait_indexed,
                )
                if args.script is not None:
                    lines = args.script.read_text(encoding="utf-8").splitlines()
                    await adapter.run_script(lines, user)
                else:  # pragma: no cover - needs a terminal
                    if not config.llm_configured:
                        print("(no LLM configured: answers are extractive; see README)")
                    await adapter.run_interactive(user)
                if conversation.semantic is not None:
                    await conversation.semantic.flush(force=True)
            finally:
                await conversation.close()
        return 0

    return run(go())


def add(sub: Any) -> None:
    chat = sub.add_parser("chat", help="talk to the bot in the terminal (no platform needed)")
    chat.add_argument("--user", help="who you are")
    chat.add_argument("--channel", default="general", help="the console channel")
    chat.add_argument("--script", type=Path, help="lines 'user: message' to play, then exit")
    chat.set_defaults(func=cmd_chat)
