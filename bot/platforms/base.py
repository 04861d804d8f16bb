"""What a chat platform is to the rest of the bot: four small contracts.

* :class:`Platform`: how the platform writes (escaping, links, an answer with its citations)
  and reads what people paste (message links and ids). The core looks it up by the place's
  platform name, so it formats for every platform without naming one.
* :class:`Core`: what an adapter may ask of the core (``bot.core.conversation.Conversation``).
* :class:`Adapter`: a connection to the platform, started and closed by the app. It turns the
  platform's events into :mod:`bot.core.events` and the core's answers into platform calls.
* :class:`StartupError`: the one error an adapter (or the app) raises when a part cannot start
  with these settings; the runner prints it as one line and exits with status 2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.core.events import (
    Citation,
    CommandEvent,
    DeleteEvent,
    EditEvent,
    MessageEvent,
    Place,
    Replier,
)
from memory.model import Episode

#: How a neutral answer cites: ``[n]`` is the n-th numbered message of its prompt.
CITE_MARK = re.compile(r"\[(\d{1,3})\]")


class StartupError(RuntimeError):
    """A part of the bot cannot start with these settings (a refused token, a missing
    secret, a busy port...). The message names the cause and what to do, and never contains
    a secret."""


@dataclass(frozen=True)
class MessageRef:
    """A message named by a link or an id: its platform and source id."""

    platform: str
    source_id: str
    org_id: str | None = None  # the org the link names, when it names one


class Platform(Protocol):
    """A platform's own writing and reading rules."""

    name: str  # "slack": the platform of the places it formats for
    org_word: str  # what people call an org there: "workspace", "server"

    def escape(self, text: str) -> str:
        """``text`` shown as typed: markup and mass mentions defused."""
        ...

    def link(self, url: str | None, label: str) -> str:
        """``label`` linking to ``url`` (just the label without one)."""
        ...

    def render(self, text: str, citations: Sequence[Citation], *, sources: bool = True) -> str:
        """A neutral answer (``[n]`` cites message n) written for the platform. Where there
        are no inline links, a "Sources" list follows unless ``sources`` is False."""
        ...

    def parse_link(self, text: str) -> MessageRef | None:
        """A link to one of the platform's messages, or None."""
        ...

    def message_id(self, text: str, place: Place) -> str:
        """The source id of a message named by an id typed in ``place``."""
        ...

    def thread_root(self, place: Place) -> str | None:
        """The source id of the message that started the thread of ``place``, if any."""
        ...


class Core(Protocol):
    """What an adapter may call: the four events, and a stored message's record."""

    async def handle_message(self, event: MessageEvent, replier: Replier) -> object: ...

    async def handle_edit(self, event: EditEvent) -> object: ...

    async def handle_delete(self, event: DeleteEvent) -> object: ...

    async def handle_command(self, event: CommandEvent, replier: Replier) -> object: ...

    async def find_message(self, place: Place, source_id: str) -> Episode | None: ...


class Adapter(Protocol):
    """A platform connection, as the app starts and stops it."""

    async def start(self) -> None:
        """Connect (or get ready to take requests); :class:`StartupError` if it cannot."""
        ...

    async def close(self) -> None:
        """Stop taking events, let those being handled finish (bounded), disconnect."""
        ...


def link_citations(
    text: str, citations: Sequence[Citation], write: Callable[[str, int], str]
) -> str:
    """Each ``[n]`` in ``text`` whose message has a link, as ``write(url, n)``."""
    links = {c.number: c.link for c in citations}

    def one(match: re.Match[str]) -> str:
        url = links.get(int(match.group(1)))
        return write(url, int(match.group(1))) if url else match.group(0)

    return CITE_MARK.sub(one, text)


class PlainText:
    """A platform without markup: nothing is escaped, a link is ``label (url)`` and an answer
    lists its sources under it. The console's, and the core's for a platform it has no
    formatting for."""

    def __init__(self, name: str, org_word: str = "organization") -> None:
        self.name = name
        self.org_word = org_word

    def escape(self, text: str) -> str:
        return text

    def link(self, url: str | None, label: str) -> str:
        return f"{label} ({url})" if url else label

    def render(self, text: str, citations: Sequence[Citation], *, sources: bool = True) -> str:
        if not citations or not sources:
            return text
        lines = ["Sources:"]
        for c in sorted(citations, key=lambda c: c.number):
            line = f"[{c.number}] {c.author}, {c.when:%Y-%m-%d}"
            lines.append(f"{line}: {c.link}" if c.link else line)
        return text + "\n\n" + "\n".join(lines)

    def parse_link(self, text: str) -> MessageRef | None:
        return None

    def message_id(self, text: str, place: Place) -> str:
        return text

    def thread_root(self, place: Place) -> str | None:
        return None


class Platforms:
    """Every platform the core formats for, by name; :class:`PlainText` for any other."""

    def __init__(self, platforms: Iterable[Platform] = ()) -> None:
        self._by_name = {p.name: p for p in platforms}

    def __iter__(self) -> Iterator[Platform]:
        return iter(self._by_name.values())

    def of(self, name: str) -> Platform:
        found = self._by_name.get(name)
        return found if found is not None else PlainText(name)
