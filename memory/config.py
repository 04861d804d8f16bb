"""The memory engine's settings, from the environment or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class MemorySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHANNELMIND_", env_file=".env", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Path("./data")
    embedder: Literal["local", "openai", "hash"] = "local"
    embedding_model: str | None = None
    #: What runs the local model: torch (sentence-transformers) or ONNX Runtime (float32, or
    #: int8 dense layers); unset, the default for a new folder (memory.embedders.default_backend)
    #: and, for a folder indexed with another local backend, that one. See README,
    #: "Local embedding backends".
    embedder_backend: Literal["torch", "onnx", "onnx-int8"] | None = None
    chroma_url: str | None = None
    #: Unset: the embedded SQLite file in the data folder. ``postgresql://...``: a PostgreSQL
    #: database several processes share (secret: it may hold a password).
    database_url: SecretStr | None = None
    #: How long a claim on rows to embed lasts: the rows of a process that dies are taken by
    #: another after this (an embedding batch takes seconds; a slow one is embedded twice,
    #: harmlessly). Only processes sharing one PostgreSQL database ever wait for it.
    claim_lease_seconds: float = Field(default=300.0, gt=0)
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")

    def database_url_text(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None
