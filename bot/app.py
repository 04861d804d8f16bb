"""The composition root: settings -> memory -> core -> adapters, and ``channelmind run``.

:func:`build_conversation` makes the core (with every platform's formatting, :data:`PLATFORMS`)
for ``channelmind chat`` and for :class:`Runner`, which is ``channelmind run`` in one process:
the memory (the embedded engine, or a remote memory server when ``CHANNELMIND_MEMORY_URL`` is
set), the memory server app (REST, MCP, metrics) under uvicorn on
``CHANNELMIND_HOST``/``PORT``, the Slack adapter when ``SLACK_BOT_TOKEN`` is set (Socket Mode
with ``SLACK_APP_TOKEN``, else HTTP mode at ``POST /slack/events`` on the same server), the
Discord adapter when ``DISCORD_TOKEN`` is set, and :class:`Retention`, which applies
``CHANNELMIND_RETENTION_DAYS`` once for all platforms. A part that cannot start raises
:class:`~bot.platforms.base.StartupError`, printed as one line with exit status 2.
SIGINT/SIGTERM stop everything cleanly. Tokens are never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol, cast

from .platforms.base import Adapter, Platform, StartupError
from .platforms.console.format import CONSOLE
from .platforms.discord.format import DISCORD
from .platforms.slack.format import SLACK
from .settings import mask_url

if TYPE_CHECKING:
    from fastapi import FastAPI
    from pydantic import SecretStr

    from memory.protocol import Memory

    from .core.conversation import Conversation
    from .core.events import Place
    from .importers.backfill import Backfill, History, Job
    from .platforms.discord.adapter import DiscordAdapter
    from .platforms.slack.adapter import SlackAdapter
    from .settings import Settings

log = logging.getLogger(__name__)

GUIDANCE = """\
channelmind run: no chat platform token is set, so there is nothing to connect to.

