"""When a later message updates an earlier one: the "same subject" judgement, without an LLM.

A channel's memory holds every version of a decision: "Launch date is March 14", then
"Update: launch moved to March 21". Both match "When is the launch?"; search ranks the one whose
words match best, which is often the first. An answer a team can trust leads with the later
one and shows what it replaced. This module decides, from the text alone, whether a later
message ``b`` *updates* an earlier message ``a`` **for a given question**: ``b`` must still
answer what ``a`` answered, and say something that changes it.

Words are compared as stems ("moved" = "moves"), stopwords left out; times, dates and numbers
("9:30", "120k", "v2") are values, kept whole. ``b`` updates ``a`` when one of these holds:

1. **It says so.** ``b`` carries an update cue ("update", "moved", "changed", "correction",
   "actually", "instead", "reversal", "switched", "postponed", "lifted", "takes over",
   "after all", "no longer", "is out"...) and *answers what ``a`` answered*: it shares a
   question term with ``a``, and gives anew the kind of value the question asks for (a date or
   time for "when"/"date"/"schedule", a number for "how many"/"budget"/"value", a name for
   "who"/"owns"/"lead") or else contains every other question term ``a`` contains.
   "Update: launch moved to March 21" answers "What is the launch date for billing v2?" as
   "Launch date for billing v2 is March 14" did; "Acme renewal moved to July 15" does not
   answer "What is the Acme contract value?", though it updates the same customer's record,
   and "Freeze lifted" does not answer "Why was the freeze extended?".
2. **The question asks for the current state** ("now", "currently", "still", or a yes/no
   question in the present: "Is checkout down?") and ``b`` answers what ``a`` answered, as
   in 1 (with "now"/"still" spelled out, sharing a question term is enough: the asker said
   the newest is what they want).
3. **It restates ``a`` with a new value:** at least half of their words (values aside) are
   shared, and ``b`` gives another value of a kind ``a`` gave ("2 hours first response" after
   "4 hour first response"). Adding to a subject ("CI images use the same Node 20") or naming
   it beside another ("Code freeze for the API launch starts April 5" after "The API launch is
   on April 9") is not restating it.

A shared verb alone never links two messages ("Bob owns the migration", "Carol owns the
docs"). Measured by ``channelmind bench answers`` (see the README); every rule above is about
word classes and cue words, not the benchmark's subjects.

Why not a real embedder's similarity (MiniLM), measured on the benchmark's pairs: it is high
for messages on one subject that answer different questions ("Acme renewal is due on June 30,
contract value 120k" / "Acme renewal moved to July 15": 0.73; "The API launch is on April 9" /
"Code freeze for the API launch starts April 5": 0.69) and low for a real reversal that shares
no words ("sign the vendor contract with Datadog" / "we go with Grafana Cloud after all":
0.14), so it linked the wrong pairs and missed the right one. Search uses meaning to find
candidates; whether one replaces another is judged here by what each says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import snowballstemmer

from memory.text import STOPWORDS

#: A value (starts with a digit: "9:30", "14:05", "1.31", "120k", "15%", "4pm", "20th") or a
#: word.
_TOKEN = re.compile(r"\d+(?:[:.,/-]\d+)*(?:%|[^\W\d_]+)?|\w+", re.UNICODE)
_MONTHS = frozenset(
    """january february march april june july august september october november december
    jan feb apr jul aug sep sept oct nov dec""".split()
)
_DAYS = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thurs fri
    today tomorrow tonight yesterday weekend""".split()
)
_ID = re.compile(r"^v?\d+(?:\.\d+)+$")  # a version or another dotted number: "4.2", "1.31"
_TIME = re.compile(r"^\d+(?::\d+|am|pm|h|st|nd|rd|th)$")  # "9:30", "4pm", "20th"
#: Left out besides the stopwords: pieces of contractions ("isn't" -> "isn"), chat filler, and
#: the words that ask for the current state (they steer the order, they are not a subject).
_IGNORED = STOPWORDS | frozenset(
    """re ll ve isn aren wasn weren doesn didn hasn haven won wouldn couldn shouldn mustn
    thanks thank please anyone anybody someone somebody everyone know currently current
    latest still anymore right yet""".split()
)
#: Stems of words that say a message changes what was said before.
_CUES = frozenset(
    """updat move chang correct actual instead now revers revert switch replac postpon
    delay reschedul slip push cancel lift extend revis renam overrid drop rais increas
    decreas cut reduc lower bump""".split()
)
_CUE_PHRASES = re.compile(
    r"\b(takes? over|took over|after all|no longer|not anymore|scratch that|from now on"
    r"|going forward|change of plans?|turns out|as of (?:today|now)"
    r"|(?:is|are) (?:out|live|done|over)|shipped|released|launched|resolved|fixed|closed"
    r"|finished|completed)\b",
    re.IGNORECASE,
)
_LATEST = re.compile(
    r"\b(now|currently|current|still|latest|anymore|these days|at the moment)\b", re.IGNORECASE
)
#: A yes/no question in the present tense asks about the current state ("Is checkout down?").
_PRESENT = re.compile(r"^\W*(is|are|am|can|does|do|has|have)\b", re.IGNORECASE)
#: Where a question asks another: "..., and who ...", "...? What ...".
_CLAUSES = re.compile(
    r"(?:[?;]|,|\b(?:and|or|also|plus)\b)\s*(?=(?:and\s+)?(?:who|whom|whose|what|when|where|why"
    r"|how|which|is|are|do|does|did|can)\b)",
    re.IGNORECASE,
)
#: The kind of value a question word asks for.
_QUESTION_KINDS = (
    (re.compile(r"\b(when|what time|what day|which day|how long)\b", re.IGNORECASE), "when"),
    (re.compile(r"\bhow (many|much)\b", re.IGNORECASE), "number"),
    (re.compile(r"\b(who|whom|whose|where|which)\b", re.IGNORECASE), "name"),
)
#: Question terms that ask for a value, and the kind of value that answers them.
_ASKS_FOR: dict[str, str] = {
    **dict.fromkeys("date day time schedul deadlin due start begin end".split(), "when"),
    **dict.fromkeys(
        "mani much number count cost price budget valu size amount rate percent".split(),
        "number",
    ),
    **dict.fromkeys("own owner lead respons assign charg run handl cover".split(), "name"),
    **dict.fromkeys("locat venu place room citi offic".split(), "name"),
}
_NAME = re.compile(r"(?<=\S\s)[A-Z][\w-]+")  # a capitalised word, not the first of the text
_STEMMER = snowballstemmer.stemmer("english")


