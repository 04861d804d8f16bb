"""The engine side of issue 9, items 10 and 11.

10. Two processes on one data folder silently lost search by meaning (each had its own Chroma
    on the same files). One process now owns an embedded folder: its lock file holds its pid
    and, when it serves, its URL; a second opener gets FolderInUse naming the owner and the URL
    to go through instead (the CLI will route there; memory.folder.read_owner tells it where).
11. A read-only data folder printed ``unable to open database file`` and then hung forever. It
    now fails at once with FolderNotWritable naming the folder.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from memory.engine import MemoryEngine
from memory.folder import FolderInUse, FolderNotWritable, read_owner

from .conftest import episode
from .server_harness import ROOT, channelmind_serve


@pytest.fixture
def served(data_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``channelmind serve`` on the folder, as a user starts it."""
    with channelmind_serve(data_dir) as (process, url):
        yield process, url


async def test_a_second_opener_of_a_served_folder_is_told_the_owner_and_its_url(
    data_dir: Path, served: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, url = served
    owner = read_owner(data_dir)
    assert owner is not None
    assert (owner.pid, owner.url) == (process.pid, url)

    with pytest.raises(FolderInUse) as info:
        await MemoryEngine.open(data_dir, "hash")
    assert info.value.owner.url == url
    assert info.value.path == data_dir
    message = str(info.value)
    assert str(data_dir) in message and str(process.pid) in message and url in message

    # The owner dies without cleaning up: its stale lock file blocks nobody.
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_owner(data_dir) is None
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        assert await engine.add([episode("the folder is mine now")])
        assert read_owner(data_dir) is not None  # this process owns it now
    finally:
        await engine.close()
    assert read_owner(data_dir) is None


async def test_reindex_runs_inside_the_server_that_owns_the_folder(
    data_dir: Path, served: tuple[subprocess.Popen[bytes], str]
) -> None:
    """``reindex`` on a served folder must not open it a second time: the server rebuilds its
    own index (POST /api/cm/index/rebuild), and search by meaning works throughout after."""
    _, url = served
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        body = {
            "org_id": "acme",
            "project_id": "ops",
            "messages": [{"content": f"backup job {i} finished"} for i in range(30)],
        }
        assert (await http.post("/api/v2/memories", json=body)).status_code == 200
        assert (await http.post("/api/cm/index/wait", json={"timeout": 60})).json()["done"]
        rebuilt = await http.post("/api/cm/index/rebuild")
        assert rebuilt.status_code == 202 and rebuilt.json() == {"queued": 30}
        assert (await http.post("/api/cm/index/wait", json={"timeout": 120})).json()["done"]
        stats = (await http.get("/api/cm/stats")).json()
        assert (stats["episodes"], stats["vectors"], stats["pending_index"]) == (30, 30, 0)
        scope = {"org_id": "acme", "project_id": "ops"}
        found = await http.post(
            "/api/cm/search", json={"query": "backup job 7", "scope": scope, "mode": "vector"}
        )
        assert found.json()["hits"][0]["episode"]["content"] == "backup job 7 finished"


OPEN_AND_REPORT = """
import asyncio, sys
from memory.engine import MemoryEngine
from memory.folder import FolderError
async def main():
    try:
        engine = await MemoryEngine.open(sys.argv[1], "hash")
    except FolderError as exc:
        print(type(exc).__name__, exc.path, "|", exc, flush=True)
        sys.exit(3)
    await engine.close()
    print("OPENED", flush=True)
asyncio.run(main())
"""


def open_in_process(folder: Path, read_only: Path | None) -> subprocess.CompletedProcess[str]:
    """Open the engine in a new process, with ``read_only`` mounted read-only for it when we are
    root (permission bits do not stop root; a read-only mount, made in a user and mount
    namespace of its own, does) and made read-only by permissions otherwise. The timeout only
    guards against the old hang."""
    command = [sys.executable, "-c", OPEN_AND_REPORT, str(folder)]
    if read_only is not None and os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: no way to make a folder read-only")
        mount = f"mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only}"
        command = ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$@"', "sh", *command]
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def make_read_only(path: Path) -> None:
    """Without root, permissions make a folder read-only (with root, see open_in_process)."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)


def make_writable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.parametrize("existing", [True, False], ids=["existing folder", "new folder"])
async def test_a_read_only_data_folder_fails_at_once_naming_the_folder(
    tmp_path: Path, existing: bool
) -> None:
    # The control: the same way of opening works on a folder that may be written.
    control = open_in_process(tmp_path / "writable", read_only=None)
    assert control.stdout.strip() == "OPENED", control.stderr[-2000:]

    parent = tmp_path / "readonly"
    folder = parent / "data"
    if existing:
        engine = await MemoryEngine.open(folder, "hash")
        await engine.add([episode("written while the folder was writable")])
        await engine.close()
    else:
        await asyncio.to_thread(parent.mkdir)  # the data folder itself cannot be created
    await asyncio.to_thread(make_read_only, parent)
    try:
        result = open_in_process(folder, read_only=parent)
    finally:
        await asyncio.to_thread(make_writable, parent)
    assert result.returncode == 3, result.stdout + result.stderr[-2000:]
    [line] = result.stdout.splitlines()
    assert line.startswith(f"FolderNotWritable {folder} | data folder {folder} is not writable")
    assert "CHANNELMIND_DATA_DIR" in line


async def test_a_folder_owned_by_this_process_cannot_be_opened_twice(data_dir: Path) -> None:
    engine = await MemoryEngine.open(data_dir, "hash")
    try:
        with pytest.raises(FolderInUse, match=f"in use by process {os.getpid()}"):
            await MemoryEngine.open(data_dir, "hash")
        assert await engine.add([episode("the first opener is unharmed")])
    finally:
        await engine.close()
    with pytest.raises(FolderNotWritable):
        await MemoryEngine.open(data_dir / "memory.sqlite3" / "inside-a-file", "hash")
