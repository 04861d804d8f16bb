"""Who owns a data folder: one process at a time, recorded in a lock file.

The first process to open an embedded data folder holds an exclusive ``flock`` on
``<folder>/channelmind.lock`` for as long as it runs, and writes its pid there and, once it
serves the memory API, its URL. A second process that opens the folder gets
:class:`FolderInUse`, naming the owner (and its URL, through which a command can work
instead). The kernel drops the lock when the owner dies, however it dies, so a stale file never
blocks anyone. A folder the process cannot write gets :class:`FolderNotWritable` at once.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from memory.store.base import StoreUnavailable

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "channelmind.lock"
#: Files a running engine writes in the folder, besides the lock (checked before opening).
_DATA_FILES = ("memory.sqlite3", "memory.sqlite3-wal", "memory.sqlite3-shm", "chroma")


@dataclass(frozen=True)
class FolderOwner:
    """The process that holds a data folder, as its lock file tells."""

    pid: int | None
    url: str | None = None
    since: str | None = None

    def describe(self) -> str:
        who = f"process {self.pid}" if self.pid else "another process"
        return f"{who} (serving {self.url})" if self.url else who


class FolderError(StoreUnavailable):
    """The data folder cannot be used by this process; the message (one line) says why and
    what to do."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class FolderInUse(FolderError):
    """Another process owns the data folder. ``owner.url`` is where it serves the memory API
    (None when it does not serve), so a command can go through it instead."""

    def __init__(self, path: Path, owner: FolderOwner) -> None:
        hint = (
            f"use its API at {owner.url}"
            if owner.url
            else "stop it, or point this command at its memory API"
        )
        super().__init__(path, f"data folder {path} is in use by {owner.describe()}; {hint}")
        self.owner = owner


class FolderNotWritable(FolderError):
    """The data folder (or a file in it) cannot be written."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            path,
            f"data folder {path} is not writable ({reason}); make it writable or set"
            " CHANNELMIND_DATA_DIR to a folder this user can write",
        )
        self.reason = reason


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def read_owner(path: Path) -> FolderOwner | None:
    """The live owner of ``path``, or None when no process holds it (a CLI asks this before
    deciding to open the folder or to go through the owner's API)."""
    lock = Path(path) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return _parse(os.pread(fd, 4096, 0))
            fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _parse(raw: bytes) -> FolderOwner:
    try:
        data = json.loads(raw.decode("utf-8"))
        pid = data.get("pid")
        url = data.get("url")
        since = data.get("since")
        return FolderOwner(
            pid=pid if isinstance(pid, int) else None,
            url=url if isinstance(url, str) and url else None,
            since=since if isinstance(since, str) else None,
        )
    except (ValueError, AttributeError):
        return FolderOwner(pid=None)  # being written, or not ours


class FolderLock:
    """This process's hold on a data folder (see the module docstring)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self.url: str | None = None
        self._since = datetime.now(UTC).isoformat(timespec="seconds")
        self._write()

    @classmethod
    def acquire(cls, path: Path) -> FolderLock:
        """Own ``path`` (created if missing), or raise FolderInUse / FolderNotWritable."""
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FolderNotWritable(path, _reason(exc)) from None
        check_writable(path)
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FolderNotWritable(path, _reason(exc)) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _parse(os.pread(fd, 4096, 0))
                os.close(fd)
                raise FolderInUse(path, owner) from None
        try:
            return cls(path, fd)
        except OSError as exc:
            os.close(fd)
            raise FolderNotWritable(path, _reason(exc)) from None

    def set_url(self, url: str | None) -> None:
        """Record where this process serves the memory API (None: it stopped serving)."""
        self.url = url
        self._write()

    def _write(self) -> None:
        if self._fd is None:
            return
        data = {"pid": os.getpid(), "url": self.url, "since": self._since}
        raw = json.dumps(data).encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, raw, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the flock


def check_writable(path: Path) -> None:
    """Fail fast, naming the folder, when it or a data file in it cannot be written (SQLite
    would otherwise fail later with "unable to open database file")."""
    probe = path / f".channelmind-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    except OSError as exc:
        raise FolderNotWritable(path, _reason(exc)) from None
    for name in _DATA_FILES:
        target = path / name
        if target.is_dir():
            check_writable(target)
            inner = target / "chroma.sqlite3"
            targets = [inner] if inner.exists() else []
        else:
            targets = [target] if target.exists() else []
        for file in targets:
            try:
                with file.open("r+b"):
                    pass
            except OSError as exc:
                raise FolderNotWritable(path, f"{file.name}: {_reason(exc)}") from None
