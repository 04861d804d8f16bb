"""One memory, shared: what the bot stores through the core is what other agents read over the
REST API v2 (official ``memmachine-client``) and MCP (official ``mcp`` client over streamable
HTTP), what they add is what the bot answers from, and the bot runs unchanged on a remote
memory server (``MemoryClient``, as ``channelmind run`` does with ``CHANNELMIND_MEMORY_URL``).

Real parts throughout: the memory server app under uvicorn on loopback with API keys, a real
MemoryEngine (SQLite + Chroma, hashing embedder) in tmp_path, the fake OpenAI and Slack servers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import requests
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from memmachine_client import MemMachineClient
from memmachine_client.memory import Memory as MMMemory

from bot.app import PLATFORMS, Runner, build_conversation
from bot.core.conversation import Conversation
from bot.core.events import Author
from bot.core.responder import MEMORY_DOWN, NOTHING_FOUND, REMEMBER_HEADER, Responder
from bot.core.tokens import read_keyed
from bot.settings import Settings
from memory import MemoryEngine, Scope, SourceRef
from memory.client import MemoryAccessDenied, MemoryClient
from memory.embedders import Vectors
from memory.protocol import Memory
from tests.bot.helpers import (
    Channel,
    RecordingReplier,
    grounded,
    quoted,
    responder,
    slack_permalink,
)
from tests.bot.helpers import settings as bot_settings
from tests.fakes.openai.server import FakeOpenAI
from tests.fakes.slack.server import (
    DEFAULT_TEAM_ID,
    PERMALINK_BASE,
    FakeSlack,
    message_deleted_event,
    message_event,
)
from tests.polling import eventually
from tests.server_harness import Running, running

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore:Use `streamable_http_client`:DeprecationWarning"),
]

T = TypeVar("T")

ORG = "slack:T1"
OTHER_ORG = "slack:T9"
C1, C2 = "slack:C1", "slack:C2"
PROJECT = "channelmind"  # the bot's configured project (Settings.project)
BOT = "slack:U0BOT"
ALICE = Author("slack:U1ALICE", "Alice")
BOB = Author("slack:U2BOB", "Bob")
CAROL = Author("slack:U3CAROL", "Carol")
#: The bot's key and the agents' key grant ORG only; "k-other" grants another org.
KEYS = f"k-bot:{ORG},k-agent:{ORG},k-other:{OTHER_ORG}"


@pytest.fixture
async def server(engine: MemoryEngine) -> AsyncIterator[Running]:
    async with running(engine, api_keys=KEYS) as srv:
        yield srv


@pytest.fixture
def settings() -> Settings:
    return bot_settings()


def channel(raw: str, name: str, org: str = ORG) -> Channel:
    return Channel(raw, name, org=org, bot_id=BOT)


async def sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking memmachine-client call, off the loop that serves it."""
    return await asyncio.to_thread(fn, *args, **kwargs)


_rest_clients: list[MemMachineClient] = []


@pytest.fixture(autouse=True)
def _close_rest_clients() -> Iterator[None]:
    yield
    while _rest_clients:
        _rest_clients.pop().close()


def rest(server: Running, key: str = "k-agent", org: str = ORG) -> MMMemory:
    """The official REST client's memory of the bot's project in ``org``."""
    client = MemMachineClient(base_url=server.url, api_key=key, max_retries=0, timeout=30)
    _rest_clients.append(client)
    return MMMemory(client, org_id=org, project_id=PROJECT)


