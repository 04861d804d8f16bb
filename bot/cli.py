"""The ``channelmind`` command.

Each subcommand is a small function that imports what it needs, so that ``channelmind --help``
stays fast and a broken optional part (say, Discord) never stops the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--k takes numbers like 5,10,20: {exc}") from exc
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("--k takes positive numbers like 5,10,20")
    return ks


# -- memory operations ------------------------------------------------------------------------


def cmd_bench_locomo(args: argparse.Namespace) -> int:
    from memory import bench_locomo
    from memory.embedders import make_embedder

    if not args.data.is_file():
        print(f"no LoCoMo file at {args.data}", file=sys.stderr)
        return 2
    embedder = make_embedder(args.embedder)
    result = asyncio.run(bench_locomo.run(args.data, args.k, embedder))
    if args.plot:
        bench_locomo.plot(result, args.k, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        print(bench_locomo.format_report(result, args.k))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from memory import bench_scale

    return bench_scale.main(args)


def _open_engine(**kwargs: Any) -> Any:
    from memory import MemoryEngine

    return MemoryEngine.open(**kwargs)


def cmd_reindex(args: argparse.Namespace) -> int:
    async def go() -> int:
        engine = await _open_engine(allow_embedder_change=True, background=False)
        try:
            done = await engine.reindex(progress=not args.quiet)
            print(f"reindexed {done} messages with {engine.embedder.fingerprint}")
        finally:
            await engine.close()
        return 0

    return asyncio.run(go())


def cmd_stats(args: argparse.Namespace) -> int:
    async def go() -> int:
        engine = await _open_engine(background=False)
        try:
            stats = await engine.stats()
        finally:
            await engine.close()
        if args.json:
            print(stats.model_dump_json())
        else:
            for key, value in stats.model_dump().items():
                print(f"{key:>14}: {value}")
        return 0

    return asyncio.run(go())


# -- memory server ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from memory.server.app import ServeRefused, run_server
    from memory.server.auth import ApiKeyError

    try:
        run_server(args.host, args.port)
    except (ServeRefused, ApiKeyError) as exc:
        print(f"channelmind serve: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_mcp_stdio(args: argparse.Namespace) -> int:
    from memory.server.mcp_tools import run_stdio

    asyncio.run(run_stdio())
    return 0


# -- the bot ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from bot.runner import main as run_bot

    return run_bot(args)


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="channelmind", description="Channel memory for Slack and Discord bots."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    loc = bench.add_parser("locomo", help="LoCoMo retrieval recall against baselines")
    loc.add_argument("--data", type=Path, required=True, help="a LoCoMo JSON file")
    loc.add_argument("--k", type=_ks, default=[5, 10, 20], help="cut-offs, e.g. 5,10,20")
    loc.add_argument("--embedder", default="local", choices=["local", "openai", "hash"])
    loc.add_argument("--json", action="store_true", help="print one JSON object")
    loc.add_argument("--plot", type=Path, help="write recall by category to this PNG")
    loc.set_defaults(func=cmd_bench_locomo)

    scale = bench.add_parser("scale", help="write, index and search speed at size")
    scale.add_argument("--episodes", type=int, default=10_000)
    scale.add_argument("--channels", type=int, default=200)
    scale.add_argument("--embedder", default="hash", choices=["local", "hash"])
    scale.add_argument("--queries", type=int, default=200)
    scale.add_argument("--json", action="store_true")
    scale.add_argument("--plot", type=Path)
    scale.add_argument("--sizes", help="several sizes for the plot, e.g. 10000,100000")
    scale.set_defaults(func=cmd_bench_scale)

    rx = sub.add_parser("reindex", help="rebuild the vector index from SQLite")
    rx.add_argument("--quiet", action="store_true")
    rx.set_defaults(func=cmd_reindex)

    st = sub.add_parser("stats", help="what the memory holds")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stats)

    sv = sub.add_parser("serve", help="the memory server: REST API v2, MCP at /mcp/, metrics")
    sv.add_argument(
        "--host", help="default CHANNELMIND_HOST or 127.0.0.1; without API keys loopback only"
    )
    sv.add_argument("--port", type=int, help="default CHANNELMIND_PORT or 8080")
    sv.set_defaults(func=cmd_serve)

    ms = sub.add_parser("mcp-stdio", help="the memory's MCP tools over stdio")
    ms.set_defaults(func=cmd_mcp_stdio)

    rn = sub.add_parser("run", help="the bot on Slack and/or Discord, with the memory server")
    rn.add_argument("--host", help="where the memory server (and Slack's HTTP mode) listens")
    rn.add_argument("--port", type=int, help="default CHANNELMIND_PORT or 8080")
    rn.set_defaults(func=cmd_run)

    from bot.cli_chat import add_commands as add_chat_commands  # chat recall forget export config

    add_chat_commands(sub)
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
        from memory import EmbedderMismatch, InvalidInput

        if isinstance(exc, EmbedderMismatch | InvalidInput):
            print(f"channelmind: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
