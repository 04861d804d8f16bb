"""Which memory a process works on, and one line for each way of not getting it.

One process owns an embedded data folder (:mod:`memory.folder`). So:

* a command (``chat``, ``recall``, ``forget``, ``export``, ``stats``, ``reindex``,
  ``mcp-stdio``) works on the memory server at ``CHANNELMIND_MEMORY_URL`` when that is set;
  else, when a running server owns the data folder, through that server's API (the URL its
  lock file names); else on the folder itself, which it then owns while it runs;
* ``channelmind run`` uses ``CHANNELMIND_MEMORY_URL`` or owns the folder, and is told which
  URL to set when a server owns it already; ``channelmind serve`` owns the folder or stops.

Everything an operator can get wrong here (another owner, an unreachable or refusing server, an
embedder that cannot start) is a :class:`~bot.platforms.base.StartupError` whose one line
names the setting or the process and what to do; a folder that cannot be written is memory's
own :class:`~memory.folder.FolderNotWritable`, one line too. The CLI prints these with exit
status 2.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from .platforms.base import StartupError
from .settings import Settings, mask_url

if TYPE_CHECKING:
    from memory.client import MemoryClient, MemoryServerError
    from memory.embedders import Embedder
    from memory.engine import MemoryEngine
    from memory.folder import FolderOwner

#: Who asks, which decides what happens when another process owns the data folder.
Purpose = Literal["command", "bot", "server"]

OPENAI_URL = "https://api.openai.com/v1"


def build_embedder(settings: Settings) -> Embedder:
    """The embedder ``CHANNELMIND_EMBEDDER`` names, or a StartupError saying which setting to
    change (an OpenAI-compatible one is asked for a vector here, so a missing key, a wrong
    URL or no network shows now, not at the first message)."""
    import openai

    from memory.embedders import make_embedder

    kind = settings.embedder
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    where = settings.openai_base_url or OPENAI_URL
    setting = f"CHANNELMIND_EMBEDDER={kind}"
    if kind == "openai" and not key and not settings.openai_base_url:
        raise StartupError(
            f"{setting} needs OPENAI_API_KEY for OpenAI's endpoint (or OPENAI_BASE_URL for a"
            " server that needs no key); set it, or use CHANNELMIND_EMBEDDER=local"
        )
    try:
        return make_embedder(
            kind, model=settings.embedding_model, base_url=settings.openai_base_url, api_key=key
        )
    except openai.APIConnectionError as exc:  # timeouts included
        raise StartupError(
            f"{setting}: cannot reach the embeddings endpoint at {mask_url(where)}"
            f" ({_reason(exc)}); check OPENAI_BASE_URL and the network, or use"
            " CHANNELMIND_EMBEDDER=local"
        ) from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise StartupError(
            f"{setting}: {mask_url(where)} refused OPENAI_API_KEY ({exc.status_code});"
            " set a key it accepts"
        ) from None
    except openai.APIStatusError as exc:
        raise StartupError(
            f"{setting}: {mask_url(where)} answered {exc.status_code} for the embedding model"
            f" {settings.embedding_model or 'text-embedding-3-small'!r}; check"
            " CHANNELMIND_EMBEDDING_MODEL and OPENAI_BASE_URL"
        ) from None
    except (OSError, ValueError) as exc:  # e.g. CHANNELMIND_EMBEDDING_MODEL is no model folder
        raise StartupError(f"{setting}: the embedder cannot start: {exc}") from None


async def open_engine(
    settings: Settings, *, background: bool = True, allow_embedder_change: bool = False
) -> MemoryEngine:
    """The embedded engine on ``CHANNELMIND_DATA_DIR``, owned by this process from now on.
    Raises memory's FolderInUse / FolderNotWritable (one line each) for the folder."""
    from memory import MemoryEngine

    embedder = await asyncio.to_thread(build_embedder, settings)
    return await MemoryEngine.open(
        settings=settings,
        embedder=embedder,
        background=background,
        allow_embedder_change=allow_embedder_change,
    )


async def open_memory(
    settings: Settings,
    purpose: Purpose,
    *,
    background: bool = True,
    allow_embedder_change: bool = False,
) -> MemoryEngine | MemoryClient:
    """The memory for ``purpose`` (see the module docstring); the options are the engine's,
    when this process opens the data folder itself."""
    from memory import FolderInUse, read_owner

    if settings.memory_url and purpose != "server":
        return await connect(settings, settings.memory_url)
    owner = await asyncio.to_thread(read_owner, settings.data_dir)
    if owner is None:
        try:
            return await open_engine(
                settings, background=background, allow_embedder_change=allow_embedder_change
            )
        except FolderInUse as exc:  # it was taken in the meantime
            owner = exc.owner
    return await through_owner(settings, owner, purpose)


async def through_owner(settings: Settings, owner: FolderOwner, purpose: Purpose) -> MemoryClient:
    """A client of the server that owns the data folder, when ``purpose`` may go through it;
    otherwise the StartupError that names the owner and what to do."""
    folder = f"data folder {settings.data_dir} is in use by {owner.describe()}"
    if purpose == "server":
        raise StartupError(f"{folder}; stop it first (one process serves a data folder)")
    if purpose == "bot":
        if owner.url:
            raise StartupError(
                f"{folder}; stop it, or set CHANNELMIND_MEMORY_URL={owner.url} to run the bot"
                " on that server"
            )
        raise StartupError(f"{folder}; stop it first")
    if not owner.url:
        raise StartupError(
            f"{folder}, which does not serve the memory API; stop it first, or run"
            " `channelmind serve` on the folder (commands then work through it)"
        )
    return await connect(settings, owner.url, owner=owner)


async def connect(
    settings: Settings, url: str, *, owner: FolderOwner | None = None
) -> MemoryClient:
    """A client of the memory server at ``url`` (``CHANNELMIND_MEMORY_API_KEY``), checked:
    reachable, and the key accepted."""
    from memory.client import MemoryAccessDenied, MemoryClient, MemoryServerError

    secret = settings.memory_api_key
    client = MemoryClient(url, secret.get_secret_value() if secret is not None else None)
    shown = mask_url(url)
    try:
        await client.list_projects()
    except MemoryAccessDenied as exc:
        await client.close()
        raise StartupError(
            f"the memory server at {shown} refused the key ({exc.status}); set"
            " CHANNELMIND_MEMORY_API_KEY to one of its CHANNELMIND_API_KEYS"
        ) from None
    except MemoryServerError as exc:
        await client.close()
        if owner is not None:
            raise StartupError(
                f"data folder {settings.data_dir} is in use by process {owner.pid}, whose"
                f" memory API at {shown} does not answer ({server_reason(exc)}); wait until"
                " it has started, or stop it"
            ) from None
        raise StartupError(
            f"cannot reach the memory server at {shown} (CHANNELMIND_MEMORY_URL):"
            f" {server_reason(exc)}; start it, or correct or unset CHANNELMIND_MEMORY_URL"
        ) from None
    return client


def server_reason(exc: MemoryServerError) -> str:
    """Why a memory server call failed, briefly (the transport error, or the answer)."""
    if exc.status == 0 and exc.__cause__ is not None:
        return _reason(exc.__cause__)
    return str(exc)


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    text = str(cause) if cause is not None and str(cause) else str(exc)
    return text or type(exc).__name__
