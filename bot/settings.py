"""The bot's settings, from the environment or a ``.env`` file.

One class, :class:`Settings`, extends the memory server's settings, which extend
:class:`memory.config.MemorySettings`: the memory part (data folder, embedder, Chroma URL, the
OpenAI endpoint and key) and the server part (``CHANNELMIND_API_KEYS``, host, port...) are each
read by exactly one rule, wherever they are used. Standard names are kept where a platform or
library has one (``OPENAI_API_KEY``, ``SLACK_BOT_TOKEN``, ``DISCORD_TOKEN``...); everything
else is ``CHANNELMIND_<FIELD>``. Secrets are :class:`pydantic.SecretStr` and are printed masked.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import NoDecode

from bot.platforms.base import StartupError
from memory.model import check_safe_id
from memory.server.settings import ServerSettings


def _split_commas(value: Any) -> Any:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _alias(name: str) -> Any:
    """A field read from a standard environment name (and, by field name, in code)."""
    return Field(default=None, validation_alias=name)


class Settings(ServerSettings):
    """Everything ChannelMind reads from its environment."""

    # -- identity and memory scope ---------------------------------------------------------
    project: str = "channelmind"
    bot_name: str = "ChannelMind"
    memory_url: str | None = None  # a remote memory server instead of the embedded engine
    memory_api_key: SecretStr | None = None  # its API key (CHANNELMIND_MEMORY_API_KEY)
    retention_days: int | None = Field(default=None, ge=0)  # None or 0: keep until deleted
    admins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    #: who you are in ``channelmind chat`` unless ``--user`` says (the login name)
    chat_user: str = Field(default="you", validation_alias="USER")

    # -- the LLM (OPENAI_BASE_URL / OPENAI_API_KEY come from MemorySettings) ---------------
    llm_model: str = "gpt-4o-mini"
    llm_timeout: float = Field(default=30.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0, le=10)

    # -- answering -------------------------------------------------------------------------
    context_top_k: int = Field(default=8, ge=1, le=50)  # relevant past messages in a prompt
    recent_messages: int = Field(default=12, ge=0, le=100)  # the recent window
    recall_top_k: int = Field(default=5, ge=1, le=50)
    #: cosine similarity from which a vector-only hit counts as relevant (real embedders only)
    relevance_threshold: float = Field(default=0.35, ge=-1.0, le=1.0)

    # -- semantic memory (facts) -----------------------------------------------------------
    semantic: bool = True
    semantic_batch_messages: int = Field(default=10, ge=1)
    semantic_batch_seconds: float = Field(default=300.0, gt=0)
    semantic_calls_per_minute: int = Field(default=6, ge=1)

    # -- history from before the bot arrived (live backfill; `channelmind import` ignores) -
    #: days of a channel's history read when the bot joins it (and at start); 0 turns it off
    backfill_days: int = Field(default=90, ge=0)
    #: seconds between two history requests (Slack's Tier 3 allows ~50 a minute); a 429's
    #: Retry-After is honoured on top of this
    backfill_pace: float = Field(default=1.2, ge=0)

    # -- Slack ---------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = _alias("SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = _alias("SLACK_APP_TOKEN")
    slack_signing_secret: SecretStr | None = _alias("SLACK_SIGNING_SECRET")
    slack_api_url: str | None = _alias("SLACK_API_URL")

    # -- Discord -------------------------------------------------------------------------
    discord_token: SecretStr | None = _alias("DISCORD_TOKEN")
    discord_guild_id: str | None = _alias("DISCORD_GUILD_ID")
    discord_api_base: str | None = _alias("DISCORD_API_BASE")
    discord_gateway_url: str | None = _alias("DISCORD_GATEWAY_URL")
    #: shard count, or "auto" (Discord recommends one); None: one connection, no sharding
    discord_shards: int | Literal["auto"] | None = _alias("DISCORD_SHARDS")

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        return check_safe_id(v, "CHANNELMIND_PROJECT")

    @field_validator("admins", mode="before")
    @classmethod
    def _commas(cls, v: Any) -> Any:
        return _split_commas(v)

    @field_validator("chat_user")
    @classmethod
    def _chat_user(cls, v: str) -> str:
        return v or "you"

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, v: int | None) -> int | None:
        return v or None

    @property
    def llm_configured(self) -> bool:
        """An LLM is used when a key or an OpenAI-compatible endpoint is set."""
        return self.openai_api_key is not None or bool(self.openai_base_url)

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.admins


def load() -> Settings:
    """The settings, read once from the environment and ``.env``. A bad value is a
    :class:`~bot.platforms.base.StartupError` naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            name = env_name(Settings, field) if field in Settings.model_fields else field
            problems.append(f"{name}: {error['msg']}")
        raise StartupError("bad setting " + "; ".join(problems)) from None


def env_name(settings_cls: type[Settings], field: str) -> str:
    """The environment variable a field is read from."""
    info = settings_cls.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return first if isinstance(first, str) else field.upper()
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def mask_url(url: str) -> str:
    """Hide a password given inside a URL (``https://user:secret@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:****@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _show(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, SecretStr):
        return "**** (set)" if value.get_secret_value() else "(empty)"
    if isinstance(value, list):
        if value and all(isinstance(v, SecretStr) for v in value):
            return f"{len(value)} key(s), masked"
        return ", ".join(str(v) for v in value) if value else "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "(empty)"
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return str(value)


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """``(field, environment variable, shown value)`` for every setting, secrets masked."""
    cls = type(settings)
    return [
        (name, env_name(cls, name), _show(getattr(settings, name))) for name in cls.model_fields
    ]
