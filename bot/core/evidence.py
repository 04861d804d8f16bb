"""What an answer may cite as what the bot remembers, and in which order.

**Evidence is what people (and agents) stated.** A message that asks (a question, or a request
like "remind me...", by :func:`memory.text.asks`) and the bot's own replies are context: they
stay in the recent window an LLM sees, but an answer cites them only when nothing stated
answers (:func:`may_answer`). The bot's replies are recognised by who produced them, the
bot's id in that place, never by their role: other agents store memories with
``role: "assistant"`` too, and what they store in a channel is evidence there like anything a
person says.

**The asker is a person the question names.** "I", "me", "my" in a question mean the asker
("What do I own?" asked by Bob looks for Bob), as they mean its author in a message ("I'll
take the flaky test" is about its author), and the asker's facts (``/remember``, or learned
by the LLM) are evidence when a question in the first person matches them.

**The newest word wins.** Among the evidence that matches the question well (at least half as
many of its terms as the best match), a message that a later one updates
(:func:`bot.core.subjects.updates`) goes under the later one, as what it replaced; the
groups are ordered by the best search score among their members, so an update leads in the
place its subject earned. Messages that match only part of the question weakly are left out
of the order when better ones exist.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from memory import Episode, Fact
from memory.text import asks

from .subjects import Question, Said, read, terms, updates

Kind = Literal["statement", "question", "bot"]

_FIRST_PERSON = re.compile(r"\b(?:i(?:['’](?:m|ve|ll|d))?|me|my|mine|myself)\b", re.IGNORECASE)
FACT_KEY = "fact:"


def kind_of(episode: Episode, bot_id: str) -> Kind:
    """A statement (evidence), a question, or the bot's own reply (context)."""
    if episode.producer == bot_id:
        return "bot"
    return "question" if asks(episode.content) else "statement"


def may_answer(kind: Kind, episode: Episode, question: Question, asker_id: str | None) -> bool:
    """Whether a match may be cited: a statement always; when nothing stated answers, a
    question that says more than the one asked now (the same question again answers
    nothing), or an earlier answer of the bot's *to the asker* (what it told someone else,
    "you told me..." included, is theirs)."""
    if kind == "statement":
        return True
    if kind == "question":
        return bool(terms(episode.content) - question.terms)
    return (
        asker_id is not None
        and episode.metadata.get("reply_to") == asker_id
        and episode.metadata.get("answer_kind") not in (None, "nothing")
    )


def first_person(text: str) -> bool:
    return bool(_FIRST_PERSON.search(text))


def about_asker(text: str, asker: str) -> str:
    """``text`` with I/me/my naming the asker, for searching: "What do I own?" asked by Bob
    looks for "What do Bob own?" (and search favours what Bob said, as it does for anyone a
    question names)."""
    return _FIRST_PERSON.sub(asker, text) if asker.strip() else text


def fact_text(fact: Fact) -> str:
    """A fact as people read it: "role: database engineer" (a free-form note: its text)."""
    if fact.feature.startswith("note_"):
        return fact.value
    return f"{fact.feature.replace('_', ' ')}: {fact.value}"


def fact_key(fact: Fact) -> str:
    return FACT_KEY + fact.uid


@dataclass(frozen=True)
class Candidate:
    """Something an answer may cite: a message (keyed by uid) or a fact (``fact:<uid>``)."""

    key: str
    said: Said
    rank: float  # its place in the search ranking (minus its score): smaller is better
    #: Not a match of its own (a neighbour, or found after a match): it is cited only as the
    #: update of a match.
    update_only: bool = False


@dataclass(frozen=True)
class Lead:
    """One item of an answer, with what it replaced (newest first)."""

    key: str
    earlier: tuple[str, ...] = ()


def candidate(
    key: str, text: str, at: datetime, rank: float, *, update_only: bool = False
) -> Candidate:
    return Candidate(key, read(text, at), rank, update_only)


def message_candidate(episode: Episode, rank: float, *, update_only: bool = False) -> Candidate:
    """A message, read with its own "I" naming its author ("I'll review the PR", said by Vic,
    answers Vic's "What am I reviewing?")."""
    text = about_asker(episode.content, episode.display_name)
    return candidate(episode.uid, text, episode.created_at, rank, update_only=update_only)


def fact_candidate(fact: Fact, asker: str, rank: float) -> Candidate:
    """A fact of the asker's, read as if it named them ("role: engineer" is Alice's role)."""
    return candidate(fact_key(fact), f"{asker} {fact_text(fact)}", fact.created_at, rank)


def strong(question: Question, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The matches that match at least half as many terms of one of the question's parts as
    the best match of that part (all of them when none matches a term: then the search's
    sense of meaning decides), leaving out those about another version than the question
    names. The asker's name counts only when nothing else matches: "What am I reviewing?"
    asks about reviewing, not everything said about the asker."""
    matches = [c for c in candidates if not c.update_only and not question.names_other(c.said)]
    kept: dict[str, Candidate] = {}
    for part in question.parts:
        asked = part - question.asker
        if not any(asked & c.said.terms for c in matches):
            asked = part  # only the asker's name matches: what is said about them
        best = max((len(asked & c.said.terms) for c in matches), default=0)
        if best:
            kept.update({c.key: c for c in matches if 2 * len(asked & c.said.terms) >= best})
    return [c for c in matches if c.key in kept] if kept else matches


def order(question: Question, candidates: Sequence[Candidate]) -> list[Lead]:
    """The answer order: each group led by its newest update, groups by their best rank."""
    pool = strong(question, candidates)
    # A weaker match, or a message found after a match, that updates a strong one joins it
    # ("Update: moved to the 21st" may share fewer words with the question than what it
    # replaced, or none).
    rest = [c for c in candidates if c not in pool]
    while True:
        joining = [b for b in rest if any(updates(b.said, a.said, question) for a in pool)]
        if not joining:
            break
        pool += joining
        rest = [c for c in rest if c not in joining]
    updater: dict[str, Candidate] = {}
    for a in pool:
        later = [b for b in pool if updates(b.said, a.said, question)]
        if later:
            updater[a.key] = max(later, key=lambda c: c.said.at)

    def head(c: Candidate) -> Candidate:
        seen = {c.key}
        while c.key in updater and updater[c.key].key not in seen:
            c = updater[c.key]
            seen.add(c.key)
        return c

    groups: dict[str, list[Candidate]] = {}
    for c in pool:
        groups.setdefault(head(c).key, []).append(c)
    by_key = {c.key: c for c in pool}
    ranked = sorted(
        groups.items(),
        key=lambda g: (min(c.rank for c in g[1]), -by_key[g[0]].said.at.timestamp()),
    )
    return [
        Lead(
            key,
            tuple(
                c.key
                for c in sorted(members, key=lambda c: c.said.at, reverse=True)
                if c.key != key
            ),
        )
        for key, members in ranked
    ]
