"""``search(statements_only=True)``: evidence without the questions, in the engine and over the
ChannelMind REST API (MemoryClient); without it, search still returns everything."""

from __future__ import annotations

from memory.client import MemoryClient
from memory.engine import MemoryEngine
from memory.model import Scope
from memory.text import asks
from tests.conftest import GENERAL, ORG, PROJECT, at, episode
from tests.server_harness import running

SCOPE = Scope(org_id=ORG, project_id=PROJECT, produced_for=GENERAL)


async def _chat(engine: MemoryEngine) -> dict[str, str]:
    said = [
        "When is the billing launch?",
        "The billing launch is on March 14",
        "Is the billing launch still on March 14?",
        "See https://wiki.example/launch?page=billing for the billing launch plan",
        "Here is what I remember: the billing launch is on March 14",  # a bot's reply
    ]
    eps = [episode(text, created_at=at(i)) for i, text in enumerate(said)]
    eps[-1] = eps[-1].model_copy(update={"producer": "slack:U0BOT", "role": "assistant"})
    uids = await engine.add(eps)
    await engine.wait_indexed()
    return dict(zip(said, uids, strict=True))


def test_asks_is_about_asking_not_punctuation_alone() -> None:
    assert asks("When is the launch") and asks("we ship Friday, right?")
    assert asks("remind me of the deploy day") and asks("anyone know when Acme renews?")
    assert not asks("Do not deploy on Fridays")
    assert not asks("List of attendees is in the doc")
    assert not asks("The plan is at https://wiki.example/x?id=1")
    assert not asks("Update: launch moved to March 21")


async def test_statements_only_leaves_out_questions_as_hits_and_as_neighbours(
    engine: MemoryEngine,
) -> None:
    uids = await _chat(engine)
    everything = await engine.search("billing launch", SCOPE, top_k=10)
    assert {h.episode.uid for h in everything.hits} == set(uids.values())

    statements = await engine.search(
        "billing launch", SCOPE, top_k=10, expand_context=2, statements_only=True
    )
    found = {h.episode.content for h in statements.hits}
    assert found == {
        "The billing launch is on March 14",
        "See https://wiki.example/launch?page=billing for the billing launch plan",
        # who said it is the caller's filter, not the engine's guess
        "Here is what I remember: the billing launch is on March 14",
    }
    bot_left_out = await engine.search(
        "billing launch", SCOPE, "producer != 'slack:U0BOT'", top_k=10, statements_only=True
    )
    assert len(bot_left_out.hits) == 2


async def test_statements_only_over_the_rest_api(engine: MemoryEngine) -> None:
    await _chat(engine)
    async with running(engine) as srv, MemoryClient(srv.url) as client:
        everything = await client.search("billing launch", SCOPE, top_k=10)
        statements = await client.search("billing launch", SCOPE, top_k=10, statements_only=True)
    assert len(everything.hits) == 5
    assert [h.episode.content for h in statements.hits if asks(h.episode.content)] == []
    assert len(statements.hits) == 3
