"""The filter language in PostgreSQL agrees with the Python evaluator (and so with SQLite):
the same generated rows and filters as tests/test_filters.py, selected by PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory.filters import Comparison, Filter, FilterError, InList, parse_filter
from memory.store.postgres.filters import Params, to_pg_sql
from tests.test_filters import (
    FILTERS,
    LITERAL_POOL,
    NUMBER_POOL,
    OPS,
    STORED_POOL,
    TEXT_POOL,
    python_select,
    render,
    render_value,
    row,
    rows_strategy,
)

COLUMNS = (
    "uid org_id project_id producer produced_for role content created_at platform source_id"
    " thread_id episode_type metadata"
).split()
SCHEMA = (
    "CREATE TABLE episodes (uid text PRIMARY KEY, org_id text, project_id text, producer text,"
    " produced_for text, role text, content text, created_at double precision, platform text,"
    " source_id text, thread_id text, episode_type text, metadata jsonb)"
)


class Db:
    """One connection on its own event loop, so that hypothesis can drive it from sync
    tests; each selection runs in a transaction that is rolled back."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(url))
        self.loop.run_until_complete(self.conn.execute(SCHEMA))

    def select(self, rows: Sequence[Mapping[str, Any]], f: Filter, alias: str = "e") -> set[str]:
        return self.loop.run_until_complete(self._select(rows, f, alias))

    async def _select(self, rows: Sequence[Mapping[str, Any]], f: Filter, alias: str) -> set[str]:
        sql, params = to_pg_sql(f, alias)
        tx = self.conn.transaction()
        await tx.start()
        try:
            if rows:
                await self.conn.executemany(
                    f"INSERT INTO episodes VALUES ({', '.join(f'${i + 1}' for i in range(13))})",
                    [_values(r) for r in rows],
                )
            found = await self.conn.fetch(
                f"SELECT {alias}.uid FROM episodes {alias} WHERE {sql}", *params
            )
            return {r[0] for r in found}
        finally:
            await tx.rollback()

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def _values(r: Mapping[str, Any]) -> list[Any]:
    values = [r.get(c) for c in COLUMNS]
    meta = r.get("metadata")
    values[-1] = None if meta is None else json.dumps(meta)
    return values


@pytest.fixture(scope="module")
def db(pg_cluster: Any) -> Iterator[Db]:
    from tests.postgres import psql

    psql(pg_cluster, "DROP DATABASE IF EXISTS filters")
    # A collation that does not sort by code point, as a production database may have:
    # the SQL must not depend on the database default.
    psql(
        pg_cluster,
        "CREATE DATABASE filters TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'",
    )
    opened = Db(pg_cluster.url("filters"))
    try:
        yield opened
    finally:
        opened.close()
        psql(pg_cluster, "DROP DATABASE filters WITH (FORCE)")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(rows=rows_strategy(), ast=FILTERS, alias=st.sampled_from(["e", "ep"]))
def test_postgres_and_python_agree(
    db: Db, rows: list[dict[str, Any]], ast: Filter, alias: str
) -> None:
    parsed = parse_filter(render(ast, str))
    assert parsed is not None
    assert db.select(rows, parsed, alias) == python_select(rows, parsed)


def test_every_stored_value_against_every_literal(db: Db) -> None:
    rows = [row(f"t{i}", thread_id=v) for i, v in enumerate([*TEXT_POOL, None])]
    rows += [row(f"m{i}", metadata={"k": v}) for i, v in enumerate(STORED_POOL)]
    rows.append(row("no-meta", metadata=None))
    checked = 0
    for field in ("thread_id", "m.k"):
        for value in LITERAL_POOL:
            for op in ["=", "!="] if isinstance(value, bool) else OPS:
                f = parse_filter(f"{field} {op} {render_value(value)}")
                assert f is not None
                assert db.select(rows, f) == python_select(rows, f), (field, op, value)
                checked += 1
        for values in (TEXT_POOL, [v for v in NUMBER_POOL if isinstance(v, int)]):
            for negate in (False, True):
                f = InList(field, tuple(values), negate)
                assert db.select(rows, f) == python_select(rows, f), f
    assert checked > 500


BIG = 2**53 + 1  # an integer no double equals


@pytest.mark.parametrize(
    "stored",
    [BIG, BIG - 1, float(BIG - 1), 1234567890123456789, 0.1, -0.5, 1e-5, "9007199254740993",
     "0.1", "-0", "5", "007"],
)  # fmt: skip
@pytest.mark.parametrize("literal", [BIG, BIG - 1, -BIG, 0, 0.1, 1234567890123456789, "0.1"])
def test_numbers_beyond_doubles_compare_exactly(db: Db, stored: Any, literal: Any) -> None:
    """Snowflake ids and other large integers: PostgreSQL answers as Python does."""
    rows = [row("m", metadata={"k": stored}), row("t", thread_id=str(stored))]
    for op in OPS:
        for field in ("metadata.k", "thread_id"):
            f = Comparison(field, "!=" if op == "<>" else op, literal)
            assert db.select(rows, f) == python_select(rows, f), (field, op, stored, literal)


def test_placeholders_continue_after_earlier_values() -> None:
    params = Params(["org", "project"])
    sql, values = to_pg_sql(Comparison("producer", "=", "alice"), "e", params)
    assert values == ["org", "project", "alice"]
    assert "$3" in sql and "$1" not in sql
    with pytest.raises(FilterError, match="invalid table alias"):
        to_pg_sql(Comparison("producer", "=", "x"), "e; DROP TABLE x")
