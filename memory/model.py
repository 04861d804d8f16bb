"""Records of the memory contract: what an episode is, how a search is asked and answered,
what a write or a forget reports.

Everything that crosses the boundary of :class:`memory.protocol.Memory` is one of these
records, so that the same validation applies whether a record comes from Slack, Discord, the
REST API or MCP, and the engine, the server and :class:`memory.client.MemoryClient` speak the
same types. This module imports nothing heavier than pydantic: a bot on a remote memory never
loads Chroma or an embedding model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_ID_CHARS = 256
#: Largest message we accept. Slack caps messages at 40k characters and Discord at 4k; the
#: REST API must take 100 KB documents, so the limit sits well above that.
MAX_CONTENT_CHARS = 1_000_000
ROLES = ("user", "assistant", "system")
#: Characters of a message the embedder reads: the models read ~256 tokens; more text only
#: costs time.
EMBED_CHARS = 2000
#: How a search finds candidates: keywords and vectors fused, or one of them alone.
SearchMode = Literal["hybrid", "keyword", "vector"]
#: Metadata keys any entry point may set: the author's name as people read it, and a link back
#: to the message where it was said.
NAME_KEY = "display_name"
LINK_KEY = "permalink"

# -- the rules every record obeys, whichever way it comes in ------------------------------
#
# These are THE definitions: the engine's models, the REST v2 and ChannelMind routes and the
# MCP tools all call them, and the OpenAPI schema states the patterns below, so that a body
# valid by the schema is a body the server accepts. The patterns are written in the common
# subset of Python's and ECMAScript's regular expressions.

#: MemMachine's SafeId: Unicode letters and digits, ``_``, ``:`` and ``-`` (``\w`` is
#: Unicode-aware in Python; an ECMAScript validator reads it as ASCII, a subset). ``(?!\n)``
#: keeps Python's ``$`` from matching before a final newline (``"abc\n"`` was accepted so).
ID_PATTERN = r"^[\w:-]+(?!\n)$"
_ID = re.compile(r"[\w:-]+")
#: A character that makes content non-blank: neither whitespace (by Python's definition or
#: ECMAScript's) nor NUL.
_MEANINGFUL = r"[^\s\x00\x1c-\x1f\ufeff]"
_MEANINGFUL_RE = re.compile(_MEANINGFUL)
#: Content: no NUL, and at least one meaningful character.
CONTENT_PATTERN = rf"^[^\x00]*{_MEANINGFUL}[^\x00]*$"
#: Producer, channel, thread and role references: no control characters.
REF_PATTERN = r"^[^\x00-\x1f]*(?!\n)$"
#: The valid time range of every stored time (UTC, inclusive). Times are stored as epoch
#: seconds; every value in this range reads back as a ``datetime`` (a microsecond later than
#: the maximum would round to year 10000 and could not be read).
MIN_TIME = datetime(1, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
TIME_RANGE_TEXT = "0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
#: ISO-8601 times the schema calls valid: the first and last days of the range are left out,
#: as a time zone offset can carry a time on them out of range.
TIME_PATTERN = "^(?!0000|0001-01-01|9999-12-31)[0-9]{4}-"


def stated(
    *, pattern: str | None = None, min_length: int | None = None, max_length: int | None = None
) -> dict[str, Any]:
    """Constraints stated in the OpenAPI schema only: the validators enforce them (with messages
    that name the problem), so pydantic must not check them a second time."""
    out: dict[str, Any] = {"pattern": pattern, "minLength": min_length, "maxLength": max_length}
    return {k: v for k, v in out.items() if v is not None}


ID_SCHEMA = stated(pattern=ID_PATTERN, min_length=1, max_length=MAX_ID_CHARS)
#: A uid the caller may leave empty.
UID_SCHEMA = stated(pattern=r"^[\w:-]*(?!\n)$", max_length=MAX_ID_CHARS)
REF_SCHEMA = stated(pattern=REF_PATTERN, min_length=1, max_length=MAX_ID_CHARS)
OPTIONAL_REF_SCHEMA = stated(pattern=REF_PATTERN, max_length=MAX_ID_CHARS)
CONTENT_SCHEMA = stated(pattern=CONTENT_PATTERN, min_length=1, max_length=MAX_CONTENT_CHARS)
NO_NUL_SCHEMA = stated(pattern=r"^[^\x00]*$")
TIME_SCHEMA = stated(pattern=TIME_PATTERN)


class InvalidInput(ValueError):
    """Input the engine refuses, with a message that names the problem."""


def check_text(value: str, field: str) -> str:
    """Text must be valid Unicode: a lone surrogate (``"\\ud800"`` in JSON) cannot be stored
    or searched (SQLite and the embedders take UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{field} is not valid Unicode: lone surrogate U+{ord(value[exc.start]):04X} at"
            f" position {exc.start}"
        ) from None
    return value


