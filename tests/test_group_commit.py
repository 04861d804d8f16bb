"""Concurrent adds are committed together (SQLiteStore.add's group commit): every caller gets
its own uids in order, a bad batch in the group fails alone, everything acknowledged is
stored, and concurrent REST adds end up in shared transactions (seen on the store's connection)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from memory.engine import MemoryEngine
from memory.model import InvalidInput
from memory.store.sqlite.store import SQLiteStore
from tests.conftest import ORG, PROJECT, episode
from tests.server_harness import running


async def test_concurrent_adds_each_get_their_own_uids(engine: MemoryEngine) -> None:
    taken = (await engine.add([episode("the first message", source_id="first")]))[0]
    batches = [
        [episode(f"batch {b} message {i}", source_id=f"b{b}m{i}") for i in range(b % 3 + 1)]
        for b in range(30)
    ]
    calls = [engine.add(batch) for batch in batches]
    # a batch whose uid is already another message's: refused, and only it
    calls.append(engine.add([episode("a stolen uid", uid=taken, source_id="thief")]))
    # the same source twice at once: stored once, both callers get its uid
    calls += [engine.add([episode("twice", source_id="dup")]) for _ in range(2)]
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(results[30], InvalidInput)
    twice = results[31:]
    assert not isinstance(twice[0], BaseException) and twice[0] == twice[1]
    for batch, uids in zip(batches, results[:30], strict=True):
        assert not isinstance(uids, BaseException)
        stored = await engine.get(ORG, PROJECT, uids)
        assert [e.content for e in sorted(stored, key=lambda e: uids.index(e.uid))] == [
            e.content for e in batch
        ]
    all_uids = [u for r in results[:30] if isinstance(r, list) for u in r]
    assert len(set(all_uids)) == len(all_uids) == sum(len(b) for b in batches)
    assert (await engine.get(ORG, PROJECT, [taken]))[0].content == "the first message"


async def test_a_lone_bad_batch_still_raises(engine: MemoryEngine) -> None:
    taken = (await engine.add([episode("mine")]))[0]
    with pytest.raises(InvalidInput, match="not stored"):
        await engine.add([episode("not mine", uid=taken, source_id="other")])
    assert await engine.add([episode("after the error")])  # the store still writes


async def test_concurrent_rest_adds_share_a_transaction(engine: MemoryEngine) -> None:
    """Many clients POST one message each at once to the real server: every message is stored
    under the uid its client got, and the connection adds are written with shows them
    committed in fewer transactions than requests, at least one holding several clients'
    messages."""
    statements: list[str] = []
    store = engine.store
    assert isinstance(store, SQLiteStore)
    store.loop_writer.set_trace_callback(statements.append)
    clients = 24
    async with running(engine) as server, httpx.AsyncClient(base_url=server.url) as http:

        async def add(i: int) -> str:
            body = {"org_id": ORG, "project_id": PROJECT, "messages": [{"content": f"m{i}z"}]}
            reply = await http.post("/api/v2/memories", json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            (result,) = reply.json()["results"]
            return str(result["uid"])

        uids = await asyncio.gather(*(add(i) for i in range(clients)))
    store.loop_writer.set_trace_callback(None)

    stored = await engine.get(ORG, PROJECT, uids)
    assert sorted(e.content for e in stored) == sorted(f"m{i}z" for i in range(clients))
    assert {e.uid: e.content for e in stored} == {u: f"m{i}z" for i, u in enumerate(uids)}
    # the messages each transaction inserted: the trace shows each INSERT with its values
    # (SQLite may report one statement more than once, so distinct ones are counted)
    per_transaction: list[set[str]] = []
    for statement in statements:
        if statement.startswith("BEGIN"):
            per_transaction.append(set())
        elif statement.startswith("INSERT OR IGNORE INTO episodes "):
            per_transaction[-1].add(statement)
    adds = [len(inserted) for inserted in per_transaction if inserted]
    assert sum(adds) == clients, adds
    assert len(adds) < clients and max(adds) > 1, adds
