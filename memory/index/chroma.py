"""Chroma behind :class:`memory.index.base.VectorIndex`: embedded (a folder) or a server
(``CHANNELMIND_CHROMA_URL``). Derived from the store, rebuildable from it at any time.

Partitioning (a measured choice, see README "Benchmarks"): Chroma's ``where`` filters cost in
proportion to the rows they match, while an unfiltered query stays at a few milliseconds at any
size. So every vector is written to two collections: one per (org, project) for project-wide
searches, and one per (org, project, produced_for) for the bot's common query, one channel.
Both are queried on Chroma's unfiltered path; only narrower filters (producer, thread) use a
``where`` clause, and those match few rows inside one channel.

Names never reach Chroma: collection names and the producer / thread values a ``where`` clause
matches are keyed hashes (BLAKE2b with the folder's own random key, kept in SQLite), and
collections carry no metadata of ours. So Chroma's files say nothing about which orgs,
projects, channels or people exist, and once SQLite forgets them no key can be matched to them.

Forgetting (embedded Chroma): Chroma deletes only mark vectors deleted; the vector stays in its
write-ahead queue (``embeddings_queue`` in ``chroma.sqlite3``) until Chroma purges it, in freed
SQLite pages after that, and in the HNSW files (a deleted element keeps its data). After a
forget the engine calls :meth:`ChromaIndex.scrub_touched`, which stops Chroma, scrubs its files
(:mod:`memory.index.chroma_scrub`) and starts it again, so that nothing of a forgotten vector is on
disk when the call returns, and nothing comes back from memory later.

Vectors are computed by the engine's embedder and passed in; no embedding function is attached
to a collection (Chroma's default one would download a model at run time).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import sys
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection as ChromaCollection
from chromadb.config import Settings as ChromaSettings

from memory.embedders import Vectors
from memory.store.base import StoreUnavailable

from .base import ScrubReport, VectorItem
from .chroma_scrub import scrub_folder

log = logging.getLogger(__name__)

MAX_BATCH = 4000  # below Chroma's max_batch_size (5461 here)
PROJECT_PREFIX = "cmp_"
CHANNEL_PREFIX = "cmc_"


def open_chroma(path: str | None = None, url: str | None = None) -> ClientAPI:
    """A PersistentClient on ``path``, or an HttpClient when ``url`` is given."""
    settings = ChromaSettings(anonymized_telemetry=False, allow_reset=True)
    if url:
        parsed = urlparse(url)
        host = parsed.hostname or "127.0.0.1"
        port = parsed.port or (443 if parsed.scheme == "https" else 8000)
        try:
            return chromadb.HttpClient(
                host=host, port=port, ssl=parsed.scheme == "https", settings=settings
            )
        except ValueError as exc:  # chromadb's "Could not connect to a Chroma server"
            cause = exc.__cause__ or exc.__context__
            reason = str(cause) if cause is not None else str(exc)
            raise StoreUnavailable(
                f"cannot reach the Chroma server at {host}:{port} (CHANNELMIND_CHROMA_URL):"
                f" {reason};"
                " start it (`chroma run`) or correct CHANNELMIND_CHROMA_URL"
            ) from exc
    if path is None:
        raise ValueError("a Chroma path or url is needed")
    zero_heap_allocations()
    return chromadb.PersistentClient(path=path, settings=settings)


def close_chroma(client: ClientAPI, embedded: bool) -> None:
    """Close a client and, for an embedded one, stop its Chroma for good: Chroma shares one
    system per folder and process and stops it only when its last client closes, and a scrub
    must not run under a Chroma that still holds the folder (another client in this process on
    the same folder is a misuse; it is stopped too)."""
    with contextlib.suppress(Exception):
        getattr(client, "close", lambda: None)()
    if not embedded:
        return
    try:
        from chromadb.api.shared_system_client import SharedSystemClient
    except ImportError:  # pragma: no cover - a Chroma without the shared registry
        return
    identifier = getattr(client, "_identifier", None)
    systems: dict[str, Any] = getattr(SharedSystemClient, "_identifier_to_system", {})
    system = systems.pop(identifier, None) if identifier is not None else None
    if system is not None:
        log.warning("another Chroma client in this process used %s; it is closed", identifier)
        getattr(SharedSystemClient, "_identifier_to_refcount", {}).pop(identifier, None)
        with contextlib.suppress(Exception):
            system.stop()


_M_PERTURB = -6  # glibc mallopt(3) parameter


def zero_heap_allocations() -> bool:
    """Make glibc's malloc hand out zeroed memory and wipe memory on free, process-wide.

    Embedded Chroma writes its HNSW files (``data_level0.bin``) from malloc'd buffers that
    are not fully initialised, so whatever the process's heap held before - message text
    from SQLite's page cache, queries - can end up on disk in any collection's files, and
    stay there after that text is forgotten (tests/test_forgetting.py caught it). With
    ``M_PERTURB`` set to 0xff, allocations are filled with 0x00 and freed memory with 0xff.
    No-op (False) off glibc; the Chroma server runs in its own process and needs none.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_PERTURB, 0xFF))
    except (OSError, AttributeError):
        return False


