"""The console writes plain text: links as ``label (url)``, sources listed under answers."""

from __future__ import annotations

from bot.platforms.base import PlainText

PLATFORM = "console"
CONSOLE = PlainText(PLATFORM)