@asynccontextmanager
async def mcp(
    server: Running, key: str = "k-agent", **headers: str
) -> AsyncIterator[ClientSession]:
    sent = {"Authorization": f"Bearer {key}", **headers}
    async with (
        streamablehttp_client(server.url + "/mcp/", headers=sent) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def tool(session: ClientSession, name: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(name, arguments)
    assert not result.isError, result.content
    assert isinstance(result.structuredContent, dict)
    return result.structuredContent


def mcp_episodes(result: dict[str, Any]) -> list[dict[str, Any]]:
    episodic = result["content"]["episodic_memory"]
    return list(
        episodic["long_term_memory"]["episodes"] + episodic["short_term_memory"]["episodes"]
    )


def ref(source_id: str, org: str = ORG) -> SourceRef:
    return SourceRef(org_id=org, project_id=PROJECT, platform="slack", source_id=source_id)


# -- 1. what the bot stored, other agents read ---------------------------------------------------


async def test_a_message_the_bot_stored_is_found_over_rest_and_mcp(
    engine: MemoryEngine, server: Running, settings: Settings
) -> None:
    general, random = channel("C1", "general"), channel("C2", "random")
    conv = Conversation(engine, Responder(None), settings, platforms=PLATFORMS)
    said = general.message(ALICE, "The staging database moved to Postgres 16 on the new cluster")
    stored = await conv.handle_message(said, RecordingReplier())
    assert stored is not None and stored.uid
    await conv.handle_message(
        random.message(BOB, "The staging coffee machine is broken again"), RecordingReplier()
    )
    await engine.wait_indexed()
    want = {
        "uid": stored.uid,
        "content": said.text,
        "producer_id": ALICE.id,
        "producer_role": "user",
        "produced_for_id": C1,
    }

    # REST v2, official client: the project exists, search and list find the same record.
    memory = rest(server)
    project = await sync(memory.client.get_project, org_id=ORG, project_id=PROJECT)
    assert (project.org_id, project.project_id) == (ORG, PROJECT)
    found = await sync(memory.search, "staging database Postgres", limit=5)
    episodic = found.content.episodic_memory
    assert episodic is not None
    best = episodic.long_term_memory.episodes[0]
    assert {k: str(getattr(best, k)) for k in want} == want
    assert best.metadata is not None and best.metadata["display_name"] == "Alice"
    assert best.created_at == said.created_at
    listed = await sync(memory.list, page_size=100)
    rows = {str(e.uid): e for e in listed.content.episodic_memory or []}
    assert stored.uid in rows and rows[stored.uid].produced_for_id == C1
    assert rows[stored.uid].producer_id == ALICE.id
    only_c1 = await sync(memory.list, filter=f"produced_for_id = '{C1}'")
    assert [str(e.uid) for e in only_c1.content.episodic_memory or []] == [stored.uid]

    # MCP, official client: the channel's recall, and search by headers or by arguments.
    headers = {"org-id": ORG, "proj-id": PROJECT}
    async with mcp(server, **headers) as session:
        recalled = await tool(
            session, "recall_channel", channel_id=C1, query="staging database Postgres"
        )
        (hit,) = mcp_episodes(recalled)
        assert {k: hit[k] for k in want} == want
        elsewhere = await tool(
            session, "recall_channel", channel_id=C2, query="staging database Postgres"
        )
        assert stored.uid not in {e["uid"] for e in mcp_episodes(elsewhere)}
        by_header = await tool(session, "search_memory", query="staging database Postgres")
        assert mcp_episodes(by_header)[0]["uid"] == stored.uid
    async with mcp(server) as session:
        by_args = await tool(
            session, "search_memory", query="Postgres cluster", org_id=ORG, proj_id=PROJECT
        )
        first = mcp_episodes(by_args)[0]
        assert {k: first[k] for k in want} == want

    # A key for another org reads nothing of this one, over either API.
    with pytest.raises(requests.HTTPError) as refused:
        await sync(rest(server, key="k-other").search, "Postgres")
    response = refused.value.response
    assert response is not None and response.status_code == 403
    async with mcp(server, key="k-other", **headers) as session:
        denied = await tool(session, "recall_channel", channel_id=C1, query="Postgres")
    assert denied["status"] == 403


# -- 2. what other agents add, the bot answers from -----------------------------------------------

PLANNER_NOTE = "Release freeze starts Thursday at 16:00; only hotfixes merge after that"
RESEARCHER_NOTE = "The release freeze exception list is in the wiki page 'freeze-exceptions'"
QUESTION = "When does the release freeze start?"


async def agents_add_memories(server: Running) -> tuple[str, str]:
    """The planner adds over REST, the researcher over MCP, both for #general (slack:C1)."""
    (added,) = await sync(rest(server).add, PLANNER_NOTE, producer="agent:planner", produced_for=C1)
    headers = {"org-id": ORG, "proj-id": PROJECT, "user-id": "agent:researcher"}
    async with mcp(server, **headers) as session:
        done = await tool(session, "add_memory", content=RESEARCHER_NOTE, channel_id=C1)
    assert done == {"status": 200, "message": "Success"}
    (from_mcp,) = await server.engine.list(
        Scope(org_id=ORG, project_id=PROJECT, producer="agent:researcher")
    )
    assert (from_mcp.produced_for, from_mcp.role) == (C1, "user")
    await server.engine.wait_indexed()
    return str(added.uid), from_mcp.uid


async def test_memories_added_over_rest_and_mcp_are_cited_by_the_extractive_bot(
    engine: MemoryEngine, server: Running, settings: Settings
) -> None:
    general, random = channel("C1", "general"), channel("C2", "random")
    conv = Conversation(engine, Responder(None), settings, platforms=PLATFORMS)
    await conv.handle_message(
        random.message(CAROL, "The cafeteria menu changes on Monday"), RecordingReplier()
    )
    planner, researcher = await agents_add_memories(server)

    asked = RecordingReplier()
    await conv.handle_message(general.message(BOB, QUESTION, addressed=True), asked)
    (answer,) = asked.replies
    assert answer.startswith(REMEMBER_HEADER)
    assert "agent:planner" in answer and "Thursday at 16:00" in answer
    assert "agent:researcher" in answer and "freeze-exceptions" in answer
    (reply,) = await engine.list(
        Scope(org_id=ORG, project_id=PROJECT, produced_for=C1), "role = 'assistant'"
    )
    assert set(reply.metadata["cited_uids"]) == {planner, researcher}
    assert set(reply.metadata["cited_producers"]) == {"agent:planner", "agent:researcher"}

    # /recall in #general shows them too; the same question in #random sees none of it.
    recall = RecordingReplier()
    await conv.commands.handle(general.command(BOB, "recall", "release freeze"), recall)
    assert "Thursday at 16:00" in recall.ephemerals[0]
    other = RecordingReplier()
    await conv.handle_message(random.message(BOB, QUESTION, addressed=True), other)
    assert other.replies == [NOTHING_FOUND]


async def test_memories_added_by_agents_reach_the_llm_prompt_in_their_channel_only(
    engine: MemoryEngine, server: Running, settings: Settings
) -> None:
    general, random = channel("C1", "general"), channel("C2", "random")
    await agents_add_memories(server)
    async with FakeOpenAI() as fake:
        fake.responder = grounded("freeze")
        conv = Conversation(engine, responder(fake.base_url), settings, platforms=PLATFORMS)
        try:
            asked = RecordingReplier()
            await conv.handle_message(general.message(BOB, QUESTION, addressed=True), asked)
            prompt = fake.last_prompt()
            quotes = {text: (n, who) for n, who, text in quoted(prompt)}
            assert quotes[PLANNER_NOTE][1] == "agent:planner"
            assert quotes[RESEARCHER_NOTE][1] == "agent:researcher"
            (answer,) = asked.replies
            assert f"{PLANNER_NOTE} [{quotes[PLANNER_NOTE][0]}]" in answer

            other = RecordingReplier()
            await conv.handle_message(random.message(BOB, QUESTION, addressed=True), other)
            # Nothing from #general reaches #random's prompt; the LLM still answers, told that
            # memory holds nothing relevant here.
            assert len(fake.chat_requests) == 2
            prompt = fake.last_prompt()
            assert quoted(prompt) == [] and "memory holds nothing relevant" in prompt
            assert other.replies == ["The conversation here does not tell."]
        finally:
            await conv.close()


# -- 3. the bot on a remote memory server -----------------------------------------------------


@asynccontextmanager
async def remote_bot(
    server: Running, settings: Settings, key: str = "k-bot"
) -> AsyncIterator[tuple[Conversation, MemoryClient]]:
    """A "bot process": the core built as ``channelmind run`` builds it, on a MemoryClient."""
    async with MemoryClient(server.url, key) as client:
        memory: Memory = client  # the protocol the bot is typed with
        conv = build_conversation(settings, memory)
        try:
            yield conv, client
        finally:
            await conv.close()


async def test_the_bot_on_a_remote_memory_server(
    engine: MemoryEngine, server: Running, settings: Settings
) -> None:
    general, random = channel("C1", "general"), channel("C2", "random")
    async with remote_bot(server, settings) as (conv, client):
        assert conv.memory is client and conv.semantic is None  # no LLM configured

        # Store: the core's episode carries the uid the server's engine gave it.
        said = general.message(ALICE, "We're using PostgreSQL for the new project")
        stored = await conv.handle_message(said, RecordingReplier())
        assert stored is not None
        on_server = await engine.get_by_source(ref(said.source_id))
        assert on_server is not None and on_server.uid == stored.uid
        assert (on_server.producer, on_server.produced_for) == (ALICE.id, C1)
        assert on_server.metadata["display_name"] == "Alice"
        await conv.handle_message(
            random.message(CAROL, "The spring campaign launches Monday"), RecordingReplier()
        )
        await client.wait_indexed()

        # Answer with a citation (the permalink the replier gives), stored as the bot's.
        bob = RecordingReplier()
        await conv.handle_message(
            general.message(BOB, "What database are we using?", addressed=True), bob
        )
        (answer,) = bob.replies
        assert answer.startswith(REMEMBER_HEADER) and "PostgreSQL" in answer
        assert f"<{slack_permalink(said.source_id)}|[1]>" in answer
        replies = await engine.list(
            Scope(org_id=ORG, project_id=PROJECT, produced_for=C1), "role = 'assistant'"
        )
        assert [(r.producer, r.metadata["cited_uids"]) for r in replies] == [(BOT, [stored.uid])]
        elsewhere = RecordingReplier()
        await conv.handle_message(
            random.message(BOB, "What database are we using?", addressed=True), elsewhere
        )
        assert elsewhere.replies == [NOTHING_FOUND]

        # Edit: the server's record follows, and so does the next answer.
        edited = await conv.handle_edit(
            general.edit(said.source_id, "We're using MySQL for the new project")
        )
        assert edited is not None and edited.uid == stored.uid
        assert edited.content == "We're using MySQL for the new project"
        assert (await engine.get(ORG, PROJECT, [stored.uid]))[0].content == edited.content
        assert await conv.handle_edit(general.edit("C1:1.000000", "unknown message")) is None
        await client.wait_indexed()
        again = RecordingReplier()
        now = general.message(BOB, "What are we using for the new project now?", addressed=True)
        await conv.handle_message(now, again)
        assert "MySQL" in again.replies[0] and "PostgreSQL" not in again.replies[0]

        # Delete: the message and the bot's answers that quoted it are gone from the server.
        gone = await conv.handle_delete(general.delete(said.source_id))
        assert (gone.messages, gone.replies) == (1, 2)
        assert await engine.get_by_source(ref(said.source_id)) is None
        assert await engine.count(Scope(org_id=ORG, project_id=PROJECT, produced_for=C1)) == 2
        after = RecordingReplier()
        asked = general.message(CAROL, "What are we using for the new project?", addressed=True)
        await conv.handle_message(asked, after)
        assert "MySQL" not in after.replies[0]


async def test_commands_on_a_remote_memory_server(
    engine: MemoryEngine, server: Running, settings: Settings
) -> None:
    general = channel("C1", "general")
    everyone = Scope(org_id=ORG, project_id=PROJECT)
    async with remote_bot(server, settings) as (conv, _):
        for text in ("I prefer tabs over spaces", "My timezone is CET"):
            await conv.handle_message(general.message(CAROL, text), RecordingReplier())
        await conv.handle_message(general.message(ALICE, "tabs, really?"), RecordingReplier())

        # /remember twice for one feature: the second supersedes the first (by uid only).
        said = RecordingReplier()
        await conv.commands.handle(general.command(CAROL, "remember", "editor: vim"), said)
        await conv.commands.handle(general.command(CAROL, "remember", "editor: helix"), said)
        assert said.ephemerals[1].startswith("Noted")
        facts = await engine.facts(ORG, PROJECT, subject=CAROL.id, include_superseded=True)
        assert sorted((f.value, f.superseded_by is None) for f in facts) == [
            ("helix", True),
            ("vim", False),
        ]

        status = RecordingReplier()
        await conv.commands.handle(general.command(CAROL, "memory"), status)
        assert "From you: 2 messages in this workspace" in status.ephemerals[0]
        assert "1 fact about you" in status.ephemerals[0]

        # /memory off: Carol is not stored; /memory on again.
        await conv.commands.handle(general.command(CAROL, "memory", "off"), RecordingReplier())
        # Kept on the server, under the keyed token of Carol's id (bot.core.tokens).
        assert await read_keyed(engine, PROJECT, ORG, "user", CAROL.id, "memory") == "off"
        assert await engine.get_setting(ORG, PROJECT, CAROL.id, "memory") is None
        skipped = general.message(CAROL, "this is not kept")
        assert await conv.handle_message(skipped, RecordingReplier()) is None
        assert await engine.get_by_source(ref(skipped.source_id)) is None
        await conv.commands.handle(general.command(CAROL, "memory", "on"), RecordingReplier())

        # /forget me: everything Carol said, and the facts about her, gone from the server.
        forgot = RecordingReplier()
        await conv.commands.handle(general.command(CAROL, "forget", "me"), forgot)
        assert forgot.ephemerals == [
            "Done. I forgot everything you said in this workspace: 2 messages and 2 facts."
        ]
        assert await engine.count(everyone.model_copy(update={"producer": CAROL.id})) == 0
        assert await engine.facts(ORG, PROJECT, include_superseded=True) == []
        assert [e.producer for e in await engine.list(everyone)] == [ALICE.id]


async def test_two_bot_processes_share_one_server(
    engine: MemoryEngine, server: Running, settings: Settings
) -> None:
    general = channel("C1", "general")
    async with (
        remote_bot(server, settings) as (first, first_client),
        remote_bot(server, settings) as (second, _),
    ):
        said = general.message(ALICE, "The offsite is in Lisbon in May")
        assert await first.handle_message(said, RecordingReplier()) is not None
        # Slack delivers the same event to the other process (a retry): it is not stored twice.
        assert await second.handle_message(said, RecordingReplier()) is None
        told = general.message(CAROL, "The offsite budget is 20k euros")
        assert await second.handle_message(told, RecordingReplier()) is not None
        await first_client.wait_indexed()

        # Each process answers from what the other stored.
        asked_first = RecordingReplier()
        budget = general.message(BOB, "What is the offsite budget?", addressed=True)
        await first.handle_message(budget, asked_first)
        assert f"<{slack_permalink(told.source_id)}|" in asked_first.replies[0]
        asked_second = RecordingReplier()
        await second.handle_message(
            general.message(BOB, "Where is the offsite?", addressed=True), asked_second
        )
        assert f"<{slack_permalink(said.source_id)}|" in asked_second.replies[0]
        channel_scope = Scope(org_id=ORG, project_id=PROJECT, produced_for=C1)
        assert await engine.count(channel_scope, "role = 'assistant'") == 2
        assert await engine.count(channel_scope) == 6  # 2 said + 2 asked + 2 answers


async def test_the_bot_key_is_restricted_to_its_org(
    engine: MemoryEngine, server: Running, settings: Settings
) -> None:
    foreign = channel("C9", "elsewhere", org=OTHER_ORG)
    async with remote_bot(server, settings) as (conv, client):
        with pytest.raises(MemoryAccessDenied):
            await client.count(Scope(org_id=OTHER_ORG, project_id=PROJECT))
        replier = RecordingReplier()
        asked = foreign.message(ALICE, "What did we decide?", addressed=True)
        assert await conv.handle_message(asked, replier) is None
        assert replier.replies == [MEMORY_DOWN]  # said so, not failed silently
    assert await engine.count(Scope(org_id=OTHER_ORG, project_id=PROJECT)) == 0
    async with MemoryClient(server.url, "wrong-key") as stranger:
        with pytest.raises(MemoryAccessDenied) as denied:
            await stranger.count(Scope(org_id=ORG, project_id=PROJECT))
        assert denied.value.status == 401


class ConceptEmbedder:
    """A tiny embedding "model" that knows some meaning: the words of one concept share a
    dimension, so "db" is near "Postgres" although they share no word."""

    name = "concepts"
    CONCEPTS = (
        {"database", "db", "postgres", "postgresql", "mysql", "sqlite"},
        {"lunch", "pizza", "food", "cafeteria", "menu"},
    )
    dim = len(CONCEPTS) + 1

    @property
    def fingerprint(self) -> str:
        return "concepts:v1"

    def embed(self, texts: list[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = {w.lower() for w in re.findall(r"\w+", text)}
            for i, concept in enumerate(self.CONCEPTS):
                out[row, i] = len(words & concept)
            out[row, -1] = 0.1  # never a zero vector
        normalised: Vectors = out / np.linalg.norm(out, axis=1, keepdims=True)
        return normalised


async def test_a_remote_bot_judges_relevance_by_meaning_as_an_embedded_one(
    tmp_path: Path, settings: Settings
) -> None:
    """With an embedder that knows meaning, a message sharing no word with the question is
    still relevant: for the bot on the engine (its embedder, in process) and for the bot on a
    MemoryClient (the server's embedder, through /api/cm/similarity)."""
    general = channel("C1", "general")
    question = "Which db do we run?"
    engine = await MemoryEngine.open(tmp_path / "concepts", ConceptEmbedder())
    try:
        async with running(engine, api_keys=KEYS) as srv:
            local = Conversation(engine, Responder(None), settings, platforms=PLATFORMS)
            said = general.message(ALICE, "Postgres was picked for the billing service")
            await local.handle_message(said, RecordingReplier())
            await local.handle_message(
                general.message(CAROL, "Pizza for lunch"), RecordingReplier()
            )
            await engine.wait_indexed()
            embedded = RecordingReplier()
            await local.handle_message(general.message(BOB, question, addressed=True), embedded)

            async with remote_bot(srv, settings) as (conv, client):
                sims = await client.similarities("which db", ["Postgres", "pizza"])
                assert sims is not None and sims[0] > 0.9 > 0.1 > sims[1]
                remote = RecordingReplier()
                await conv.handle_message(general.message(BOB, question, addressed=True), remote)
        for replier in (embedded, remote):
            (answer,) = replier.replies
            assert answer.startswith(REMEMBER_HEADER)
            assert f"<{slack_permalink(said.source_id)}|" in answer and "Postgres" in answer
            assert "Pizza" not in answer
    finally:
        await engine.close()


# -- `channelmind run` with CHANNELMIND_MEMORY_URL, on the fake Slack ---------------------------


async def test_channelmind_run_on_a_remote_memory_server(
    engine: MemoryEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    org = f"slack:{DEFAULT_TEAM_ID}"
    alice, bob, general = "U0ALICE01", "U0BOB0001", "C0GENERAL"
    monkeypatch.setenv("CHANNELMIND_MEMORY_API_KEY", "k-team")
    async with (
        FakeSlack() as slack,
        running(engine, api_keys=f"k-team:{org}") as memory_server,
    ):
        slack.add_user(alice, "alice", display_name="Alice")
        slack.add_user(bob, "bob", display_name="Bob")
        slack.add_channel(general, "general")
        settings = bot_settings(
            slack_bot_token="xoxb-fake",
            slack_app_token="xapp-1-fake",
            slack_api_url=slack.api_url,
            memory_url=memory_server.url,
            data_dir=tmp_path / "unused",
        )
        runner = Runner(settings)
        await runner.start()
        try:
            assert isinstance(runner.memory, MemoryClient) and runner.app is None
            await slack.wait_connected(timeout=20)
            said = message_event(alice, "The incident review is on Wednesday at 3pm", general)
            await slack.wait_ack(await slack.send_event(said))
            ref_said = SourceRef(
                org_id=org,
                project_id=PROJECT,
                platform="slack",
                source_id=f"{general}:{said['ts']}",
            )
            stored = await eventually(lambda: engine.get_by_source(ref_said))
            assert (stored.producer, stored.produced_for) == (f"slack:{alice}", f"slack:{general}")
            await engine.wait_indexed()

            question = message_event(
                bob, f"<@{slack.bot_user_id}> when is the incident review?", general
            )
            await slack.wait_ack(await slack.send_event(question))
            (post,) = await slack.wait_for_call("chat.postMessage", timeout=10)
            link = f"{PERMALINK_BASE}/archives/{general}/p{said['ts'].replace('.', '')}"
            assert "Wednesday at 3pm" in post.params["text"] and f"<{link}|" in post.params["text"]

            deleted = message_deleted_event(general, said["ts"], said["text"], alice)
            await slack.wait_ack(await slack.send_event(deleted))
            await eventually(lambda: _gone(engine, ref_said))
        finally:
            await runner.stop()
    assert runner.memory is None


async def _gone(engine: MemoryEngine, source: SourceRef) -> bool:
    return await engine.get_by_source(source) is None
