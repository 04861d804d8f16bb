"""The ``channelmind`` command: one module per group of subcommands.

Each subcommand is a small function that imports what it needs when it runs, so that
``channelmind --help`` stays fast and a broken optional part (say, Discord) never stops the
others.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import bench, chat, config, data, importing, maintenance, run, server

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="channelmind", description="Channel memory for Slack and Discord bots."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (bench, maintenance, server, run, chat, data, importing, config):
        group.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.func
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line, never a traceback for expected failures
        from bot.platforms.base import StartupError
        from memory import EmbedderMismatch, InvalidInput

        if isinstance(exc, EmbedderMismatch | InvalidInput | StartupError):
            print(f"channelmind: {exc}", file=sys.stderr)
            return 2
        raise