def check_json(value: Any, field: str) -> Any:
    """:func:`check_text` on every key and string inside a JSON-like value (metadata)."""
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(str(key), f"{field} key")
            check_json(item, f"{field}.{key}")
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            check_json(item, f"{field}[{n}]")
    return value


def check_safe_id(value: str, field: str = "") -> str:
    """Validate an org, project, episode or fact id (MemMachine's SafeId rule, 1-256 chars)."""
    if not value or len(value) > MAX_ID_CHARS or not _ID.fullmatch(value):
        where = f"{field}: " if field else ""
        raise InvalidInput(
            f"{where}ID can only contain letters, numbers, underscore, hyphen, colon, or Unicode"
            f" characters (1-{MAX_ID_CHARS} of them), found: {value[:300]!r}"
        )
    return value


def check_ref(value: str, field: str, *, allow_empty: bool = False) -> str:
    """Validate a producer / produced_for / thread / role reference: printable, bounded."""
    if not value and not allow_empty:
        raise InvalidInput(f"{field} must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInput(f"{field} is longer than {MAX_ID_CHARS} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{field} contains control characters")
    return check_text(value, field)


def check_content(value: str, field: str = "content") -> str:
    """Message content: not blank, no NUL, valid Unicode, at most MAX_CONTENT_CHARS."""
    if len(value) > MAX_CONTENT_CHARS:
        raise InvalidInput(f"{field} is {len(value)} characters; the limit is {MAX_CONTENT_CHARS}")
    if "\x00" in value:
        raise InvalidInput(f"{field} contains a NUL character")
    if not _MEANINGFUL_RE.search(value):
        raise InvalidInput(f"{field} must not be empty")
    return check_text(value, field)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (as MemMachine does); aware ones are converted.
    A time whose UTC form falls outside ``datetime``'s years 1-9999 (``0001-01-01T00:00+14:00``)
    is refused with InvalidInput."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{value.isoformat()} is out of range once converted to UTC") from None


def check_time(value: datetime, field: str) -> datetime:
    """A time to store: converted to UTC and inside the valid range (MIN_TIME..MAX_TIME)."""
    try:
        utc = as_utc(value)
    except InvalidInput:
        utc = None
    if utc is None or not MIN_TIME <= utc <= MAX_TIME:
        raise InvalidInput(
            f"{field} {value.isoformat()} is out of range: times must fall within"
            f" {TIME_RANGE_TEXT} (UTC)"
        )
    return utc


def utcnow() -> datetime:
    return datetime.now(UTC)