class _Gate:
    """Many Chroma calls at a time, or one scrub alone (it stops and restarts Chroma)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._users:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class ChromaIndex:
    """:class:`memory.index.base.VectorIndex` on Chroma. Synchronous; the engine calls it from
    worker threads.

    One class for both embedded Chroma and a Chroma server: they differ only in how the client
    is made (:func:`open_chroma`) and in whether there are files to scrub, and the naming,
    partitioning and queries are the same.

    ``key`` is the folder's secret for names (see the module docstring); ``path`` is the
    embedded Chroma folder (None for a Chroma server, whose files are not ours to scrub).
    """

    def __init__(
        self, connect: Callable[[], ClientAPI], key: bytes, path: Path | None = None
    ) -> None:
        self._connect = connect
        self.key = key
        self.path = path
        self.client: ClientAPI = connect()
        self._collections: dict[str, ChromaCollection] = {}
        self._lock = threading.Lock()
        self._gate = _Gate()
        # Collections vectors were deleted from since the last scrub (None: maybe any, as
        # after a crash: the first scrub goes over every collection).
        self._touched: set[str] | None = None

    @classmethod
    def open(cls, data_dir: Path, url: str | None, key: bytes) -> ChromaIndex:
        """The Chroma server at ``url``, or else the embedded Chroma in ``data_dir/chroma``."""
        path = data_dir / "chroma"
        connect = functools.partial(open_chroma, str(path), url)
        return cls(connect, key, None if url else path)

    def _mark_touched(self, *names: str) -> None:
        with self._lock:
            if self._touched is not None:
                self._touched.update(names)

    # -- names -----------------------------------------------------------------------------

    def _hash(self, kind: str, *parts: str) -> str:
        data = "\x1f".join((kind, *parts)).encode("utf-8")
        return hashlib.blake2b(data, key=self.key, digest_size=12).hexdigest()

    def project_collection(self, org_id: str, project_id: str) -> str:
        return PROJECT_PREFIX + self._hash("project", org_id, project_id)

    def channel_collection(self, org_id: str, project_id: str, produced_for: str) -> str:
        return CHANNEL_PREFIX + self._hash("channel", org_id, project_id, produced_for)

    def token(self, kind: str, value: str) -> str:
        """What a vector's metadata holds for a producer or thread: a keyed hash."""
        return self._hash(kind, value)

    # -- collections -----------------------------------------------------------------------

    def _collection(self, name: str, create: bool) -> ChromaCollection | None:
        with self._lock:
            found = self._collections.get(name)
            if found is not None:
                return found
            try:
                if create:
                    found = self.client.get_or_create_collection(
                        name, metadata={"hnsw:space": "cosine"}, embedding_function=None
                    )
                else:
                    found = self.client.get_collection(name, embedding_function=None)
            except Exception:
                if create:
                    raise
                return None
            self._collections[name] = found
            return found

    def upsert(self, items: list[VectorItem], vectors: Vectors) -> None:
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            pname = self.project_collection(item.org_id, item.project_id)
            cname = self.channel_collection(item.org_id, item.project_id, item.produced_for)
            groups.setdefault(pname, []).append(i)
            groups.setdefault(cname, []).append(i)
        with self._gate.shared():
            for name, rows in groups.items():
                collection = self._collection(name, create=True)
                assert collection is not None
                for start in range(0, len(rows), MAX_BATCH):
                    chunk = rows[start : start + MAX_BATCH]
                    collection.upsert(
                        ids=[items[i].uid for i in chunk],
                        embeddings=np.asarray(vectors[chunk], dtype=np.float32),
                        metadatas=[self._item_meta(items[i]) for i in chunk],
                    )

    def _item_meta(self, item: VectorItem) -> dict[str, str | int | float | bool | None]:
        meta: dict[str, str | int | float | bool | None] = {
            "p": self.token("producer", item.producer)
        }
        if item.thread_id:
            meta["t"] = self.token("thread", item.thread_id)
        return meta

    def query(
        self,
        org_id: str,
        project_id: str,
        produced_for: str | None,
        vector: Vectors,
        k: int,
        producer: str | None = None,
        thread_id: str | None = None,
    ) -> list[tuple[str, float]]:
        """Nearest uids with their cosine similarity, best first."""
        name = self._scope_collection(org_id, project_id, produced_for)
        conditions: list[dict[str, Any]] = []
        if producer is not None:
            conditions.append({"p": self.token("producer", producer)})
        if thread_id is not None:
            conditions.append({"t": self.token("thread", thread_id)})
        where: dict[str, Any] | None = None
        if len(conditions) == 1:
            where = conditions[0]
        elif conditions:
            where = {"$and": conditions}
        with self._gate.shared():
            collection = self._collection(name, create=False)
            if collection is None:
                return []
            result = collection.query(
                query_embeddings=np.asarray(vector, dtype=np.float32).reshape(1, -1),
                n_results=k,  # Chroma returns fewer when the collection is smaller
                where=where,
                include=["distances"],
            )
        ids = result["ids"][0]
        distances = (result.get("distances") or [[]])[0]
        return [(uid, 1.0 - float(d)) for uid, d in zip(ids, distances, strict=False)]

    def delete(self, org_id: str, project_id: str, produced_for: str, uids: list[str]) -> None:
        with self._gate.shared():
            for name in (
                self.project_collection(org_id, project_id),
                self.channel_collection(org_id, project_id, produced_for),
            ):
                collection = self._collection(name, create=False)
                if collection is not None and uids:
                    collection.delete(ids=uids)
                    self._mark_touched(name)

    def drop_project(self, org_id: str, project_id: str, channels: list[str]) -> None:
        names = [self.project_collection(org_id, project_id)]
        names += [self.channel_collection(org_id, project_id, c) for c in channels]
        with self._gate.shared():
            for name in names:
                self._drop(name)

    def _drop(self, name: str) -> None:
        with self._lock:
            self._collections.pop(name, None)
        try:
            self.client.delete_collection(name)
        except Exception:  # already gone
            return

    def _scope_collection(self, org_id: str, project_id: str, produced_for: str | None) -> str:
        if produced_for is None:
            return self.project_collection(org_id, project_id)
        return self.channel_collection(org_id, project_id, produced_for)

    def ids(self, org_id: str, project_id: str, produced_for: str | None = None) -> set[str]:
        """The uids a search of this scope reaches (``produced_for`` None: the project)."""
        name = self._scope_collection(org_id, project_id, produced_for)
        with self._gate.shared():
            collection = self._collection(name, create=False)
            return set() if collection is None else self._ids_of(collection)

    def vector(
        self, org_id: str, project_id: str, produced_for: str | None, uid: str
    ) -> Vectors | None:
        """The vector a search of this scope compares for ``uid``; None when it has none."""
        name = self._scope_collection(org_id, project_id, produced_for)
        with self._gate.shared():
            collection = self._collection(name, create=False)
            if collection is None:
                return None
            got = collection.get(ids=[uid], include=["embeddings"])
        embeddings = got.get("embeddings")
        if not got["ids"] or embeddings is None:
            return None
        return np.asarray(embeddings[0], dtype=np.float32)

    def _our_collections(self) -> list[ChromaCollection]:
        out = []
        for entry in self.client.list_collections():
            name = entry if isinstance(entry, str) else entry.name
            if name.startswith((PROJECT_PREFIX, CHANNEL_PREFIX)):
                found = self._collection(name, create=False)
                if found is not None:
                    out.append(found)
        return out

    def count(self) -> int:
        """Vectors in the project collections (each vector is counted once)."""
        with self._gate.shared():
            return sum(
                c.count() for c in self._our_collections() if c.name.startswith(PROJECT_PREFIX)
            )

    def all_ids(self) -> dict[str, set[str]]:
        """Every collection's ids (for deep reconciliation and tests)."""
        out: dict[str, set[str]] = {}
        with self._gate.shared():
            for collection in self._our_collections():
                out[collection.name] = self._ids_of(collection)
        return out

    @staticmethod
    def _ids_of(collection: ChromaCollection) -> set[str]:
        ids: set[str] = set()
        offset = 0
        while True:
            page = collection.get(include=[], limit=5000, offset=offset)
            ids.update(page["ids"])
            if len(page["ids"]) < 5000:
                return ids
            offset += 5000

    def delete_ids(self, collection_name: str, uids: list[str]) -> None:
        with self._gate.shared():
            collection = self._collection(collection_name, create=False)
            if collection is not None and uids:
                for start in range(0, len(uids), MAX_BATCH):
                    collection.delete(ids=uids[start : start + MAX_BATCH])
                self._mark_touched(collection_name)

    def vector_ids(self) -> set[str]:
        """The ids of every vector in the index (the deep consistency check)."""
        return set().union(*self.all_ids().values())

    def drop(self, uids: Collection[str]) -> None:
        """Delete these vectors wherever they are (orphans: their rows are gone)."""
        wanted = set(uids)
        if wanted:
            for name, ids in self.all_ids().items():
                self.delete_ids(name, sorted(ids & wanted))

    def reset(self) -> None:
        """Drop every collection of ours (before a full reindex, or a new naming key)."""
        with self._gate.shared():
            for collection in self._our_collections():
                self._drop(collection.name)
            with self._lock:
                self._collections.clear()

    # -- files -----------------------------------------------------------------------------

    def scrub_touched(self) -> ScrubReport | None:
        """:meth:`scrub` the collections vectors were deleted from since the last call (all of
        them the first time: a crash may have left deleted vectors anywhere)."""
        with self._lock:
            touched, self._touched = self._touched, set()
        return self.scrub(touched)

    def scrub(self, collections: Collection[str] | None = None) -> ScrubReport | None:
        """Leave nothing of deleted vectors in an embedded Chroma's files: stop Chroma, scrub
        its folder, start it again (its memory may still hold deleted vectors, which a later
        save would write back). ``collections``: the names of the collections vectors were
        deleted from (None: all). None for a Chroma server."""
        if self.path is None:
            return None
        with self._gate.exclusive():
            self._disconnect()
            try:
                return scrub_folder(self.path, collections)
            finally:
                self.client = self._connect()

    def _disconnect(self) -> None:
        with self._lock:
            self._collections.clear()
        close_chroma(self.client, embedded=self.path is not None)

    def close(self) -> None:
        """Release Chroma (its files and threads); the index is unusable afterwards."""
        with self._gate.exclusive():
            self._disconnect()
