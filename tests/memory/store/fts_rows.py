"""What the SQLite full-text index holds for each row, read from the index itself (a row's
scope tokens are not in its ``fts_tags`` column since schema 5)."""

from __future__ import annotations

import sqlite3


def indexed_tags(conn: sqlite3.Connection) -> dict[int, list[str]]:
    """Each row key's ``fts_tags`` tokens in the full-text index, in their order."""
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts_instances"
        " USING fts5vocab(main, episodes_fts, 'instance')"
    )
    out: dict[int, list[str]] = {}
    for doc, term in conn.execute(
        "SELECT doc, term FROM temp.fts_instances WHERE col = 'fts_tags' ORDER BY doc, offset"
    ):
        out.setdefault(int(doc), []).append(str(term))
    return out


def indexed_terms(conn: sqlite3.Connection) -> set[str]:
    """Every term the full-text index holds, in any row and column."""
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts_terms"
        " USING fts5vocab(main, episodes_fts, 'row')"
    )
    return {str(r[0]) for r in conn.execute("SELECT term FROM temp.fts_terms")}
