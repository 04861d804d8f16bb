"""MemMachine's filter language in PostgreSQL's SQL: the same semantics as
:func:`memory.filters.to_sql` (SQLite) and :func:`memory.filters.matches` (Python).

The parser, the value rules and the Python evaluator stay in :mod:`memory.filters`; this
module only writes the SQL, over ``episodes`` with ``created_at double precision`` (epoch
seconds, as in SQLite), text columns, and ``metadata jsonb``.

Where PostgreSQL differs from SQLite, and what is done about it:

* PostgreSQL does not promise to evaluate ``a AND b`` left to right, and a cast of a
  non-number errors instead of yielding 0, so every cast sits behind ``CASE WHEN guard``.
* Text order follows the database's collation; ``COLLATE "C"`` gives code-point order (UTF-8
  bytes), which is what SQLite and Python use. Equality needs no collation (deterministic).
* ``jsonb`` keeps a number as an exact decimal and forgets whether it was written as an int
  or a float. Python reads an integral JSON number as an int and any other as a float, so an
  integral stored number is compared exactly (``numeric``, the literal as its exact value)
  and a fractional one as a double (``float8``). A double compared with an integer literal
  that is not exactly a double (beyond 2**53) is rewritten to the nearest double on the right
  side, so the comparison stays exact as in Python. (One difference remains: a float stored
  from Python at 1e16 or beyond whose shortest repr is not its exact value, e.g. 1e23, reads
  back from jsonb as the integer its repr spells, and compares as that integer.)
* A decimal string longer than 300 characters could overflow a double; such strings compare
  as exact decimals (SQLite and Python read them as a double or infinity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from memory.filters import (
    DECIMAL,
    MAX_TREE_DEPTH,
    META,
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

_ALIAS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz_0123456789")
_DECIMAL_RE = r"'^-?[0-9]+(\.[0-9]+)?$'"
_LONGEST_DOUBLE_TEXT = 300


class Params:
    """Collects bound values and hands out ``$n`` placeholders for them (asyncpg style)."""

    def __init__(self, values: Sequence[Any] = ()) -> None:
        self.values: list[Any] = list(values)

    def __call__(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{'::' + cast if cast else ''}"


def to_pg_sql(f: Filter, alias: str = "e", params: Params | None = None) -> tuple[str, list[Any]]:
    """A parenthesised boolean over ``episodes AS alias`` with ``$n`` placeholders, numbered
    after the values already in ``params``; returns the SQL and all the values."""
    if not alias or not set(alias) <= _ALIAS_CHARS or alias[0].isdigit():
        raise FilterError(f"invalid table alias {alias!r}")
    params = params if params is not None else Params()
    return f"({_node(f, alias, params, 0)})", params.values


def _node(f: Filter, alias: str, p: Params, depth: int) -> str:
    if depth > MAX_TREE_DEPTH:
        raise FilterError(f"filter is nested deeper than {MAX_TREE_DEPTH}")
    if isinstance(f, And | Or):
        if not f.items:
            raise FilterError(f"empty {type(f).__name__}")
        word = " AND " if isinstance(f, And) else " OR "
        return "(" + word.join(_node(item, alias, p, depth + 1) for item in f.items) + ")"
    if isinstance(f, Not):
        return f"(NOT {_node(f.item, alias, p, depth + 1)})"
    if isinstance(f, IsNull):
        field = canonical_field(f.field)
        expr = _text_expr(field, alias)
        return f"({expr} IS {'NOT ' if f.negate else ''}NULL)"
    if isinstance(f, Comparison):
        field = canonical_field(f.field)
        op = canonical_op(f.op)
        value = normalize_value(field, op, f.value)
        if op == "!=":
            return f"(NOT {_atom(field, alias, '=', [value], p)})"
        return _atom(field, alias, op, [value], p)
    if isinstance(f, InList):
        field = canonical_field(f.field)
        sql = _atom(field, alias, "=", list(in_list_values(field, f.values)), p)
        return f"(NOT {sql})" if f.negate else sql
    raise FilterError(f"not a filter node: {f!r}")


def _meta_key(field: str) -> str:
    # canonical_field allows only [A-Za-z0-9_.] in keys: safe inside a quoted literal.
    return "'" + field[len(META) :] + "'"


def _text_expr(field: str, alias: str) -> str:
    """The field as text (NULL when missing or JSON null)."""
    if field.startswith(META):
        return f"({alias}.metadata ->> {_meta_key(field)})"
    if field == "session_key":
        return f"({alias}.org_id || '/' || {alias}.project_id)"
    return f"{alias}.{field}"


def _compare(expr: str, op: str, values: Sequence[Any], cast: str, p: Params) -> str:
    """``expr op value`` (for ``=``: equal to any of ``values``)."""
    if op == "=" and len(values) > 1:
        return f"{expr} = ANY({p(list(values), cast + '[]')})"
    return f"{expr} {op} {p(values[0], cast)}"


def _text_compare(expr: str, op: str, values: Sequence[str], p: Params) -> str:
    if op == "=":
        return _compare(expr, op, values, "text", p)
    return f'{expr} COLLATE "C" {op} {p(values[0], "text")}'


def _double_terms(op: str, values: Sequence[int | float]) -> list[tuple[str, float]]:
    """``x op v`` for a double x, as comparisons with doubles that give the exact answer
    Python gives: an integer that is not a double becomes the nearest double on the side
    that keeps the meaning (and can never be equal)."""
    out: list[tuple[str, float]] = []
    for v in values:
        near = float(v)
        if isinstance(v, float) or near == v:
            out.append((op, near))
        elif op != "=":
            low = near if near < v else math.nextafter(near, -math.inf)
            high = near if near > v else math.nextafter(near, math.inf)
            out.append(("<=", low) if op in ("<", "<=") else (">=", high))
    return out


def _double_compare(expr: str, op: str, values: Sequence[int | float], p: Params) -> str:
    terms = _double_terms(op, values)
    if not terms:
        return "false"
    if op == "=":
        return _compare(expr, "=", [v for _, v in terms], "float8", p)
    return " OR ".join(f"{expr} {o} {p(v, 'float8')}" for o, v in terms)


def _exact(v: int | float) -> Decimal:
    return Decimal(v)  # a float's exact binary value, an int's exact value


def _decimal_text_compare(text: str, op: str, nums: Sequence[int | float], p: Params) -> str:
    """A plain-decimal string compared as the double Python's ``float()`` reads."""
    as_double = _double_compare(f"({text})::float8", op, nums, p)
    as_exact = _compare(f"({text})::numeric", op, [_exact(v) for v in nums], "numeric", p)
    return (
        f"CASE WHEN {text} ~ {_DECIMAL_RE} THEN (CASE WHEN length({text}) <="
        f" {_LONGEST_DOUBLE_TEXT} THEN ({as_double}) ELSE ({as_exact}) END) ELSE false END"
    )


