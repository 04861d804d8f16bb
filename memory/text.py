"""Small text rules shared by the memory and the bot: what a word is, which words are too
common to search for, and how a text is shortened to one line or counted in words."""

from __future__ import annotations

import re

#: A word, as every tokenising step reads it (the keyword query, fact ranking, neighbours, the
#: hashing embedder): a run of Unicode letters, digits or ``_``.
WORD = re.compile(r"\w+", re.UNICODE)

#: Words too common to help a keyword search; dropping them is what keeps OR queries over
#: chat text fast (FTS5 would otherwise walk the posting list of every "the" and "you").
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves s t don im ive id youre thats whats dont cant lets get got also really ok okay
    yeah yes hey hi oh""".split()
)

#: A message that asks rather than states: a question mark ending a sentence (not one inside
#: a link), or a question word or a request to recall first. "Do not ...", "List of ..." and
#: the like state things, so a question word is one only when a negation or "of" does not
#: follow it.
_ASKS = re.compile(
    r"\?(?=[\s\"')\]]|$)"
    r"|^\W*(?:what|who|whom|whose|when|where|why|how|which|do|does|did|is|are|was|were|can"
    r"|could|should|would|will|have|has|any|anyone|anybody|remind|tell|show|list|find"
    r"|summari[sz]e|recall|explain|describe)\b(?!\s+(?:not|of)\b)",
    re.IGNORECASE,
)
_LINK = re.compile(r"\S+://\S+")


def asks(text: str) -> bool:
    """Whether a message asks (a question, or a request like "remind me of...") rather than
    states something. A rough rule for text alone: it decides which messages are evidence
    for an answer (what people stated, not what they asked) and whether a message said to the
    bot wants an answer."""
    return bool(_ASKS.search(_LINK.sub(" ", text.strip())))


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, in order."""
    return WORD.findall(text.lower())


def terms(text: str) -> list[str]:
    """The words worth searching for: lower-cased, longer than one letter, no stopwords,
    each once, in order."""
    return list(dict.fromkeys(w for w in words(text) if len(w) > 1 and w not in STOPWORDS))


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (runs of whitespace become one space), cut to ``limit``
    characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def plural(n: int, word: str) -> str:
    """``plural(1, "fact") == "1 fact"``, ``plural(2, "fact") == "2 facts"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"
