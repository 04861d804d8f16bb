"""Byte scans of a data folder: does any file still hold a text, a name, or a vector?

Vectors are searched for as float32 in any alignment, within a small tolerance (Chroma stores
them normalised again, which can change the last bit), by their eight first components. The
vectors come from :class:`DenseEmbedder`: every component is non-zero and random, so eight of
them in a row never occur by chance (the hashing embedder's sparse vectors would match any run
of zeros).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from memory.embedders import Vectors

TOLERANCE = 1e-5


class DenseEmbedder:
    """Deterministic dense unit vectors, one per distinct text (meaning plays no part)."""

    name = "dense-test"
    dim = 384

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{self.dim}:v1"

    def embed(self, texts: list[str]) -> Vectors:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            vector = np.random.default_rng(seed).standard_normal(self.dim)
            out[row] = vector / np.linalg.norm(vector)
        return out


def holds_vector(blob: bytes, vector: np.ndarray) -> bool:
    head = np.asarray(vector, dtype=np.float32)[:8]
    anchor = int(np.argmax(np.abs(head)))
    for align in range(4):
        count = (len(blob) - align) // 4
        if count < 8:
            continue
        values = np.frombuffer(blob, dtype="<f4", count=count, offset=align)
        with np.errstate(invalid="ignore"):
            hits = np.nonzero(np.abs(values - head[anchor]) <= TOLERANCE)[0]
        for at in hits:
            start = int(at) - anchor
            if start < 0 or start + 8 > count:
                continue
            with np.errstate(invalid="ignore"):
                if np.all(np.abs(values[start : start + 8] - head) <= TOLERANCE):
                    return True
    return False


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def scan(
    folder: Path,
    needles: Mapping[str, bytes] | None = None,
    vectors: Mapping[str, np.ndarray] | None = None,
) -> list[str]:
    """``"<file>: <label>"`` for every needle and vector found in any file under ``folder``."""
    found = []
    for path in files(folder):
        try:
            blob = path.read_bytes()
        except FileNotFoundError:  # a journal SQLite removed since the listing: it holds nothing
            continue
        rel = path.relative_to(folder)
        found += [f"{rel}: {k}" for k, needle in (needles or {}).items() if needle in blob]
        found += [f"{rel}: {k}" for k, v in (vectors or {}).items() if holds_vector(blob, v)]
    return found
