"""Text rules shared by the adapters."""

from __future__ import annotations

from collections.abc import Callable


def utf16_units(text: str) -> int:
    """Length as Discord counts it (UTF-16 code units), never less than ``len``."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int, units: Callable[[str], int] = len) -> list[str]:
    """``text`` in pieces of at most ``limit`` (as measured by ``units``), cut at line breaks
    where possible, else at spaces (so links stay whole), else anywhere. Blank text gives no
    pieces."""
    pieces: list[str] = []
    rest = text.strip("\n")
    while units(rest) > limit:
        window = rest[:limit]
        while (excess := units(window) - limit) > 0:
            window = window[: len(window) - max(1, excess // 2)]
        half = len(window) // 2
        cut, skip = window.rfind("\n"), 1
        if cut < half:
            cut = max(window.rfind(" "), window.rfind("\t"))
        if cut < half:
            cut, skip = len(window), 0
        piece = window[:cut].rstrip()
        if piece:
            pieces.append(piece)
        rest = rest[cut + skip :].lstrip("\n")
    if rest.strip():
        pieces.append(rest)
    return pieces
