"""The embedded default store: SQLite in the data folder (``memory.sqlite3``)."""

from .store import SQLiteStore

__all__ = ["SQLiteStore"]