Slack (create the app from manifest.yml and install it to your workspace), then either
  Socket Mode:  SLACK_BOT_TOKEN=xoxb-...  and  SLACK_APP_TOKEN=xapp-...
  HTTP mode:    SLACK_BOT_TOKEN=xoxb-...  and  SLACK_SIGNING_SECRET=...
                (Slack posts events to https://<your host>/slack/events)
Discord:        DISCORD_TOKEN=...

Set them in the environment or in a .env file. To try the bot without any platform,
run `channelmind chat`."""

SLACK_MODE_MISSING = """\
channelmind run: SLACK_BOT_TOKEN is set, but neither SLACK_APP_TOKEN (Socket Mode) nor
SLACK_SIGNING_SECRET (HTTP mode) is. Set one of them (see manifest.yml and the README)."""

STOP_TIMEOUT = 15.0
DAY = 24 * 60 * 60.0

#: Every platform's writing rules, so that the core can format for a place of any of them
#: and recognise (and refuse) a message link from another.
PLATFORMS: tuple[Platform, ...] = (SLACK, DISCORD, CONSOLE)


def build_conversation(settings: Settings, memory: Memory) -> Conversation:
    """The core on a memory (the embedded engine, or a MemoryClient of a memory server) with
    its responder and, when an LLM is configured and CHANNELMIND_SEMANTIC is on, semantic
    memory (sharing the responder's OpenAI-compatible client)."""
    from memory.semantic import SemanticMemory

    from .core.conversation import Conversation
    from .core.responder import Responder

    responder = Responder.from_settings(settings)
    semantic = None
    if settings.semantic and responder.client is not None:
        semantic = SemanticMemory(
            memory,
            responder.client,
            model=settings.llm_model,
            batch_messages=settings.semantic_batch_messages,
            batch_seconds=settings.semantic_batch_seconds,
            calls_per_minute=settings.semantic_calls_per_minute,
            timeout=settings.llm_timeout,
        )
    return Conversation(memory, responder, settings, semantic, PLATFORMS)


class Retention:
    """``CHANNELMIND_RETENTION_DAYS``, applied once for every platform: when the bot starts,
    then every ``interval`` seconds while it runs."""

    def __init__(self, conversation: Conversation, interval: float = DAY) -> None:
        self.conversation = conversation
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                gone = await self.conversation.purge_expired()
                if gone:
                    log.info("retention: forgot %d expired message(s)", gone)
            except Exception:
                log.exception("retention: purging expired messages failed")
            await asyncio.sleep(self.interval)


class Backfilled(Protocol):
    """An adapter whose channels' history can be read (Slack, Discord)."""

    joined: Callable[[Job], object] | None

    @property
    def history(self) -> HistoryWithJobs: ...


class HistoryWithJobs(Protocol):
    platform: str

    def job_for(self, place: Place) -> Job | None: ...


def attach_backfill(conversation: Conversation, adapter: Backfilled) -> Backfill:
    """The backfill of an adapter's channels: those it is in (at :meth:`Backfill.start`), those
    it is added to, and those an admin asks for (``/memory backfill``)."""
    from .importers.backfill import Backfill

    history = cast("History", adapter.history)
    backfill = Backfill(history, conversation.channels)
    adapter.joined = backfill.enqueue

    async def request(place: Place) -> bool:
        job = adapter.history.job_for(place)
        return job is not None and backfill.enqueue(job)

    conversation.commands.backfill[adapter.history.platform] = request
    return backfill


def backfill_metrics(app: FastAPI, backfills: list[Backfill]) -> None:
    """``channelmind_backfill_*`` on the memory server's /metrics, when it has them."""
    metrics = getattr(app.state, "metrics", None)
    if metrics is None:
        return
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Any:
            messages = CounterMetricFamily(
                "channelmind_backfill_messages",
                "Messages read by the history backfill, by outcome",
                labels=["platform", "outcome"],
            )
            channels = GaugeMetricFamily(
                "channelmind_backfill_channels",
                "Channels whose history was read (done) or waits (queued)",
                labels=["platform", "state"],
            )
            for b in backfills:
                p, name = b.progress, b.history.platform
                for outcome, n in (
                    ("stored", p.stored),
                    ("present", p.present),
                    ("skipped", p.skipped),
                ):
                    messages.add_metric([name, outcome], n)
                channels.add_metric([name, "done"], p.done)
                channels.add_metric([name, "queued"], p.queued)
            yield messages
            yield channels

    metrics.registry.register(Collector())


def _set(secret: SecretStr | None) -> bool:
    return secret is not None and bool(secret.get_secret_value())


def check(settings: Settings) -> str | None:
    """What is missing before anything starts, or None."""
    slack, discord = _set(settings.slack_bot_token), _set(settings.discord_token)
    if not slack and not discord:
        return GUIDANCE
    if slack and not _set(settings.slack_app_token) and not _set(settings.slack_signing_secret):
        return SLACK_MODE_MISSING
    return None


class _Server:
    """uvicorn on a socket bound here (so that a busy port is an ordinary error), with
    signals left to the runner."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield  # the runner handles SIGINT/SIGTERM

        self.socket = _bind(host, port)
        config = uvicorn.Config(app, log_level="info", lifespan="on")
        self.server = Server(config)
        self.task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    async def _serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.socket])
        except SystemExit as exc:  # uvicorn exits on a failed startup
            raise StartupError(f"the web server did not start (status {exc.code})") from None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._serve(), name="uvicorn")
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises the startup failure
                raise StartupError("the web server stopped while starting")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.task is None:
            self.socket.close()
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), STOP_TIMEOUT)
        except TimeoutError:
            self.server.force_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 5)
        except Exception:
            log.exception("the web server failed")
        finally:
            self.socket.close()


def _bind(host: str, port: int) -> socket.socket:
    from memory.server.listen import listening_socket

    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


class Runner:
    """Everything ``channelmind run`` starts, in order, and stops in reverse. With
    ``bot=False`` it is ``channelmind serve``: the memory and its server, no platforms."""

    def __init__(
        self,
        settings: Settings,
        host: str | None = None,
        port: int | None = None,
        *,
        bot: bool = True,
    ) -> None:
        self.settings = settings
        self.host = host or settings.host
        self.port = settings.port if port is None else port
        self.bot = bot
        self.memory: Memory | None = None
        self.conversation: Conversation | None = None
        self.app: FastAPI | None = None
        self.server: _Server | None = None
        self.url: str | None = None  # where the server listens, once it does
        self.slack: SlackAdapter | None = None
        self.discord: DiscordAdapter | None = None
        self.retention: Retention | None = None
        self.backfills: list[Backfill] = []

    @property
    def bound_port(self) -> int | None:
        return self.server.port if self.server is not None else None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        from memory.server.app import ServeRefused, check_bind, served_url
        from memory.server.auth import ApiKeyError, ApiKeys

        from .memory_access import open_memory

        settings = self.settings
        remote = self.bot and bool(settings.memory_url)
        http_mode = (
            self.bot and _set(settings.slack_bot_token) and not _set(settings.slack_app_token)
        )
        if not remote:
            try:
                check_bind(self.host, ApiKeys.parse(settings.api_keys_text()))
            except (ServeRefused, ApiKeyError) as exc:
                raise StartupError(str(exc)) from None
        else:
            log.info("memory: the server at %s", mask_url(settings.memory_url or ""))

        self.memory = memory = await open_memory(settings, "bot" if self.bot else "server")
        conversation = None
        if self.bot:
            self.conversation = conversation = build_conversation(settings, memory)

        engine = None
        if not remote:
            from memory import MemoryEngine
            from memory.server.app import create_app

            assert isinstance(memory, MemoryEngine)
            engine = memory
            self.app = create_app(engine=engine, settings=settings)
        elif http_mode:  # the memory lives elsewhere; serve only Slack's endpoint
            from fastapi import FastAPI

            self.app = FastAPI(title="ChannelMind bot", openapi_url=None)

        if conversation is not None and _set(settings.slack_bot_token):
            from .platforms.slack.adapter import SlackAdapter

            try:
                self.slack = slack = SlackAdapter(conversation, settings)
                await slack.start()
                if http_mode:
                    assert self.app is not None
                    slack.mount(self.app)
            except StartupError as exc:
                raise StartupError(f"Slack: {exc}") from None
            self.backfills.append(attach_backfill(conversation, slack))

        if self.app is not None:
            self.server = _Server(self.app, self.host, self.port)
            self.url = served_url(self.host, self.server.port)
            # Commands on this data folder now go through it. Recorded once the socket
            # listens (connections wait in its backlog) and before the server answers, so
            # whoever sees the server answer also finds its URL in the lock file.
            if engine is not None:
                await engine.serving_at(self.url)
            await self.server.start()
            log.info("listening on %s", self.url)

        if conversation is not None and _set(settings.discord_token):
            try:  # imported only when Discord is wanted
                from .platforms.discord.adapter import DiscordAdapter
            except ImportError as exc:
                raise StartupError(f"Discord: the adapter cannot be loaded: {exc}") from None

            try:
                discord = DiscordAdapter(conversation, settings)
                await discord.start()  # logs in, then connects in the background
            except StartupError as exc:
                if self.slack is None:
                    raise StartupError(f"Discord: {exc}") from None
                log.error("discord: not started (%s); Slack runs on", exc)
            else:
                self.discord = discord
                self.backfills.append(attach_backfill(conversation, discord))

        if self.app is not None:
            backfill_metrics(self.app, self.backfills)
        for backfill in self.backfills:
            await backfill.start()  # in the background: one channel at a time
        if conversation is not None and settings.retention_days:
            self.retention = Retention(conversation)
            await self.retention.start()

    async def stop(self) -> None:
        """Retention and the adapters first (no new events), then the web server, the core,
        the memory."""
        if self.retention is not None:
            await self.retention.close()
            self.retention = None
        for backfill in self.backfills:
            await backfill.close()
        self.backfills = []
        adapters: list[tuple[str, Adapter | None]] = [
            ("slack", self.slack),
            ("discord", self.discord),
        ]
        self.slack = self.discord = None
        for name, adapter in adapters:
            if adapter is None:
                continue
            try:
                await asyncio.wait_for(adapter.close(), STOP_TIMEOUT)
            except Exception:
                log.exception("%s: closing failed", name)
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self.conversation is not None:
            with contextlib.suppress(Exception):
                await self.conversation.close()
            self.conversation = None
        if self.memory is not None:
            with contextlib.suppress(Exception):
                await self.memory.close()
            self.memory = None


async def run(
    settings: Settings, host: str | None = None, port: int | None = None, *, bot: bool = True
) -> int:
    """``channelmind run`` (``bot=False``: ``channelmind serve``) until SIGINT or SIGTERM."""
    from memory.server.event_loop import loop_name
    from memory.server.gc_tuning import tuned_gc

    runner = Runner(settings, host, port, bot=bot)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await runner.start()
        if bot:
            parts = [p for p, on in (("Slack", runner.slack), ("Discord", runner.discord)) if on]
            log.info("channelmind is running on %s; Ctrl-C stops it", " and ".join(parts))
        else:
            log.info(
                "the memory server is running at %s (%s event loop); Ctrl-C stops it",
                runner.url,
                loop_name(loop),
            )
        with tuned_gc():  # start-up is done: see memory.server.gc_tuning
            await stop.wait()
    finally:
        await runner.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return 0


def main(settings: Settings, host: str | None, port: int | None, *, bot: bool = True) -> int:
    """``channelmind run`` (``bot=False``: ``serve``). A part that cannot start raises
    StartupError (or one of memory's one-line errors): the CLI prints it, exit status 2."""
    if bot:
        missing = check(settings)
        if missing is not None:
            print(missing, file=sys.stderr)
            return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from memory.server.event_loop import loop_factory

    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        return runner.run(run(settings, host, port, bot=bot))
