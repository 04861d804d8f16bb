"""A throwaway PostgreSQL cluster in a temporary folder, on 127.0.0.1, for tests and benchmarks.

``initdb`` into a fresh folder, ``pg_ctl start -w`` on a free port, ``pg_ctl stop -m fast``
and the folder removed at the end. The server refuses to run as root, so when this process is
root the folder is handed to the ``postgres`` system user (created by Debian's ``postgresql``
package) and the binaries run as that user. Trust authentication, loopback only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

#: Where Debian's ``postgresql`` package puts PostgreSQL 15's server binaries.
DEBIAN_BINDIR = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "cm"


def find_bindir() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``: Debian's PostgreSQL 15, else the PATH."""
    if (DEBIAN_BINDIR / "initdb").exists():
        return DEBIAN_BINDIR
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempCluster:
    """``with TempCluster() as pg: pg.url("postgres")``."""

    def __init__(self, bindir: Path | None = None, *, fast: bool = True) -> None:
        """``fast`` turns durability off (fsync, synchronous commit): right for tests, wrong
        for anything measuring write speed."""
        found = bindir or find_bindir()
        if found is None:
            raise FileNotFoundError(
                "PostgreSQL's initdb was not found; install the Debian package `postgresql`"
            )
        self.bindir = found
        self.fast = fast
        self.folder: Path | None = None
        self.port = 0

    def _run(self, *argv: str | Path) -> None:
        command = [str(a) for a in argv]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.folder / "log" if self.folder else None
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr.strip()}\n{tail}"
            )

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="cm-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        data = self.folder / "pg"
        self._run(
            self.bindir / "initdb", "-D", str(data), "-A", "trust", "-U", SUPERUSER,
            "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        options = f"-p {{port}} -k {self.folder} -c listen_addresses=127.0.0.1"
        if self.fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            options += " -c autovacuum=off"  # tests look at dead tuples themselves
        for _ in range(5):  # another process may take the free port before the server does
            self.port = free_port()
            try:
                self._run(
                    self.bindir / "pg_ctl", "-D", str(data), "-o", options.format(port=self.port),
                    "-l", str(self.folder / "log"), "-w", "-t", "60", "start",
                )  # fmt: skip
                return
            except RuntimeError:
                if "already in use" not in (self.folder / "log").read_text(errors="replace"):
                    raise
        raise RuntimeError("no free port for PostgreSQL after 5 tries")

    def stop(self) -> None:
        if self.folder is None:
            return
        try:
            if (self.folder / "pg" / "postmaster.pid").exists():
                self._run(self.bindir / "pg_ctl", "-D", str(self.folder / "pg"), "-m", "fast",
                          "-w", "stop")  # fmt: skip
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    @property
    def data_dir(self) -> Path:
        if self.folder is None:
            raise RuntimeError("the cluster is not running")
        return self.folder / "pg"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> TempCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
