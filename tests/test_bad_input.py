"""Bad input is refused with a message that names the problem, and refusing it loses nothing.

Records are pydantic models: a validator's ``InvalidInput`` reaches the caller wrapped in
pydantic's ``ValidationError`` (both are ``ValueError``s), with the original as its cause.
The engine's own checks (ranges, filters, ids passed as plain strings) raise ``InvalidInput``
(``FilterError`` for filters) directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from memory.engine import MemoryEngine
from memory.filters import FilterError
from memory.model import MAX_CONTENT_CHARS, Episode, InvalidInput, Scope, TimeRange
from tests.conftest import ORG, PROJECT, episode

SCOPE = Scope(org_id=ORG, project_id=PROJECT)


@contextmanager
def refused(match: str) -> Iterator[None]:
    """Expect InvalidInput, raised directly or as the cause of a pydantic ValidationError,
    whose message contains ``match``."""
    with pytest.raises((InvalidInput, ValidationError)) as info:
        yield
    exc = info.value
    if isinstance(exc, ValidationError):
        causes = [e.get("ctx", {}).get("error") for e in exc.errors()]
        assert any(isinstance(c, InvalidInput) for c in causes), exc
        message = " ".join(str(c) for c in causes)
    else:
        message = str(exc)
    assert match in message, message


# -- content -------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "   ", "\n\t  \r\n"])
def test_empty_content_is_refused(content: str) -> None:
    with refused("content must not be empty"):
        episode(content)


def test_nul_and_control_characters_are_refused() -> None:
    with refused("NUL"):
        episode("before\x00after")
    with refused("producer contains control characters"):
        episode("hello", producer="slack:U1\n")


@pytest.mark.usefixtures("each_store")
async def test_100_kb_content_is_accepted_and_searchable(engine: MemoryEngine) -> None:
    filler = " ".join(f"filler{i % 997}" for i in range(12_000))
    content = f"{filler} the needle is quetzalcoatl {filler}"
    assert len(content.encode()) > 100_000
    [uid] = await engine.add([episode(content)])
    [stored] = await engine.get(ORG, PROJECT, [uid])
    assert stored.content == content
    if os.environ.get("CHANNELMIND_DATABASE_URL"):  # the needle is past character 100,000
        pytest.xfail("PostgreSQL indexes a message's first 100,000 characters (FTS_CHARS)")
    hits = await engine.search("quetzalcoatl", SCOPE, mode="keyword")
    assert [h.episode.uid for h in hits.hits] == [uid]
    await engine.wait_indexed()
    assert (await engine.stats()).vectors == 1
    assert [h.episode.uid for h in (await engine.search("quetzalcoatl", SCOPE)).hits] == [uid]


@pytest.mark.usefixtures("each_store")
async def test_content_over_the_limit_is_refused(engine: MemoryEngine) -> None:
    big = "word " * (MAX_CONTENT_CHARS // 5 + 20_000)  # 1.1 MB
    assert len(big) > MAX_CONTENT_CHARS
    with refused(f"the limit is {MAX_CONTENT_CHARS}"):
        episode(big)
    exactly = "x" * MAX_CONTENT_CHARS
    assert episode(exactly).content == exactly
    # Editing to oversized content is refused too, and the message keeps its text.
    [uid] = await engine.add([episode("small message")])
    with refused(f"the limit is {MAX_CONTENT_CHARS}"):
        await engine.edit(uid, big, org_id=ORG, project_id=PROJECT)
    with refused("content must not be empty"):
        await engine.edit(uid, "   ", org_id=ORG, project_id=PROJECT)
    assert (await engine.get(ORG, PROJECT, [uid]))[0].content == "small message"


# -- ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a/b", "", "has space", "semi;colon", "x" * 300, "abc\n"])
@pytest.mark.usefixtures("each_store")
async def test_invalid_org_and_project_ids_are_refused(engine: MemoryEngine, bad: str) -> None:
    with refused("org_id: ID can only contain"):
        episode("hello", org_id=bad)
    with refused("project_id: ID can only contain"):
        episode("hello", project_id=bad)
    with refused("org_id: ID can only contain"):
        Scope(org_id=bad, project_id=PROJECT)
    with refused("project_id: ID can only contain"):
        Scope(org_id=ORG, project_id=bad)
    with refused("org_id: ID can only contain"):
        await engine.forget(bad)
    with refused("project_id: ID can only contain"):
        await engine.create_project(ORG, bad)
    assert (await engine.stats()).episodes == 0


def test_valid_ids_are_accepted() -> None:
    ep = episode("hello", org_id="T024BE7LH", project_id="discord:81384788765712384")
    assert ep.project_id == "discord:81384788765712384"
    assert episode("hi", org_id="équipe_1-x").org_id == "équipe_1-x"


# -- time ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("each_store")
async def test_naive_timestamps_are_utc(engine: MemoryEngine) -> None:
    naive = datetime(2025, 6, 1, 12, 30)
    ep = episode("naive time", created_at=naive)
    assert ep.created_at == datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    other = episode("aware time", created_at=datetime(2025, 6, 1, 15, 0, tzinfo=plus_two))
    assert other.created_at == datetime(2025, 6, 1, 13, 0, tzinfo=UTC)
    assert other.created_at.utcoffset() == timedelta(0)
    [uid, uid2] = await engine.add([ep, other])
    [stored, stored2] = await engine.get(ORG, PROJECT, [uid, uid2])
    assert stored.created_at == datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    assert stored2.created_at == datetime(2025, 6, 1, 13, 0, tzinfo=UTC)
    # A naive time range is UTC too: 12:00-12:45 UTC holds the first only.
    window = TimeRange(since=datetime(2025, 6, 1, 12, 0), until=datetime(2025, 6, 1, 12, 45))
    assert [e.uid for e in await engine.list(SCOPE, time=window)] == [uid]
    # So is a naive date in a filter.
    listed = await engine.list(SCOPE, filters="created_at > date('2025-06-01T12:45:00')")
    assert [e.uid for e in listed] == [uid2]


# -- filters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 'red'", "unknown field 'colour'"),
        ("metadata.bad-key = 1", "unexpected character"),
        ("producer = ", "missing value"),
        ("(producer = 'a'", "missing ')'"),
        ("producer = 'a", "unterminated string"),
        ("producer == 'a'", "unknown operator '=='"),
        ("producer = 'a' AND", "expected a field name"),
        ("m.kind IN ()", "empty IN list"),
        ("m.kind IN (1, 'a')", "mixes integers and strings"),
        ("producer = 'a')", "unbalanced ')'"),
        ("m.kind = NULL", "use IS NULL"),
        ("created_at > date('yesterday')", "invalid ISO-8601 date"),
    ],
)
@pytest.mark.usefixtures("each_store")
async def test_bad_filters_are_refused_with_their_problem(
    engine: MemoryEngine, text: str, message: str
) -> None:
    [uid] = await engine.add([episode("filter me")])
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await engine.search("filter", SCOPE, filters=text)
    with pytest.raises(FilterError):
        await engine.list(SCOPE, filters=text)
    with pytest.raises(FilterError):
        await engine.count(SCOPE, text)
    with pytest.raises(FilterError):
        await engine.forget(ORG, project_id=PROJECT, filters=text)
    assert issubclass(FilterError, InvalidInput)
    # Nothing was forgotten by the refused forget.
    assert [e.uid for e in await engine.get(ORG, PROJECT, [uid])] == [uid]


@pytest.mark.usefixtures("each_store")
async def test_filter_values_cannot_inject_sql(engine: MemoryEngine) -> None:
    await engine.add([episode("one"), episode("two")])
    sneaky = "producer = 'x'' OR 1=1 --'"
    assert await engine.list(SCOPE, filters=sneaky) == []
    assert (await engine.search("one two", SCOPE, filters=sneaky)).hits == []
    assert (await engine.forget(ORG, project_id=PROJECT, filters=sneaky)).episodes == 0
    assert await engine.count(SCOPE) == 2


@pytest.mark.parametrize(
    "query", ['"unbalanced', "NEAR(a b", "a OR", "col:umn", "*", "-", "AND AND", "'; DROP"]
)
@pytest.mark.usefixtures("each_store")
async def test_query_text_is_never_fts_syntax(engine: MemoryEngine, query: str) -> None:
    await engine.add([episode("column near the unbalanced drop")])
    result = await engine.search(query, SCOPE, mode="keyword")
    assert all(h.episode.org_id == ORG for h in result.hits)
    assert (await engine.search("", SCOPE)).hits == []


# -- ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [0, -1, 1001])
@pytest.mark.usefixtures("each_store")
async def test_top_k_out_of_range(engine: MemoryEngine, top_k: int) -> None:
    with refused("top_k must be between 1 and 1000"):
        await engine.search("anything", SCOPE, top_k=top_k)


@pytest.mark.usefixtures("each_store")
async def test_other_ranges(engine: MemoryEngine) -> None:
    assert (await engine.search("anything", SCOPE, top_k=1000)).hits == []
    for n in (-1, 21):
        with refused("expand_context must be between 0 and 20"):
            await engine.search("anything", SCOPE, expand_context=n)
    for size, num in ((0, 0), (10_001, 0), (10, -1)):
        with refused("page_size must be 1-10000 and page_num >= 0"):
            await engine.list(SCOPE, page_size=size, page_num=num)


# -- failures lose nothing else ------------------------------------------------------------


@pytest.mark.usefixtures("each_store")
async def test_a_refused_batch_writes_nothing_and_later_writes_work(
    engine: MemoryEngine,
) -> None:
    [before] = await engine.add([episode("written before")])
    contents = ["fine one", "   ", "fine two"]
    with refused("content must not be empty"):
        batch = [episode(c) for c in contents]
        await engine.add(batch)
    assert await engine.count(SCOPE) == 1
    [after] = await engine.add([episode("written after")])
    assert {e.uid for e in await engine.list(SCOPE)} == {before, after}


@pytest.mark.usefixtures("each_store")
async def test_a_batch_failing_in_the_store_is_rolled_back_whole(engine: MemoryEngine) -> None:
    """An episode that slipped past validation (model_construct) cannot be stored: the batch
    is rolled back as a whole, nothing is acknowledged, and the engine stays usable."""
    [before] = await engine.add([episode("written before")])
    good = episode("good but in a bad batch")
    broken = Episode.model_construct(**{**episode("x").model_dump(), "content": None})
    with refused("was not stored"):
        await engine.add([good, broken])
    assert await engine.count(SCOPE) == 1
    [after] = await engine.add([episode("written after")])
    [again] = await engine.add([good])  # the good one was not kept by the failed batch
    assert again not in (before, after)
    await engine.wait_indexed()
    stats = await engine.stats()
    assert stats.episodes == stats.vectors == 3
    assert engine.index_errors == 0


@pytest.mark.usefixtures("each_store")
async def test_a_taken_uid_is_refused_not_silently_dropped(engine: MemoryEngine) -> None:
    """A caller-chosen uid that another episode (here: of another org) already has must not
    be acknowledged as stored."""
    [theirs] = await engine.add([episode("other org's message", org_id="T0OTHER")])
    mine = episode("my message", uid=theirs)
    with refused("was not stored"):
        await engine.add([mine])
    assert await engine.count(SCOPE) == 0
    [other] = await engine.get("T0OTHER", PROJECT, [theirs])
    assert other.content == "other org's message"
    # The same uid for the same source (a retry) is fine and returns it.
    retry = episode("other org's message", org_id="T0OTHER", uid=theirs, source_id=other.source_id)
    assert await engine.add([retry]) == [theirs]
