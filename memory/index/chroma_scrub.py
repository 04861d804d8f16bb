"""Scrubbing an embedded Chroma folder, so that no file keeps a deleted vector.

Chroma 1.x (checked on 1.5.9) keeps vectors in three places on disk, and a delete clears none
of them at once:

* its write-ahead queue, table ``embeddings_queue`` of ``chroma.sqlite3``: each upsert is a row
  with the vector and its metadata; a delete appends a row with the id only. Chroma purges rows
  only once every segment of the collection has saved past them, and the HNSW segment saves
  every ``sync_threshold`` (1000) operations, so small collections keep every row;
* the freed space of ``chroma.sqlite3``: Chroma's connection does not use ``secure_delete``,
  so purged and deleted rows stay readable in free pages and inside pages;
* the HNSW files (``<segment>/data_level0.bin``): a deleted element is only flagged deleted, its
  vector stays, and the copy in memory is written back at every save; and a dropped collection
  leaves its segment folder, vectors and all, behind.

:func:`scrub_folder` runs while Chroma is stopped (the caller stops and restarts it, so that
memory is reloaded from the scrubbed files). It rewrites every queue row whose vector or
metadata is no longer current (a later row for the same id supersedes it, or the id is gone)
as a bare delete (the row keeps its sequence number, which Chroma's bookkeeping relies on),
zeroes the vector of every HNSW element that is flagged deleted or belongs to an id that is
gone, removes the segment folders of dropped collections, and VACUUMs ``chroma.sqlite3`` so that
no freed space survives.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import pickle
import shutil
import sqlite3
import struct
import uuid
from collections.abc import Collection, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import ScrubReport

log = logging.getLogger(__name__)

# Chroma's operation codes in embeddings_queue.
ADD, UPDATE, UPSERT, DELETE = 0, 1, 2, 3
#: header.bin of a persisted HNSW segment: persistence version, then hnswlib's offsetLevel0,
#: max_elements, cur_element_count, size_data_per_element, label_offset and offsetData.
_HEADER = struct.Struct("<i6Q")
_DELETE_MARK = 0x01  # hnswlib: bit 0 of byte 2 of an element's level-0 link header
_LABEL = np.dtype("<u8")


class UnknownChromaFormat(RuntimeError):
    """Chroma's files are not laid out as this module expects (a Chroma upgrade?)."""


@dataclass
class _Collection:
    name: str
    vector_segment: str
    metadata_segment: str
    live: set[str]  # ids the metadata segment holds
    applied: int  # the metadata segment's last applied sequence number


