"""What is particular to the PostgreSQL store: opening (migrations, operator mistakes),
forgetting's VACUUM, and the full-text index narrowed by scope."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from memory.model import InvalidInput, Scope
from memory.store.base import StoreUnavailable
from memory.store.postgres import PostgresStore
from memory.store.postgres.cluster import free_port
from memory.store.postgres.schema import SCHEMA_VERSION
from memory.store.postgres.store import ANALYSE_EVERY
from memory.store.shared import narrowest_token
from tests.conftest import GENERAL, ORG, PROJECT, episode
from tests.polling import eventually

CHANNEL = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)


async def test_several_processes_open_and_migrate_at_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url, pool_size=2) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        conn = await asyncpg.connect(pg_url)
        try:
            versions = await conn.fetch("SELECT version FROM cm_schema")
        finally:
            await conn.close()
        assert [r[0] for r in versions] == list(range(1, SCHEMA_VERSION + 1))
        await stores[0].add([episode("hello")])
        assert await stores[3].count(CHANNEL) == 1
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    await store.pool.execute("INSERT INTO cm_schema VALUES ($1)", SCHEMA_VERSION + 1)
    await store.close()
    with pytest.raises(StoreUnavailable, match="newer than this ChannelMind"):
        await PostgresStore(pg_url).open()


async def test_operator_mistakes_get_one_line_without_secrets(pg_url: str) -> None:
    port = free_port()
    with pytest.raises(StoreUnavailable) as refused:
        await PostgresStore(f"postgresql://cm:hunter2@127.0.0.1:{port}/x").open()
    message = str(refused.value)
    assert f"127.0.0.1:{port}/x" in message and "CHANNELMIND_DATABASE_URL" in message
    assert "hunter2" not in message and "\n" not in message
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(StoreUnavailable, match="no such database"):
        await PostgresStore(missing).open()


async def test_text_postgresql_cannot_hold_is_bad_input_not_a_crash(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        [added] = await store.add([episode("fine")])
        for attempt in (
            # The record rules refuse such a uid first; the store must refuse it on its own.
            store.add([episode("x").model_copy(update={"uid": "u\x00"})]),
            store.get(ORG, PROJECT, ["u\x00"]),
            store.edit(ORG, PROJECT, added.uid, "nul \x00 inside", episode("x").created_at),
            store.set_setting(ORG, PROJECT, "s", "k", "v\x00"),
        ):
            with pytest.raises(InvalidInput, match="NUL"):
                await attempt
        assert [e.content for e in await store.get(ORG, PROJECT, [added.uid])] == ["fine"]
    finally:
        await store.close()


async def test_purge_vacuums_away_the_dead_tuples_of_a_forget(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    conn = await asyncpg.connect(pg_url)
    try:
        await store.add([episode(f"forget me {i}") for i in range(50)] + [episode("keep")])
        await store.forget(CHANNEL)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        dead = "SELECT dead_tuple_count FROM pgstattuple($1)"
        assert await conn.fetchval(dead, "episodes") > 0
        await store.purge()
        for table in ("episodes", "vector_tombstones", "facts", "fact_citations"):
            assert await conn.fetchval(dead, table) == 0, table
    finally:
        await conn.close()
        await store.close()


async def test_a_channel_search_is_one_gin_index_search(pg_url: str) -> None:
    """The channel's scope token is part of the full-text query, so the GIN index returns
    only that channel's matches (no separate filter over the project's matches)."""
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await store.add([episode(f"deploy {i}", produced_for=f"slack:C{i % 50}")
                         for i in range(2000)])  # fmt: skip
        await store.pool.execute("ANALYZE episodes")
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("SET enable_seqscan = off")
            plan = await conn.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) SELECT id FROM episodes e WHERE e.tsv @@"
                " (to_tsquery('channelmind', 'deploy') && $1::tsquery)",
                f"'{narrowest_token(CHANNEL.model_copy(update={'produced_for': 'slack:C7'}))}'",
            )
        finally:
            await conn.close()
        assert "ep_fts" in plan
        assert '"Actual Rows": 40' in plan
    finally:
        await store.close()


async def test_a_bulk_load_refreshes_the_planners_statistics(pg_url: str) -> None:
    """Autovacuum is off on the test cluster, so only the store can have analysed the table:
    after :data:`ANALYSE_EVERY` new episodes it does, in the background, and the planner then
    knows the table's size instead of guessing (what made channel searches read whole GIN
    posting lists after an import)."""
    store = PostgresStore(pg_url)
    await store.open()
    try:

        async def analysed() -> tuple[int, float]:
            row = await store.pool.fetchrow(
                "SELECT s.analyze_count, c.reltuples FROM pg_stat_user_tables s"
                " JOIN pg_class c ON c.oid = s.relid WHERE s.relname = 'episodes'"
            )
            assert row is not None
            return int(row[0]), float(row[1])

        below = ANALYSE_EVERY - 1
        await store.add([episode(f"imported {i}", source_id=f"s{i}") for i in range(below)])
        assert (await analysed())[0] == 0
        await store.add([episode(f"imported {i}", source_id=f"s{i}") for i in range(below)])
        assert (await analysed())[0] == 0  # a re-import stores nothing new
        await store.add([episode("one more", source_id="last")])

        async def once() -> bool:
            return (await analysed())[0] == 1

        await eventually(once, within=60)
        assert (await analysed())[1] == ANALYSE_EVERY
    finally:
        await store.close()


async def test_a_new_database_has_statistics_once_it_holds_two_thousand_episodes(
    pg_url: str,
) -> None:
    """What ``bench load`` seeds (2,000 messages in batches of 500) is enough for the store to
    analyse the table (autovacuum is off on the test cluster). Without statistics the planner
    took ``org_id = $1 AND project_id = $2`` for a rare condition (about one row), and so read
    the whole project for every keyword search and every read of candidates by uid."""
    store = PostgresStore(pg_url)
    await store.open()
    try:
        for start in range(0, 2000, 500):
            await store.add([episode(f"seeded {i}") for i in range(start, start + 500)])

        async def analysed() -> bool:
            count = await store.pool.fetchval(
                "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'episodes'"
            )
            return bool(count)

        await eventually(analysed, within=30)
        plan = await store.pool.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT id FROM episodes WHERE org_id = $1 AND project_id = $2",
            ORG,
            PROJECT,
        )
        assert json.loads(plan)[0]["Plan"]["Plan Rows"] >= 1000
    finally:
        await store.close()


async def test_a_query_through_the_pool_is_one_round_trip(pg_url: str) -> None:
    """A connection goes back to the pool without asyncpg's reset query (a second round trip
    after every query; the store keeps no session state to reset), so the last statement its
    backend ran is the store's own query."""
    store = PostgresStore(pg_url, pool_size=1)
    await store.open()
    watcher = await asyncpg.connect(pg_url)
    try:
        await store.add([episode("hello")])
        assert await store.count(CHANNEL) == 1
        last = await watcher.fetch(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        assert [r["query"].split(" FROM ")[0] for r in last] == ["SELECT count(*)"]
    finally:
        await watcher.close()
        await store.close()
