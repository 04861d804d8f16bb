"""Request and response bodies of the MemMachine-compatible REST API v2.

Field names, defaults and shapes follow MemMachine's API v2 (see
``shared/reference/memmachine-api-v2.md``) so that the official ``memmachine-client`` works
against this server. The models are written here from that description; where MemMachine
accepts nonsense (unbounded ``top_k``, non-finite numbers) these bound it with a 422.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from memory.model import (
    MAX_TIME,
    MIN_TIME,
    TIME_PATTERN,
    TIME_RANGE_TEXT,
    check_time,
)

from ..fields import (
    MAX_EXPAND,
    MAX_PAGE_NUM,
    MAX_PAGE_SIZE,
    MAX_TOP_K,
    Content,
    FilterText,
    JsonObject,
    OptionalId,
    OptionalRef,
    RequiredRef,
    SafeId,
    Text,
)

DEFAULT_ID = "universal"
MemoryTypeName = Literal["episodic", "semantic"]
ALL_TYPES: tuple[MemoryTypeName, ...] = ("episodic", "semantic")
MIN_EPOCH = int(MIN_TIME.timestamp())
MAX_EPOCH = int(MAX_TIME.timestamp())


def parse_timestamp(value: Any) -> datetime:
    """ISO-8601 text, Unix seconds, or Unix milliseconds (values above 1e12); naive is UTC.
    The result must fall in the valid time range (:data:`memory.model.MIN_TIME`..MAX_TIME)."""
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, datetime):
        return check_time(value, "timestamp")
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("timestamp must be a finite number")
        if number > 1e12:
            number /= 1000
        try:
            parsed = datetime.fromtimestamp(number, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(
                f"timestamp {value!r} is out of range: times must fall within {TIME_RANGE_TEXT}"
            ) from None
        return check_time(parsed, "timestamp")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return check_time(parsed, "timestamp")
    raise ValueError(
        f"unsupported timestamp {str(value)[:100]!r}: use ISO-8601, Unix seconds or Unix ms"
    )


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_timestamp),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time", "pattern": TIME_PATTERN},
                {"type": "number", "minimum": MIN_EPOCH, "maximum": MAX_EPOCH},
                {"type": "number", "exclusiveMinimum": 1e12, "maximum": MAX_EPOCH * 1000},
            ],
            "description": "ISO-8601, Unix seconds, or Unix milliseconds (> 1e12); naive is UTC;"
            f" within {TIME_RANGE_TEXT}",
        }
    ),
]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _OrgProject(_Body):
    org_id: SafeId = DEFAULT_ID
    project_id: SafeId = DEFAULT_ID


# -- projects ------------------------------------------------------------------------------


class ProjectConfig(BaseModel):
    backend: Literal["declarative", "event"] | None = None
    reranker: Text = ""
    embedder: Text = ""
    vector_graph_store: Text = ""
    vector_store: Text = ""
    segment_store: Text = ""
    properties_schema: dict[str, Literal["bool", "int", "float", "str", "datetime"]] = Field(
        default_factory=dict
    )


class CreateProjectSpec(_Body):
    org_id: SafeId
    project_id: SafeId
    description: Text = Field(default="", max_length=10_000)
    config: ProjectConfig = Field(default_factory=ProjectConfig)


class ProjectSpec(_Body):
    org_id: SafeId
    project_id: SafeId


class ProjectResponse(BaseModel):
    org_id: str
    project_id: str
    description: str = ""
    config: ProjectConfig = Field(default_factory=ProjectConfig)


class ProjectRef(BaseModel):
    org_id: str
    project_id: str


class EpisodeCount(BaseModel):
    count: int


# -- add -----------------------------------------------------------------------------------


class MemoryMessage(_Body):
    content: Content
    producer: RequiredRef = "user"
    produced_for: OptionalRef = ""
    timestamp: Timestamp = Field(default_factory=lambda: datetime.now(UTC))
    role: OptionalRef = ""
    metadata: dict[Text, Text] = Field(default_factory=dict)
    episode_type: Literal["message"] | None = None


class AddMemoriesSpec(_OrgProject):
    types: list[MemoryTypeName] = Field(default_factory=list)
    messages: list[MemoryMessage] = Field(min_length=1, max_length=10_000)


class AddMemoryResult(BaseModel):
    uid: str


class AddMemoriesResponse(BaseModel):
    results: list[AddMemoryResult]


# -- search and list -----------------------------------------------------------------------


class SearchMemoriesSpec(_OrgProject):
    query: Text = Field(max_length=100_000)
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    filter: FilterText = ""
    set_metadata: JsonObject | None = None
    expand_context: int = Field(default=0, ge=0, le=MAX_EXPAND)
    score_threshold: Finite | None = None
    types: list[MemoryTypeName] = Field(default_factory=list)
    agent_mode: bool = False


class ListMemoriesSpec(_OrgProject):
    page_size: int = Field(default=100, ge=1, le=MAX_PAGE_SIZE)
    page_num: int = Field(default=0, ge=0, le=MAX_PAGE_NUM)
    filter: FilterText = ""
    set_metadata: JsonObject | None = None
    type: MemoryTypeName | None = None


class EpisodeOut(BaseModel):
    """An episode in a search result (MemMachine's EpisodeResponse)."""

    uid: str
    content: str
    producer_id: str
    producer_role: str
    produced_for_id: str | None = None
    episode_type: str | None = None
    metadata: dict[str, str] | None = None
    created_at: datetime | None = None
    score: float | None = None


class ListedEpisode(BaseModel):
    """An episode in a list result (MemMachine's Episode)."""

    uid: str
    content: str
    session_key: str
    created_at: datetime
    producer_id: str
    producer_role: str
    produced_for_id: str | None = None
    episode_type: str = "message"
    content_type: str = "string"
    filterable_metadata: dict[str, str] | None = None
    metadata: dict[str, str] | None = None


class FeatureMetadata(BaseModel):
    citations: list[str] | None = None
    id: str | None = None
    other: dict[str, Any] | None = None


class SemanticFeature(BaseModel):
    set_id: str | None = None
    category: str
    tag: str
    feature_name: str
    value: str
    metadata: FeatureMetadata = Field(default_factory=FeatureMetadata)


class ShortTermMemory(BaseModel):
    episodes: list[EpisodeOut]
    episode_summary: list[str]


class LongTermMemory(BaseModel):
    episodes: list[EpisodeOut]


class EpisodicSearchResult(BaseModel):
    long_term_memory: LongTermMemory
    short_term_memory: ShortTermMemory


class SearchContent(BaseModel):
    episodic_memory: EpisodicSearchResult | None = None
    semantic_memory: list[SemanticFeature] | None = None


class SearchResponse(BaseModel):
    status: int = 0
    content: SearchContent


class ListContent(BaseModel):
    episodic_memory: list[ListedEpisode] | None = None
    semantic_memory: list[SemanticFeature] | None = None


class ListResponse(BaseModel):
    status: int = 0
    content: ListContent


# -- deletes -------------------------------------------------------------------------------


def _one_of_ids(kind: str) -> dict[str, Any]:
    """At least one id, in ``<kind>_id`` or ``<kind>_ids``."""
    return {
        "anyOf": [
            {
                "required": [f"{kind}_id"],
                "properties": {f"{kind}_id": {"type": "string", "minLength": 1}},
            },
            {
                "required": [f"{kind}_ids"],
                "properties": {f"{kind}_ids": {"type": "array", "minItems": 1}},
            },
        ]
    }


class DeleteEpisodicSpec(_OrgProject):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_one_of_ids("episodic"))

    episodic_id: OptionalId = None
    episodic_ids: list[SafeId] = Field(default_factory=list, max_length=10_000)

    def ids(self) -> list[str]:
        found = set(self.episodic_ids)
        if self.episodic_id:
            found.add(self.episodic_id)
        return sorted(found)

    @model_validator(mode="after")
    def _some(self) -> DeleteEpisodicSpec:
        if not self.ids():
            raise ValueError("At least one episodic ID must be provided")
        return self


class DeleteSemanticSpec(_OrgProject):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_one_of_ids("semantic"))

    semantic_id: OptionalId = None
    semantic_ids: list[SafeId] = Field(default_factory=list, max_length=10_000)

    def ids(self) -> list[str]:
        found = set(self.semantic_ids)
        if self.semantic_id:
            found.add(self.semantic_id)
        return sorted(found)

    @model_validator(mode="after")
    def _some(self) -> DeleteSemanticSpec:
        if not self.ids():
            raise ValueError("At least one semantic ID must be provided")
        return self


# -- errors and health ---------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: int
    message: str
    internal_error: str = ""
    exception: str = ""
    trace: str = ""


class ErrorResponse(BaseModel):
    detail: ErrorDetail | str


class Health(BaseModel):
    status: str
    service: str
    version: str
