"""``channelmind config``: the effective settings, secrets masked."""

from __future__ import annotations

import argparse
from typing import Any

from .common import settings


def cmd_config(args: argparse.Namespace) -> int:
    from bot.settings import describe

    rows = describe(settings())
    width = max(len(env) for _, env, _ in rows)
    for _, env, shown in rows:
        print(f"{env:<{width}}  {shown}")
    return 0


def add(sub: Any) -> None:
    cf = sub.add_parser("config", help="the effective settings, secrets masked")
    cf.set_defaults(func=cmd_config)
