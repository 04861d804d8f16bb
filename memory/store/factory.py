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

from .base import DATABASE_URL_SETTING, Store, StoreUnavailable

#: The embedded store's file inside the data folder.
SQLITE_FILE = "memory.sqlite3"
POSTGRES_SCHEMES = ("postgresql", "postgres")
#: What a PostgreSQL URL looks like, for messages and help texts.
URL_SHAPE = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


def check_database_url(url: str, setting: str = DATABASE_URL_SETTING) -> None:
    """Raise :class:`StoreUnavailable` unless ``url`` is a usable PostgreSQL URL; the message
    names ``setting``, where the operator gave it (the variable, or a command's option)."""
    advice = f"set it to {URL_SHAPE}"
    if setting == DATABASE_URL_SETTING:
        advice += ", or unset it for the embedded SQLite in the data folder"
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        raise StoreUnavailable(f"{setting} is not a valid URL; {advice}") from None
    if parts.scheme not in POSTGRES_SCHEMES:
        kind = f"a {parts.scheme}: URL" if parts.scheme else "not a URL"
        raise StoreUnavailable(f"{setting} is {kind}; {advice}")


def make_store(database_url: str | None, data_dir: Path) -> Store:
    """The store named by ``database_url`` (None or empty: SQLite in ``data_dir``)."""
    if not database_url:
        from .sqlite import SQLiteStore

        return SQLiteStore(Path(data_dir) / SQLITE_FILE)
    check_database_url(database_url)
    from .postgres import PostgresStore

    return PostgresStore(database_url)
