"""ChannelMind's memory engine: episodes on SQLite and Chroma, hybrid search, forgetting."""

from .engine import EmbedderMismatch, ForgetReport, MemoryEngine, SourceRef
from .filters import FilterError, parse_filter
from .folder import FolderError, FolderInUse, FolderNotWritable, read_owner
from .model import Episode, Fact, Hit, InvalidInput, Scope, SearchResult, Source, TimeRange

__all__ = [
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
