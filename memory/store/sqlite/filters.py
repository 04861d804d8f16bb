"""MemMachine's filter language in SQLite's SQL: the same semantics as
:func:`memory.filters.matches` (Python) and :func:`memory.store.postgres.filters.to_pg_sql`.

The parser and the value rules stay in :mod:`memory.filters` (its module docstring states the
semantics); this module only writes the SQL, over ``episodes`` with ``created_at`` as epoch
seconds, text columns (a uid may be kept as 16 bytes: :func:`uid_text`), and ``metadata`` as
JSON text read with ``json_extract``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeAlias

from memory.filters import (
    DECIMAL,
    FALSE_WORDS,
    MAX_TREE_DEPTH,
    META,
    TRUE_WORDS,
    And,
    Comparison,
    Filter,
    FilterError,
    InList,
    IsNull,
    Not,
    Or,
    Value,
    bool_words,
    canonical_field,
    canonical_op,
    epoch_of,
    in_list_values,
    is_number,
    normalize_value,
)

_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_TYPES = "('integer', 'real')"
SESSION_KEY = "org_id || '/' || project_id"
_Sql: TypeAlias = tuple[str, list[Any]]


def to_sql(f: Filter, alias: str = "e") -> tuple[str, list[Any]]:
    """A parenthesised SQL boolean over ``episodes AS alias``, with ``?`` placeholders.

    Values are always bound as parameters. Metadata keys (restricted to ``[A-Za-z0-9_.]``)
    are written into the JSON path literally so that expression indexes can be used.
    """
    if not _ALIAS.fullmatch(alias):
        raise FilterError(f"invalid table alias {alias!r}")
    sql, params = _node_sql(f, alias, 0)
    return f"({sql})", params


def _node_sql(f: Filter, alias: str, depth: int) -> _Sql:
    if depth > MAX_TREE_DEPTH:
        raise FilterError(f"filter is nested deeper than {MAX_TREE_DEPTH}")
    if isinstance(f, And | Or):
        if not f.items:
            raise FilterError(f"empty {type(f).__name__}")
        word = "AND" if isinstance(f, And) else "OR"
        return _join([_node_sql(item, alias, depth + 1) for item in f.items], word)
    if isinstance(f, Not):
        sql, params = _node_sql(f.item, alias, depth + 1)
        return f"(NOT {sql})", params
    if isinstance(f, IsNull):
        expr, _ = _target(canonical_field(f.field), alias)
        return f"({expr} IS {'NOT ' if f.negate else ''}NULL)", []
    if isinstance(f, Comparison):
        field = canonical_field(f.field)
        op = canonical_op(f.op)
        positive = "=" if op == "!=" else op
        sql, params = _atom_sql(field, alias, positive, [normalize_value(field, op, f.value)])
        return (f"(NOT {sql})" if op == "!=" else sql), params
    if isinstance(f, InList):
        field = canonical_field(f.field)
        sql, params = _atom_sql(field, alias, "=", list(in_list_values(field, f.values)))
        return (f"(NOT {sql})" if f.negate else sql), params
    raise FilterError(f"not a filter node: {f!r}")


def _join(parts: list[_Sql], word: str) -> _Sql:
    """Join as a balanced tree, so long lists stay within SQLite's expression depth."""
    if len(parts) == 1:
        return parts[0]
    mid = len(parts) // 2
    left, right = _join(parts[:mid], word), _join(parts[mid:], word)
    return f"({left[0]} {word} {right[0]})", left[1] + right[1]


def _target(field: str, alias: str) -> tuple[str, str | None]:
    """The SQL value expression of a field and, for metadata, its ``json_type``."""
    if field.startswith(META):
        path = f"'$.\"{field[len(META) :]}\"'"
        return (f"json_extract({alias}.metadata, {path})", f"json_type({alias}.metadata, {path})")
    if field == "session_key":
        return f"({project_of(alias, SESSION_KEY)})", None
    if field == "uid":
        return uid_text(alias), None
    return f"{alias}.{field}", None


def project_of(alias: str, what: str) -> str:
    """A subquery: ``what`` (columns of ``scopes``) of ``alias``'s row's org and project,
    which the row names by its ``project_key`` (schema 7)."""
    return f"SELECT {what} FROM scopes WHERE scopes.key = {alias}.project_key"


def uid_text(alias: str) -> str:
    """The uid of ``alias``'s row as the text the API knows: the store keeps a canonical
    UUID as its 16 bytes (``memory.store.sqlite.store.uid_key``), written back here in its
    canonical form, so a filter compares (and orders) uids as text, as everywhere else."""
    h = f"hex({alias}.uid)"
    dashed = " || '-' || ".join(
        f"substr({h}, {start}, {n})" for start, n in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    )
    return f"(CASE typeof({alias}.uid) WHEN 'blob' THEN lower({dashed}) ELSE {alias}.uid END)"


def _decimal_text_sql(x: str) -> str:
    """SQL twin of ``DECIMAL.fullmatch(x)`` for a text value ``x``."""
    w = f"ltrim({x}, '-')"
    return (
        f"{x} NOT GLOB '--*' AND {w} <> '' AND {w} NOT GLOB '*[^0-9.]*'"
        f" AND {w} NOT GLOB '.*' AND {w} NOT GLOB '*.' AND {w} NOT GLOB '*.*.*'"
    )


def _cmp_sql(guard: str | None, expr: str, op: str, values: Sequence[Any]) -> _Sql:
    if op == "=" and len(values) > 1:
        test = f"{expr} IN ({', '.join('?' * len(values))})"
    else:
        test = f"{expr} {op} ?"
    return (f"({guard} AND {test})" if guard else f"({test})"), list(values)


def _atom_sql(field: str, alias: str, op: str, values: list[Value]) -> _Sql:
    """SQL for ``field op value`` (op is = < <= > >=; for = any of ``values``), never NULL."""
    expr, json_type = _target(field, alias)
    parts: list[_Sql] = []
    if field == "created_at":
        parts.append(_cmp_sql(None, expr, op, [epoch_of(v) for v in values]))
    else:
        strs = [v for v in values if isinstance(v, str)]
        nums = [v for v in values if is_number(v)]
        # A boolean literal equals its spellings as text.
        texts = strs + [w for v in values if isinstance(v, bool) for w in bool_words(v)]
        text_guard = None if json_type is None else f"{json_type} = 'text'"
        if texts:
            parts.append(_cmp_sql(text_guard, expr, op, texts))
        if nums:
            guard = _decimal_text_sql(expr)
            guard = guard if text_guard is None else f"{text_guard} AND {guard}"
            parts.append(_cmp_sql(guard, f"CAST({expr} AS REAL)", op, nums))
        if json_type is not None:  # metadata may also hold JSON numbers and booleans
            decimals = [float(s) for s in strs if DECIMAL.fullmatch(s)]
            if nums or decimals:
                guard = f"{json_type} IN {_NUMBER_TYPES}"
                parts.append(_cmp_sql(guard, expr, op, nums + decimals))
            if op == "=":
                for flag, words in ((True, TRUE_WORDS), (False, FALSE_WORDS)):
                    if any(v is flag for v in values) or any(s in words for s in strs):
                        parts.append((f"({json_type} = '{'true' if flag else 'false'}')", []))
    sql, params = _join(parts, "OR")
    return f"COALESCE({sql}, 0)", params
