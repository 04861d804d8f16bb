"""Load benchmark: the memory server under many concurrent clients.

``channelmind bench load --clients 40 --seconds 30`` starts the real memory server
(``channelmind serve`` on a free loopback port, in its own process) on a fresh
temporary data folder, seeds it with synthetic chat messages, waits until they are indexed,
and then drives it with N concurrent clients over the REST API v2 for a fixed time. Each
client sends one request after another, an add of one message or a project-wide search, 50/50
(seeded), so N is also the number of requests in flight. It prints the throughput, the error
count and the p50/p95/p99 latency of each operation, and the CPU seconds the server and the
client used (both run on the same machine).

``--profile FILE`` records the server with py-spy meanwhile (``.svg``: a flame graph,
``.json``: speedscope, ``.txt``: collapsed stacks, one per line with its sample count), to see
where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .scale import Corpus, percentile
from .services import ServerStartFailed, free_port, running, scratch_database
from .services import chroma_server as chroma_server_at

ORG = "loadorg"
PROJECT = "load"
OPS = ("add", "search")
PLURAL = {"add": "adds", "search": "searches"}


@dataclass
class Sample:
    op: str
    ms: float
    ok: bool


@dataclass
class Traffic:
    """Pre-generated request bodies, so that the clients spend no time making text."""

    adds: list[dict[str, Any]]
    queries: list[str]
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def make_traffic(messages: int, queries: int, seed: int = 7) -> Traffic:
    corpus = Corpus(messages, channels=20, seed=seed)
    adds = [
        {
            "content": ep.content,
            "producer": ep.producer,
            "produced_for": ep.produced_for,
            "timestamp": ep.created_at.isoformat(),
            "metadata": {"display_name": str(ep.metadata.get("display_name", ""))},
        }
        for batch in corpus.batches()
        for ep in batch
    ]
    return Traffic(adds=adds, queries=[q for q, _ in corpus.queries(queries, seed=seed + 1)])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server_process(
    tmp: Path,
    embedder: str,
    chroma_server: bool = False,
    database_url: str | None = None,
    replicas: int = 1,
) -> Iterator[list[tuple[str, int]]]:
    """``replicas`` memory servers, each a subprocess on a free loopback port with its data
    folder ``tmp/data-<i>``; yields their (base URL, pid). With ``chroma_server`` their vectors
    go to one ``chroma run`` process, and with ``database_url`` their records to that database
    (the two together are how several replicas share one memory).

    Their environment names the data folder and embedder and drops any other ChannelMind
    setting (API keys, a Chroma URL...) but the embedder backend, and they run in ``tmp`` so
    that no ``.env`` file is read."""
    keep = ("CHANNELMIND_EMBEDDER_BACKEND",)
    env = {
        k: v
        for k, v in os.environ.items()
        if k in keep or not k.startswith(("CHANNELMIND_", "OPENAI_"))
    }
    env["CHANNELMIND_EMBEDDER"] = embedder
    if database_url:
        env["CHANNELMIND_DATABASE_URL"] = database_url
    with contextlib.ExitStack() as stack:
        if chroma_server:
            env["CHANNELMIND_CHROMA_URL"] = stack.enter_context(chroma_server_at(tmp, env))
        started: list[tuple[str, int]] = []
        for i in range(replicas):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = [sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1"]
            command += ["--port", str(port)]
            env_i = env | {"CHANNELMIND_DATA_DIR": str(tmp / f"data-{i}")}
            log = tmp / f"memory-server-{i}.log"
            pid = stack.enter_context(running(command, env_i, tmp, log, f"{url}/api/v2/health"))
            started.append((url, pid))
        yield started


async def seed(http: aiohttp.ClientSession, traffic: Traffic, n: int) -> None:
    """Store ``n`` messages in batches and wait until they are indexed."""
    for start in range(0, n, 500):
        batch = traffic.adds[start : min(n, start + 500)]
        body = {"org_id": ORG, "project_id": PROJECT, "messages": batch}
        async with http.post("/api/v2/memories", json=body, timeout=_timeout(300)) as reply:
            reply.raise_for_status()
    await wait_indexed(http)


async def wait_indexed(http: aiohttp.ClientSession) -> None:
    """Until the server says nothing is left to index."""
    while True:
        body = {"timeout": 60}
        async with http.post("/api/cm/index/wait", json=body, timeout=_timeout(90)) as reply:
            reply.raise_for_status()
            if (await reply.json()).get("done"):
                return


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


async def client(
    http: aiohttp.ClientSession,
    traffic: Traffic,
    rng: random.Random,
    next_add: Iterator[int],
    measure_from: float,
    stop_at: float,
) -> None:
    """One client: requests back to back until ``stop_at``; samples after ``measure_from``."""
    while (began := time.perf_counter()) < stop_at:
        op = OPS[rng.random() >= 0.5]
        if op == "add":
            message = traffic.adds[next(next_add) % len(traffic.adds)]
            path = "/api/v2/memories"
            body: dict[str, Any] = {"org_id": ORG, "project_id": PROJECT, "messages": [message]}
        else:
            path = "/api/v2/memories/search"
            query = traffic.queries[rng.randrange(len(traffic.queries))]
            body = {"org_id": ORG, "project_id": PROJECT, "query": query, "top_k": 10}
        error = ""
        try:
            async with http.post(path, json=body) as reply:
                text = await reply.text()
                if reply.status >= 400:
                    error = f"{op}: HTTP {reply.status} {text[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{op}: {type(exc).__name__} {exc}"
        ms = (time.perf_counter() - began) * 1000.0
        if began >= measure_from:
            traffic.samples.append(Sample(op, ms, not error))
            if error and len(traffic.errors) < 5:
                traffic.errors.append(error)


def summarize(traffic: Traffic, clients: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "clients": clients,
        "seconds": round(seconds, 2),
        "requests": len(traffic.samples),
        "requests_per_s": round(len(traffic.samples) / seconds, 1),
        "errors": sum(not s.ok for s in traffic.samples),
    }
    for op in OPS:
        times = [s.ms for s in traffic.samples if s.op == op and s.ok]
        out[PLURAL[op]] = len(times)
        for p in (50, 95, 99):
            out[f"{op}_ms_p{p}"] = round(percentile(times, p), 1)
    out["error_examples"] = traffic.errors
    return out


async def drive(
    servers: list[tuple[str, int]], traffic: Traffic, args: argparse.Namespace
) -> dict[str, Any]:
    """Seed through the first server, then run the clients, client i on server i mod N (as a
    load balancer would spread connections); CPU use and the profile (of the first server)
    cover the clients' run only."""
    per_server = max(1, -(-args.clients // len(servers)))
    async with contextlib.AsyncExitStack() as stack:
        # aiohttp, not httpx: the load client shares the machine with the server, and httpx
        # spent about 3.5 ms of CPU per request at 40 clients against 0.2 ms for aiohttp
        # (README "Many clients"), CPU the server then did not get.
        https = [
            await stack.enter_async_context(
                aiohttp.ClientSession(
                    base_url=url,
                    connector=aiohttp.TCPConnector(limit=per_server),
                    timeout=_timeout(60),
                )
            )
            for url, _ in servers
        ]
        await seed(https[0], traffic, args.seed_messages)
        for http in https[1:]:
            await wait_indexed(http)
        pids = [pid for _, pid in servers]
        profiler = _profiler(pids[0], args.profile) if args.profile else None
        server_before, client_before = _cpu_of(pids), time.process_time()
        counter = iter(range(args.seed_messages, 1 << 62))
        measure_from = time.perf_counter() + args.warmup
        stop_at = measure_from + args.seconds
        rngs = [random.Random(1000 + i) for i in range(args.clients)]
        await asyncio.gather(
            *(
                client(https[i % len(https)], traffic, r, counter, measure_from, stop_at)
                for i, r in enumerate(rngs)
            )
        )
        ended = max(time.perf_counter(), stop_at)
        server_after, client_after = _cpu_of(pids), time.process_time()
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        _, err = profiler.communicate(timeout=120)
        if profiler.returncode not in (0, -signal.SIGINT) and not args.profile.exists():
            raise ProfilerFailed(f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}")
    result = summarize(traffic, args.clients, ended - measure_from)
    result["replicas"] = len(servers)
    if server_before is not None and server_after is not None:
        result["server_cpu_s"] = round(server_after - server_before, 1)
        # CPU per request: what a busy shared machine changes least
        result["server_cpu_ms_per_request"] = round(
            1000 * (server_after - server_before) / max(1, result["requests"]), 2
        )
    result["client_cpu_s"] = round(client_after - client_before, 1)
    return result


def _cpu_of(pids: list[int]) -> float | None:
    """The servers' CPU seconds together, or None if one is not readable."""
    times = [cpu_seconds(pid) for pid in pids]
    return None if None in times else sum(t for t in times if t is not None)


class ProfilerFailed(RuntimeError):
    pass


def _profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise ProfilerFailed("--profile needs py-spy (pip install py-spy)")
    fmt = {".json": "speedscope", ".txt": "raw"}.get(out.suffix, "flamegraph")
    command = [spy, "record", "--pid", str(pid), "--format", fmt, "--output", str(out)]
    return subprocess.Popen(
        [*command, "--rate", "200", "--nonblocking", "--threads"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    traffic = make_traffic(args.seed_messages + 20_000, 500)
    # Replicas share one memory only through a database and a Chroma server.
    chroma = args.chroma_server or args.replicas > 1
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="channelmind-load-")))
        database = args.database_url and stack.enter_context(scratch_database(args.database_url))
        servers = stack.enter_context(
            server_process(tmp, args.embedder, chroma, database or None, args.replicas)
        )
        result = asyncio.run(drive(servers, traffic, args))
    result["embedder"] = args.embedder
    result["store"] = "postgresql" if args.database_url else "sqlite"
    result["chroma"] = "server" if chroma else "embedded"
    if args.embedder == "local":
        result["backend"] = os.environ.get("CHANNELMIND_EMBEDDER_BACKEND", "default")
    return result


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"bench load: {r['clients']} clients on {r['replicas']} server(s), {r['seconds']} s,"
        f" embedder {r['embedder']}, store {r['store']}"
        + (f" ({r['backend']} backend)," if "backend" in r else ",")
        + f" Chroma {r['chroma']}, REST API v2 (add 1 message / project-wide search, 50/50)",
        f"throughput {r['requests_per_s']} requests/s ({r['requests']} requests),"
        f" errors {r['errors']}",
        f"{'':8}{'count':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}",
    ]
    for op in OPS:
        lines.append(
            f"{op:8}{r[PLURAL[op]]:>8}"
            + "".join(f"{r[f'{op}_ms_p{p}']:>10.1f}" for p in (50, 95, 99))
        )
    if "server_cpu_s" in r:
        lines.append(
            f"CPU: server {r['server_cpu_s']} s ({r['server_cpu_ms_per_request']} ms per"
            f" request), client {r['client_cpu_s']} s"
        )
    for example in r["error_examples"]:
        lines.append(f"error: {example}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.seconds <= 0 or args.warmup < 0 or args.seed_messages < 0:
        print("channelmind: --clients and --seconds must be positive", file=sys.stderr)
        return 2
    if args.replicas < 1 or (args.replicas > 1 and not args.database_url):
        print(
            "channelmind: --replicas N>1 shares one memory through PostgreSQL: give"
            " --database-url (`temp` starts a throwaway cluster)",
            file=sys.stderr,
        )
        return 2
    try:
        result = run(args)
    except (ServerStartFailed, ProfilerFailed) as exc:
        print(f"channelmind bench load: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_report(result))
    return 0