class Episode(BaseModel):
    """One message, as said by ``producer`` to or in ``produced_for``.

    ``(org_id, project_id, platform, source_id)`` is unique: adding the same source twice
    stores it once, which is what makes chat platforms' retries harmless.
    """

    model_config = ConfigDict(extra="forbid")

    uid: str = Field("", json_schema_extra=UID_SCHEMA)
    org_id: str = Field(json_schema_extra=ID_SCHEMA)
    project_id: str = Field(json_schema_extra=ID_SCHEMA)
    producer: str = Field(json_schema_extra=REF_SCHEMA)
    produced_for: str = Field("", json_schema_extra=OPTIONAL_REF_SCHEMA)
    role: str = Field("user", json_schema_extra=OPTIONAL_REF_SCHEMA)
    content: str = Field(json_schema_extra=CONTENT_SCHEMA)
    created_at: datetime = Field(default_factory=utcnow, json_schema_extra=TIME_SCHEMA)
    platform: str = Field("api", json_schema_extra=REF_SCHEMA)
    source_id: str | None = Field(None, json_schema_extra=OPTIONAL_REF_SCHEMA)
    thread_id: str | None = Field(None, json_schema_extra=OPTIONAL_REF_SCHEMA)
    episode_type: str = Field("message", json_schema_extra=OPTIONAL_REF_SCHEMA)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("org_id", "project_id")
    @classmethod
    def _safe_ids(cls, v: str, info: Any) -> str:
        return check_safe_id(v, info.field_name)

    @field_validator("uid")
    @classmethod
    def _uid(cls, v: str) -> str:
        return check_safe_id(v, "uid") if v else v

    @field_validator("producer", "platform")
    @classmethod
    def _refs(cls, v: str, info: Any) -> str:
        return check_ref(v, info.field_name)

    @field_validator("produced_for")
    @classmethod
    def _produced_for(cls, v: str) -> str:
        return check_ref(v, "produced_for", allow_empty=True)

    @field_validator("source_id", "thread_id")
    @classmethod
    def _optional_refs(cls, v: str | None, info: Any) -> str | None:
        if v is None or v == "":
            return None
        return check_ref(v, info.field_name)

    @field_validator("content")
    @classmethod
    def _content(cls, v: str) -> str:
        return check_content(v)

    @field_validator("created_at")
    @classmethod
    def _created_at(cls, v: datetime) -> datetime:
        return check_time(v, "created_at")

    @field_validator("role", "episode_type")
    @classmethod
    def _role(cls, v: str, info: Any) -> str:
        return check_ref(v, info.field_name, allow_empty=True)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_json(v, "metadata")
        return v

    @property
    def display_name(self) -> str:
        """The name the LLM should see for the producer (metadata wins over the raw id)."""
        return display_name(self.producer, self.metadata)

    @property
    def link(self) -> str | None:
        """A link back to the source message, when the platform gave one."""
        value = self.metadata.get(LINK_KEY)
        return str(value) if value else None


def display_name(producer: str, metadata: dict[str, Any]) -> str:
    """An author's name as people read it: the metadata's name, else the producer id."""
    name = metadata.get(NAME_KEY)
    return str(name) if name else producer


#: The stored times :attr:`Brief.created_at` can be made of: those ``datetime.fromtimestamp``
#: takes (years 1 to 9999; every float below the second bound is within them).
_FIRST_STAMP = MIN_TIME.timestamp()
_PAST_LAST_STAMP = MAX_TIME.timestamp() + 1


