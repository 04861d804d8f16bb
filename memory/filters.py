"""MemMachine's filter language: parse it, and apply it in SQL or in Python.

Grammar (keywords are case-insensitive; AND binds tighter than OR)::

    filter     := or_expr
    or_expr    := and_expr ("OR" and_expr)*
    and_expr   := unary ("AND" unary)*
    unary      := "NOT" unary | "(" or_expr ")" | predicate
    predicate  := field op value
                | field ["NOT"] "IN" "(" value ("," value)* ")"
                | field "IS" ["NOT"] "NULL"
    op         := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    value      := 'quoted string'        -- a doubled quote '' stands for one quote
                | 123 | -4 | 1.5         -- int / float
                | true | false           -- boolean
                | date('2025-01-01T00:00:00+00:00')   -- datetime, naive taken as UTC
                | bare_word              -- any other bare identifier is a string

Fields are the episode columns under their MemMachine names (see :data:`FIELDS`) and
``metadata.<key>`` / ``m.<key>`` for a top-level key of the user metadata. Parsing yields
an AST whose ``field`` is the canonical name (``producer``, ``metadata.channel``, ...);
``<>`` becomes ``!=``. Error messages give 0-based character positions.

Semantics (shared exactly by :func:`to_sql` and :func:`matches`)
------------------------------------------------------------------
Logic is two-valued: a condition is true or false, never unknown.

* **Missing values.** A NULL column, a missing metadata key, a JSON ``null`` and an
  incomparable value (e.g. a nested object) make ``=``, ``<``, ``<=``, ``>``, ``>=`` and
  ``IN`` false. ``!=`` / ``<>`` is exactly ``NOT (=)`` and ``NOT IN`` is exactly
  ``NOT (IN)``, so they *match* rows where the value is missing: "not from Alice"
  includes messages that have no producer. ``IS NULL`` is true for NULL / missing / JSON
  ``null``.
* **Strings with strings** compare as text (code-point order, case-sensitive).
* **Numbers.** A number literal compares numerically with a stored JSON number, and with
  a stored string that is a plain decimal (``-?[0-9]+(.[0-9]+)?``, no spaces or exponent),
  read as a double (``CAST(... AS REAL)``). A string literal that is such a plain decimal
  also compares numerically with a stored JSON number. So ``m.count = 5`` and
  ``m.count = '5'`` both match stored ``"5"`` and ``5``; ``m.count > 10`` is numeric
  against ``"9"`` but ``m.count > '10'`` is text against ``"9"``.
* **Booleans** (``=`` / ``!=`` only). ``true`` matches stored JSON ``true`` and the strings
  ``"true"``, ``"True"``, ``"TRUE"`` (likewise ``false``); a string literal ``'true'``
  also matches stored JSON ``true``. Numbers never equal booleans.
* Episode columns other than ``created_at`` hold text, so they follow the rules for a
  stored string (``thread_id > 1712345678.5`` compares numerically for decimal ids).
* ``created_at`` / ``timestamp`` compare as epoch seconds: ``date(...)``, an ISO-8601
  string (naive means UTC) and a number (epoch seconds) are all accepted.
* A ``date(...)`` literal on any other field compares as its ISO-8601 text in UTC.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from memory.model import InvalidInput, as_utc, check_text

MAX_FILTER_CHARS = 10_000
#: Deepest nesting of parentheses and NOTs a parsed filter may have.
MAX_DEPTH = 50
#: Deepest AST :func:`to_sql` / :func:`matches` accept (parsed filters stay well below).
MAX_TREE_DEPTH = 4 * MAX_DEPTH

Value: TypeAlias = str | int | float | bool | datetime


class FilterError(InvalidInput):
    """A filter that cannot be parsed or applied; the message says what is wrong and where."""


@dataclass(frozen=True, slots=True)
class Comparison:
    field: str
    op: str  # one of = != < <= > >=
    value: Value


@dataclass(frozen=True, slots=True)
class InList:
    field: str
    values: tuple[Value, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class IsNull:
    field: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Filter


Filter: TypeAlias = Comparison | InList | IsNull | And | Or | Not

# ---------------------------------------------------------------------------- fields

#: Accepted field names (lower case) and the canonical field each one means.
FIELDS: dict[str, str] = {
    "producer_id": "producer",
    "producer": "producer",
    "produced_for_id": "produced_for",
    "produced_for": "produced_for",
    "producer_role": "role",
    "role": "role",
    "created_at": "created_at",
    "timestamp": "created_at",
    "episode_type": "episode_type",
    "uid": "uid",
    "episode_uid": "uid",
    "thread_id": "thread_id",
    "platform": "platform",
    "source_id": "source_id",
    "session_key": "session_key",
}
META = "metadata."
_META_PREFIXES = (META, "m.")
_META_KEY = re.compile(r"[A-Za-z0-9_.]+")
_ACCEPTED = ", ".join([*FIELDS, "metadata.<key>", "m.<key>"])


def canonical_field(name: str) -> str:
    """Map a field as written in a filter to its canonical name, or raise FilterError."""
    lowered = name.lower()
    if lowered in FIELDS:
        return FIELDS[lowered]
    for prefix in _META_PREFIXES:
        if lowered.startswith(prefix):
            key = name[len(prefix) :]
            if not _META_KEY.fullmatch(key):
                raise FilterError(
                    f"invalid metadata key {key!r} in field {name!r}: "
                    "use letters, digits, '_' or '.'"
                )
            return META + key
    raise FilterError(f"unknown field {name!r}; accepted fields: {_ACCEPTED}")


# ---------------------------------------------------------------------------- values

_OP_ALIASES = {op: op for op in ("=", "!=", "<", "<=", ">", ">=")} | {"<>": "!="}
_ORDERING = frozenset({"<", "<=", ">", ">="})
_INT64 = (-(2**63), 2**63 - 1)
DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
TRUE_WORDS = ("true", "True", "TRUE")
FALSE_WORDS = ("false", "False", "FALSE")


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def canonical_op(op: str) -> str:
    canonical = _OP_ALIASES.get(op)
    if canonical is None:
        raise FilterError(f"unknown operator {op!r}")
    return canonical


def bool_words(flag: bool) -> tuple[str, ...]:
    return TRUE_WORDS if flag else FALSE_WORDS


def _parse_datetime(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(f"invalid ISO-8601 date {text!r}") from None
    try:
        return as_utc(parsed)
    except InvalidInput as exc:  # e.g. 0001-01-01T00:00:00+14:00
        raise FilterError(f"date {exc}") from None


def normalize_value(field: str, op: str, value: Value) -> Value:
    """Check ``value`` fits ``field``/``op`` and return its canonical form (idempotent)."""
    if isinstance(value, bool):
        if field == "created_at":
            raise FilterError(f"{field} cannot be compared with a boolean")
        if op in _ORDERING:
            raise FilterError(f"operator {op} cannot be used with a boolean")
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise FilterError(f"integer {value} is out of range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"number {value} is out of range")
        return value
    if isinstance(value, datetime):
        value = as_utc(value)
        return value if field == "created_at" else value.isoformat()
    if isinstance(value, str):
        if field != "created_at":
            return value
        return float(value) if DECIMAL.fullmatch(value) else _parse_datetime(value)
    raise FilterError(f"unsupported value {value!r}")


def _check_in_values(values: Sequence[Value]) -> None:
    """MemMachine's rule: an IN list is all integers or all strings."""
    if not values:
        raise FilterError("empty IN list")
    ints = sum(isinstance(v, int) and not isinstance(v, bool) for v in values)
    strs = sum(isinstance(v, str) for v in values)
    if ints and strs:
        raise FilterError("IN list mixes integers and strings; use one type")
    if ints + strs != len(values):
        bad = next(v for v in values if not isinstance(v, str | int) or isinstance(v, bool))
        raise FilterError(f"IN list values must be integers or strings, got {bad!r}")


