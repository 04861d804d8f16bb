"""Each platform's writing rules: an answer's citations as links in the platform's syntax,
its markup and mass mentions defused, or (the console) a "Sources" list."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.app import PLATFORMS
from bot.core.events import Citation
from bot.platforms.base import Platforms

WHEN = datetime(2025, 3, 3, 9, 30, tzinfo=UTC)


def render(text: str, cites: list[Citation], platform: str, *, sources: bool = True) -> str:
    """An answer written for a platform, as the core has it written."""
    return Platforms(PLATFORMS).of(platform).render(text, cites, sources=sources)


def test_render_per_platform() -> None:
    cites = [
        Citation(1, "Alice", WHEN, "https://acme.slack.com/archives/C1/p1", "x"),
        Citation(2, "Bob", WHEN, None, "y"),
    ]
    text = "Use <!channel> & PostgreSQL [1][2] @everyone"
    url = "https://acme.slack.com/archives/C1/p1"
    assert render(text, cites, "slack") == (
        f"Use &lt;!channel&gt; &amp; PostgreSQL <{url}|[1]>[2] @everyone"
    )
    assert render(text, cites, "discord") == (
        f"Use <!channel> & PostgreSQL [1](<{url}>)[2] @\u200beveryone"
    )
    assert render("PostgreSQL [1]", cites, "console") == (
        f"PostgreSQL [1]\n\nSources:\n[1] Alice, 2025-03-03: {url}\n[2] Bob, 2025-03-03"
    )
    assert render("PostgreSQL [1]", cites, "console", sources=False) == "PostgreSQL [1]"