@lru_cache(maxsize=4096)
def _stem(word: str) -> str:
    return str(_STEMMER.stemWord(word))


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _kind(tokens: list[str], i: int) -> str | None:
    """The kind of value ``tokens[i]`` is ("when", "number", "id"), or None for a word."""
    token = tokens[i]
    if token in _MONTHS or token in _DAYS:
        return "when"
    if not token[0].isdigit():
        if token == "may" and any(t[0].isdigit() for t in tokens[max(i - 1, 0) : i + 2]):
            return "when"  # "May 20", not "we may"
        return None
    if _ID.match(token):
        return "id"
    near = tokens[max(i - 1, 0) : i + 2]
    if _TIME.match(token) or any(t in _MONTHS or t == "may" for t in near):
        return "when"
    return "number"


@dataclass(frozen=True)
class Said:
    """A message (or a fact) as this module reads it."""

    terms: frozenset[str]  # stems of its content words, values whole
    values: frozenset[tuple[str, str]]  # (kind, value): ("when", "9:30"), ("id", "4.2")...
    names: frozenset[str]  # who or what it names: capitalised words past its first, lower-cased
    cue: bool  # it says it changes something
    at: datetime

    @property
    def words(self) -> frozenset[str]:
        """Its terms that are not values."""
        return self.terms - {v for _, v in self.values}

    def of_kind(self, kind: str) -> frozenset[str]:
        return frozenset(v for k, v in self.values if k == kind)

    def gives(self, kind: str) -> bool:
        return bool(self.names) if kind == "name" else bool(self.of_kind(kind))


def _values(tokens: list[str]) -> frozenset[tuple[str, str]]:
    return frozenset((k, t) for i, t in enumerate(tokens) if (k := _kind(tokens, i)) is not None)


def terms(text: str) -> frozenset[str]:
    """The content of ``text``: stems of its words without stopwords, values whole."""
    tokens = _tokens(text)
    out = set()
    for i, token in enumerate(tokens):
        if _kind(tokens, i) is not None:
            out.add(token)
        elif len(token) > 1 and token not in _IGNORED:
            out.add(_stem(token))
    return frozenset(out)


