"""ChannelMind's memory: episodes in a store, vectors in an index, hybrid search, forgetting.

The records and the contract load at once (pydantic only); the engine, which loads the vector
index and the embedders, loads when it is first named, so that ``import memory.model`` or a
bot on a remote memory (:class:`memory.client.MemoryClient`) never pays for Chroma or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .filters import FilterError, parse_filter
from .folder import FolderError, FolderInUse, FolderNotWritable, read_owner
from .model import (
    Added,
    Episode,
    Fact,
    ForgetReport,
    Hit,
    InvalidInput,
    Scope,
    SearchResult,
    Source,
    SourceRef,
    TimeRange,
)

if TYPE_CHECKING:
    from .engine import EmbedderMismatch, MemoryEngine

_LAZY = {"EmbedderMismatch": "engine", "MemoryEngine": "engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Added",
    "EmbedderMismatch",
    "Episode",
    "Fact",
    "FilterError",
    "FolderError",
    "FolderInUse",
    "FolderNotWritable",
    "ForgetReport",
    "Hit",
    "InvalidInput",
    "MemoryEngine",
    "Scope",
    "SearchResult",
    "Source",
    "SourceRef",
    "TimeRange",
    "parse_filter",
    "read_owner",
]
