"""Dates a search query names ("what did we ship on 3 March?", "in June 2023"), as time spans.

Retrieval uses them as one ranking signal: a message written within a few days of a date the
question names is more likely to be what it asks about. Only explicit calendar dates count
(day and month, month, month and year, a four-digit year); relative words ("last week") need
a reference time the query does not carry, and are left to the other signals.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS |= {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_MONTH = (
    r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY_MONTH = re.compile(
    rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\b\.?,?\s*(\d{{4}})?", re.I
)
_MONTH_DAY = re.compile(rf"\b{_MONTH}\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s*(\d{{4}}))?", re.I)
_MONTH_YEAR = re.compile(rf"\b{_MONTH}\b\.?,?\s*(\d{{4}})?", re.I)
_YEAR = re.compile(r"\b(19\d\d|20\d\d)\b")

# How far from a named day or month a message may be and still be "about" it: people talk
# about what happened a few days before, and plan a few days ahead.
SLACK = timedelta(days=3)


@dataclass(frozen=True)
class Period:
    """A day, a month (of a given year, or of any year) or a year."""

    kind: str  # "day", "month" or "year"
    year: int | None
    month: int = 0
    day: int = 0

    def contains(self, when: datetime) -> bool:
        if self.kind == "year":
            return when.year == self.year
        years = [self.year] if self.year else [when.year - 1, when.year, when.year + 1]
        for year in years:
            try:
                if self.kind == "day":
                    start = datetime(year, self.month, self.day, tzinfo=UTC)
                    end = start + timedelta(days=1)
                else:
                    start = datetime(year, self.month, 1, tzinfo=UTC)
                    end = datetime(year + (self.month == 12), self.month % 12 + 1, 1, tzinfo=UTC)
            except ValueError:  # 30 February
                continue
            if start - SLACK <= when < end + SLACK:
                return True
        return False


def _month(word: str) -> int:
    word = word.lower()
    return _MONTHS.get(word) or _MONTHS[word[:3]]


def periods(text: str) -> list[Period]:
    """The time spans ``text`` names, most precise first."""
    out: list[Period] = []
    taken: list[tuple[int, int]] = []

    def free(m: re.Match[str]) -> bool:
        return not any(a <= m.start() < b for a, b in taken)

    for pattern, day_first in ((_DAY_MONTH, True), (_MONTH_DAY, False)):
        for m in pattern.finditer(text):
            if not free(m):
                continue
            day, month = (m.group(1), m.group(2)) if day_first else (m.group(2), m.group(1))
            if not 1 <= int(day) <= 31:
                continue
            taken.append((m.start(), m.end()))
            year = int(m.group(3)) if m.group(3) else None
            out.append(Period("day", year, _month(month), int(day)))
    for m in _MONTH_YEAR.finditer(text):
        if not free(m) or (m.group(1).lower() == "may" and not m.group(2)):
            continue  # a bare "may" is a verb far more often than a month
        taken.append((m.start(), m.end()))
        out.append(Period("month", int(m.group(2)) if m.group(2) else None, _month(m.group(1))))
    for m in _YEAR.finditer(text):
        if free(m):
            out.append(Period("year", int(m.group(1))))
    return out


def without_dates(text: str) -> str:
    """``text`` with the dates it names blanked out (their numbers are not identifiers)."""
    for pattern in (_DAY_MONTH, _MONTH_DAY):
        text = pattern.sub(lambda m: " " * len(m.group(0)), text)
    return text
