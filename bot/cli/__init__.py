"""The ``channelmind`` command: one module per group of subcommands.

Each subcommand is a small function that imports what it needs when it runs, so that
``channelmind --help`` stays fast and a broken optional part (say, Discord) never stops the
others. An expected failure (a bad setting, an unreachable service, a data folder that another
process owns or this one cannot write) is one line naming the cause and what to do, with exit
status 2; ``--debug`` shows its traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import bench, chat, config, data, importing, maintenance, migrate, run, server
from .common import expected_failure

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="channelmind", description="Channel memory for Slack and Discord bots."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an expected failure too"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (bench, maintenance, migrate, server, run, chat, data, importing, config):
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
    except Exception as exc:
        line = expected_failure(exc)
        if line is None or args.debug:
            raise
        print(f"channelmind {args.command}: {line}", file=sys.stderr)
        return 2
