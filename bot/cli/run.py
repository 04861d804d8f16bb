"""``channelmind run``: the bot on Slack and/or Discord, with the memory server beside it."""

from __future__ import annotations

import argparse
from typing import Any

from .common import settings


def cmd_run(args: argparse.Namespace) -> int:
    from bot.app import main

    return main(settings(), args.host, args.port)


def add(sub: Any) -> None:
    rn = sub.add_parser("run", help="the bot on Slack and/or Discord, with the memory server")
    rn.add_argument("--host", help="where the memory server (and Slack's HTTP mode) listens")
    rn.add_argument("--port", type=int, help="default CHANNELMIND_PORT or 8080")
    rn.set_defaults(func=cmd_run)