class _DataOnly(pickle.Unpickler):
    """Chroma's id map is plain data (dicts, ints, strings): refuse anything else."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in an HNSW id map")


def scrub_folder(path: Path, collections: Collection[str] | None = None) -> ScrubReport:
    """Scrub the embedded Chroma folder ``path`` (Chroma must not be running on it). The HNSW
    files of the collections named in ``collections`` are scrubbed (all when None): the
    others had no vector deleted since the last scrub."""
    db = path / "chroma.sqlite3"
    report = ScrubReport()
    if not db.exists():
        return report
    with closing(sqlite3.connect(db, isolation_level=None, timeout=30)) as conn:
        conn.execute("PRAGMA secure_delete = ON")
        known = _collections(conn)
        stale, latest_ops = _stale_queue_rows(conn, known)
        if stale:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "UPDATE embeddings_queue SET operation = ?, vector = NULL, encoding = NULL,"
                " metadata = NULL WHERE seq_id = ?",
                [(DELETE, seq) for seq in stale],
            )
            conn.execute("COMMIT")
        report.queue_rows = len(stale)
        for cid, info in known.items():
            if collections is not None and info.name not in collections:
                continue
            last = latest_ops.get(cid, {})
            keep = {u for u in info.live if last.get(u) != DELETE}
            keep |= {u for u, op in last.items() if op != DELETE}
            report.hnsw_elements += _zero_hnsw(path / info.vector_segment, keep)
        report.dropped_segments = _remove_dropped_segments(path, known)
        conn.execute("VACUUM")
    return report


def _remove_dropped_segments(path: Path, known: dict[str, _Collection]) -> int:
    """Remove the segment folders no collection has any more (Chroma leaves them behind)."""
    live = {info.vector_segment for info in known.values()}
    removed = 0
    for folder in path.iterdir():
        if folder.is_dir() and folder.name not in live and _is_segment(folder.name):
            shutil.rmtree(folder)
            removed += 1
    return removed


def _is_segment(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


def _collections(conn: sqlite3.Connection) -> dict[str, _Collection]:
    segments: dict[str, dict[str, str]] = {}
    for seg_id, scope, collection in conn.execute("SELECT id, scope, collection FROM segments"):
        segments.setdefault(collection, {})[scope] = seg_id
    applied = dict(conn.execute("SELECT segment_id, seq_id FROM max_seq_id").fetchall())
    names = dict(conn.execute("SELECT id, name FROM collections").fetchall())
    out: dict[str, _Collection] = {}
    for collection, scopes in segments.items():
        if "VECTOR" not in scopes or "METADATA" not in scopes or collection not in names:
            continue
        meta = scopes["METADATA"]
        live = {
            r[0]
            for r in conn.execute(
                "SELECT embedding_id FROM embeddings WHERE segment_id = ?", (meta,)
            )
        }
        out[collection] = _Collection(
            str(names[collection]), scopes["VECTOR"], meta, live, int(applied.get(meta) or 0)
        )
    return out


def _stale_queue_rows(
    conn: sqlite3.Connection, collections: dict[str, _Collection]
) -> tuple[list[int], dict[str, dict[str, int]]]:
    """Queue rows whose data is no longer current, and per collection the operation of each
    id's latest row.

    A row with a vector is superseded by a later delete of its id, or by a later upsert or
    update that carries a vector (a later ADD is not: Chroma ignores an ADD of an id it has).
    An update without a vector (metadata only, as :meth:`ChromaIndex.upgrade_layout` writes)
    supersedes no vector, so the row that carries the id's vector stays as it is; such a row
    is itself superseded only by a later delete."""
    rows: list[tuple[int, str, str, int, bool, bool]] = [
        (int(seq), str(topic).rsplit("/", 1)[-1], str(uid), int(op), bool(data), bool(vec))
        for seq, topic, uid, op, data, vec in conn.execute(
            "SELECT seq_id, topic, id, operation,"
            " vector IS NOT NULL OR metadata IS NOT NULL OR encoding IS NOT NULL,"
            " vector IS NOT NULL FROM embeddings_queue ORDER BY seq_id"
        )
    ]
    latest_ops: dict[str, dict[str, int]] = {}
    last_delete: dict[tuple[str, str], int] = {}
    last_vector: dict[tuple[str, str], int] = {}
    for seq, cid, uid, op, _, has_vector in rows:
        latest_ops.setdefault(cid, {})[uid] = op
        if op == DELETE:
            last_delete[(cid, uid)] = seq
        elif has_vector and op != ADD:
            last_vector[(cid, uid)] = seq
    stale: list[int] = []
    for seq, cid, uid, op, has_data, has_vector in rows:
        if not has_data:
            continue
        info = collections.get(cid)
        deleted_after = last_delete.get((cid, uid), -1) > seq
        if info is None or deleted_after or op == DELETE:  # dropped collection, or gone
            stale.append(seq)
        elif has_vector and last_vector.get((cid, uid), -1) > seq:
            stale.append(seq)  # a later vector replaced this one
        elif seq <= info.applied and uid not in info.live:
            stale.append(seq)  # applied, and the id is gone
    return stale, latest_ops


def _zero_hnsw(folder: Path, keep: set[str]) -> int:
    """Zero the vectors of a persisted HNSW segment's elements that are flagged deleted or
    whose id is not in ``keep``; returns how many were zeroed."""
    header_path, data_path = folder / "header.bin", folder / "data_level0.bin"
    id_map_path = folder / "index_metadata.pickle"
    if not (header_path.exists() and data_path.exists() and id_map_path.exists()):
        return 0  # never saved: its vectors live in the queue only
    header = header_path.read_bytes()
    if len(header) < _HEADER.size:
        raise UnknownChromaFormat(f"{header_path} is {len(header)} bytes")
    _, offset0, _, count, per_element, label_at, data_at = _HEADER.unpack_from(header)
    size = data_path.stat().st_size
    if count == 0 or size == 0:
        return 0
    if size != count * per_element or not offset0 + 4 <= data_at < label_at <= per_element - 8:
        raise UnknownChromaFormat(
            f"{data_path}: {size} bytes for {count} elements of {per_element} bytes"
            f" (data at {data_at}, label at {label_at})"
        )
    id_map = _DataOnly(io.BytesIO(id_map_path.read_bytes())).load()
    id_to_label: dict[str, int] = id_map.get("id_to_label") or {}
    kept_labels = np.fromiter((label for uid, label in id_to_label.items() if uid in keep), _LABEL)
    with data_path.open("r+b") as data, mmap.mmap(data.fileno(), size) as mem:
        table = np.frombuffer(mem, dtype=np.uint8).reshape(count, per_element)
        deleted = (table[:, offset0 + 2] & _DELETE_MARK) != 0
        labels = table[:, label_at : label_at + 8].copy().view(_LABEL).ravel()
        doomed = deleted | ~np.isin(labels, kept_labels)
        dirty = doomed & table[:, data_at:label_at].any(axis=1)
        rows = np.nonzero(dirty)[0]
        for row in rows:
            mem[row * per_element + data_at : row * per_element + label_at] = bytes(
                label_at - data_at
            )
        del table
        if len(rows):
            mem.flush()
            os.fsync(data.fileno())
    _zero_lengths(folder / "length.bin", count, rows)
    return len(rows)


def _zero_lengths(path: Path, count: int, rows: Iterable[int]) -> None:
    """length.bin holds each element's original vector norm (4 bytes): zero those too."""
    rows = list(rows)
    if not rows or not path.exists() or path.stat().st_size != count * 4:
        return
    with path.open("r+b") as f:
        for row in rows:
            f.seek(row * 4)
            f.write(b"\0\0\0\0")
        f.flush()
        os.fsync(f.fileno())
