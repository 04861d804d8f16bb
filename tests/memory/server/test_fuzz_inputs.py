"""Property-based input fuzzing through REST and MCP (issue 9): timestamps over the whole
``datetime`` range with offsets from -23:59 to +23:59, numeric epochs, and arbitrary text
(lone surrogates, NUL, controls) in every string field. Invariant: the server answers 2xx or
4xx, never 5xx and never a traceback; and after each accepted write, search, list and indexing
in that project and in another org still work.

The server is the real app under uvicorn (its lifespan opens the engine: SQLite and Chroma in a
temp folder), in a thread, so that hypothesis drives it with plain synchronous calls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from memory.server.app import create_app
from tests.server_harness import settings as server_settings

pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client`:DeprecationWarning")

OTHER = {"org_id": "zz-other-org", "project_id": "watched"}
FUZZ = settings(
    max_examples=35,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- strategies ------------------------------------------------------------------------------
#
# Each body is valid but for at most one field, which then gets something hostile: so about
# half the writes are accepted (and the invariant after an accepted write is exercised), and
# every field meets every kind of bad value.

#: Any character at all, surrogates included, with the troublesome ones made frequent.
CHARS = st.characters(exclude_categories=()) | st.sampled_from(
    ["\ud800", "\udfff", "\x00", "\n", "\x1f", " ", "'", '"', "\\", "\u2028", "\ufeff", "é"]
)
NASTY = st.text(CHARS, max_size=24)
GOOD_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)
GOOD_CONTENT = GOOD_TEXT.filter(lambda t: t.strip() and "\ufeff" not in t) | st.sampled_from(
    ["hello there", "the deploy is on friday", "note: Ünïcödé ✓ 日本語"]
)
GOOD_IDS = st.sampled_from(["acme", "globex", "équipe_1", "slack:T0", "discord:42", "a-b_c"])
GOOD_REFS = st.sampled_from(["alice", "slack:U1", "bot", "discord:9", "Zoë Ö"]) | GOOD_TEXT
OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
#: The whole datetime range, naive or with any offset: a few ends fall outside the valid range.
DATETIMES = st.datetimes(datetime.min, datetime.max, timezones=st.none() | OFFSETS)
TIMESTAMPS = st.one_of(
    DATETIMES.map(lambda d: d.isoformat()),
    DATETIMES.map(lambda d: d.isoformat(sep=" ", timespec="milliseconds")),
    st.floats(-62135596800, 253402300799),  # Unix seconds
    st.integers(10**12 + 1, 253402300799000),  # Unix milliseconds
)
NASTY_TIMESTAMPS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.sampled_from(
        [
            "9999-12-31T23:59:59.999999",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            253402300799999.9,
            253402300800,
            -62135596801,
        ]
    ),
    NASTY,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | GOOD_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(GOOD_TEXT, inner, max_size=3),
    max_leaves=6,
)
NASTY_JSON = st.recursive(
    NASTY, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(NASTY, inner, max_size=2)
)
FILTERS = st.one_of(
    st.just(""),
    st.builds(lambda v: f"producer = '{v}'", GOOD_REFS),
    DATETIMES.map(lambda d: f"created_at > date('{d.isoformat()}')"),
    DATETIMES.map(lambda d: f"created_at <= '{d.isoformat()}'"),
)
NASTY_FILTERS = st.one_of(
    NASTY,
    st.builds(lambda v: f"producer = '{v}'", NASTY),
    st.builds(lambda v: f"m.k IN ('{v}', 'x')", NASTY),
)


@st.composite
def bodies(
    draw: st.DrawFn,
    good: dict[str, st.SearchStrategy[Any]],
    nasty: dict[str, st.SearchStrategy[Any]],
) -> dict[str, Any]:
    """A body of good fields, but for at most one (half the time) which gets a nasty value or
    is left out."""
    out = {name: draw(strategy) for name, strategy in good.items()}
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(nasty)))
        if draw(st.integers(0, 9)) == 0:
            out.pop(name, None)
        else:
            out[name] = draw(nasty[name])
    return out


MESSAGE = bodies(
    {
        "content": GOOD_CONTENT,
        "producer": GOOD_REFS,
        "produced_for": GOOD_REFS,
        "role": st.sampled_from(["user", "assistant", ""]),
        "metadata": st.dictionaries(GOOD_TEXT, GOOD_TEXT, max_size=3),
        "timestamp": TIMESTAMPS,
    },
    {
        "content": NASTY,
        "producer": NASTY,
        "produced_for": NASTY,
        "role": NASTY,
        "metadata": st.dictionaries(NASTY, NASTY, max_size=3),
        "timestamp": NASTY_TIMESTAMPS,
    },
)
ADD = st.builds(
    lambda ids, messages: {**ids, "messages": messages},
    bodies({"org_id": GOOD_IDS, "project_id": GOOD_IDS}, {"org_id": NASTY, "project_id": NASTY}),
    st.lists(MESSAGE, min_size=1, max_size=3),
)
SEARCH = bodies(
    {"org_id": GOOD_IDS, "project_id": GOOD_IDS, "query": GOOD_TEXT, "filter": FILTERS},
    {
        "org_id": NASTY,
        "query": NASTY,
        "filter": NASTY_FILTERS,
        "set_metadata": st.dictionaries(NASTY, NASTY_JSON, max_size=2),
        "top_k": st.integers(-5, 2000),
        "expand_context": st.integers(-1, 30),
        "score_threshold": st.floats(),
    },
)
LIST = bodies(
    {"org_id": GOOD_IDS, "project_id": GOOD_IDS, "filter": FILTERS},
    {"project_id": NASTY, "filter": NASTY_FILTERS, "page_size": st.integers(-1, 20_000)},
)
EPISODE = bodies(
    {
        "org_id": GOOD_IDS,
        "project_id": GOOD_IDS,
        "producer": GOOD_REFS,
        "produced_for": GOOD_REFS,
        "content": GOOD_CONTENT,
        "created_at": TIMESTAMPS,
        "platform": st.sampled_from(["slack", "discord", "api"]),
        "metadata": st.dictionaries(GOOD_TEXT, JSON_VALUES, max_size=3),
    },
    {
        "org_id": NASTY,
        "producer": NASTY,
        "produced_for": NASTY,
        "content": NASTY,
        "created_at": NASTY_TIMESTAMPS,
        "thread_id": NASTY,
        "source_id": NASTY,
        "platform": NASTY,
        "role": NASTY,
        "metadata": st.dictionaries(NASTY, NASTY_JSON, max_size=3),
    },
)
FACT = bodies(
    {
        "org_id": GOOD_IDS,
        "project_id": GOOD_IDS,
        "subject": GOOD_REFS,
        "feature": GOOD_TEXT,
        "value": GOOD_TEXT,
        "created_at": TIMESTAMPS,
    },
    {
        "subject": NASTY,
        "produced_for": NASTY,
        "feature": NASTY,
        "value": NASTY,
        "created_at": NASTY_TIMESTAMPS,
        "superseded_at": NASTY_TIMESTAMPS,
        "metadata": st.dictionaries(NASTY, NASTY_JSON, max_size=2),
        "citations": st.lists(NASTY, max_size=2),
    },
)
TIME_RANGE = bodies(
    {"since": TIMESTAMPS, "until": TIMESTAMPS},
    {"since": NASTY_TIMESTAMPS, "until": NASTY_TIMESTAMPS},
)
SCOPE = bodies(
    {"org_id": GOOD_IDS, "project_id": GOOD_IDS},
    {"org_id": NASTY, "producer": NASTY, "produced_for": NASTY, "thread_id": NASTY},
)
CM_SEARCH = bodies(
    {
        "query": GOOD_TEXT,
        "scope": SCOPE,
        "time": TIME_RANGE,
        "mode": st.sampled_from(["hybrid", "keyword", "vector"]),
    },
    {"query": NASTY, "filters": NASTY_FILTERS, "mode": NASTY},
)
CM_LIST = bodies({"scope": SCOPE, "time": TIME_RANGE}, {"filters": NASTY_FILTERS})


# -- the server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    app = create_app(settings=server_settings(data_dir=data_dir))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(3000):  # a start-up guard, not a timing
        if server.started:
            break
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        # A memory in another org that every accepted write must leave working.
        seed = {**OTHER, "messages": [{"content": "the other org's standing note"}]}
        assert post(client, "/api/v2/memories", seed).status_code == 200
        yield client


def post(client: httpx.Client, route: str, payload: Any) -> httpx.Response:
    """POST a JSON body as a client would encode it: lone surrogates as \\uXXXX escapes."""
    raw = json.dumps(payload, allow_nan=True).encode("ascii")
    return client.post(route, content=raw, headers={"content-type": "application/json"})


def answered(response: httpx.Response) -> None:
    event(f"{response.request.url.path} answered {response.status_code}")
    assert response.status_code < 500, (response.request.url, response.text[:2000])
    assert "Traceback" not in response.text and 'File "' not in response.text


def still_works(client: httpx.Client, where: dict[str, str]) -> None:
    for scope in (where, OTHER):
        search = post(client, "/api/v2/memories/search", {**scope, "query": "note"})
        assert search.status_code == 200, search.text
        listed = post(client, "/api/v2/memories/list", {**scope, "page_size": 5})
        assert listed.status_code == 200, listed.text
    other = post(client, "/api/v2/memories/search", {**OTHER, "query": "standing note"})
    episodes = other.json()["content"]["episodic_memory"]["long_term_memory"]["episodes"]
    assert "the other org's standing note" in [e["content"] for e in episodes]
    assert post(client, "/api/cm/index/wait", {"timeout": 60}).json() == {"done": True}
    assert client.get("/api/cm/stats").json()["pending_index"] == 0


def scope_of(payload: dict[str, Any]) -> dict[str, str]:
    return {k: payload.get(k, "universal") for k in ("org_id", "project_id")}


# -- REST ------------------------------------------------------------------------------------


def _add(timestamp: Any = None, **message: Any) -> dict[str, Any]:
    stamp = {} if timestamp is None else {"timestamp": timestamp}
    return {"org_id": "acme", "project_id": "p", "messages": [{**message, **stamp}]}


@FUZZ
@given(payload=ADD)
# The inputs issue 9 found, always tried.
@example(payload=_add("9999-12-31T23:59:59.999999", content="far future"))
@example(payload=_add(253402300799999.9, content="far future in ms"))
@example(payload=_add("0001-01-01T00:00:00+14:00", content="before time"))
@example(payload=_add(content="a\ud800b"))
@example(payload=_add(content="x", producer="p\udfff", metadata={"k": "\ud800"}))
def test_fuzzed_v2_add_never_breaks_memory(http: httpx.Client, payload: dict[str, Any]) -> None:
    response = post(http, "/api/v2/memories", payload)
    answered(response)
    if response.status_code == 200:
        still_works(http, scope_of(payload))


@FUZZ
@given(search=SEARCH, listing=LIST)
def test_fuzzed_v2_search_and_list_never_5xx(
    http: httpx.Client, search: dict[str, Any], listing: dict[str, Any]
) -> None:
    answered(post(http, "/api/v2/memories/search", search))
    answered(post(http, "/api/v2/memories/list", listing))


@FUZZ
@given(episodes=st.lists(EPISODE, min_size=1, max_size=2))
def test_fuzzed_channelmind_episodes_never_break_memory(
    http: httpx.Client, episodes: list[dict[str, Any]]
) -> None:
    response = post(http, "/api/cm/episodes/add", {"episodes": episodes})
    answered(response)
    if response.status_code == 200:
        for episode in episodes:
            still_works(http, scope_of(episode))


@FUZZ
@given(fact=FACT)
def test_fuzzed_facts_never_break_memory(http: httpx.Client, fact: dict[str, Any]) -> None:
    response = post(http, "/api/cm/facts/add", {"fact": fact})
    answered(response)
    if response.status_code == 200:
        listed = post(http, "/api/cm/facts/list", scope_of(fact))
        assert listed.status_code == 200, listed.text
        still_works(http, scope_of(fact))


@FUZZ
@given(search=CM_SEARCH, listing=CM_LIST)
def test_fuzzed_time_ranges_never_5xx(
    http: httpx.Client, search: dict[str, Any], listing: dict[str, Any]
) -> None:
    answered(post(http, "/api/cm/search", search))
    answered(post(http, "/api/cm/episodes/list", listing))


# -- MCP -------------------------------------------------------------------------------------

#: What the official client can send: it encodes JSON as UTF-8, so no lone surrogates (those
#: are sent raw in test_lone_surrogates_in_mcp_arguments_are_422).
SENDABLE = st.text(st.characters(exclude_categories=("Cs",)) | st.sampled_from(["\x00", "\n"]))
MCP_NASTY = {"content": SENDABLE, "org_id": SENDABLE, "proj_id": SENDABLE, "user_id": SENDABLE}
MCP_CALLS = st.one_of(
    st.tuples(
        st.just("add_memory"),
        bodies(
            {"content": GOOD_CONTENT, "user_id": GOOD_IDS, "channel_id": GOOD_REFS},
            {**MCP_NASTY, "channel_id": SENDABLE},
        ),
    ),
    st.tuples(
        st.just("search_memory"),
        bodies(
            {"query": GOOD_TEXT, "user_id": GOOD_IDS},
            {**MCP_NASTY, "query": SENDABLE, "top_k": st.integers(-10, 5000)},
        ),
    ),
    st.tuples(
        st.just("recall_channel"),
        bodies(
            {"channel_id": GOOD_REFS, "query": GOOD_TEXT, "org_id": GOOD_IDS},
            {"channel_id": SENDABLE, "query": SENDABLE, "proj_id": SENDABLE},
        ),
    ),
    st.tuples(
        st.just("delete_memory"),
        bodies(
            {"episodic_memory_uids": st.lists(GOOD_IDS, min_size=1, max_size=2)},
            {"org_id": SENDABLE, "semantic_memory_uids": st.lists(SENDABLE, max_size=3)},
        ),
    ),
)
REQUIRED = {
    "add_memory": ["content"],
    "search_memory": ["query"],
    "recall_channel": ["channel_id", "query"],
    "delete_memory": [],
}


async def call_tool(base_url: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    async with (
        streamablehttp_client(base_url + "/mcp/") as (read, write, _),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        result = await client.call_tool(tool, arguments)
    assert not result.isError, result.content
    assert isinstance(result.structuredContent, dict)
    return result.structuredContent


@FUZZ
@given(call=MCP_CALLS)
def test_fuzzed_mcp_tool_calls_never_break_memory(
    base_url: str, http: httpx.Client, call: tuple[str, dict[str, Any]]
) -> None:
    tool, arguments = call
    for name in REQUIRED[tool]:
        arguments.setdefault(name, "x")
    result = anyio.run(call_tool, base_url, tool, arguments)
    status = result.get("status", 200)
    event(f"{tool} answered {status}")
    assert status < 500, result
    if tool == "add_memory" and status == 200:
        user = arguments.get("user_id", "").strip()
        proj = arguments.get("proj_id", "").strip() or (f"mcp-{user}" if user else None)
        if proj:
            still_works(
                http,
                {
                    "org_id": arguments.get("org_id", "").strip() or "mcp-universal",
                    "project_id": proj,
                },
            )
        else:
            still_works(http, OTHER)


def test_lone_surrogates_in_mcp_arguments_are_422(base_url: str, http: httpx.Client) -> None:
    """Raw JSON-RPC over the streamable HTTP transport: the official client cannot encode a
    lone surrogate, other clients can."""
    headers = {"accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    started = post_rpc(http, init, headers)
    headers["mcp-session-id"] = started.headers["mcp-session-id"]
    post_rpc(http, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
    for n, (tool, arguments) in enumerate(
        [
            ("add_memory", {"content": "a\ud800b"}),
            ("add_memory", {"content": "ok", "channel_id": "slack:\udfff"}),
            ("search_memory", {"query": "\ud800"}),
            ("recall_channel", {"channel_id": "c\ud800", "query": "q"}),
            ("delete_memory", {"episodic_memory_uids": ["\ud800"]}),
        ],
        start=2,
    ):
        rpc = {
            "jsonrpc": "2.0",
            "id": n,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        response = post_rpc(http, rpc, headers)
        [event] = [ln for ln in response.text.splitlines() if ln.startswith("data:")]
        result = json.loads(event.removeprefix("data:"))["result"]
        assert result["structuredContent"]["status"] == 422, (tool, result)
    still_works(http, OTHER)


def post_rpc(
    client: httpx.Client, message: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    raw = json.dumps(message).encode("ascii")
    response = client.post(
        "/mcp/", content=raw, headers={**headers, "content-type": "application/json"}
    )
    assert response.status_code < 300, response.text
    return response
