"""The PostgreSQL store (``CHANNELMIND_DATABASE_URL=postgresql://...``)."""

from .store import PostgresStore

__all__ = ["PostgresStore"]
