"""The one judgement of whether a later message updates an earlier one for a question, on
pairs that must and must not link (bot/core/subjects.py explains each rule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.core.subjects import Question, read, updates

T = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def judged(question: str, earlier: str, later: str) -> bool:
    return updates(read(later, T + timedelta(minutes=5)), read(earlier, T), Question.of(question))


@pytest.mark.parametrize(
    ("question", "earlier", "later"),
    [
        (
            "What is the launch date for billing v2?",
            "Launch date for billing v2 is March 14",
            "Update: launch moved to March 21 because of the security audit",
        ),
        (
            "Who owns the API docs?",
            "Carol owns the API docs",
            "Change of plan: Dave takes over the API docs from Carol",
        ),
        ("Is checkout down?", "Checkout is returning 502s", "Checkout fully recovered at 15:20"),
        ("Is standup still at 9:30?", "Standup is at 9:30", "Standup moves to 10:30 from Monday"),
        (
            "What is the SLA for enterprise customers?",
            "The SLA for enterprise customers is a 4 hour first response",
            "From next quarter the enterprise SLA is 2 hours first response",
        ),
        ("When does 4.2 ship?", "4.2 postponed again, now Thursday", "Release 4.2 is out"),
    ],
)
def test_a_later_message_that_changes_the_answer_updates_it(
    question: str, earlier: str, later: str
) -> None:
    assert judged(question, earlier, later)
    old, new = read(earlier, T), read(later, T + timedelta(minutes=5))
    assert not updates(old, new, Question.of(question))  # never backwards in time


@pytest.mark.parametrize(
    ("question", "earlier", "later"),
    [
        # one shared verb is no subject
        ("Who owns the migration?", "Bob owns the database migration", "Carol owns the API docs"),
        # the same customer, another attribute
        (
            "What is the Acme contract value?",
            "Acme Corp renewal is due on June 30, contract value 120k",
            "Acme Corp renewal moved to July 15 after their budget review",
        ),
        # adding to a subject is not changing it
        (
            "Which node version do we use?",
            "We are on Node 20 LTS for all frontend builds",
            "CI images use the same Node 20, pinned in .nvmrc",
        ),
        # another event beside the one asked about
        (
            "When is the launch?",
            "The API launch is on April 9",
            "Code freeze for the API launch starts April 5",
        ),
        # the reason asked for is in the earlier message only
        (
            "Why was the freeze extended?",
            "The freeze is extended to January 8 because of the payment incident",
            "Freeze lifted, deploys are open again",
        ),
        # another version is another subject
        ("When is release 4.3?", "Release 4.3 is planned for the 20th", "Release 4.2 is out"),
        # a cue about something else
        (
            "What is the VPN gateway?",
            "The VPN gateway is vpn2.corp.example since the migration",
            "Update: the coffee machine on floor 3 is fixed",
        ),
    ],
)
def test_related_or_unrelated_later_messages_do_not(
    question: str, earlier: str, later: str
) -> None:
    assert not judged(question, earlier, later)