def in_list_values(field: str, values: Sequence[Value]) -> tuple[Value, ...]:
    if field == "created_at":
        if not values:
            raise FilterError("empty IN list")
    else:
        _check_in_values(values)
    return tuple(normalize_value(field, "=", v) for v in values)


def epoch_of(value: Value) -> float:
    if isinstance(value, datetime):
        return as_utc(value).timestamp()
    if isinstance(value, str):
        return epoch_of(normalize_value("created_at", "=", value))
    return float(value)


# ---------------------------------------------------------------------------- lexer


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # str, num, word, op, "(", ")", ",", end
    text: str
    pos: int


_LEX = re.compile(
    r"(?P<num>-?[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.]))|(?P<word>[A-Za-z0-9_.]+)|(?P<op>[=!<>]+)"
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null"})


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "'":
            parts: list[str] = []
            j = i + 1
            while True:
                end = text.find("'", j)
                if end < 0:
                    raise FilterError(f"unterminated string starting at position {i}")
                parts.append(text[j:end])
                if not text.startswith("'", end + 1):
                    break
                parts.append("'")  # '' is an escaped quote
                j = end + 2
            tokens.append(_Token("str", "".join(parts), i))
            i = end + 1
        elif ch in "(),":
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif m := _LEX.match(text, i):
            assert m.lastgroup is not None
            tokens.append(_Token(m.lastgroup, m.group(), i))
            i = m.end()
        else:
            raise FilterError(f"unexpected character {ch!r} at position {i}")
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of filter"
    if tok.kind == "str":
        return f"string {_quote(tok.text)}"
    return repr(tok.text)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def at_keyword(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text.lower() == word

    def enter(self, tok: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"filter is nested deeper than {MAX_DEPTH} at position {tok.pos}")

    def parse(self) -> Filter:
        node = self.parse_or()
        tok = self.peek()
        if tok.kind == ")":
            raise FilterError(f"unbalanced ')' at position {tok.pos}")
        if tok.kind != "end":
            raise FilterError(
                f"unexpected {_describe(tok)} at position {tok.pos}: "
                "expected AND, OR or the end of the filter"
            )
        return node

    def parse_or(self) -> Filter:
        items = [self.parse_and()]
        while self.at_keyword("or"):
            self.take()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Filter:
        items = [self.parse_unary()]
        while self.at_keyword("and"):
            self.take()
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_unary(self) -> Filter:
        tok = self.peek()
        if self.at_keyword("not"):
            self.take()
            self.enter(tok)
            item = self.parse_unary()
            self.depth -= 1
            return Not(item)
        if tok.kind == "(":
            self.take()
            self.enter(tok)
            node = self.parse_or()
            close = self.take()
            if close.kind != ")":
                raise FilterError(
                    f"missing ')' for '(' at position {tok.pos}: "
                    f"found {_describe(close)} at position {close.pos}"
                )
            self.depth -= 1
            return node
        return self.parse_predicate()

    def parse_predicate(self) -> Filter:
        tok = self.take()
        if tok.kind != "word" or tok.text.lower() in _KEYWORDS:
            raise FilterError(
                f"expected a field name at position {tok.pos}, found {_describe(tok)}"
            )
        try:
            field = canonical_field(tok.text)
        except FilterError as e:
            raise FilterError(f"{e} (at position {tok.pos})") from None
        nxt = self.take()
        if nxt.kind == "op":
            op = _OP_ALIASES.get(nxt.text)
            if op is None:
                raise FilterError(f"unknown operator {nxt.text!r} at position {nxt.pos}")
            value, pos = self.parse_value(f"{tok.text} {nxt.text}")
            try:
                return Comparison(field, op, normalize_value(field, op, value))
            except FilterError as e:
                raise FilterError(f"{e} (at position {pos})") from None
        word = nxt.text.lower() if nxt.kind == "word" else ""
        if word == "in":
            return self.parse_in(field, tok.text, nxt, negate=False)
        if word == "not":
            in_tok = self.take()
            if not (in_tok.kind == "word" and in_tok.text.lower() == "in"):
                raise FilterError(
                    f"expected IN after NOT at position {in_tok.pos}, found {_describe(in_tok)}"
                )
            return self.parse_in(field, tok.text, in_tok, negate=True)
        if word == "is":
            negate = self.at_keyword("not")
            if negate:
                self.take()
            null = self.take()
            if not (null.kind == "word" and null.text.lower() == "null"):
                raise FilterError(
                    f"expected NULL after IS at position {null.pos}, found {_describe(null)}"
                )
            return IsNull(field, negate)
        raise FilterError(
            f"expected an operator (=, !=, <>, <, <=, >, >=, IN, NOT IN, IS NULL) after field "
            f"{tok.text!r} at position {nxt.pos}, found {_describe(nxt)}"
        )

    def parse_in(self, field: str, name: str, in_tok: _Token, *, negate: bool) -> Filter:
        open_ = self.take()
        if open_.kind != "(":
            raise FilterError(
                f"expected '(' after IN at position {open_.pos}, found {_describe(open_)}"
            )
        if self.peek().kind == ")":
            raise FilterError(f"empty IN list for field {name!r} at position {open_.pos}")
        values: list[Value] = []
        while True:
            value, _ = self.parse_value(f"{name} IN (")
            values.append(value)
            sep = self.take()
            if sep.kind == ")":
                break
            if sep.kind != ",":
                raise FilterError(
                    f"expected ',' or ')' in IN list opened at position {open_.pos}, "
                    f"found {_describe(sep)} at position {sep.pos}"
                )
        try:
            _check_in_values(values)
            return InList(field, in_list_values(field, values), negate)
        except FilterError as e:
            raise FilterError(f"{e} (at position {in_tok.pos})") from None

    def parse_value(self, context: str) -> tuple[Value, int]:
        """Read one literal; return it with its position."""
        tok = self.take()
        if tok.kind == "str":
            return tok.text, tok.pos
        if tok.kind == "num":
            return (float(tok.text) if "." in tok.text else int(tok.text)), tok.pos
        if tok.kind == "word":
            low = tok.text.lower()
            if low in ("true", "false"):
                return low == "true", tok.pos
            if low == "null":
                raise FilterError(
                    f"NULL is not a value (at position {tok.pos}): use IS NULL or IS NOT NULL"
                )
            if low in _KEYWORDS:
                raise FilterError(
                    f"missing value after {context!r}: found keyword {tok.text.upper()} "
                    f"at position {tok.pos}"
                )
            if low == "date" and self.peek().kind == "(":
                return self.parse_date(tok), tok.pos
            return tok.text, tok.pos
        if tok.kind == "end":
            raise FilterError(f"missing value after {context!r} at end of filter")
        raise FilterError(
            f"missing value after {context!r} at position {tok.pos}, found {_describe(tok)}"
        )

    def parse_date(self, tok: _Token) -> datetime:
        self.take()  # "("
        arg, close = self.take(), self.take()
        if arg.kind != "str" or close.kind != ")":
            raise FilterError(
                f"date() at position {tok.pos} takes one quoted ISO-8601 string, "
                "e.g. date('2025-01-01T00:00:00+00:00')"
            )
        try:
            return _parse_datetime(arg.text)
        except FilterError as e:
            raise FilterError(f"{e} (at position {arg.pos})") from None


# ---------------------------------------------------------------------------- public API


def parse_filter(text: str | None) -> Filter | None:
    """Parse a filter string; ``None``, empty or blank text means no filter."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"filter is longer than {MAX_FILTER_CHARS} characters")
    check_text(text, "filter")
    return _Parser(text).parse()


def filter_from_dict(pairs: Mapping[str, Value]) -> Filter | None:
    """``{"m.time": "morning", "producer_id": "u1"}`` → AND of equalities (None if empty)."""
    items: list[Filter] = []
    for name, value in pairs.items():
        try:
            field = canonical_field(name)
            items.append(Comparison(field, "=", normalize_value(field, "=", value)))
        except FilterError as e:
            raise FilterError(f"filter key {name!r}: {e}") from None
    return combine(*items)


def combine(*filters: Filter | None) -> Filter | None:
    """AND of the filters that are not None (None if there are none)."""
    items: list[Filter] = []
    for f in filters:
        if isinstance(f, And):
            items.extend(f.items)
        elif f is not None:
            items.append(f)
    if not items:
        return None
    return items[0] if len(items) == 1 else And(tuple(items))


# ---------------------------------------------------------------------------- Python

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def matches(f: Filter | None, row: Mapping[str, Any]) -> bool:
    """Evaluate ``f`` against an episode row (column names as keys); None matches all.

    ``metadata`` may be a dict, a JSON string or None; ``created_at`` a float epoch or a
    datetime. The result is the same as selecting the row with :func:`to_sql`.
    """
    return True if f is None else _eval(f, row, 0)


def _eval(f: Filter, row: Mapping[str, Any], depth: int) -> bool:
    if depth > MAX_TREE_DEPTH:
        raise FilterError(f"filter is nested deeper than {MAX_TREE_DEPTH}")
    if isinstance(f, And):
        if not f.items:
            raise FilterError("empty And")
        return all(_eval(item, row, depth + 1) for item in f.items)
    if isinstance(f, Or):
        if not f.items:
            raise FilterError("empty Or")
        return any(_eval(item, row, depth + 1) for item in f.items)
    if isinstance(f, Not):
        return not _eval(f.item, row, depth + 1)
    field = canonical_field(f.field)
    stored = _stored(field, row)
    if isinstance(f, IsNull):
        return (stored is not None) if f.negate else (stored is None)
    if isinstance(f, Comparison):
        op = canonical_op(f.op)
        value = normalize_value(field, op, f.value)
        if op == "!=":
            return not _compare(field, stored, "=", value)
        return _compare(field, stored, op, value)
    if isinstance(f, InList):
        found = any(_compare(field, stored, "=", v) for v in in_list_values(field, f.values))
        return not found if f.negate else found
    raise FilterError(f"not a filter node: {f!r}")


def _stored(field: str, row: Mapping[str, Any]) -> Any:
    """The row's value for a canonical field, as SQLite would see it."""
    if field.startswith(META):
        meta = row.get("metadata")
        if isinstance(meta, str | bytes):
            meta = json.loads(meta) if meta else None
        return meta.get(field[len(META) :]) if isinstance(meta, Mapping) else None
    if field == "created_at":
        value = row.get("created_at")
        if value is None:
            return None
        return epoch_of(value) if isinstance(value, datetime | str) else float(value)
    if field == "session_key":
        org, project = _text(row.get("org_id")), _text(row.get("project_id"))
        return None if org is None or project is None else f"{org}/{project}"
    return _text(row.get(field))


def _text(value: Any) -> str | None:
    """A TEXT column's value: SQLite stores non-text values given to it as text."""
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _compare(field: str, stored: Any, op: str, value: Value) -> bool:
    """``stored op value`` for op in = < <= > >=, by the rules in the module docstring."""
    test = _COMPARE[op]
    if stored is None:
        return False
    if field == "created_at":
        return bool(test(stored, epoch_of(value)))
    if isinstance(stored, bool):
        if op != "=":
            return False
        if isinstance(value, bool):
            return stored is value
        return isinstance(value, str) and value in bool_words(stored)
    if is_number(stored):
        if isinstance(value, str) and DECIMAL.fullmatch(value):
            return bool(test(stored, float(value)))
        return is_number(value) and bool(test(stored, value))
    if isinstance(stored, str):
        if isinstance(value, bool):
            return op == "=" and stored in bool_words(value)
        if isinstance(value, str):
            return bool(test(stored, value))
        if is_number(value):
            return DECIMAL.fullmatch(stored) is not None and bool(test(float(stored), value))
    return False
