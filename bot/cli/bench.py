"""``channelmind bench locomo``, ``bench exact``, ``bench scale``, ``bench import`` and
``bench answers``: retrieval quality, speed at size, and what the bot answers."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--k takes numbers like 5,10,20: {exc}") from exc
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("--k takes positive numbers like 5,10,20")
    return ks


def cmd_bench_locomo(args: argparse.Namespace) -> int:
    from memory.bench import locomo as bench_locomo
    from memory.embedders import make_embedder

    if not args.data.is_file():
        print(f"no LoCoMo file at {args.data}", file=sys.stderr)
        return 2
    embedder = make_embedder(args.embedder)
    result = asyncio.run(
        bench_locomo.run(args.data, args.k, embedder, cv=args.cv, fit_path=args.fit)
    )
    if args.plot:
        bench_locomo.plot(result, args.k, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        print(bench_locomo.format_report(result, args.k))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def cmd_bench_exact(args: argparse.Namespace) -> int:
    from memory.bench import exact as bench_exact
    from memory.embedders import make_embedder

    return bench_exact.main(make_embedder(args.embedder), args.json)


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from memory.bench import scale as bench_scale

    return bench_scale.main(args)


def cmd_bench_import(args: argparse.Namespace) -> int:
    from bot.bench import importing

    return importing.main(args.messages, args.channels, args.embed, args.embedder, args.json)


def cmd_bench_answers(args: argparse.Namespace) -> int:
    from bot.bench import answers

    from .common import UsageError

    try:
        return answers.main(args.scenarios, args.embedder, args.json)
    except answers.ScenarioError as exc:  # one line, as every expected failure (bot.cli)
        raise UsageError(str(exc)) from None


def add(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    loc = bench.add_parser("locomo", help="LoCoMo retrieval recall against baselines")
    loc.add_argument("--data", type=Path, required=True, help="a LoCoMo JSON file")
    loc.add_argument("--k", type=_ks, default=[5, 10, 20], help="cut-offs, e.g. 5,10,20")
    loc.add_argument("--embedder", default="local", choices=["local", "openai", "hash"])
    loc.add_argument("--json", action="store_true", help="print one JSON object")
    loc.add_argument("--plot", type=Path, help="write recall by category to this PNG")
    loc.add_argument(
        "--cv", action="store_true", help="also fit and score leave-one-conversation-out"
    )
    loc.add_argument(
        "--fit", type=Path, help="fit the ranking on all conversations and write it here (JSON)"
    )
    loc.set_defaults(func=cmd_bench_locomo)

    exact = bench.add_parser("exact", help="identifiers, codes and names found first")
    exact.add_argument("--embedder", default="local", choices=["local", "hash"])
    exact.add_argument("--json", action="store_true", help="print one JSON object")
    exact.set_defaults(func=cmd_bench_exact)

    scale = bench.add_parser("scale", help="write, index and search speed at size")
    scale.add_argument("--episodes", type=int, default=10_000)
    scale.add_argument("--channels", type=int, default=200)
    scale.add_argument("--embedder", default="hash", choices=["local", "hash"])
    scale.add_argument("--queries", type=int, default=200)
    scale.add_argument("--json", action="store_true")
    scale.add_argument("--plot", type=Path)
    scale.add_argument("--sizes", help="several sizes for the plot, e.g. 10000,100000")
    scale.add_argument(
        "--database-url",
        help="records in PostgreSQL: `temp` starts a throwaway cluster; a postgresql:// URL gets"
        " a scratch database beside it (needs CREATEDB), dropped after. Default: SQLite",
    )
    scale.add_argument(
        "--chroma-url",
        help="vectors in a Chroma server: `temp` starts `chroma run`; an http:// URL is used"
        " (the bench's collections are dropped after). Default: embedded Chroma",
    )
    scale.set_defaults(func=cmd_bench_scale)

    imp = bench.add_parser("import", help="Slack export import speed and peak memory")
    imp.add_argument("--messages", type=int, default=50_000)
    imp.add_argument("--channels", type=int, default=20)
    imp.add_argument("--embed", type=int, default=0, help="also time embedding this many")
    imp.add_argument("--embedder", default="local", choices=["local", "hash"])
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=cmd_bench_import)

    from bot.bench.answers import SCENARIOS

    ans = bench.add_parser("answers", help="what the bot answers: newest word, evidence, facts")
    ans.add_argument("--embedder", default="hash", choices=["local", "hash"])
    ans.add_argument(
        "--scenarios", type=Path, default=SCENARIOS, help="a folder of scenario *.yaml files"
    )
    ans.add_argument("--json", action="store_true", help="print one JSON object")
    ans.set_defaults(func=cmd_bench_answers)

    from . import speed  # bench load, bench embed

    speed.add(bench)
