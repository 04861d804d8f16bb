"""Slack's writing and reading rules: mrkdwn escaping and links, answers with ``<url|[n]>``
citations, permalinks and message ids as people paste them, and Slack's source ids."""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.core.events import Citation, Place, raw_id
from bot.platforms.base import MessageRef, link_citations

PLATFORM = "slack"

#: A message permalink: ``https://acme.slack.com/archives/C123/p1700000000000100``.
PERMALINK = re.compile(
    r"https?://[^/\s]+/archives/(?P<channel>[A-Z0-9]+)/p(?P<secs>\d{10})(?P<micros>\d{6})",
    re.IGNORECASE,
)
#: A bare message ts, as Slack shows it: ``1700000000.000100``.
TS = re.compile(r"^\d{10}\.\d{6}$")


def slack_source_id(channel: str, ts: str) -> str:
    """The source id of a Slack message: the raw channel id and the message ts,
    ``"C123:1700000000.000100"`` (a ts is unique only within its channel)."""
    return f"{channel}:{ts}"


def escape(text: str) -> str:
    """Slack mrkdwn control characters; also defuses ``<!channel>`` and ``<@U1>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackFormat:
    """:class:`~bot.platforms.base.Platform` for Slack."""

    name = PLATFORM
    org_word = "workspace"

    def escape(self, text: str) -> str:
        return escape(text)

    def link(self, url: str | None, label: str) -> str:
        return f"<{url}|{escape(label)}>" if url else label

    def render(self, text: str, citations: Sequence[Citation], *, sources: bool = True) -> str:
        return link_citations(escape(text), citations, lambda url, n: self.link(url, f"[{n}]"))

    def parse_link(self, text: str) -> MessageRef | None:
        if m := PERMALINK.search(text):
            ts = f"{m['secs']}.{m['micros']}"
            return MessageRef(PLATFORM, slack_source_id(m["channel"].upper(), ts))
        return None

    def message_id(self, text: str, place: Place) -> str:
        """``C123:1700000000.000100`` as is; a bare ts is a message of this channel."""
        if TS.match(text):
            return slack_source_id(raw_id(place.channel_id), text)
        return text

    def thread_root(self, place: Place) -> str | None:
        if place.thread_id is None:
            return None
        return slack_source_id(raw_id(place.channel_id), raw_id(place.thread_id))


SLACK = SlackFormat()