class Brief:
    """A stored episode as a search ranks it: its uid, author, words, time and metadata.

    A search reads one for each of its candidates (a hundred or more from each of the keyword
    and vector lists) and full :class:`Episode` records only for the hits it returns: a Brief
    costs a quarter of an Episode to build, which at 40 concurrent clients was a sixth of the
    server's event loop (README, "bench load").

    Ranking reads only the author's display name from the metadata, so a store may hand over
    the name it read in SQL and the metadata as its JSON text (:meth:`stored`): the text is
    parsed the first time :attr:`metadata` is read, which a search never does (``json.loads``
    of every candidate's metadata was 4% of the loop at 40 clients)."""

    __slots__ = ("_created", "_metadata", "_name", "_text", "content", "producer", "stamp", "uid")

    uid: str
    producer: str
    content: str
    #: Its time as a POSIX timestamp, what the stores keep: ranking reads it for every
    #: candidate, and :attr:`created_at` is made from it only when something asks.
    stamp: float

    def __init__(
        self, uid: str, producer: str, content: str, created_at: datetime, metadata: dict[str, Any]
    ) -> None:
        self.uid = uid
        self.producer = producer
        self.content = content
        self._created: datetime | None = created_at
        self.stamp = created_at.timestamp()
        self._metadata: dict[str, Any] | None = metadata
        self._text: str | None = None
        self._name: str | None = None

    @classmethod
    def stored(
        cls,
        uid: str,
        producer: str,
        content: str,
        stamp: float,
        metadata_json: str,
        name: str | None,
    ) -> Brief:
        """A Brief as a store read it: its time as the POSIX timestamp the store keeps, its
        metadata as the JSON text of an object (parsed when first read) and the display name
        the store has worked out already: exactly ``display_name(producer,
        json.loads(metadata_json))``. Without the name (metadata of a kind the store leaves to
        Python) the text is parsed now, so that metadata that is not JSON raises here, as it
        did when every row was parsed."""
        if not _FIRST_STAMP <= stamp < _PAST_LAST_STAMP:  # None or text: TypeError
            raise ValueError(f"stored time {stamp!r} is out of range")
        brief = cls.__new__(cls)
        brief.uid = uid
        brief.producer = producer
        brief.content = content
        brief.stamp = stamp
        brief._created = None
        if name is None:
            brief._metadata = json.loads(metadata_json)
            brief._text = None
        else:
            brief._metadata = None
            brief._text = metadata_json
        brief._name = name
        return brief

    @property
    def created_at(self) -> datetime:
        """Its time (UTC), made from :attr:`stamp` the first time it is read."""
        if self._created is None:
            self._created = datetime.fromtimestamp(self.stamp, UTC)
        return self._created

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            assert self._text is not None
            self._metadata = json.loads(self._text)
            self._text = None
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._metadata, self._text, self._name = value, None, None

    @property
    def display_name(self) -> str:
        if self._name is not None:
            return self._name
        return display_name(self.producer, self.metadata)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Brief):
            return NotImplemented
        return (self.uid, self.producer, self.content, self.created_at, self.metadata) == (
            other.uid,
            other.producer,
            other.content,
            other.created_at,
            other.metadata,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaced

    def __repr__(self) -> str:
        return (
            f"Brief(uid={self.uid!r}, producer={self.producer!r}, content={self.content!r},"
            f" created_at={self.created_at!r}, metadata={self.metadata!r})"
        )


#: Which way :func:`embed_text` writes a message. Bump it whenever that changes: an index
#: written the old way is then re-embedded in the background when the engine opens.
EMBED_TEXT_VERSION = "2"  # 1: ``name: text``; 2: ``name: "text"``


def embed_text(ep: Episode) -> str:
    """How a message is written for the embedder: its author, then its words in quotes. The
    quotes tell the model where the name ends and the message begins: on LoCoMo (MiniLM,
    vector-only recall@10) ``name: text`` scored 0.50 and ``name: "text"`` 0.60; a date
    prefix lowered the hybrid figure (README, "Benchmarks")."""
    return f'{ep.display_name}: "{ep.content}"'[:EMBED_CHARS]


class SourceRef(BaseModel):
    """A message as its platform knows it."""

    org_id: str = Field(json_schema_extra=ID_SCHEMA)
    project_id: str = Field(json_schema_extra=ID_SCHEMA)
    platform: str = Field(json_schema_extra=REF_SCHEMA)
    source_id: str = Field(json_schema_extra=REF_SCHEMA)

    @field_validator("org_id", "project_id")
    @classmethod
    def _ids(cls, v: str, info: Any) -> str:
        return check_safe_id(v, info.field_name)

    @field_validator("platform", "source_id")
    @classmethod
    def _refs(cls, v: str, info: Any) -> str:
        return check_ref(v, info.field_name)


@dataclass(frozen=True, slots=True)
class Added:
    """The outcome of adding one episode: its uid, and whether this call stored it.

    ``new`` is False when the ``(org_id, project_id, platform, source_id)`` was already
    stored (a retry, a re-import, a second worker receiving the same event): ``uid`` is then
    the stored episode's uid, and exactly one of any number of concurrent adds of one source
    sees ``new=True``."""

    uid: str
    new: bool


class ForgetReport(BaseModel):
    """What a forget (or a project delete) removed: episodes, and facts that went with them."""

    episodes: int
    facts: int
    uids: list[str]


class Scope(BaseModel):
    """Where a query may look. ``org_id`` and ``project_id`` are mandatory: a search can never
    leave them. The optional fields narrow further."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    org_id: str = Field(json_schema_extra=ID_SCHEMA)
    project_id: str = Field(json_schema_extra=ID_SCHEMA)
    producer: str | None = None
    produced_for: str | None = None
    thread_id: str | None = None

    @field_validator("org_id", "project_id")
    @classmethod
    def _safe_ids(cls, v: str, info: Any) -> str:
        return check_safe_id(v, info.field_name)

    @field_validator("producer", "produced_for", "thread_id")
    @classmethod
    def _narrowing(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else check_text(v, info.field_name)


class TimeRange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    since: datetime | None = Field(None, json_schema_extra=TIME_SCHEMA)
    until: datetime | None = Field(None, json_schema_extra=TIME_SCHEMA)

    @model_validator(mode="after")
    def _aware(self) -> TimeRange:
        object.__setattr__(self, "since", as_utc(self.since) if self.since else None)
        object.__setattr__(self, "until", as_utc(self.until) if self.until else None)
        return self


class Source(BaseModel):
    """Where a hit came from, so that callers can link back to it."""

    platform: str
    channel: str
    source_id: str | None = None
    thread_id: str | None = None
    link: str | None = None


class Hit(BaseModel):
    """One search result: the episode, its score, where it came from, and whether it is a
    neighbour added by context expansion rather than a match of its own."""

    episode: Episode
    score: float
    source: Source
    expanded: bool = False


class SearchResult(BaseModel):
    hits: list[Hit]
    query: str
    #: The score of every episode the search ranked and kept (past ``top_k`` too), by uid:
    #: what lets a caller judge other episodes (recent ones) by the same threshold. Not
    #: sent over the API.
    scores: dict[str, float] = Field(default_factory=dict, exclude=True)

    @property
    def episodes(self) -> list[Episode]:
        return [h.episode for h in self.hits]


class Fact(BaseModel):
    """A fact about a person (semantic memory), learned in one channel, citing episodes."""

    model_config = ConfigDict(extra="forbid")

    uid: str = Field("", json_schema_extra=UID_SCHEMA)
    org_id: str = Field(json_schema_extra=ID_SCHEMA)
    project_id: str = Field(json_schema_extra=ID_SCHEMA)
    subject: str = Field(json_schema_extra=REF_SCHEMA)
    produced_for: str = Field("", json_schema_extra=OPTIONAL_REF_SCHEMA)
    category: str = Field("profile", json_schema_extra=NO_NUL_SCHEMA)
    tag: str = Field("", json_schema_extra=NO_NUL_SCHEMA)
    feature: str = Field(json_schema_extra=NO_NUL_SCHEMA)
    value: str = Field(json_schema_extra=NO_NUL_SCHEMA)
    citations: list[Annotated[str, Field(json_schema_extra=ID_SCHEMA)]] = Field(
        default_factory=list
    )
    created_at: datetime = Field(default_factory=utcnow, json_schema_extra=TIME_SCHEMA)
    superseded_at: datetime | None = Field(None, json_schema_extra=TIME_SCHEMA)
    superseded_by: str | None = Field(None, json_schema_extra=UID_SCHEMA)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("org_id", "project_id")
    @classmethod
    def _safe_ids(cls, v: str, info: Any) -> str:
        return check_safe_id(v, info.field_name)

    @field_validator("uid", "superseded_by")
    @classmethod
    def _uids(cls, v: str | None, info: Any) -> str | None:
        return check_safe_id(v, info.field_name) if v else v

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        return check_ref(v, "subject")

    @field_validator("produced_for")
    @classmethod
    def _produced_for(cls, v: str) -> str:
        return check_ref(v, "produced_for", allow_empty=True)

    @field_validator("category", "tag", "feature", "value")
    @classmethod
    def _texts(cls, v: str, info: Any) -> str:
        if "\x00" in v:
            raise InvalidInput(f"{info.field_name} contains a NUL character")
        return check_text(v, info.field_name)

    @field_validator("citations")
    @classmethod
    def _citations(cls, v: list[str]) -> list[str]:
        return [check_safe_id(c, "citations") for c in v]

    @field_validator("created_at")
    @classmethod
    def _created_at(cls, v: datetime) -> datetime:
        return check_time(v, "created_at")

    @field_validator("superseded_at")
    @classmethod
    def _superseded_at(cls, v: datetime | None) -> datetime | None:
        return None if v is None else check_time(v, "superseded_at")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_json(v, "metadata")
        return v


class Stats(BaseModel):
    episodes: int
    pending_index: int
    vectors: int
    facts: int
    orgs: int
    projects: int
    channels: int
    embedder: str
    disk_bytes: int
    #: Episodes set aside: stored, but unreadable or unembeddable (see MemoryEngine.set_aside).
    set_aside: int = 0
