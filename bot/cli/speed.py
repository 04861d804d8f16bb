"""``channelmind bench load`` (the memory server under N concurrent clients) and ``bench
embed`` (the local embedding backends against torch)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_bench_load(args: argparse.Namespace) -> int:
    from memory.bench import load as bench_load

    return bench_load.main(args)


def cmd_bench_embed(args: argparse.Namespace) -> int:
    from memory.bench import embed as bench_embed

    return bench_embed.main(args)


def add(bench: Any) -> None:
    """Adds the two benchmarks to ``bench``'s subcommands."""
    load = bench.add_parser("load", help="the memory server under N concurrent clients")
    load.add_argument("--clients", type=int, default=40, help="concurrent clients")
    load.add_argument("--seconds", type=float, default=30.0, help="measured time")
    load.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    load.add_argument("--embedder", default="local", choices=["local", "hash"])
    load.add_argument("--seed-messages", type=int, default=2000, help="stored before the load")
    load.add_argument("--chroma-server", action="store_true", help="vectors in `chroma run`")
    load.add_argument(
        "--database-url",
        help="records in PostgreSQL: `temp` starts a throwaway cluster; a postgresql:// URL gets"
        " a scratch database beside it (needs CREATEDB), dropped after. Default: SQLite",
    )
    load.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="`serve` processes on one memory (needs"
        " --database-url; vectors then go to `chroma run`); clients are spread over them",
    )
    load.add_argument("--profile", type=Path, help="py-spy the server (.svg/.json/.txt)")
    load.add_argument("--json", action="store_true", help="print one JSON object")
    load.set_defaults(func=cmd_bench_load)

    embed = bench.add_parser("embed", help="local embedding speed of each backend vs torch")
    embed.add_argument("--data", type=Path, help="a LoCoMo JSON file (default: synthetic chat)")
    embed.add_argument("--messages", type=int, default=2000, help="messages per run")
    embed.add_argument("--runs", type=int, default=3, help="runs per backend (median)")
    embed.add_argument("--json", action="store_true", help="print one JSON object")
    embed.set_defaults(func=cmd_bench_embed)
