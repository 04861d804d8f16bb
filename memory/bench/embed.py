"""Local embedding speed: each backend of the packaged MiniLM against torch, in the same run.

``channelmind bench embed`` loads every backend (torch through sentence-transformers, ONNX
Runtime in float32 and with int8 dense layers), then embeds the same messages with each, in
rounds (torch, onnx, onnx-int8, torch, ...) so that a busy machine slows them alike, the way
the indexer does: lists of 512 messages. It prints each backend's median messages per second,
its ratio to torch's, the messages per CPU-second (less sensitive to other processes), and how
close its vectors are to torch's (lowest and mean cosine similarity).

The messages are synthetic chat by default (the generator of ``bench scale``); ``--data`` takes
a LoCoMo file instead (its turns are longer: about 38 tokens against 21).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..embedders import BACKENDS, Embedder, Vectors, make_embedder

CHUNK = 512  # what the engine's indexer hands the embedder at a time


def messages(data: Path | None, n: int) -> tuple[list[str], str]:
    from ..model import embed_text

    if data is not None:
        from .locomo import load

        turns = [embed_text(e) for c in load(data) for e in c.episodes]
        return turns[:n], f"LoCoMo turns from {data.name}"
    from .scale import Corpus

    corpus = Corpus(n, channels=50, seed=11)
    return [embed_text(e) for batch in corpus.batches() for e in batch], "synthetic chat"


def embed_all(embedder: Embedder, texts: list[str]) -> Vectors:
    parts = [embedder.embed(texts[i : i + CHUNK]) for i in range(0, len(texts), CHUNK)]
    return np.concatenate(parts)


def run(texts: list[str], runs: int) -> dict[str, Any]:
    loaded: dict[str, Embedder] = {}
    results: dict[str, dict[str, Any]] = {}
    for backend in BACKENDS:
        began = time.perf_counter()
        loaded[backend] = make_embedder("local", backend=backend)
        results[backend] = {
            "load_s": round(time.perf_counter() - began, 2),
            "fingerprint": loaded[backend].fingerprint,  # onnx-int8's names its weight bits
            "runs": [],
        }
        embed_all(loaded[backend], texts[:64])  # warm up
    cpu: dict[str, list[float]] = {b: [] for b in BACKENDS}
    vectors: dict[str, Vectors] = {}
    for _ in range(runs):
        for backend, embedder in loaded.items():
            wall, clock = time.perf_counter(), time.process_time()
            vectors[backend] = embed_all(embedder, texts)
            wall, clock = time.perf_counter() - wall, time.process_time() - clock
            results[backend]["runs"].append(round(len(texts) / wall, 1))
            cpu[backend].append(len(texts) / max(clock, 1e-9))
    base = statistics.median(results["torch"]["runs"])
    for backend, r in results.items():
        r["per_s"] = round(statistics.median(r["runs"]), 1)
        r["ratio"] = round(r["per_s"] / base, 2)
        r["per_cpu_s"] = round(statistics.median(cpu[backend]), 1)
        cos = (vectors[backend] * vectors["torch"]).sum(axis=1)
        r["min_cos"] = round(float(cos.min()), 6)
        r["mean_cos"] = round(float(cos.mean()), 6)
    return results


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"bench embed: {result['messages']} messages ({result['text']}, {result['tokens_mean']}"
        f" tokens on average), {result['runs']} runs each, lists of {CHUNK}",
        f"{'backend':12}{'msg/s':>9}{'vs torch':>10}{'msg/cpu-s':>11}{'load s':>8}"
        f"{'min cos':>10}{'mean cos':>10}",
    ]
    for backend, r in result["backends"].items():
        lines.append(
            f"{backend:12}{r['per_s']:>9.1f}{r['ratio']:>9.2f}x{r['per_cpu_s']:>11.1f}"
            f"{r['load_s']:>8.2f}{r['min_cos']:>10.5f}{r['mean_cos']:>10.5f}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.messages < 1 or args.runs < 1:
        print("channelmind: --messages and --runs must be positive", file=sys.stderr)
        return 2
    if args.data is not None and not args.data.is_file():
        print(f"channelmind: no LoCoMo file at {args.data}", file=sys.stderr)
        return 2
    texts, kind = messages(args.data, args.messages)
    from tokenizers import Tokenizer

    from ..embedders import bundled_model_path

    tokenizer = Tokenizer.from_file(str(bundled_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokens = [min(256, len(e.ids)) for e in tokenizer.encode_batch(texts)]
    result = {
        "messages": len(texts),
        "text": kind,
        "tokens_mean": round(float(np.mean(tokens)), 1),
        "runs": args.runs,
        "backends": run(texts, args.runs),
    }
    print(json.dumps(result) if args.json else format_report(result))
    return 0
