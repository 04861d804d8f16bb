"""Rules every store follows, written once: scope tokens, the words of a keyword query, stored
times, and the records a store sets aside.

Scope tokens. Every episode carries tokens derived from its org and project, channel,
producer and thread, indexed beside its words (SQLite: the ``fts_tags`` column of the FTS5
table; PostgreSQL: ``scope_tags`` inside the ``tsvector``). A keyword search requires the
narrowest token of its scope, so the full-text index itself returns only that channel's
matches instead of filtering afterwards: what keeps a channel search fast past 100k rows.
A token is letters then decimal digits, which no stemmer or text search parser changes.

Times are epoch seconds (a double) inside every store, so that a time range, a ``created_at``
filter and the order of messages mean the same on each.

JSON (metadata, a project's config): PostgreSQL's ``jsonb`` holds no NUL character and no NaN
or infinity, so :func:`dump_json` refuses them there as bad input; SQLite keeps the text it
always kept (what an embedded folder holds does not change).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from memory.model import Episode, InvalidInput, Scope
from memory.text import terms

#: Query words a keyword search looks for at most.
MAX_QUERY_TERMS = 32
#: What reading a broken row raises when it is turned into a record (a time written before
#: the valid range was enforced, metadata that is not JSON...): such a row is set aside.
UNREADABLE = (ValueError, OverflowError, OSError, TypeError, IndexError)
#: An index claim handed out this many times without being completed or released (its worker
#: died each time) is set aside instead of handed out again.
MAX_ATTEMPTS = 5


def _token(kind: str, *parts: str) -> str:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return f"z{kind}{int.from_bytes(digest, 'little'):020d}"


def project_token(org_id: str, project_id: str) -> str:
    return _token("o", org_id, project_id)


def channel_token(org_id: str, project_id: str, produced_for: str) -> str:
    return _token("c", org_id, project_id, produced_for)


def producer_token(org_id: str, project_id: str, producer: str) -> str:
    return _token("p", org_id, project_id, producer)


def thread_token(org_id: str, project_id: str, produced_for: str, thread_id: str) -> str:
    return _token("t", org_id, project_id, produced_for, thread_id)


def scope_tokens(ep: Episode) -> list[str]:
    """The tokens an episode is indexed under: its project, channel, producer and thread."""
    tokens = [
        project_token(ep.org_id, ep.project_id),
        channel_token(ep.org_id, ep.project_id, ep.produced_for),
        producer_token(ep.org_id, ep.project_id, ep.producer),
    ]
    if ep.thread_id:
        tokens.append(thread_token(ep.org_id, ep.project_id, ep.produced_for, ep.thread_id))
    return tokens


def narrowest_token(scope: Scope) -> str:
    """The token a keyword search under ``scope`` requires: thread, channel, producer or
    project, the narrowest the scope names."""
    if scope.thread_id is not None and scope.produced_for is not None:
        return thread_token(scope.org_id, scope.project_id, scope.produced_for, scope.thread_id)
    if scope.produced_for is not None:
        return channel_token(scope.org_id, scope.project_id, scope.produced_for)
    if scope.producer is not None:
        return producer_token(scope.org_id, scope.project_id, scope.producer)
    return project_token(scope.org_id, scope.project_id)


def project_wide(scope: Scope) -> bool:
    """Whether :func:`narrowest_token` of ``scope`` is its project's token (the scope names no
    channel and no author), without hashing either token."""
    return scope.produced_for is None and scope.producer is None


def keyword_terms(text: str, limit: int = MAX_QUERY_TERMS) -> list[str]:
    """The query words worth searching for: lower-cased, deduplicated, stopwords dropped."""
    return terms(text)[:limit]


def to_epoch(value: datetime) -> float:
    return value.timestamp()


def from_epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def dump_json(value: dict[str, Any], what: str) -> str:
    """JSON text ``jsonb`` accepts: no NUL characters, no NaN or infinities."""
    if _has_nul(value):
        raise InvalidInput(f"{what} contains a NUL character")
    try:
        return json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError as exc:
        raise InvalidInput(f"{what} holds a number JSON cannot carry ({exc})") from None
