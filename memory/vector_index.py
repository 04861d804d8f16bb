"""Chroma: the vector index. Derived from SQLite, rebuildable from it at any time.

Partitioning (a measured choice, see README "Benchmarks"): Chroma's ``where`` filters cost in
proportion to the rows they match, while an unfiltered query stays at a few milliseconds at any
size. So every vector is written to two collections: one per (org, project) for project-wide
searches, and one per (org, project, produced_for) for the bot's common query, one channel.
Both are queried on Chroma's unfiltered path; only narrower filters (producer, thread) use a
``where`` clause, and those match few rows inside one channel.

Vectors are computed by the engine's embedder and passed in; no embedding function is attached
to a collection (Chroma's default one would download a model at run time).
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings

from .embedders import Vectors

MAX_BATCH = 4000  # below Chroma's max_batch_size (5461 here)


@dataclass(frozen=True)
class VectorItem:
    uid: str
    org_id: str
    project_id: str
    produced_for: str
    producer: str
    thread_id: str | None


def _name(kind: str, *parts: str) -> str:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()
    return f"cm{kind}_{digest}"


def project_collection(org_id: str, project_id: str) -> str:
    return _name("p", org_id, project_id)


def channel_collection(org_id: str, project_id: str, produced_for: str) -> str:
    return _name("c", org_id, project_id, produced_for)


def open_chroma(path: str | None = None, url: str | None = None) -> ClientAPI:
    """A PersistentClient on ``path``, or an HttpClient when ``url`` is given."""
    settings = ChromaSettings(anonymized_telemetry=False, allow_reset=True)
    if url:
        parsed = urlparse(url)
        return chromadb.HttpClient(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or (443 if parsed.scheme == "https" else 8000),
            ssl=parsed.scheme == "https",
            settings=settings,
        )
    if path is None:
        raise ValueError("a Chroma path or url is needed")
    zero_heap_allocations()
    return chromadb.PersistentClient(path=path, settings=settings)


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


class VectorIndex:
    """Synchronous; the engine calls it from a worker thread."""

    def __init__(self, client: ClientAPI) -> None:
        self.client = client
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def _collection(self, name: str, meta: dict[str, str], create: bool) -> Collection | None:
        with self._lock:
            found = self._collections.get(name)
            if found is not None:
                return found
            try:
                if create:
                    found = self.client.get_or_create_collection(
                        name,
                        metadata={**meta, "hnsw:space": "cosine"},
                        embedding_function=None,
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
        groups: dict[str, tuple[dict[str, str], list[int]]] = {}
        for i, item in enumerate(items):
            pname = project_collection(item.org_id, item.project_id)
            cname = channel_collection(item.org_id, item.project_id, item.produced_for)
            pmeta = {"org_id": item.org_id, "project_id": item.project_id}
            groups.setdefault(pname, (pmeta, []))[1].append(i)
            groups.setdefault(cname, ({**pmeta, "produced_for": item.produced_for}, []))[1].append(
                i
            )
        for name, (meta, rows) in groups.items():
            collection = self._collection(name, meta, create=True)
            assert collection is not None
            for start in range(0, len(rows), MAX_BATCH):
                chunk = rows[start : start + MAX_BATCH]
                collection.upsert(
                    ids=[items[i].uid for i in chunk],
                    embeddings=np.asarray(vectors[chunk], dtype=np.float32),
                    metadatas=[self._item_meta(items[i]) for i in chunk],
                )

    @staticmethod
    def _item_meta(item: VectorItem) -> dict[str, str | int | float | bool | None]:
        meta: dict[str, str | int | float | bool | None] = {
            "producer": item.producer,
            "produced_for": item.produced_for,
        }
        if item.thread_id:
            meta["thread_id"] = item.thread_id
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
        if produced_for is None:
            name = project_collection(org_id, project_id)
        else:
            name = channel_collection(org_id, project_id, produced_for)
        collection = self._collection(name, {}, create=False)
        if collection is None:
            return []
        conditions: list[dict[str, Any]] = []
        if producer is not None:
            conditions.append({"producer": producer})
        if thread_id is not None:
            conditions.append({"thread_id": thread_id})
        where: dict[str, Any] | None = None
        if len(conditions) == 1:
            where = conditions[0]
        elif conditions:
            where = {"$and": conditions}
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
        for name in (
            project_collection(org_id, project_id),
            channel_collection(org_id, project_id, produced_for),
        ):
            collection = self._collection(name, {}, create=False)
            if collection is not None and uids:
                collection.delete(ids=uids)

    def drop_project(self, org_id: str, project_id: str, channels: list[str]) -> None:
        names = [project_collection(org_id, project_id)]
        names += [channel_collection(org_id, project_id, c) for c in channels]
        for name in names:
            with self._lock:
                self._collections.pop(name, None)
            try:
                self.client.delete_collection(name)
            except Exception:  # already gone
                continue

    def _our_collections(self) -> list[Collection]:
        out = []
        for entry in self.client.list_collections():
            name = entry if isinstance(entry, str) else entry.name
            if name.startswith(("cmp_", "cmc_")):
                found = self._collection(name, {}, create=False)
                if found is not None:
                    out.append(found)
        return out

    def count(self) -> int:
        """Vectors in the project collections (each vector is counted once)."""
        return sum(c.count() for c in self._our_collections() if c.name.startswith("cmp_"))

    def all_ids(self) -> dict[str, set[str]]:
        """Every collection's ids (for deep reconciliation and tests)."""
        out: dict[str, set[str]] = {}
        for collection in self._our_collections():
            ids: set[str] = set()
            offset = 0
            while True:
                page = collection.get(include=[], limit=5000, offset=offset)
                ids.update(page["ids"])
                if len(page["ids"]) < 5000:
                    break
                offset += 5000
            out[collection.name] = ids
        return out

    def delete_ids(self, collection_name: str, uids: list[str]) -> None:
        collection = self._collection(collection_name, {}, create=False)
        if collection is not None and uids:
            for start in range(0, len(uids), MAX_BATCH):
                collection.delete(ids=uids[start : start + MAX_BATCH])

    def reset(self) -> None:
        """Drop every collection of ours (before a full reindex)."""
        for collection in self._our_collections():
            self.client.delete_collection(collection.name)
        with self._lock:
            self._collections.clear()
