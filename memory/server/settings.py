"""The memory server's settings: the engine's (``CHANNELMIND_DATA_DIR``...) plus the server's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from memory.config import MemorySettings


class ServerSettings(MemorySettings):
    #: ``KEY:ORG[|ORG...]`` entries separated by commas, ``*`` for every org.
    api_keys: SecretStr | None = None
    #: Where ``channelmind serve`` binds by default.
    host: str = "127.0.0.1"
    port: int = 8080
    #: Recent episodes returned as MemMachine's "short-term memory" in a search.
    short_term_episodes: int = Field(default=5, ge=0, le=100)
    #: Largest request body accepted (bytes); larger bodies get 413.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: Host names (``name`` or ``name:port``, comma separated) accepted besides loopback ones.
    #: Without API keys every request must name a loopback host or one of these (DNS-rebinding
    #: protection); with keys the bearer key protects the server and, unless hosts are listed
    #: here, any Host is accepted.
    allowed_hosts: str = ""
    #: The event loop of ``channelmind serve`` / ``run``: uvloop (when installed; it comes with
    #: Chroma) or asyncio's own (memory.server.event_loop).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    def allowed_host_list(self) -> list[str]:
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]

    def api_keys_text(self) -> str:
        return self.api_keys.get_secret_value() if self.api_keys else ""