def values(text: str) -> frozenset[str]:
    """The times, dates, numbers and versions of ``text``."""
    return frozenset(v for _, v in _values(_tokens(text)))


def read(text: str, at: datetime) -> Said:
    cue = bool(_CUE_PHRASES.search(text)) or any(
        _stem(w) in _CUES for w in re.findall(r"[^\W\d_]+", text.lower())
    )
    names = frozenset(n.lower() for n in _NAME.findall(text))
    return Said(terms(text), _values(_tokens(text)), names, cue, at)


@dataclass(frozen=True)
class Question:
    """A question as this module reads it."""

    terms: frozenset[str]
    #: The terms of each question it asks ("When is the launch and who owns the docs?" asks
    #: two): an answer covers each.
    parts: tuple[frozenset[str], ...]
    ids: frozenset[str]  # the versions and other dotted numbers it names ("4.2")
    #: The asker's name, when "I"/"me"/"my" put it in the question: who it is about, not
    #: what it asks ("What am I reviewing?" asks about reviewing).
    asker: frozenset[str]
    asks_for: frozenset[str]  # the kinds of value its question words ask for
    latest: bool  # says it wants the newest ("now", "currently", "still")
    present: bool  # a yes/no question in the present tense: about the current state

    @classmethod
    def of(cls, text: str, asker: str = "") -> Question:
        """``text`` with the asker's name where it said "I" (``asker``: that name)."""
        kinds = frozenset(kind for pattern, kind in _QUESTION_KINDS if pattern.search(text))
        ids = frozenset(v for k, v in _values(_tokens(text)) if k == "id")
        latest, present = bool(_LATEST.search(text)), bool(_PRESENT.search(text))
        parts = tuple(p for p in (terms(part) for part in _CLAUSES.split(text)) if p)
        who = terms(asker) if asker else frozenset()
        return cls(terms(text), parts or (frozenset(),), ids, who, kinds, latest, present)

    def matched(self, said: Said) -> frozenset[str]:
        """The question's terms that ``said`` contains."""
        return self.terms & said.terms

    def names_other(self, said: Said) -> bool:
        """``said`` names another version than the question does ("4.2" for "4.3"): it is
        about something else, however many words it shares."""
        theirs = said.of_kind("id")
        return bool(self.ids and theirs and not self.ids & theirs)


def answers_as(b: Said, a: Said, question: Question) -> bool:
    """``b`` answers what ``a`` answered (rule 1 of the module): it shares a question term with
    ``a``, and either gives anew the kind of value the question asks for (a date or time for
    "when" or "date", a number for "how many" or "budget", a name for "who" or "owns"), or
    has each other question term of ``a``'s too (for a value: another of its kind; a version
    never, it names the subject)."""
    qa, qb = question.matched(a), question.matched(b)
    if not qa & qb:
        return False
    asked = question.asks_for | {_ASKS_FOR[t] for t in question.terms if t in _ASKS_FOR}
    if _new_value(b, a, asked):
        return True
    kind_of_value = {v: k for k, v in a.values}
    for term in qa - qb:
        kind = kind_of_value.get(term)
        if kind is None or kind == "id" or not b.of_kind(kind):
            return False
    return True


def _new_value(b: Said, a: Said, kinds: frozenset[str]) -> bool:
    """``b`` gives a value of one of ``kinds`` that ``a`` did not."""
    return any(
        bool(b.names - a.names) if kind == "name" else bool(b.of_kind(kind) - a.of_kind(kind))
        for kind in kinds
    )


def updates(b: Said, a: Said, question: Question) -> bool:
    """Whether the later message ``b`` updates the earlier ``a`` for ``question`` (see the
    module for the rules and why)."""
    if b.at <= a.at:
        return False
    if b.cue and answers_as(b, a, question):
        return True
    if question.latest and question.matched(a) & question.matched(b):
        return True
    if question.present and answers_as(b, a, question):
        return True
    shared = a.words & b.words
    return 2 * len(shared) >= len(a.words | b.words) and any(
        a.of_kind(kind) and b.of_kind(kind) - a.of_kind(kind) for kind in ("when", "number")
    )
