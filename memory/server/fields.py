"""Field types of the memory server's request bodies, both APIs (v2 and ChannelMind): each
one applies the record rules of :mod:`memory.model` and states them in the OpenAPI schema, so
that a body valid by the schema is a body the server accepts. Only pydantic here: the
ChannelMind bodies built on these are imported by :class:`memory.client.MemoryClient` too.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo

from memory.model import (
    CONTENT_PATTERN,
    ID_PATTERN,
    MAX_CONTENT_CHARS,
    MAX_ID_CHARS,
    REF_PATTERN,
    UID_SCHEMA,
    check_content,
    check_json,
    check_ref,
    check_safe_id,
    check_text,
    stated,
)

#: Bounds the engine enforces; stating them in the schema gives clients a clear 422.
MAX_TOP_K = 1000
MAX_EXPAND = 20
MAX_PAGE_SIZE = 10_000
MAX_PAGE_NUM = 1_000_000_000
_UNICODE = "valid Unicode (no lone surrogates)"


def check_id(value: str) -> str:
    """The id rule (MemMachine's SafeId), as defined once in :mod:`memory.model`."""
    return check_safe_id(value)


_ID_DOC = f"letters and digits (any script), '_', ':' or '-'; 1-{MAX_ID_CHARS} characters"
SafeId = Annotated[
    str,
    AfterValidator(check_id),
    Field(
        description=_ID_DOC,
        examples=["acme"],
        json_schema_extra=stated(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN),
    ),
]


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


def _check_optional_id(value: str | None) -> str | None:
    return None if value is None else check_id(value)


OptionalId = Annotated[
    str | None,
    BeforeValidator(_empty_is_none),
    AfterValidator(_check_optional_id),
    Field(description=_ID_DOC + "; empty means none", json_schema_extra=UID_SCHEMA),
]


def _text(value: str, info: ValidationInfo) -> str:
    return check_text(value, str(info.field_name or "text"))


#: Any text the server stores or searches: valid Unicode.
Text = Annotated[str, AfterValidator(_text), Field(description=_UNICODE)]


def _content(value: str) -> str:
    return check_content(value)


Content = Annotated[
    str,
    AfterValidator(_content),
    Field(
        description=f"not blank, no NUL, {_UNICODE}",
        json_schema_extra=stated(
            min_length=1, max_length=MAX_CONTENT_CHARS, pattern=CONTENT_PATTERN
        ),
    ),
]


def _required_ref(value: str, info: ValidationInfo) -> str:
    return check_ref(value, str(info.field_name or "reference"))


def _optional_ref(value: str, info: ValidationInfo) -> str:
    return check_ref(value, str(info.field_name or "reference"), allow_empty=True)


_REF_DOC = f"no control characters, {_UNICODE}"
#: A producer / channel / role reference: no control characters, at most 256 characters.
RequiredRef = Annotated[
    str,
    AfterValidator(_required_ref),
    Field(
        description=_REF_DOC,
        json_schema_extra=stated(min_length=1, max_length=MAX_ID_CHARS, pattern=REF_PATTERN),
    ),
]
OptionalRef = Annotated[
    str,
    AfterValidator(_optional_ref),
    Field(
        description=_REF_DOC + "; may be empty",
        json_schema_extra=stated(min_length=0, max_length=MAX_ID_CHARS, pattern=REF_PATTERN),
    ),
]


def _json(value: Any, info: ValidationInfo) -> Any:
    return check_json(value, str(info.field_name or "value"))


#: The name the schema gives the filter language's format (a grammar no JSON Schema states).
FILTER_FORMAT = "memmachine-filter"
FilterText = Annotated[
    str,
    AfterValidator(_text),
    Field(
        description="MemMachine's filter language, e.g. \"producer = 'alice' AND"
        " m.topic IN ('a', 'b')\"; empty means no filter",
        json_schema_extra={"format": FILTER_FORMAT, "maxLength": 10_000},
    ),
]

#: A JSON object whose keys and strings are valid Unicode (set_metadata).
JsonObject = Annotated[dict[str, Any], AfterValidator(_json)]
