"""The ChannelMind routes' request and response bodies (``/api/cm``), defined once: the
server validates requests with them and :class:`memory.client.MemoryClient` builds its
requests and reads its answers with them. Records inside them are the contract's own
(:mod:`memory.model`). Only pydantic here, so the client loads no server code.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memory.model import TIME_SCHEMA, Episode, Fact, Scope, SearchMode, SourceRef, TimeRange

from ..fields import (
    MAX_EXPAND,
    MAX_PAGE_NUM,
    MAX_PAGE_SIZE,
    MAX_TOP_K,
    Content,
    FilterText,
    SafeId,
    Text,
)

#: Uids are the server's to assign: a caller-chosen one that another org already has could
#: not be stored, and saying so would tell the caller that the other org has it.
SERVER_ASSIGNS_UIDS = "uid is assigned by the server; leave it empty"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ServerAssignsUid(BaseModel):
    """A record to store: its uid is the server's to assign."""

    uid: str = Field("", description=SERVER_ASSIGNS_UIDS, json_schema_extra={"maxLength": 0})

    @field_validator("uid")
    @classmethod
    def _no_uid(cls, uid: str) -> str:
        if uid:
            raise ValueError(SERVER_ASSIGNS_UIDS)
        return uid


class NewEpisode(_ServerAssignsUid, Episode):
    """An episode to store."""


class NewFact(_ServerAssignsUid, Fact):
    """A fact to store."""


class AddEpisodesBody(_Body):
    episodes: list[NewEpisode] = Field(max_length=10_000)


class SearchBody(_Body):
    query: Text = Field(max_length=100_000)
    scope: Scope
    filters: FilterText | None = None
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    expand_context: int = Field(default=0, ge=0, le=MAX_EXPAND)
    time: TimeRange | None = None
    mode: SearchMode = "hybrid"
    score_threshold: float | None = Field(default=None, allow_inf_nan=False)
    statements_only: bool = False  # leave out messages that ask (see MemoryEngine.search)


class RecentBody(_Body):
    scope: Scope
    n: int = Field(default=20, ge=1, le=MAX_PAGE_SIZE)


class ListBody(_Body):
    scope: Scope
    filters: FilterText | None = None
    page_size: int = Field(default=100, ge=1, le=MAX_PAGE_SIZE)
    page_num: int = Field(default=0, ge=0, le=MAX_PAGE_NUM)
    time: TimeRange | None = None


class CountBody(_Body):
    scope: Scope
    filters: FilterText | None = None


class UidsBody(_Body):
    org_id: SafeId
    project_id: SafeId
    uids: list[SafeId] = Field(max_length=10_000)


class ForgetBody(_Body):
    org_id: SafeId
    project_id: SafeId | None = None
    producer: Text | None = None
    produced_for: Text | None = None
    thread_id: Text | None = None
    filters: FilterText | None = None
    facts_about_producer: bool = True


class EditBody(_Body):
    """Either ``ref`` (the platform's message) or ``uid`` with ``org_id`` and ``project_id``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["ref"], "properties": {"ref": {"type": "object"}}},
                {
                    "required": ["uid", "org_id", "project_id"],
                    "properties": {
                        "uid": {"type": "string"},
                        "org_id": {"type": "string"},
                        "project_id": {"type": "string"},
                    },
                },
            ]
        },
    )

    ref: SourceRef | None = None
    uid: SafeId | None = None
    org_id: SafeId | None = None
    project_id: SafeId | None = None
    content: Content


class FactsBody(_Body):
    org_id: SafeId
    project_id: SafeId
    subject: Text | None = None
    produced_for: Text | None = None
    include_superseded: bool = False
    uids: list[SafeId] | None = Field(default=None, max_length=10_000)


class AddFactBody(_Body):
    fact: NewFact


class SupersedeBody(_Body):
    org_id: SafeId
    project_id: SafeId
    uid: SafeId
    by: SafeId
    when: datetime | None = Field(None, json_schema_extra=TIME_SCHEMA)


class SimilarityBody(_Body):
    query: Text = Field(max_length=100_000)
    texts: list[Text] = Field(max_length=1000)


class Similarities(BaseModel):
    embedder: str
    scores: list[float] | None  # None: the hashing embedder, which does not measure meaning


class WaitBody(_Body):
    timeout: float = Field(default=60.0, ge=0.01, le=300)


class Indexed(BaseModel):
    done: bool


class SettingBody(_Body):
    org_id: SafeId
    project_id: SafeId
    subject: Text = Field(max_length=256)
    key: Text = Field(max_length=256)


class SetSettingBody(SettingBody):
    value: Text | None = Field(default=None, max_length=100_000)


class Uids(BaseModel):
    uids: list[str]


class AddedEpisodes(BaseModel):
    """The uid of each episode, in order, and whether this call stored it (False: its source
    was stored before, e.g. a platform's retry)."""

    uids: list[str]
    new: list[bool]


class Uid(BaseModel):
    uid: str


class Count(BaseModel):
    count: int


class MaybeEpisode(BaseModel):
    episode: Episode | None


class SettingValue(BaseModel):
    value: str | None


class Rebuild(BaseModel):
    queued: int
