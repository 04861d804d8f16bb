"""Scoping is the privacy model: property-based checks that no read ever leaves its scope.

Each example builds a fresh engine (its own temp folder) holding random messages spread over
several orgs, projects, producers, channels and threads, then asks random scoped questions
with random filters. Every row that ``search`` (hybrid, keyword and vector), ``list`` or
``get`` returns must be inside the org, project, producer, channel and thread it was asked
for and match the filter (checked with :func:`memory.filters.matches`, the filter language's
reference semantics). ``list`` and keyword search must also be complete.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory.engine import MemoryEngine
from memory.filters import Filter, matches, parse_filter
from memory.model import Episode, Scope, TimeRange
from memory.store.factory import make_store
from tests.postgres import NewDatabase

ORGS = ["T01", "T02"]
PROJECTS = ["alpha", "beta"]
PRODUCERS = ["slack:U1", "slack:U2", "discord:81"]
CHANNELS = ["slack:C1", "slack:C2", "discord:D9"]
THREADS = [None, "1700000000.000001", "1700000000.000002"]
KINDS = ["bug", "idea", "chat"]
# Words the porter stemmer leaves alone, so that "contains the word" is easy to state.
WORDS = ["apple", "river", "stone", "cloud", "ember", "delta", "orbit", "maple"]
BASE = datetime(2025, 1, 1, tzinfo=UTC)


@st.composite
def episodes(draw: st.DrawFn) -> Episode:
    meta: dict[str, Any] = {}
    if draw(st.booleans()):
        meta["kind"] = draw(st.sampled_from(KINDS))
    if draw(st.booleans()):
        meta["n"] = draw(st.integers(0, 5))
    return Episode(
        org_id=draw(st.sampled_from(ORGS)),
        project_id=draw(st.sampled_from(PROJECTS)),
        producer=draw(st.sampled_from(PRODUCERS)),
        produced_for=draw(st.sampled_from(CHANNELS)),
        thread_id=draw(st.sampled_from(THREADS)),
        content=" ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4))),
        created_at=BASE + timedelta(hours=draw(st.integers(0, 240))),
        platform="slack",
        source_id=str(draw(st.uuids())),
        role=draw(st.sampled_from(["user", "assistant"])),
        metadata=meta,
    )


def predicates() -> st.SearchStrategy[str]:
    quoted = lambda values: st.sampled_from(values).map(lambda v: f"'{v}'")  # noqa: E731
    return st.one_of(
        st.tuples(
            st.sampled_from(["producer", "producer_id"]),
            st.sampled_from(["=", "!="]),
            quoted(PRODUCERS),
        ).map(" ".join),
        st.tuples(
            st.sampled_from(["produced_for", "produced_for_id"]),
            st.sampled_from(["=", "<>"]),
            quoted(CHANNELS),
        ).map(" ".join),
        st.tuples(
            st.sampled_from(["m.kind", "metadata.kind"]),
            st.sampled_from(["=", "!="]),
            quoted(KINDS),
        ).map(" ".join),
        st.lists(quoted(KINDS), min_size=1, max_size=3).map(
            lambda vs: f"m.kind {'IN'} ({', '.join(vs)})"
        ),
        st.lists(quoted(KINDS), min_size=1, max_size=2).map(
            lambda vs: f"m.kind NOT IN ({', '.join(vs)})"
        ),
        st.tuples(st.sampled_from(["<", "<=", ">", ">=", "=", "!="]), st.integers(0, 5)).map(
            lambda t: f"m.n {t[0]} {t[1]}"
        ),
        st.sampled_from(
            [
                "thread_id IS NULL",
                "thread_id IS NOT NULL",
                "m.kind IS NULL",
                "m.n IS NOT NULL",
                "role = 'assistant'",
                "producer_role = user",
            ]
        ),
        st.integers(0, 240).map(
            lambda h: f"created_at >= date('{(BASE + timedelta(hours=h)).isoformat()}')"
        ),
    )


def filters() -> st.SearchStrategy[str | None]:
    combined = st.recursive(
        predicates(),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            inner.map(lambda f: f"NOT {f}"),
        ),
        max_leaves=4,
    )
    return st.none() | combined


@dataclass(frozen=True)
class Query:
    scope: Scope
    filter: str | None
    words: tuple[str, ...]
    time: TimeRange | None


@st.composite
def queries(draw: st.DrawFn) -> Query:
    produced_for = draw(st.none() | st.sampled_from(CHANNELS))
    thread = draw(st.sampled_from(THREADS)) if produced_for is not None else None
    scope = Scope(
        org_id=draw(st.sampled_from(ORGS)),
        project_id=draw(st.sampled_from(PROJECTS)),
        producer=draw(st.none() | st.sampled_from(PRODUCERS)),
        produced_for=produced_for,
        thread_id=thread,
    )
    time = None
    if draw(st.integers(0, 3)) == 0:
        start = draw(st.integers(0, 240))
        time = TimeRange(
            since=BASE + timedelta(hours=start),
            until=BASE + timedelta(hours=start + draw(st.integers(0, 120))),
        )
    words = tuple(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=2, unique=True)))
    return Query(scope, draw(filters()), words, time)


def in_scope(ep: Episode, scope: Scope) -> bool:
    return (
        ep.org_id == scope.org_id
        and ep.project_id == scope.project_id
        and (scope.producer is None or ep.producer == scope.producer)
        and (scope.produced_for is None or ep.produced_for == scope.produced_for)
        and (scope.thread_id is None or ep.thread_id == scope.thread_id)
    )


def in_time(ep: Episode, time: TimeRange | None) -> bool:
    if time is None:
        return True
    return (time.since is None or ep.created_at >= time.since) and (
        time.until is None or ep.created_at <= time.until
    )


def allowed(ep: Episode, q: Query, filt: Filter | None) -> bool:
    return in_scope(ep, q.scope) and in_time(ep, q.time) and matches(filt, ep.model_dump())


def has_word(ep: Episode, words: tuple[str, ...]) -> bool:
    return bool(set(re.findall(r"\w+", ep.content)) & set(words))


async def check(stored: list[Episode], asked: list[Query], database_url: str | None) -> None:
    folder = Path(tempfile.mkdtemp(prefix="cm-isolation-"))
    engine = await MemoryEngine.open(folder, "hash", store=make_store(database_url, folder))
    try:
        uids = await engine.add(stored)
        truth = {
            uid: ep.model_copy(update={"uid": uid}) for uid, ep in zip(uids, stored, strict=True)
        }
        await engine.wait_indexed()
        for q in asked:
            filt = parse_filter(q.filter)
            expected = {u for u, ep in truth.items() if allowed(ep, q, filt)}

            def ok(ep: Episode, q: Query = q, filt: Filter | None = filt) -> bool:
                # Judge by the stored truth and by what came back: both must be allowed.
                return ep.uid in truth and allowed(truth[ep.uid], q, filt) and allowed(ep, q, filt)

            # list: exactly the allowed rows, oldest first.
            listed = await engine.list(q.scope, q.filter, page_size=1000, time=q.time)
            assert all(ok(ep) for ep in listed), q
            assert {ep.uid for ep in listed} == expected, q
            stamps = [ep.created_at for ep in listed]
            assert stamps == sorted(stamps)
            if q.time is None:
                assert await engine.count(q.scope, q.filter) == len(expected)

            text = " ".join(q.words)
            for mode in ("hybrid", "keyword", "vector"):
                result = await engine.search(
                    text, q.scope, q.filter, top_k=200, time=q.time, mode=mode
                )
                got = [h.episode for h in result.hits]
                assert all(ok(ep) for ep in got), (mode, q)
                assert len({ep.uid for ep in got}) == len(got)
                for hit in result.hits:
                    assert hit.source.channel == hit.episode.produced_for
                if mode == "keyword":
                    with_word = {u for u in expected if has_word(truth[u], q.words)}
                    assert {ep.uid for ep in got} == with_word, q
            # Context expansion must not pull in neighbours from outside the scope either.
            expanded = await engine.search(
                text, q.scope, q.filter, top_k=200, time=q.time, expand_context=2
            )
            for hit in expanded.hits:
                ep = hit.episode
                assert ep.org_id == q.scope.org_id and ep.project_id == q.scope.project_id
                if q.scope.produced_for is not None:
                    assert ep.produced_for == q.scope.produced_for

            # get: only the rows of the org and project asked for, whatever uids are given.
            got = await engine.get(q.scope.org_id, q.scope.project_id, list(truth))
            assert {ep.uid for ep in got} == {
                u
                for u, ep in truth.items()
                if (ep.org_id, ep.project_id) == (q.scope.org_id, q.scope.project_id)
            }
    finally:
        await engine.close()
        shutil.rmtree(folder, ignore_errors=True)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # new_database makes a store per example
    ],
)
@given(
    stored=st.lists(episodes(), min_size=5, max_size=50),
    asked=st.lists(queries(), min_size=3, max_size=8),
)
def test_reads_never_leave_their_scope(
    new_database: NewDatabase, stored: list[Episode], asked: list[Query]
) -> None:
    """On each store: SQLite, and PostgreSQL with a new database per example."""
    asyncio.run(check(stored, asked, new_database()))


@settings(max_examples=25, deadline=None)
@given(text=filters())
def test_filters_used_here_parse(text: str | None) -> None:
    """The strategy only writes valid filters (so the property above tests the engine)."""
    if text is not None:
        assert parse_filter(text) is not None
