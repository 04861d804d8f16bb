"""Which store a process opens: ``CHANNELMIND_DATABASE_URL`` unset is the embedded SQLite file
in the data folder; ``postgresql://...`` is a PostgreSQL database that several processes share.

The one place that maps the setting to a store, so that the engine only ever sees
:class:`memory.store.base.Store`. A URL that cannot name a store is refused here, in one line
naming the setting and what to do (:class:`StoreUnavailable`; the CLI exits with status 2),
and never echoes the URL, which may hold a password.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .base import Store, StoreUnavailable

#: The embedded store's file inside the data folder.
SQLITE_FILE = "memory.sqlite3"
POSTGRES_SCHEMES = ("postgresql", "postgres")
_SHAPE = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


def check_database_url(url: str) -> None:
    """Raise :class:`StoreUnavailable` unless ``url`` is a usable PostgreSQL URL."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        raise StoreUnavailable(
            f"CHANNELMIND_DATABASE_URL is not a valid URL; set it to {_SHAPE}, or unset it for"
            " the embedded SQLite in the data folder"
        ) from None
    if parts.scheme not in POSTGRES_SCHEMES:
        kind = f"a {parts.scheme}: URL" if parts.scheme else "not a URL"
        raise StoreUnavailable(
            f"CHANNELMIND_DATABASE_URL is {kind}; set it to {_SHAPE}, or unset it for the"
            " embedded SQLite in the data folder"
        )


def make_store(database_url: str | None, data_dir: Path) -> Store:
    """The store named by ``database_url`` (None or empty: SQLite in ``data_dir``)."""
    if not database_url:
        from .sqlite import SQLiteStore

        return SQLiteStore(Path(data_dir) / SQLITE_FILE)
    check_database_url(database_url)
    from .postgres import PostgresStore

    return PostgresStore(database_url)

