"""Scale benchmark: write, index and search speed of the engine at a given size.

``channelmind bench scale --episodes N`` fills a fresh temporary data folder with N synthetic
chat messages spread over many channels of one org and project, then reports:

- ``write_per_s``: episodes per second spent inside ``engine.add`` (SQLite + FTS5),
- ``index_per_s``: episodes per second of ``engine.wait_indexed`` after the ingest
  (embedding and Chroma upserts),
- ``channel_search_ms_p50/p95`` and ``search_ms_p50/p95``: hybrid search latency of realistic
  questions, scoped to one channel and to the whole project,
- ``disk_mb`` (the data folder, plus the PostgreSQL database and a ``chroma run`` folder the
  bench started) and ``rss_mb`` (this process's peak resident set so far; servers apart),
  both in MiB (2**20 bytes), and ``disk_bytes_per_message``: the same disk in bytes, divided
  by the messages (a MiB figure read as 10**6 bytes understates it by 4.9%).

``--database-url`` and ``--chroma-url`` run the same on PostgreSQL and a Chroma server
(``temp`` starts throwaway ones: :mod:`memory.bench.services`); ``store`` and ``chroma`` in the
output say which ran. Without them the run is embedded (SQLite + Chroma in the temp folder),
whatever ``CHANNELMIND_DATABASE_URL`` says.

The text is generated, not sampled from a corpus: words are drawn from a Zipf-like
distribution whose head is the very common words of chat ("the", "you", "and"), followed by
chat vocabulary, people's names, topics and a long tail of rare words. Channel traffic is
skewed too (a few busy channels, many quiet ones), and some messages reply in threads.
Everything is seeded, so two runs at the same size see the same data and the same queries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..embedders import Embedder, make_embedder
from ..engine import MemoryEngine
from ..model import Episode, Scope
from ..store.factory import make_store

ORG = "T0BENCH"
PROJECT = "bench"
PLATFORM = "slack"
BATCH = 1000
SEED = 20240611
WARMUP_QUERIES = 5
MEAN_GAP_S = 20.0

# The head of the distribution: the words chat is mostly made of, most frequent first.
FUNCTION_WORDS = """the you i to and a it is that of in for we on this be have do are with
not just was so but can at my what if me they like think will your all get there about know
it's one don't he no yeah ok out up would how when oh did an or as from been had now then
ll going good see time should here some them more thanks lol also need want make right sure
really any still let which why back where could today by who our us because maybe well yes
got""".split()

CHAT_WORDS = """deploy build release meeting review issue fix bug test branch merge ticket
sprint standup lunch coffee tomorrow tonight weekend morning afternoon call link doc docs
page update change config server client database query cache login error crash slow fast
staging prod production rollout feature flag customer user team design mockup draft plan
roadmap budget invoice contract deadline demo slides notes agenda schedule calendar office
remote laptop screen network outage alert dashboard metrics logs script pipeline job queue
worker api endpoint token password access account email message channel thread reply
question answer idea problem solution version upgrade install setup backup restore migrate
performance memory cpu disk latency timeout retry request response payload schema table
index search filter sort export import report chart graph number total week month year
quarter goal target estimate priority blocker risk owner reviewer approve reject comment
vote poll survey feedback bonus holiday vacation party birthday pizza train flight hotel
trip weather rain snow sunny game match score movie book music song podcast""".split()

NAMES = """alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy
rupert sybil trent victor walter yusuf zoe priya kenji lars mateo aisha bjorn chiara dmitri
esther farid greta hiro ines jonas kofi leila marco nadia oskar paula quentin rosa sanjay
tamar ulrich vera wen ximena yara zeno""".split()

TOPICS = """kubernetes postgres redis kafka terraform grafana prometheus nginx docker react
typescript golang rust python django flask fastapi graphql webhook oauth saml stripe billing
onboarding payroll hiring offsite quarterly okr compliance gdpr soc2 audit pentest firewall
vpn sso ldap jenkins gitlab github jira confluence figma notion salesforce hubspot zendesk
analytics warehouse snowflake bigquery airflow dbt looker tableau spark hadoop elasticsearch
kibana sentry pagerduty opsgenie datadog newrelic cloudflare akamai fastly vercel netlify
heroku lambda fargate ec2 s3 gcs azure""".split()

_SYLLABLES = """ba be bi bo bu da de di do du fa fe fi fo ka ke ki ko ku la le li lo lu ma me
mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru sa se si so su ta te ti to tu va ve vi
vo za ze zi zo zu bra cre dri flo gru kla ple sto tri vor zan mir tek lun"""

QUESTION_STARTS = [
    "what did",
    "when is",
    "who said",
    "how do we",
    "where is the",
    "did anyone",
    "does anyone know",
    "why is",
    "what about",
    "can you find",
    "remind me about",
    "",
]


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation, 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def folder_mb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total / (1024.0 * 1024.0)


@dataclass
class Vocabulary:
    words: list[str]
    probs: npt.NDArray[np.float64]
    common: list[str]  # the head: frequent content words
    rare: list[str]  # the tail: words seen a handful of times in a large corpus


def _pseudo_words(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    syllables = _SYLLABLES.split()
    out: list[str] = []
    while len(out) < n:
        parts = rng.integers(0, len(syllables), size=int(rng.integers(2, 4)))
        word = "".join(syllables[int(i)] for i in parts)
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def build_vocabulary(rng: np.random.Generator, tail: int = 20_000) -> Vocabulary:
    """Words ranked by frequency; the probability of rank r is proportional to
    1 / (r + 2.7) ** 1.1 (Zipf-Mandelbrot), the shape of word frequencies in natural text."""
    taken: set[str] = set(FUNCTION_WORDS) | set(CHAT_WORDS) | set(NAMES) | set(TOPICS)
    middle = CHAT_WORDS + NAMES + TOPICS
    order = rng.permutation(len(middle))
    ranked_middle = [middle[int(i)] for i in order]
    rare = _pseudo_words(rng, tail, taken)
    words = FUNCTION_WORDS + ranked_middle + rare
    ranks = np.arange(len(words), dtype=np.float64)
    weights = 1.0 / (ranks + 2.7) ** 1.1
    return Vocabulary(
        words=words,
        probs=weights / weights.sum(),
        common=ranked_middle[:150],
        rare=rare[len(rare) // 4 :],
    )


class Corpus:
    """A seeded generator of chat traffic: channels, members, threads, increasing time."""

    def __init__(self, episodes: int, channels: int, seed: int = SEED) -> None:
        self.total = episodes
        self.rng = np.random.default_rng(seed)
        self.vocab = build_vocabulary(self.rng)
        self.channels = [f"slack:C{i:06d}" for i in range(max(1, channels))]
        # A few busy channels and many quiet ones.
        weights = 1.0 / np.arange(1, len(self.channels) + 1, dtype=np.float64) ** 0.8
        self.channel_probs = weights / weights.sum()
        users = max(8, min(2000, channels * 3))
        self.users = [f"slack:U{i:06d}" for i in range(users)]
        self.user_names = {
            u: f"{NAMES[i % len(NAMES)]}{i // len(NAMES) or ''}" for i, u in enumerate(self.users)
        }
        # Each channel has a few regulars who do most of the talking.
        self.members = [
            self.rng.choice(len(self.users), size=min(len(self.users), 12), replace=False)
            for _ in self.channels
        ]
        self.start = datetime.now(UTC) - timedelta(seconds=episodes * MEAN_GAP_S * 1.05 + 3600)

    def batches(self, size: int = BATCH) -> Iterator[list[Episode]]:
        rng = self.rng
        words = self.vocab.words
        clock = 0.0
        roots: dict[int, list[str]] = {}
        made = 0
        while made < self.total:
            n = min(size, self.total - made)
            chans = rng.choice(len(self.channels), size=n, p=self.channel_probs)
            lengths = np.clip(rng.lognormal(2.2, 0.6, size=n).astype(np.int64), 2, 60)
            drawn = rng.choice(len(words), size=int(lengths.sum()), p=self.vocab.probs)
            gaps = rng.exponential(MEAN_GAP_S, size=n)
            coin = rng.random(size=(n, 4))
            batch: list[Episode] = []
            pos = 0
            for i in range(n):
                ch = int(chans[i])
                text_words = [words[int(w)] for w in drawn[pos : pos + int(lengths[i])]]
                pos += int(lengths[i])
                text = " ".join(text_words)
                text = text[0].upper() + text[1:] + ("?" if coin[i, 2] < 0.15 else "")
                clock += float(gaps[i])
                members = self.members[ch]
                user = self.users[int(members[int(coin[i, 0] ** 2 * len(members))])]
                source = f"{made + i:012d}"
                thread = None
                open_roots = roots.setdefault(ch, [])
                if open_roots and coin[i, 1] < 0.2:
                    thread = open_roots[int(coin[i, 3] * len(open_roots))]
                elif coin[i, 1] > 0.9:
                    open_roots.append(source)
                    del open_roots[:-5]
                batch.append(
                    Episode(
                        org_id=ORG,
                        project_id=PROJECT,
                        producer=user,
                        produced_for=self.channels[ch],
                        content=text,
                        created_at=self.start + timedelta(seconds=clock),
                        platform=PLATFORM,
                        source_id=source,
                        thread_id=thread,
                        metadata={"display_name": self.user_names[user]},
                    )
                )
            made += n
            yield batch

    def queries(self, n: int, seed: int = SEED + 1) -> list[tuple[str, str]]:
        """(question, channel) pairs: 3-8 words, a question opener, common and rare words.
        Channels are picked in proportion to their traffic, as the bot is asked where people
        talk."""
        rng = np.random.default_rng(seed)
        vocab = self.vocab
        out: list[tuple[str, str]] = []
        for _ in range(n):
            start = QUESTION_STARTS[int(rng.integers(len(QUESTION_STARTS)))].split()
            size = max(int(rng.integers(3, 9)), len(start) + 2)
            body: list[str] = []
            while len(start) + len(body) < size:
                roll = rng.random()
                if roll < 0.35:
                    pool = vocab.common
                elif roll < 0.55:
                    pool = vocab.rare
                elif roll < 0.7:
                    pool = NAMES
                else:
                    pool = FUNCTION_WORDS
                body.append(pool[int(rng.integers(len(pool)))])
            channel = self.channels[int(rng.choice(len(self.channels), p=self.channel_probs))]
            out.append((" ".join(start + body) + "?", channel))
        return out


def _progress(message: str) -> None:
    print(f"[bench scale] {message}", file=sys.stderr, flush=True)


def _in_channel(channel: str) -> Scope:
    return Scope(org_id=ORG, project_id=PROJECT, produced_for=channel)


async def _timed_search(engine: MemoryEngine, text: str, scope: Scope) -> float:
    """One hybrid search (the default mode), in milliseconds."""
    began = time.perf_counter()
    await engine.search(text, scope)
    return (time.perf_counter() - began) * 1000.0


async def _watch_indexing(
    engine: MemoryEngine, total: int, began: float, enabled: bool, every: float = 15.0
) -> None:
    """Report indexing progress to stderr every ``every`` seconds while it runs."""
    if not enabled:
        return
    while True:
        await asyncio.sleep(every)
        left = await engine.store.count_pending()
        done = total - left
        rate = done / max(time.perf_counter() - began, 1e-9)
        eta = left / rate if rate > 0 else float("inf")
        _progress(f"indexed {done:,}/{total:,} ({rate:,.0f}/s, about {eta:,.0f} s left)")


async def run_size(
    episodes: int,
    channels: int,
    embedder: Embedder,
    queries: int,
    *,
    batch: int = BATCH,
    progress: bool = True,
    database_url: str | None = None,
    chroma_url: str | None = None,
    chroma_folder: Path | None = None,
) -> dict[str, Any]:
    """Ingest, index and query one size in a fresh temporary folder (and the empty database
    ``database_url`` names, if any); the numbers as a dict. ``chroma_folder``: where a Chroma
    server this run started keeps its files, counted in ``disk_mb``."""
    from tqdm import tqdm

    from .services import database_mb

    corpus = Corpus(episodes, channels)
    with tempfile.TemporaryDirectory(prefix="channelmind-scale-") as tmp:
        folder = Path(tmp)
        store = make_store(database_url, folder)
        engine = await MemoryEngine.open(
            folder, embedder, chroma_url or "", background=False, store=store
        )
        try:
            write_s = write_cpu = 0.0
            with tqdm(
                total=episodes,
                desc=f"write {episodes:,}",
                unit="msg",
                disable=not progress,
                file=sys.stderr,
                mininterval=2.0,
            ) as bar:
                for chunk in corpus.batches(batch):
                    began, cpu = time.perf_counter(), time.process_time()
                    await engine.add(chunk)
                    write_s += time.perf_counter() - began
                    write_cpu += time.process_time() - cpu
                    bar.update(len(chunk))
            if progress:
                _progress(f"{episodes:,} written in {write_s:.1f} s; indexing")
            began, cpu = time.perf_counter(), time.process_time()
            watcher = asyncio.create_task(_watch_indexing(engine, episodes, began, progress))
            try:
                await engine.wait_indexed(timeout=None)
            finally:
                watcher.cancel()
            index_s = time.perf_counter() - began
            index_cpu = time.process_time() - cpu
            if progress:
                _progress(f"indexed in {index_s:.1f} s; {queries} queries x 2 scopes")
            asked = corpus.queries(queries)
            everywhere = Scope(org_id=ORG, project_id=PROJECT)
            for text, channel in asked[:WARMUP_QUERIES]:
                await _timed_search(engine, text, everywhere)
                await _timed_search(engine, text, _in_channel(channel))
            # The first question in a channel loads that channel's vector collection from
            # disk; a long-running bot pays this once per channel, so it is reported apart.
            first_ms: list[float] = []
            openers = corpus.queries(queries, seed=SEED + 2)
            touched: set[str] = {c for _, c in asked[:WARMUP_QUERIES]}
            for (_, channel), (text, _) in zip(asked, openers, strict=True):
                if channel not in touched:
                    touched.add(channel)
                    first_ms.append(await _timed_search(engine, text, _in_channel(channel)))
            channel_ms: list[float] = []
            project_ms: list[float] = []
            for text, channel in tqdm(
                asked,
                desc="search",
                unit="q",
                disable=not progress,
                file=sys.stderr,
                mininterval=2.0,
            ):
                channel_ms.append(await _timed_search(engine, text, _in_channel(channel)))
                project_ms.append(await _timed_search(engine, text, everywhere))
            served = folder_mb(chroma_folder) if chroma_folder else 0.0
            if database_url:
                served += await database_mb(database_url)
            if chroma_url and engine.index is not None:  # leave no collections on a server
                await asyncio.to_thread(engine.index.reset)
        finally:
            await engine.close()
        disk = folder_mb(folder) + served
    return {
        "episodes": episodes,
        "channels": len(corpus.channels),
        "embedder": embedder.fingerprint,
        "store": "postgresql" if database_url else "sqlite",
        "chroma": "server" if chroma_url else "embedded",
        "queries": len(asked),
        "write_s": round(write_s, 3),
        "write_per_s": round(episodes / write_s, 1) if write_s > 0 else 0.0,
        "write_cpu_s": round(write_cpu, 3),
        "index_s": round(index_s, 3),
        "index_per_s": round(episodes / index_s, 1) if index_s > 0 else 0.0,
        "index_cpu_s": round(index_cpu, 3),
        "channel_search_ms_p50": round(percentile(channel_ms, 50), 2),
        "channel_search_ms_p95": round(percentile(channel_ms, 95), 2),
        "search_ms_p50": round(percentile(project_ms, 50), 2),
        "search_ms_p95": round(percentile(project_ms, 95), 2),
        "channel_first_ms_p50": round(percentile(first_ms, 50), 2),
        "channel_first_ms_p95": round(percentile(first_ms, 95), 2),
        "disk_mb": round(disk, 1),
        "disk_bytes_per_message": round(disk * 2**20 / episodes),
        "rss_mb": round(peak_rss_mb(), 1),
        # CPU time is process-wide (SQLite, Chroma and torch threads); with the load average
        # it tells a slow machine from a slow engine on shared hosts.
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


COLUMNS = [
    ("episodes", "episodes", "{:,}"),
    ("write/s", "write_per_s", "{:,.0f}"),
    ("index/s", "index_per_s", "{:,.0f}"),
    ("chan p50", "channel_search_ms_p50", "{:.1f}"),
    ("chan p95", "channel_search_ms_p95", "{:.1f}"),
    ("all p50", "search_ms_p50", "{:.1f}"),
    ("all p95", "search_ms_p95", "{:.1f}"),
    ("1st p95", "channel_first_ms_p95", "{:.1f}"),
    ("disk MiB", "disk_mb", "{:,.1f}"),
    ("B/msg", "disk_bytes_per_message", "{:,}"),
    ("RSS MiB", "rss_mb", "{:,.0f}"),
]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """One row per size; search latencies in milliseconds."""
    cells = [[fmt.format(row[key]) for _, key, fmt in COLUMNS] for row in rows]
    widths = [
        max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(COLUMNS)
    ]
    lines = ["  ".join(t.rjust(w) for (t, _, _), w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    if rows:
        first = rows[0]
        lines.append(
            f"({first['channels']} channels, embedder {first['embedder']}, store"
            f" {first['store']}, Chroma {first['chroma']}, "
            f"{first['queries']} queries per scope, hybrid search; latencies in ms; '1st' is a"
            " channel's first query, which loads its vectors; RSS is the peak so far)"
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Latency and throughput against size, log-scale x, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["episodes"] for r in rows]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, style in (
        ("channel_search_ms_p50", "channel p50", "o-"),
        ("channel_search_ms_p95", "channel p95", "o--"),
        ("search_ms_p50", "project p50", "s-"),
        ("search_ms_p95", "project p95", "s--"),
    ):
        lat.plot(sizes, [r[key] for r in rows], style, label=label)
    lat.set_xscale("log")
    lat.set_xlabel("episodes")
    lat.set_ylabel("hybrid search latency (ms)")
    lat.set_title("Search latency")
    lat.grid(True, alpha=0.3)
    lat.legend()
    for key, label, style in (
        ("write_per_s", "SQLite writes", "o-"),
        ("index_per_s", "embed + index", "s-"),
    ):
        thr.plot(sizes, [r[key] for r in rows], style, label=label)
    thr.set_xscale("log")
    thr.set_yscale("log")
    thr.set_xlabel("episodes")
    thr.set_ylabel("episodes per second")
    thr.set_title(f"Throughput ({rows[0]['embedder']})" if rows else "Throughput")
    thr.grid(True, alpha=0.3)
    thr.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sizes(args: argparse.Namespace) -> list[int]:
    if not args.sizes:
        return [int(args.episodes)]
    try:
        sizes = sorted({int(s.replace("_", "")) for s in str(args.sizes).split(",") if s.strip()})
    except ValueError as exc:
        raise SystemExit(f"channelmind: --sizes takes numbers like 10000,100000 ({exc})") from exc
    return sizes


def main(args: argparse.Namespace) -> int:
    sizes = _sizes(args)
    if not sizes or sizes[0] < 1 or args.channels < 1 or args.queries < 1:
        print(
            "channelmind: --episodes/--sizes, --channels and --queries must be positive",
            file=sys.stderr,
        )
        return 2
    from .services import ServerStartFailed, chroma_for, scratch_database

    embedder = make_embedder(args.embedder)
    rows: list[dict[str, Any]] = []
    try:
        for size in sizes:  # each size from empty: a fresh folder, database and Chroma server
            with contextlib.ExitStack() as stack:
                database = args.database_url and stack.enter_context(
                    scratch_database(args.database_url)
                )
                chroma, chroma_folder = stack.enter_context(chroma_for(args.chroma_url))
                row = asyncio.run(
                    run_size(
                        size,
                        args.channels,
                        embedder,
                        args.queries,
                        database_url=database or None,
                        chroma_url=chroma,
                        chroma_folder=chroma_folder,
                    )
                )
            rows.append(row)
    except ServerStartFailed as exc:
        print(f"channelmind bench scale: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        result = dict(rows[-1])
        if len(rows) > 1:
            result["runs"] = rows
        print(json.dumps(result))
    else:
        print(format_table(rows))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0
