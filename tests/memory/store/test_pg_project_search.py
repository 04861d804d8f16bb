"""A project-wide keyword search on PostgreSQL matches the words alone, not the project's scope
token, when the project holds most of the table: every row of the project holds that token,
so requiring it kept no row out while the GIN index walked its posting list, as long as the
project. The project is kept by the query's WHERE instead. A small project keeps its token
(its short posting list is the cheap way to its rows). Driven through the engine on a real
PostgreSQL, with the statements the store sent recorded by asyncpg's query logger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from memory.engine import MemoryEngine
from memory.model import Scope
from memory.store.postgres import PostgresStore
from memory.store.shared import channel_token, project_token
from tests.conftest import GENERAL, ORG, PROJECT, episode

RANDOM = "slack:CRANDOM"
OTHER = "other"
QUESTION = "zorblat deploys?"
#: How the store's keyword query requires the words (``$1``: the words, its first parameter).
WORDS_MATCH = "e.tsv @@ to_tsquery('channelmind', $1)"

Sent = list[tuple[str, tuple[Any, ...]]]


async def open_engine(url: str, folder: Path, sent: Sent) -> tuple[MemoryEngine, PostgresStore]:
    async def record(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda q: sent.append((q.query, tuple(q.args))))

    store = PostgresStore(url, init=record)
    return await MemoryEngine.open(folder, "hash", store=store, background=False), store


async def keyword_statement(engine: MemoryEngine, scope: Scope, sent: Sent) -> Any:
    """The hits of a keyword search under ``scope``, and the one keyword statement it sent."""
    sent.clear()
    found = await engine.search(QUESTION, scope, top_k=20, mode="keyword")
    [statement] = [(sql, args) for sql, args in sent if "to_tsquery" in sql]
    return found, statement


async def test_a_big_projects_search_matches_the_words_alone(pg_url: str, tmp_path: Path) -> None:
    everywhere = Scope(org_id=ORG, project_id=PROJECT)
    elsewhere = Scope(org_id=ORG, project_id=OTHER)
    in_general = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)
    token = f"'{project_token(ORG, PROJECT)}'"
    sent: Sent = []
    engine, store = await open_engine(pg_url, tmp_path, sent)
    try:
        await engine.add(
            [episode(f"a longer message about zorblat deploys, number {i}") for i in range(4)]
            + [episode(f"zorblat rollout notes {i}", produced_for=RANDOM) for i in range(3)]
            + [episode(f"filler {i} about nothing", produced_for=RANDOM) for i in range(30)]
            # Another project's rows are shorter: bm25 would rank them first if they leaked.
            + [episode("zorblat deploys", project_id=OTHER) for _ in range(20)]
        )
        # No statistics yet: the project's token is required, as before.
        _, (_, args) = await keyword_statement(engine, everywhere, sent)
        assert token in args
        await store.pool.execute("ANALYZE episodes")
    finally:
        await engine.close()

    # Reopened (the store reads the statistics when it opens, and after each ANALYZE it runs).
    engine, store = await open_engine(pg_url, tmp_path, sent)
    try:
        found, (sql, args) = await keyword_statement(engine, everywhere, sent)
        small, (_, small_args) = await keyword_statement(engine, elsewhere, sent)
        channel, (_, channel_args) = await keyword_statement(engine, in_general, sent)

        # The project's every match, from both channels, and nothing of the other project.
        contents = sorted(h.episode.content for h in found.hits)
        assert len(contents) == 7 and all(h.episode.project_id == PROJECT for h in found.hits)
        assert sum(c.startswith("zorblat rollout") for c in contents) == 3
        assert len(small.hits) == 20 and all(h.episode.project_id == OTHER for h in small.hits)
        assert [h.episode.produced_for for h in channel.hits] == [GENERAL] * 4

        # 37 of 57 rows: the words alone. 20 of 57: the other project keeps its token, and a
        # channel search its channel's.
        assert token not in args and sql.count(WORDS_MATCH) == 1
        assert f"'{project_token(ORG, OTHER)}'" in small_args
        assert f"'{channel_token(ORG, PROJECT, GENERAL)}'" in channel_args

        # The same rows, order and scores as the statement with the project's token required.
        with_token = sql.replace(
            WORDS_MATCH, f"e.tsv @@ (to_tsquery('channelmind', $1) && ${len(args) + 1}::tsquery)"
        )
        before = await store.pool.fetch(with_token, *args, token)
        after = await store.pool.fetch(sql, *args)
        assert len(after) == 7
        assert [(r["uid"], r["score"]) for r in after] == [(r["uid"], r["score"]) for r in before]
    finally:
        await engine.close()
