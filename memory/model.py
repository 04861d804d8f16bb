"""Records of the memory engine: what an episode is, how a search is asked and answered.

Everything that crosses the engine's boundary is one of these pydantic models, so that the
same validation applies whether a record comes from Slack, Discord, the REST API or MCP.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: MemMachine's SafeId rule: Unicode letters and digits, ``_``, ``:`` and ``-``.
SAFE_ID = re.compile(r"^[\w:-]+$", re.UNICODE)
#: Largest message we accept. Slack caps messages at 40k characters and Discord at 4k; the
#: REST API must take 100 KB documents, so the limit sits well above that.
MAX_CONTENT_CHARS = 1_000_000
MAX_ID_CHARS = 256
ROLES = ("user", "assistant", "system")
#: Metadata keys any entry point may set: the author's name as people read it, and a link back
#: to the message where it was said.
NAME_KEY = "display_name"
LINK_KEY = "permalink"


class InvalidInput(ValueError):
    """Input the engine refuses, with a message that names the problem."""


def check_safe_id(value: str, field: str) -> str:
    """Validate an org or project id (MemMachine's SafeId rule)."""
    if not value or not SAFE_ID.match(value) or len(value) > MAX_ID_CHARS:
        raise InvalidInput(
            f"{field} must be 1-{MAX_ID_CHARS} letters, digits, '_', ':' or '-', got {value!r}"
        )
    return value


def check_ref(value: str, field: str, *, allow_empty: bool = False) -> str:
    """Validate a producer / produced_for / thread reference: printable, bounded."""
    if not value and not allow_empty:
        raise InvalidInput(f"{field} must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInput(f"{field} is longer than {MAX_ID_CHARS} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{field} contains control characters")
    return value


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (as MemMachine does); aware ones are converted."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Episode(BaseModel):
    """One message, as said by ``producer`` to or in ``produced_for``.

    ``(org_id, project_id, platform, source_id)`` is unique: adding the same source twice
    stores it once, which is what makes chat platforms' retries harmless.
    """

    model_config = ConfigDict(extra="forbid")

    uid: str = ""
    org_id: str
    project_id: str
    producer: str
    produced_for: str = ""
    role: str = "user"
    content: str
    created_at: datetime = Field(default_factory=utcnow)
    platform: str = "api"
    source_id: str | None = None
    thread_id: str | None = None
    episode_type: str = "message"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("org_id", "project_id")
    @classmethod
    def _safe_ids(cls, v: str, info: Any) -> str:
        return check_safe_id(v, info.field_name)

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
        if not v.strip():
            raise InvalidInput("content must not be empty")
        if len(v) > MAX_CONTENT_CHARS:
            raise InvalidInput(f"content is {len(v)} characters; the limit is {MAX_CONTENT_CHARS}")
        if "\x00" in v:
            raise InvalidInput("content contains a NUL character")
        return v

    @field_validator("created_at")
    @classmethod
    def _created_at(cls, v: datetime) -> datetime:
        return as_utc(v)

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        return check_ref(v, "role", allow_empty=True)

    @property
    def display_name(self) -> str:
        """The name the LLM should see for the producer (metadata wins over the raw id)."""
        name = self.metadata.get(NAME_KEY)
        return str(name) if name else self.producer

    @property
    def link(self) -> str | None:
        """A link back to the source message, when the platform gave one."""
        value = self.metadata.get(LINK_KEY)
        return str(value) if value else None


class Scope(BaseModel):
    """Where a query may look. ``org_id`` and ``project_id`` are mandatory: a search can never
    leave them. The optional fields narrow further."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    org_id: str
    project_id: str
    producer: str | None = None
    produced_for: str | None = None
    thread_id: str | None = None

    @field_validator("org_id", "project_id")
    @classmethod
    def _safe_ids(cls, v: str, info: Any) -> str:
        return check_safe_id(v, info.field_name)


class TimeRange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    since: datetime | None = None
    until: datetime | None = None

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

    @property
    def episodes(self) -> list[Episode]:
        return [h.episode for h in self.hits]


class Fact(BaseModel):
    """A fact about a person (semantic memory), learned in one channel, citing episodes."""

    model_config = ConfigDict(extra="forbid")

    uid: str = ""
    org_id: str
    project_id: str
    subject: str
    produced_for: str = ""
    category: str = "profile"
    tag: str = ""
    feature: str
    value: str
    citations: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    superseded_at: datetime | None = None
    superseded_by: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("org_id", "project_id")
    @classmethod
    def _safe_ids(cls, v: str, info: Any) -> str:
        return check_safe_id(v, info.field_name)


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