def _atom(field: str, alias: str, op: str, values: list[Value], p: Params) -> str:
    """``field op value`` (op is = < <= > >=; for = any of ``values``), never NULL."""
    parts: list[str] = []
    if field == "created_at":
        parts.append(
            _compare(f"{alias}.created_at", op, [epoch_of(v) for v in values], "float8", p)
        )
        return _coalesce(parts)
    strs = [v for v in values if isinstance(v, str)]
    nums: list[int | float] = [v for v in values if is_number(v)]  # type: ignore[misc]
    # A boolean literal equals its spellings as text.
    texts = strs + [w for v in values if isinstance(v, bool) for w in bool_words(v)]
    text = _text_expr(field, alias)
    if not field.startswith(META):
        if texts:
            parts.append(_text_compare(text, op, texts, p))
        if nums:
            parts.append(_decimal_text_compare(text, op, nums, p))
        return _coalesce(parts)
    node = f"({alias}.metadata -> {_meta_key(field)})"
    kind = f"jsonb_typeof({node})"
    if texts:
        parts.append(f"({kind} = 'string' AND {_text_compare(text, op, texts, p)})")
    if nums:
        decimal = _decimal_text_compare(text, op, nums, p)
        parts.append(f"(CASE WHEN {kind} = 'string' THEN {decimal} ELSE false END)")
    # A stored JSON number: against number literals and strings that are plain decimals.
    numbers: list[int | float] = nums + [float(s) for s in strs if DECIMAL.fullmatch(s)]
    if numbers:
        exact = _compare(f"({node})::numeric", op, [_exact(v) for v in numbers], "numeric", p)
        double = _double_compare(f"({node})::float8", op, numbers, p)
        parts.append(
            f"(CASE WHEN {kind} = 'number' THEN (CASE WHEN strpos(({node})::text, '.') = 0"
            f" THEN ({exact}) ELSE ({double}) END) ELSE false END)"
        )
    if op == "=":
        for flag in (True, False):
            words = bool_words(flag)
            if any(v is flag for v in values) or any(s in words for s in strs):
                literal = "true" if flag else "false"
                parts.append(f"({node} = '{literal}'::jsonb)")
    return _coalesce(parts)


def _coalesce(parts: list[str]) -> str:
    if not parts:
        return "false"
    return f"COALESCE(({' OR '.join(parts)}), false)"
