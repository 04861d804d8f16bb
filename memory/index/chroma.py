"""Chroma behind :class:`memory.index.base.VectorIndex`: embedded (a folder) or a server
(``CHANNELMIND_CHROMA_URL``). Derived from the store, rebuildable from it at any time.

Layout (a measured choice, see README "Disk per message"): each vector is stored once, in one
collection per (org, project), with its channel as a keyed token in its metadata (``c``).
Project-wide searches use Chroma's unfiltered HNSW path (a few milliseconds at any size). A
channel search does not use Chroma's ``where`` filter on that collection: measured on 1.5.9 at
100k vectors, a filtered HNSW query for a channel of 100-1,000 vectors took 57-217 ms (the graph
walk visits most of the collection before it finds enough matches) against about 1 ms in a
collection of its own. Instead the index keeps the vectors of recently searched channels in
memory (:class:`_ChannelCache`, kept current by every upsert and delete of this process) and
compares them all with the query: exact, and well under a millisecond for a thousand vectors.
Narrower filters (producer, thread) are tokens too: checked on the cached rows of a channel, a
``where`` clause otherwise.

How a channel is read into memory (:meth:`ChromaIndex._cached_channel`): the engine passes a
listing of the channel's rows from its store (uid, producer, thread; indexed or not), and the
index reads their vectors by uid, computing the producer and thread tokens itself rather than
reading metadata: measured at 200k vectors, 2-23 ms for a channel of 70-570 vectors against
29-66 ms for one ``where`` read (the filter alone costs 25-90 ms, whatever the channel's
size). Above that both cost about 25-35 us a vector (Chroma's own read and its conversion to
Python lists), so a channel of more than :data:`EAGER_LOAD` rows is read by the search only
while that costs less than Chroma's query among its uids would (:func:`first_read_limit`:
the query's cost grows with the collection's size over the channel's); a larger one is queued
for the loading thread, one thread that reads such channels one at a time (in small pages,
:data:`THREAD_PAGE`, so as not to hold the GIL for long, and letting searches go first,
:data:`LOADER_YIELD_S`; each into one buffer, see :meth:`ChromaIndex._load`): the
search that listed it asks Chroma's query among the listed uids (29-55 ms for the two busiest
channels at 200k, against 74-120 ms filtered by the channel's token and 690-1,020 ms for a
read), and so do later ones until the thread is done, as long as no write has changed the
collection since the listing; otherwise Chroma's filtered query. Without a listing (a caller
other than the engine) a channel is read by one ``where`` on its token. Either way, this
process's count of its own writes to the collection is read before the listing, and a copy
loaded while it changed is not kept.

With embedded Chroma this process is the only writer (the folder lock), so its own writes keep
the cache exact. A Chroma server is shared by replicas, any of which may add or delete a
channel's vectors, so there each channel has a mark: a record in a small collection of the
project's own (``cmm_`` + the project collection's keyed hash; the record's id is the channel
token, its value a random nonce). Every writer, after its upsert or delete of a channel's
vectors has returned, writes a new nonce to that channel's mark. A search reads the mark (one
get by id, about 2 ms), then uses the cached copy only if it was loaded under that same mark;
otherwise it reads the mark's value first, the store's listing of the channel second and the
vectors third, and caches them under that value. Why that is enough: a write W whose new mark
the reader saw had finished writing its vectors before it marked, so before the reader's mark
read, so before its listing and vector reads; and W's rows were in the store before W wrote
their vectors (rows are indexed from the store's queue), so they are listed: the load
includes W. A write whose mark came after the reader's mark read changes the mark away from
the value the copy is cached under (nonces never repeat, so it cannot come back), and the next
search reloads. A reader that reads the old mark while vectors land may or may not see them, and
reloads next time either way. A writer that dies between its vectors and its mark has not
completed its claim or cleared its tombstone in the store, so the write is done again, and marked,
by whoever retries it. Every replica, the writer included, thus stops using its copy of a
channel after each change to it: its next search reloads it, or, for a channel written between
every two searches, drops it and asks Chroma's filtered query (:meth:`ChromaIndex._cached_channel`).
A forgotten vector stays in no replica's memory past its next search of that channel (the
writer drops it at once). Replicas of a version without marks must not share the
server with this one.

An index written by earlier versions (a second copy of every vector in one collection per
channel, ``cmc_`` + the channel token) is converted on open, without re-embedding: the channel
collections' ids tag the project collection's vectors, then they are dropped and their files
scrubbed (:meth:`ChromaIndex.upgrade_layout`). Tokens were 24 hex digits then; they are 11
characters now (:func:`short_token`, derived from the long form, so an old index is converted
on open by metadata-only updates: :meth:`ChromaIndex.upgrade_tokens`).

Project collections are searched with HNSW ``ef_search`` :data:`SEARCH_EF` (Chroma's default,
100, missed a quarter of the true top 100 at 200k vectors); collections of earlier versions are
brought to it on open (:meth:`ChromaIndex.upgrade_search_ef`), a configuration change only.

Names never reach Chroma: collection names and the channel / producer / thread tokens in a
vector's metadata are keyed hashes (BLAKE2b with the folder's own random key, kept in SQLite), and
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

import base64
import binascii
import contextlib
import ctypes
import functools
import hashlib
import logging
import math
import secrets
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast
from urllib.parse import urlparse

import chromadb
import numpy as np
import numpy.typing as npt
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection as ChromaCollection
from chromadb.config import Settings as ChromaSettings

from memory.embedders import Vectors
from memory.store.base import StoreUnavailable
from memory.uids import canonical_bytes, uuid_text

from .base import Member, Members, ScrubReport, VectorItem
from .chroma_scrub import scrub_folder

log = logging.getLogger(__name__)

MAX_BATCH = 4000  # below Chroma's max_batch_size (5461 here)
PROJECT_PREFIX = "cmp_"
#: The per-channel copies earlier versions kept (see the module docstring); converted on open.
OLD_CHANNEL_PREFIX = "cmc_"
#: With a Chroma server: a project's channel marks (see the module docstring), one tiny record
#: per channel, named after the project's collection.
MARKS_PREFIX = "cmm_"
#: Memory for cached channel vectors (float32); least recently searched channels go first.
CHANNEL_CACHE_BYTES = 384 * 1024 * 1024
#: Length of the hex tokens earlier versions put in a vector's metadata (see short_token).
LONG_TOKEN = 24
#: Characters of a :func:`short_token` (64 bits): what a folder created before
#: :data:`NEW_TOKEN_CHARS` holds, and keeps.
SHORT_TOKEN_CHARS = 11
#: Characters of a token in a folder this version creates (its first 48 bits, a prefix of
#: the :func:`short_token`): Chroma keeps each token twice (a metadata row and its index), so
#: about 13 bytes less per message. The folder records its form (the store's meta
#: ``index_token_chars``, written when its naming key is made) and keeps it.
NEW_TOKEN_CHARS = 8
#: The metadata keys that hold tokens: channel, producer, thread.
TOKEN_KEYS = ("c", "p", "t")
#: A channel with more vectors than this is searched with Chroma's filtered query (it is then a
#: large part of its project, where the filter finds its matches quickly).
MAX_CACHED_CHANNEL = 100_000
#: Rows (or uids) per `get` when a channel is read into memory (see ChromaIndex._load).
LOAD_PAGE = 10_000
#: HNSW ``ef_search`` of our collections: how many candidates Chroma's graph walk keeps while it
#: looks for a query's nearest vectors (Chroma's default: 100). The engine asks for about 100
#: nearest per query vector. Measured on 1.5.9 (bench scale's corpus, hash embedder, 200 of its
#: project questions; the commit message says how), the share of the exact cosine top 100 a
#: project-wide query returned at 100k / 200k vectors: 0.77 / 0.75 with 100, 0.87 / 0.86 with 200,
#: 0.94 / 0.93 with 400, 0.97 / 0.97 with 800 (top 10: 0.93 / 0.92 with 100, 0.98 with 400);
#: per query about +2 ms from 100 to 400 and +2 ms more to 800 (a loaded machine). 400 is the
#: smallest that gets most of it. Search only: the graph Chroma builds does not depend on it,
#: so changing it needs no re-insert. Set when a collection is created; collections of earlier
#: versions are brought to it on open (:meth:`ChromaIndex.upgrade_search_ef`).
SEARCH_EF = 400
#: How our collections are created: cosine distance, :data:`SEARCH_EF`. In this legacy metadata
#: form rather than ``configuration={"hnsw": {...}}``: Chroma 1.5.9 stores the same HNSW
#: configuration from either (and its Rust HNSW searches with it, embedded and server), but the
#: configuration form also records a "legacy" embedding function, and every later read of the
#: collection's configuration then warns (DeprecationWarning).
COLLECTION_METADATA: dict[str, str | int] = {"hnsw:space": "cosine", "hnsw:search_ef": SEARCH_EF}
#: A channel with more rows than this in the store is read into memory by the loading thread
#: (one for the index, channels in turn); until it is there, its searches ask Chroma (see the
#: module docstring). Smaller ones are read by the search that first needs them.
EAGER_LOAD = 2_000
#: The most uids one Chroma query is restricted to (embedded Chroma binds one SQL variable per
#: uid; SQLite refuses more than 32,766).
MAX_QUERY_IDS = 30_000
#: A channel of more than :data:`EAGER_LOAD` rows is still read by the search that first needs
#: it when reading it should cost less than the query among its uids would: when it has at most
#: ``sqrt(FIRST_READ_RATIO * q * N)`` rows (:func:`first_read_limit`; N vectors in the project's
#: collection, q query vectors in the search). A read costs about the same per row whatever N
#: (30-45 us at load 3 on this machine, most of it Chroma building Python lists), while the
#: query among the listed uids walks the HNSW graph until it has found ``ef_search`` of them,
#: about 0.6-1 ms per query vector for every N / rows (300k vectors: 100-250 ms for channels of
#: 1,000-3,000 rows, 35-50 ms from 10,000). Notes of the measurement in the commit message.
FIRST_READ_RATIO = 30
#: The most rows a search reads itself, whatever the size of the collection (a read of this
#: many took about 0.3-0.4 s at load 3): larger channels are left to the loading thread.
FIRST_READ_MAX = 10_000
#: Uids per `get` when a search reads a channel larger than :data:`EAGER_LOAD` itself: each
#: page holds the GIL while chromadb builds its Python lists (see :data:`THREAD_PAGE`).
FIRST_READ_PAGE = 2_000
#: A search among more listed uids than :data:`MAX_QUERY_IDS` (a channel left to the loading
#: thread) asks Chroma's unfiltered query for about this many nearest vectors of the channel:
#: ``AMONG_RESULTS * N / rows`` nearest of the whole collection (N vectors), of which the
#: channel's listed rows are kept. The alternative there is the query filtered by the
#: channel's token: measured on the busiest channel at 300k vectors (36,623 rows), 12 questions,
#: 361-474 ms against 69 ms (median), recall@10 against the exact top 10 0.99 both ways. 400
#: matches ``ef_search``: with 100 or 200 the unfiltered query took 30 / 40 ms, recall@10 0.90 /
#: 0.97. Below MAX_QUERY_IDS the query restricted to the uids stays: the unfiltered one for
#: 400 took as long or longer there (channels of 4,500-12,000 rows at 300k), and for 100
#: about half as long but missed more (recall@10 0.8-0.9 on 4 of 19 channels of 3,000-12,000
#: rows, against 1.0).
AMONG_RESULTS = 400
#: The most results asked of the unfiltered query (:data:`AMONG_RESULTS`); beyond that (a
#: much larger collection) the query filtered by the channel's token answers.
AMONG_MAX_RESULTS = 20_000
#: How long the loading thread waits, before each page it reads, for the searches under way
#: to end: they run first. Each page holds the GIL while chromadb builds its Python lists, and
#: a search reading a channel itself, or waiting for Chroma's query, shares the GIL and the
#: CPU with it (a first search took about twice as long while the thread read). Bounded, so
#: that the thread still reads under a steady flow of searches.
LOADER_YIELD_S = 0.2
#: Uids per `get` when a thread reads a channel: chromadb builds each answer's Python lists
#: under the GIL, so a page of 10,000 stalled a search in another thread for up to 290-560 ms
#: (notes/coldload/micro3.py, busiest channel at 200k); pages of 500, up to 27-55 ms.
THREAD_PAGE = 500


def first_read_limit(collection_size: int, queries: int = 1) -> int:
    """The most rows of a channel the search that first needs it reads into memory itself
    (:data:`FIRST_READ_RATIO`), in a collection of ``collection_size`` vectors, for a search
    of ``queries`` query vectors; a larger channel is read by the loading thread while its
    searches ask Chroma. At least :data:`EAGER_LOAD`, at most :data:`FIRST_READ_MAX`."""
    estimate = math.isqrt(max(0, FIRST_READ_RATIO * max(1, queries) * collection_size))
    return max(EAGER_LOAD, min(FIRST_READ_MAX, estimate))


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


def release_free_heap() -> bool:
    """Give the free memory of every glibc malloc arena back to the system (``malloc_trim``).

    A channel read leaves about as much free heap as it holds (chromadb's Python lists and
    float64 arrays, a page at a time), which glibc keeps for later in the reading thread's
    arena, so the process's RSS grows by it for good. Measured (notes: coldcap.md), reading
    58.6 MB of channels after 40,000 upserts: RSS +73 MB without, -10 MB with a trim after
    each channel (the upserts' own free heap went back too). False off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
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


class _Channel:
    """The vectors of one channel, normalised: ``view`` is (uids, matrix, tags), row i of the
    matrix being uids[i], whose (producer, thread) tokens are tags[i]. Writers (under the
    cache's lock) publish a new view after changing rows a published view does not reach
    (appends go to spare capacity, and to the ends of the lists), so a search reading it
    without the lock sees one consistent state; an overwritten row changes in place."""

    def __init__(
        self,
        uids: list[str],
        vectors: Vectors,
        tags: list[Tag],
        stamp: str | None = None,
        *,
        owned: bool = False,
    ) -> None:
        # ``owned``: ``vectors`` is a float32 buffer already normalised that no one else
        # holds (:meth:`ChromaIndex._load` fills one), taken as it is: its rows past the
        # uids' are spare capacity for appends. Otherwise the rows are copied and normalised.
        self._buffer = vectors if owned else _normalised(vectors)
        self.view: tuple[list[str], Vectors, list[Tag]] = (
            list(uids),
            self._buffer[: len(uids)],
            list(tags),
        )
        self.rows = {uid: i for i, uid in enumerate(uids)}
        #: The channel's mark (a Chroma server) read before these rows were: see the module
        #: docstring. None: no mark (embedded Chroma, or a channel no writer has marked yet).
        self.stamp = stamp
        #: The mark the last search of this channel read, and whether any search used these
        #: rows (when to reload rather than ask Chroma: :meth:`ChromaIndex._cached_channel`).
        self.seen = stamp
        self.used = False

    @classmethod
    def empty(cls, stamp: str | None) -> _Channel:
        """A channel with no vectors (yet) under the mark ``stamp``."""
        return cls([], np.zeros((0, 0), dtype=np.float32), [], stamp)

    @property
    def uids(self) -> list[str]:
        return self.view[0]

    @property
    def nbytes(self) -> int:
        return int(self._buffer.nbytes)

    def put(self, uids: list[str], vectors: Vectors, tags: list[Tag]) -> None:
        fresh = _normalised(vectors)
        held, _, held_tags = self.view
        size = len(held)
        new: list[int] = []
        for i, uid in enumerate(uids):
            row = self.rows.get(uid)
            if row is None:
                new.append(i)
            else:
                self._buffer[row] = fresh[i]
                held_tags[row] = tags[i]
        if not new:
            return
        end = size + len(new)
        if end > len(self._buffer) or self._buffer.shape[1:] != fresh.shape[1:]:
            grown = np.empty((max(end, 2 * size), fresh.shape[1]), dtype=np.float32)
            if size:  # an empty channel's buffer has no width yet
                grown[:size] = self._buffer[:size]
            self._buffer = grown
        self._buffer[size:end] = fresh[new]
        for offset, i in enumerate(new):
            self.rows[uids[i]] = size + offset
        # Readers index only the rows their matrix has.
        held_tags.extend(tags[i] for i in new)
        held.extend(uids[i] for i in new)
        self.view = (held, self._buffer[:end], held_tags)

    def remove(self, uids: Collection[str]) -> None:
        gone = {self.rows[u] for u in uids if u in self.rows}
        if not gone:
            return
        held, matrix, held_tags = self.view
        keep = [i for i in range(len(held)) if i not in gone]
        kept = [held[i] for i in keep]
        self.rows = {uid: i for i, uid in enumerate(kept)}
        self._buffer = matrix[keep]
        self.view = (kept, self._buffer, [held_tags[i] for i in keep])

    def nearest(
        self, vector: Vectors, k: int, producer: str | None = None, thread: str | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` most similar rows (of this producer and thread, by token, when given)."""
        uids, matrix, tags = self.view
        rows: npt.NDArray[np.intp] | None = None
        if producer is not None or thread is not None:
            rows = np.fromiter(
                (
                    i
                    for i in range(len(matrix))
                    if producer in (None, tags[i][0]) and thread in (None, tags[i][1])
                ),
                dtype=np.intp,
            )
            matrix = matrix[rows]
        if not len(matrix) or k < 1:
            return []
        query = _normalised(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        sims = matrix @ query
        k = min(k, len(matrix))
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        ids = top if rows is None else rows[top]
        return [(uids[i], float(sims[j])) for i, j in zip(ids, top, strict=True)]


#: A cached row's (producer token, thread token or None).
Tag = tuple[str, str | None]


class _LoadJob(NamedTuple):
    """A channel queued for the loading thread: its cache key, its rows as the store listed
    them, the write count and mark read before that listing, and the stand-in it replaces."""

    key: tuple[str, str]
    listed: Sequence[Member]
    version: int
    stamp: str | None
    standin: _Channel


#: The stamp of a cached channel that holds no rows and must not be used: no mark has it.
_NO_MARK = ""
#: Collection metadata that marks a collection whose ids are in :func:`short_id` form. Only
#: collections this version creates carry it: an id cannot be renamed in Chroma without
#: inserting its vector into HNSW again, so earlier collections keep the uids as they are.
SHORT_IDS_KEY = "cm:ids"
SHORT_IDS = "b64"
#: Prefix of a short-id collection's id for a uid that is not a UUID in canonical form (it is
#: stored as it is behind the prefix, which no base64 form holds).
_VERBATIM = "~"
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def short_id(uid: str) -> str:
    """The id a short-id collection stores for ``uid``: a canonical UUID (36 characters) as
    its 16 bytes in URL-safe base64, 22 characters; anything else as it is behind
    :data:`_VERBATIM`. Chroma stores each id three times (its ``embeddings`` row and unique
    index, and twice in the HNSW segment's ``index_metadata.pickle``): about 56 bytes per
    message less."""
    raw = canonical_bytes(uid)
    if raw is None:
        return _VERBATIM + uid
    return base64.urlsafe_b64encode(raw).decode("ascii")[:22]


def long_id(stored: str) -> str:
    """The uid of an id a short-id collection holds (the inverse of :func:`short_id`). An id
    in neither form (e.g. written by an earlier version sharing a Chroma server) is returned
    as it is."""
    if stored.startswith(_VERBATIM):
        return stored[len(_VERBATIM) :]
    if len(stored) == 22:
        try:
            # What base64.urlsafe_b64decode does, without its wrappers (a search decodes a
            # hundred or more of these).
            raw = binascii.a2b_base64(stored.encode("ascii").translate(_FROM_URLSAFE) + b"==")
        except ValueError:
            return stored
        if len(raw) != 16:
            return stored
        return uuid_text(raw)
    return stored


def _short_ids(ids: Any) -> Any:
    if ids is None:
        return None
    if isinstance(ids, str):
        return short_id(ids)
    return [short_id(i) for i in ids]


class _ShortIdCollection:
    """A Chroma collection whose ids are stored in :func:`short_id` form, seen with the uids
    the rest of the index uses: ids are encoded on the way in and decoded on the way out of
    ``add``, ``upsert``, ``update``, ``delete``, ``get`` and ``query``, the one place the two
    forms meet. Everything else (``count``, ``name``, ``metadata``, ``modify``...) is the
    collection's own."""

    def __init__(self, collection: ChromaCollection) -> None:
        self._collection = collection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def add(self, ids: Any, **kwargs: Any) -> Any:
        return self._collection.add(ids=_short_ids(ids), **kwargs)

    def upsert(self, ids: Any, **kwargs: Any) -> Any:
        return self._collection.upsert(ids=_short_ids(ids), **kwargs)

    def update(self, ids: Any, **kwargs: Any) -> Any:
        return self._collection.update(ids=_short_ids(ids), **kwargs)

    def delete(self, ids: Any = None, **kwargs: Any) -> Any:
        return self._collection.delete(ids=_short_ids(ids), **kwargs)

    def get(self, ids: Any = None, **kwargs: Any) -> Any:
        got = self._collection.get(ids=_short_ids(ids), **kwargs)
        got["ids"] = [long_id(i) for i in got["ids"]]
        return got

    def query(self, ids: Any = None, **kwargs: Any) -> Any:
        found = self._collection.query(ids=_short_ids(ids), **kwargs)
        found["ids"] = [[long_id(i) for i in row] for row in found["ids"]]
        return found


def _unwrapped(collection: ChromaCollection) -> Any:
    """The Chroma collection itself, ids as stored, behind a :class:`_ShortIdCollection`."""
    return collection._collection if isinstance(collection, _ShortIdCollection) else collection


def _read_vectors(collection: ChromaCollection, uids: list[str]) -> tuple[list[str], Any]:
    """The vectors of those of ``uids`` the collection holds: (their uids, their embeddings as
    Chroma's client returns them, Python lists of floats, or an array). Read through the
    client's own ``_get``, the call ``Collection.get`` makes, when the client has one:
    ``Collection.get`` then turns the lists into a float64 array, which the caller turns into
    float32 again. A short-id collection's ids are decoded by a lookup of the ids sent."""
    short = isinstance(collection, _ShortIdCollection)
    raw = _unwrapped(collection)
    stored = [short_id(u) for u in uids] if short else uids
    reader = getattr(getattr(raw, "_client", None), "_get", None)
    if reader is None:
        got = raw.get(ids=stored, include=["embeddings"])
    else:
        got = reader(
            collection_id=raw.id,
            ids=stored,
            include=["embeddings"],
            tenant=raw.tenant,
            database=raw.database,
        )
    ids = list(got["ids"])
    if short:
        sent = dict(zip(stored, uids, strict=True))
        ids = [sent.get(i) or long_id(i) for i in ids]
    return ids, got.get("embeddings")


def short_token(hashed: str) -> str:
    """The token a vector's metadata holds for a 24-hex-digit keyed hash: its first 64 bits in
    URL-safe base64, 11 characters. Chroma stores each token twice (a metadata row and its
    index), so this saves about 60 bytes per message over the hex form earlier versions
    stored (which this converts: a pure function of it, so no name is needed). Tokens only
    tell a project's channels, producers and threads apart: 64 bits make a collision among
    a million of them about one in 30 million."""
    if len(hashed) != LONG_TOKEN:
        return hashed
    return base64.urlsafe_b64encode(bytes.fromhex(hashed)[:8]).decode("ascii").rstrip("=")


def _normalised(vectors: Vectors) -> Vectors:
    matrix = np.array(vectors, dtype=np.float32, copy=True)
    matrix = matrix.reshape(len(matrix), -1 if matrix.size else 0)  # (0, -1) cannot be shaped
    _normalise_rows(matrix)  # in place: the copy above is ours (a channel can be 100 MB)
    normalised: Vectors = matrix
    return normalised


def _normalise_rows(matrix: Vectors) -> None:
    """Scale each row of a float32 matrix to unit length, in place (a zero row stays zero).
    Row by row the same arithmetic whatever the number of rows, so a buffer normalised a page
    at a time holds the same values as one normalised whole."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    matrix /= norms


def _has_long_token(meta: Mapping[str, Any]) -> bool:
    return any(len(str(meta.get(k) or "")) == LONG_TOKEN for k in TOKEN_KEYS)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


class _ChannelCache:
    """Vectors of recently searched channels, keyed by (collection, channel token), within a
    memory budget. Kept current by the index's own writes; a channel loaded while a write to
    its collection was under way is not kept (the write may have missed it)."""

    def __init__(self, budget: int = CHANNEL_CACHE_BYTES) -> None:
        self.budget = budget
        self.lock = threading.Lock()
        self._channels: OrderedDict[tuple[str, str], _Channel | None] = OrderedDict()
        self._versions: dict[str, int] = {}  # writes per collection, to detect racing loads
        self._home: dict[str, tuple[str, str]] = {}  # uid -> its cached channel

    def version(self, collection: str) -> int:
        with self.lock:
            return self._versions.get(collection, 0)

    def get(self, key: tuple[str, str]) -> tuple[bool, _Channel | None]:
        """(found, channel); a found None is a channel too large to cache."""
        with self.lock:
            if key not in self._channels:
                return False, None
            self._channels.move_to_end(key)
            return True, self._channels[key]

    def keep(
        self,
        key: tuple[str, str],
        channel: _Channel | None,
        version: int | None,
        stale: _Channel | None = None,
    ) -> None:
        """Cache a freshly loaded channel, in place of ``stale`` (the copy found out of date),
        unless this process wrote to the collection while it was loading (``version`` None:
        the channel holds no rows, there is nothing such a write could have missed)."""
        with self.lock:
            if version is not None and self._versions.get(key[0], 0) != version:
                return
            if key in self._channels:
                held = self._channels[key]
                if held is None or held is not stale:
                    return  # another search loaded it meanwhile
                del self._channels[key]
                for uid in held.uids:
                    if self._home.get(uid) == key:
                        del self._home[uid]
            self._channels[key] = channel
            if channel is not None:
                for uid in channel.uids:
                    self._home[uid] = key
            self._evict()

    def _evict(self) -> None:
        total = sum(c.nbytes for c in self._channels.values() if c is not None)
        while total > self.budget and len(self._channels) > 1:
            _, channel = self._channels.popitem(last=False)
            if channel is not None:
                total -= channel.nbytes
                for uid in channel.uids:
                    self._home.pop(uid, None)

    def put(
        self, collection: str, token: str, uids: list[str], vectors: Vectors, tags: list[Tag]
    ) -> None:
        """Record an upsert (already written to Chroma) of vectors of one channel."""
        key = (collection, token)
        with self.lock:
            self._versions[collection] = self._versions.get(collection, 0) + 1
            moved: dict[tuple[str, str], list[str]] = {}
            for uid in uids:
                home = self._home.get(uid)
                if home is not None and home != key:
                    moved.setdefault(home, []).append(uid)
            for home, gone in moved.items():
                self._remove(home, gone)
            channel = self._channels.get(key)
            if channel is not None:
                channel.put(uids, vectors, tags)
                for uid in uids:
                    self._home[uid] = key
                self._evict()

    def remove(self, collection: str, uids: Collection[str]) -> None:
        """Record a delete (already done in Chroma) from a collection."""
        with self.lock:
            self._versions[collection] = self._versions.get(collection, 0) + 1
            homes: dict[tuple[str, str], list[str]] = {}
            for uid in uids:
                home = self._home.get(uid)
                if home is not None and home[0] == collection:
                    homes.setdefault(home, []).append(uid)
            for home, gone in homes.items():
                self._remove(home, gone)

    def _remove(self, key: tuple[str, str], uids: list[str]) -> None:
        channel = self._channels.get(key)
        if channel is not None:
            channel.remove(uids)
        for uid in uids:
            self._home.pop(uid, None)

    def forget(self, collection: str | None = None) -> None:
        """Drop the cached channels of a collection (None: all of them)."""
        with self.lock:
            for key in [k for k in self._channels if collection in (None, k[0])]:
                channel = self._channels.pop(key)
                if channel is not None:
                    for uid in channel.uids:
                        self._home.pop(uid, None)
            if collection is None:
                self._versions = {k: v + 1 for k, v in self._versions.items()}
            else:
                self._versions[collection] = self._versions.get(collection, 0) + 1


class ChromaIndex:
    """:class:`memory.index.base.VectorIndex` on Chroma. Synchronous; the engine calls it from
    worker threads.

    One class for both embedded Chroma and a Chroma server: they differ only in how the client
    is made (:func:`open_chroma`), in whether there are files to scrub and in how a channel is
    searched (the in-memory channel cache needs this process to be the only writer).

    ``key`` is the folder's secret for names (see the module docstring); ``path`` is the
    embedded Chroma folder (None for a Chroma server, whose files are not ours to scrub).
    """

    def __init__(
        self,
        connect: Callable[[], ClientAPI],
        key: bytes,
        path: Path | None = None,
        token_chars: int = SHORT_TOKEN_CHARS,
    ) -> None:
        self._connect = connect
        self.key = key
        self.token_chars = token_chars
        self.path = path
        self.client: ClientAPI = connect()
        self._collections: dict[str, ChromaCollection] = {}
        # About how many vectors each collection holds (:meth:`_size`).
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._gate = _Gate()
        self._cache = _ChannelCache()
        # Channels waiting to be read into memory, or being read, by the loading thread
        # (EAGER_LOAD), each with its job; the jobs in order; the thread while it runs.
        self._loading: dict[tuple[str, str], _LoadJob] = {}
        self._jobs: deque[_LoadJob] = deque()
        self._loader: threading.Thread | None = None
        self._loads_done = threading.Condition(self._lock)
        # Searches under way (query_many), which the loading thread lets go first.
        self._searches = 0
        self._searches_done = threading.Condition()
        self._closed = False
        # A Chroma server may have other writers (replicas): they and we mark every channel
        # whose vectors change, and a cached channel is used only while its mark is the one
        # read before it was loaded (the module docstring says why that is enough).
        self._shared = path is None
        # Collections vectors were deleted from since the last scrub (None: maybe any, as
        # after a crash: the first scrub goes over every collection).
        self._touched: set[str] | None = None

    @classmethod
    def open(
        cls, data_dir: Path, url: str | None, key: bytes, token_chars: int = SHORT_TOKEN_CHARS
    ) -> ChromaIndex:
        """The Chroma server at ``url``, or else the embedded Chroma in ``data_dir/chroma``
        (an index in the layout of earlier versions is converted first). ``token_chars``:
        the length of the folder's metadata tokens (:data:`NEW_TOKEN_CHARS`)."""
        path = data_dir / "chroma"
        connect = functools.partial(open_chroma, str(path), url)
        index = cls(connect, key, None if url else path, token_chars)
        try:
            index.upgrade_layout()
            index.upgrade_tokens()
            index.upgrade_search_ef()
        except BaseException:
            index.close()
            raise
        return index

    def _mark_touched(self, *names: str) -> None:
        with self._lock:
            if self._touched is not None:
                self._touched.update(names)

    # -- names -----------------------------------------------------------------------------

    def _hash(self, kind: str, *parts: str) -> str:
        """A keyed hash of a name, 24 hex digits (collection names; earlier versions' tokens)."""
        data = "\x1f".join((kind, *parts)).encode("utf-8")
        return hashlib.blake2b(data, key=self.key, digest_size=12).hexdigest()

    def project_collection(self, org_id: str, project_id: str) -> str:
        return PROJECT_PREFIX + self._hash("project", org_id, project_id)

    def channel_token(self, org_id: str, project_id: str, produced_for: str) -> str:
        """What a vector's metadata holds for its channel (``c``): a keyed hash (a
        :func:`short_token` of the one earlier versions named the channel's collection with)."""
        return self._folder_token(self._hash("channel", org_id, project_id, produced_for))

    def token(self, kind: str, value: str) -> str:
        """What a vector's metadata holds for a producer or thread: a keyed hash."""
        return self._folder_token(self._hash(kind, value))

    def _folder_token(self, hashed: str) -> str:
        """A keyed hash (or an earlier version's hex token) in this folder's token form: the
        :func:`short_token`, cut to :attr:`token_chars`."""
        return short_token(hashed)[: self.token_chars]

    # -- collections -----------------------------------------------------------------------

    def _collection(self, name: str, create: bool) -> ChromaCollection | None:
        with self._lock:
            found = self._collections.get(name)
            if found is not None:
                return found
            try:
                if create:
                    # A new project collection stores short ids; an existing collection keeps
                    # its metadata (Chroma ignores this one then), and so its ids' form.
                    metadata = dict(COLLECTION_METADATA)
                    if name.startswith(PROJECT_PREFIX):
                        metadata[SHORT_IDS_KEY] = SHORT_IDS
                    found = self.client.get_or_create_collection(
                        name,
                        metadata=metadata,
                        embedding_function=None,
                    )
                else:
                    found = self.client.get_collection(name, embedding_function=None)
            except Exception:
                if create:
                    raise
                return None
            if (found.metadata or {}).get(SHORT_IDS_KEY) == SHORT_IDS:
                found = cast(ChromaCollection, _ShortIdCollection(found))
            self._collections[name] = found
            return found

    def _names(self) -> list[str]:
        names = []
        for entry in self.client.list_collections():
            names.append(entry if isinstance(entry, str) else entry.name)
        return names

    def upsert(self, items: list[VectorItem], vectors: Vectors) -> None:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(items):
            pname = self.project_collection(item.org_id, item.project_id)
            token = self.channel_token(item.org_id, item.project_id, item.produced_for)
            groups.setdefault((pname, token), []).append(i)
        by_collection: dict[str, list[int]] = {}
        for (name, _), rows in groups.items():
            by_collection.setdefault(name, []).extend(rows)
        with self._gate.shared():
            for name, rows in by_collection.items():
                collection = self._collection(name, create=True)
                assert collection is not None
                for start in range(0, len(rows), MAX_BATCH):
                    chunk = rows[start : start + MAX_BATCH]
                    collection.upsert(
                        ids=[items[i].uid for i in chunk],
                        embeddings=np.asarray(vectors[chunk], dtype=np.float32),
                        metadatas=[self._item_meta(items[i]) for i in chunk],
                    )
            with self._lock:
                for name, rows in by_collection.items():
                    if name in self._sizes:  # overwrites count too: an estimate
                        self._sizes[name] += len(rows)
            for name in by_collection:
                self._mark(name, {token for (n, token) in groups if n == name})
            for (name, token), rows in groups.items():
                self._cache.put(
                    name,
                    token,
                    [items[i].uid for i in rows],
                    vectors[rows],
                    [self._tag(items[i].producer, items[i].thread_id) for i in rows],
                )

    def _tag(self, producer: str, thread_id: str | None) -> Tag:
        thread = self.token("thread", thread_id) if thread_id else None
        return self.token("producer", producer), thread

    def _item_meta(self, item: VectorItem) -> dict[str, str | int | float | bool | None]:
        meta: dict[str, str | int | float | bool | None] = {
            "c": self.channel_token(item.org_id, item.project_id, item.produced_for),
            "p": self.token("producer", item.producer),
        }
        if item.thread_id:
            meta["t"] = self.token("thread", item.thread_id)
        return meta

    def _where(
        self,
        org_id: str,
        project_id: str,
        produced_for: str | None,
        producer: str | None = None,
        thread_id: str | None = None,
    ) -> dict[str, Any] | None:
        conditions: list[dict[str, Any]] = []
        if produced_for is not None:
            conditions.append({"c": self.channel_token(org_id, project_id, produced_for)})
        if producer is not None:
            conditions.append({"p": self.token("producer", producer)})
        if thread_id is not None:
            conditions.append({"t": self.token("thread", thread_id)})
        if len(conditions) > 1:
            return {"$and": conditions}
        return conditions[0] if conditions else None

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
        [nearest] = self.query_many(
            org_id,
            project_id,
            produced_for,
            np.asarray(vector, dtype=np.float32).reshape(1, -1),
            k,
            producer,
            thread_id,
        )
        return nearest

    def query_many(
        self,
        org_id: str,
        project_id: str,
        produced_for: str | None,
        vectors: Vectors,
        k: int,
        producer: str | None = None,
        thread_id: str | None = None,
        members: Members | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Each row's nearest uids with their cosine similarity, best first. The rows go to
        Chroma in one ``query``: each call has a fixed cost (about 0.9 ms measured at 40
        clients) that several query vectors of one search would otherwise pay each.
        ``members``: lists a channel's rows from the store, so that a channel is read by uid
        (:meth:`_cached_channel`); without it, by its token."""
        matrix = np.asarray(vectors, dtype=np.float32)
        name = self.project_collection(org_id, project_id)
        with self._gate.shared(), self._search_running():
            collection = self._collection(name, create=False)
            if collection is None or not len(matrix):
                return [[] for _ in matrix]
            among: list[str] | None = None
            if produced_for is not None:
                channel = self._cached_channel(
                    collection, org_id, project_id, produced_for, members, len(matrix)
                )
                if isinstance(channel, _Channel):
                    producer_token = None if producer is None else self.token("producer", producer)
                    thread_token = None if thread_id is None else self.token("thread", thread_id)
                    return [channel.nearest(row, k, producer_token, thread_token) for row in matrix]
                among = channel
            if among is not None and not among:
                return [[] for _ in matrix]
            if among is not None and len(among) > MAX_QUERY_IDS:
                # Too many uids for one restricted query.
                if producer is None and thread_id is None:
                    wide = self._query_among(collection, among, matrix, k)
                    if wide is not None:
                        return wide
                among = None  # filtered by the channel's token
            result = collection.query(
                query_embeddings=matrix,
                n_results=k,  # Chroma returns fewer when the collection is smaller
                ids=among,
                where=self._where(
                    org_id, project_id, None if among else produced_for, producer, thread_id
                ),
                include=["distances"],
            )
        distances = result.get("distances") or [[] for _ in result["ids"]]
        return [
            [(uid, 1.0 - float(d)) for uid, d in zip(ids, dists, strict=False)]
            for ids, dists in zip(result["ids"], distances, strict=True)
        ]

    def _query_among(
        self, collection: ChromaCollection, among: list[str], matrix: Vectors, k: int
    ) -> list[list[tuple[str, float]]] | None:
        """Each row's ``k`` nearest among the uids ``among`` (a channel's listed rows), from
        Chroma's unfiltered query for :data:`AMONG_RESULTS` of them on average, or None when
        that would ask for more than :data:`AMONG_MAX_RESULTS` results (the caller asks the
        query restricted to the uids). Ids are decoded for the fewer of the results and the
        uids (about 0.8 us each)."""
        wanted = max(k, math.ceil(AMONG_RESULTS * self._size(collection) / len(among)))
        if wanted > AMONG_MAX_RESULTS:
            return None
        short = isinstance(collection, _ShortIdCollection)
        raw = _unwrapped(collection)
        result = raw.query(query_embeddings=matrix, n_results=wanted, include=["distances"])
        distances = result.get("distances") or [[] for _ in result["ids"]]
        if short and wanted < len(among):
            allowed = set(among)
            rows = [
                [
                    (u, d)
                    for u, d in ((long_id(i), d) for i, d in zip(ids, dists, strict=False))
                    if u in allowed
                ]
                for ids, dists in zip(result["ids"], distances, strict=True)
            ]
        else:
            allowed = {short_id(u) for u in among} if short else set(among)
            rows = [
                [
                    (long_id(i) if short else i, d)
                    for i, d in zip(ids, dists, strict=False)
                    if i in allowed
                ]
                for ids, dists in zip(result["ids"], distances, strict=True)
            ]
        return [[(uid, 1.0 - float(d)) for uid, d in row[:k]] for row in rows]

    @contextlib.contextmanager
    def _search_running(self) -> Iterator[None]:
        """Counts a search under way, for :meth:`_yield_to_searches`."""
        with self._searches_done:
            self._searches += 1
        try:
            yield
        finally:
            with self._searches_done:
                self._searches -= 1
                if not self._searches:
                    self._searches_done.notify_all()

    def _yield_to_searches(self) -> None:
        """Wait (at most :data:`LOADER_YIELD_S`) until no search is under way."""
        with self._searches_done:
            self._searches_done.wait_for(lambda: not self._searches, LOADER_YIELD_S)

    def _cached_channel(
        self,
        collection: ChromaCollection,
        org_id: str,
        project_id: str,
        produced_for: str,
        members: Members | None = None,
        queries: int = 1,
    ) -> _Channel | list[str] | None:
        """The channel's vectors from the cache, loaded on first use and, with a Chroma
        server, again whenever its mark has changed since; None when the channel is too large
        for the cache, or is queued for the loading thread (:data:`EAGER_LOAD`) and written to
        since it was listed: the caller then asks Chroma's filtered query. A list: the uids
        listed of a channel queued for the loading thread (see :meth:`_queued_uids`), for a
        query among those ids (:meth:`_query_among`, or Chroma's query restricted to them,
        which at 200k vectors took 29-55 ms for the two busiest channels, 6.5% and 3.7% of the
        vectors, against 74-120 ms filtered by the channel's token; above
        :data:`MAX_QUERY_IDS` uids, the unfiltered query or else filtered by the token).

        The order of reads is the consistency rule, kept here only: first the cache's write
        count of the collection (this process's own writes, :meth:`_ChannelCache.keep`) and,
        with a Chroma server, the channel's mark; then the channel's rows from the store
        (``members``); then their vectors by uid (:meth:`_load`). Without ``members`` the
        vectors are found by the channel's token instead (one ``where`` read)."""
        cache = self._cache
        token = self.channel_token(org_id, project_id, produced_for)
        key = (collection.name, token)
        found, held = cache.get(key)
        if found and held is None:
            return None
        with self._lock:
            queued = key in self._loading
        # The mark is read before the vectors (the module docstring says why).
        stamp = self._stamp(collection.name, token) if self._shared else None
        if queued:
            return self._queued_uids(key, stamp)
        if held is not None:
            if held.stamp == stamp:
                held.used = True
                return held
            # Out of date. A reload costs more than one filtered query (measured: 51 against
            # 20 ms p50, 20k vectors, 100 channels), so reload only when that is likely to pay:
            # the copy was of use before this write, or no write came since the last search.
            # A channel written between every two searches is searched by Chroma's filter.
            # The out-of-date rows leave memory either way (they may hold forgotten vectors).
            if not (held.used or held.seen == stamp):
                empty = _Channel.empty(_NO_MARK)
                empty.seen = stamp
                cache.keep(key, empty, None, stale=held)
                return None
        version = cache.version(collection.name)
        if members is None:
            channel = self._load_where(collection, token, stamp)
        else:
            listed = members()
            if len(listed) > MAX_CACHED_CHANNEL:
                channel = None
            elif len(listed) > EAGER_LOAD and len(listed) > first_read_limit(
                self._size(collection), queries
            ):
                # Out of date rows leave memory now; the thread's copy replaces this stand-in.
                standin = _Channel.empty(_NO_MARK)
                standin.seen = stamp
                cache.keep(key, standin, None, stale=held)
                self._load_later(key, listed, version, stamp, standin)
                return [uid for uid, _, _ in listed]
            else:
                page = LOAD_PAGE if len(listed) <= EAGER_LOAD else FIRST_READ_PAGE
                channel = self._load(collection, listed, stamp, page)
        cache.keep(key, channel, version, stale=held)
        return channel

    def _size(self, collection: ChromaCollection) -> int:
        """About how many vectors ``collection`` holds, for :func:`first_read_limit`: counted
        once (Chroma's count reads its table, 16 ms at 300k vectors), then followed by this
        process's upserts (an overwrite counts as a new vector; deletes and another replica's
        writes are not followed). An estimate, which is all a choice of path needs."""
        with self._lock:
            size = self._sizes.get(collection.name)
        if size is None:
            counted = collection.count()
            with self._lock:
                size = self._sizes.setdefault(collection.name, counted)
        return size

    def _load(
        self,
        collection: ChromaCollection,
        listed: Sequence[Member],
        stamp: str | None,
        page: int = LOAD_PAGE,
        background: bool = False,
    ) -> _Channel:
        """A channel's vectors read by uid (``listed``: its rows in the store; those without a
        vector yet are simply not returned), ``page`` uids per ``get``. Tags are
        computed from the store's producer and thread, so no metadata is read: measured at
        200k vectors, a read by uid costs 2-23 ms for a channel of 70-570 vectors against
        29-66 ms by token (the ``where`` alone costs 25-90 ms whatever the channel's size).
        ``background``: the loading thread's read, which lets searches go first
        (:data:`LOADER_YIELD_S`)."""
        tags: dict[str, Tag] = {}
        memo: dict[tuple[str, str | None], Tag] = {}
        for uid, producer, thread_id in listed:
            tag = memo.get((producer, thread_id))
            if tag is None:
                tag = memo[(producer, thread_id)] = self._tag(producer, thread_id)
            tags[uid] = tag
        # One float32 buffer of a row per listed uid, filled and normalised a page at a time:
        # a page's answer (chromadb's Python lists and float64 array) is the only other copy
        # held at once. Keeping every page, then stacking them, then normalising a copy held
        # the channel three times over (about 300 MB for the busiest channel at 1M).
        uids: list[str] = []
        buffer: Vectors | None = None
        wanted = list(tags)
        for start in range(0, len(wanted), page):
            if background:
                self._yield_to_searches()
            ids, embeddings = _read_vectors(collection, wanted[start : start + page])
            if not ids or embeddings is None:
                continue
            answer = np.asarray(embeddings, dtype=np.float32)
            del embeddings
            if buffer is None:
                buffer = np.empty((len(wanted), answer.shape[1]), dtype=np.float32)
            block = buffer[len(uids) : len(uids) + len(ids)]
            block[...] = answer
            del answer
            _normalise_rows(block)
            uids.extend(ids)
        if buffer is None or not uids:
            return _Channel.empty(stamp)
        if len(uids) < len(buffer) // 2:  # most listed rows have no vector yet
            buffer = buffer[: len(uids)].copy()
        return _Channel(uids, buffer, [tags[u] for u in uids], stamp, owned=True)

    def _load_later(
        self,
        key: tuple[str, str],
        listed: Sequence[Member],
        version: int,
        stamp: str | None,
        standin: _Channel,
    ) -> None:
        """Queue a channel for the loading thread, which reads it (:meth:`_load`) and caches it in
        place of ``standin``, under the write count and mark read before ``listed`` was (a
        write since keeps it out of the cache, as for a load in the search's own thread).

        One thread reads the queued channels one after the other. A thread per channel, as
        before, read every large channel searched at once: up to 77 of them at a million
        messages, each holding its pages and copies, which made the search phase's peak RSS
        (1.4 GB over the end of indexing) and took the CPU the searches needed."""
        job = _LoadJob(key, listed, version, stamp, standin)
        with self._lock:
            if key in self._loading:
                return
            self._loading[key] = job
            self._jobs.append(job)
            if self._loader is not None:
                return
            thread = self._loader = threading.Thread(
                target=self._load_queued, name="channelmind-channel-load", daemon=True
            )
        thread.start()

    def _load_queued(self) -> None:
        """The loading thread: runs the queued loads, in order, until none is left."""
        while True:
            with self._lock:
                if not self._jobs:
                    self._loader = None
                    self._loads_done.notify_all()
                    return
                job = self._jobs.popleft()
            try:
                self._run_load(job)
            except Exception:  # the channel's searches keep asking Chroma
                log.warning("reading a channel's vectors into memory failed", exc_info=True)
            finally:
                with self._lock:
                    self._loading.pop(job.key, None)
                release_free_heap()

    def _run_load(self, job: _LoadJob) -> None:
        name = job.key[0]
        if self._cache.version(name) != job.version:
            return  # written to since it was listed: the copy would not be kept anyway
        with self._gate.shared():
            collection = None if self._closed else self._collection(name, create=False)
            if collection is None:
                return
            channel = self._load(collection, job.listed, job.stamp, THREAD_PAGE, background=True)
        self._cache.keep(job.key, channel, job.version, stale=job.standin)

    def _queued_uids(self, key: tuple[str, str], stamp: str | None) -> list[str] | None:
        """For a search of a channel queued (or being read) by the loading thread: the uids
        its job listed, while that listing is still the channel's (no write of this process
        to the collection since, and, with a Chroma server, the same mark: the same reasoning
        as for a cached copy, see the module docstring); None otherwise (the caller asks
        Chroma's filtered query)."""
        with self._lock:
            job = self._loading.get(key)
        if job is None or job.stamp != stamp:
            return None
        if self._cache.version(key[0]) != job.version:
            return None
        return [uid for uid, _, _ in job.listed]

    def wait_loads(self, timeout: float | None = None) -> None:
        """Wait until the loading thread has read every queued channel (:data:`EAGER_LOAD`)."""
        with self._lock:
            self._loads_done.wait_for(lambda: self._loader is None, timeout)

    def _load_where(
        self, collection: ChromaCollection, token: str, stamp: str | None
    ) -> _Channel | None:
        """A channel's vectors and tags found by its token, up to ``MAX_CACHED_CHANNEL + 1``
        of them (None: more), read :data:`LOAD_PAGE` at a time: embedded Chroma binds one SQL
        variable per row it returns, and SQLite refuses more than 32,766 ("too many SQL
        variables"), which failed every search of a channel that large. A row that pages shift
        onto twice (another replica wrote meanwhile) is kept once; that write's new mark
        reloads the copy anyway."""
        seen: set[str] = set()
        uids: list[str] = []
        tags: list[Tag] = []
        pages: list[Vectors] = []
        offset = 0
        while len(uids) <= MAX_CACHED_CHANNEL:
            got = collection.get(
                where={"c": token},
                include=["embeddings", "metadatas"],
                limit=LOAD_PAGE,
                offset=offset,
            )
            ids = got["ids"]
            embeddings = got.get("embeddings")
            if not ids or embeddings is None:
                break
            metas = got.get("metadatas") or []
            matrix = np.asarray(embeddings, dtype=np.float32)
            fresh = [i for i, uid in enumerate(ids) if uid not in seen]
            seen.update(ids)
            uids.extend(ids[i] for i in fresh)
            for i in fresh:
                meta = (metas[i] if metas else None) or {}
                tags.append((str(meta.get("p", "")), _str_or_none(meta.get("t"))))
            pages.append(matrix if len(fresh) == len(ids) else matrix[fresh])
            if len(ids) < LOAD_PAGE:
                break
            offset += len(ids)
        if len(uids) > MAX_CACHED_CHANNEL:
            return None
        if not uids:
            return _Channel.empty(stamp)
        return _Channel(uids, np.concatenate(pages), tags, stamp)

    def cached_uids(self, org_id: str, project_id: str, produced_for: str) -> set[str] | None:
        """The uids this process holds in memory for a channel (None: it holds none)."""
        name = self.project_collection(org_id, project_id)
        found, held = self._cache.get((name, self.channel_token(org_id, project_id, produced_for)))
        return set(held.uids) if found and held is not None else None

    # -- channel marks (a Chroma server) ----------------------------------------------------

    @staticmethod
    def _marks_name(collection_name: str) -> str:
        return MARKS_PREFIX + collection_name.removeprefix(PROJECT_PREFIX)

    def _mark(self, collection_name: str, tokens: Collection[str]) -> None:
        """With a Chroma server, after changing these channels' vectors: give each channel a
        new mark (a random nonce no earlier mark had), so that every replica's cached copy of
        them is out of date."""
        if not self._shared or not tokens:
            return
        marks = self._collection(self._marks_name(collection_name), create=True)
        assert marks is not None
        ids = sorted(tokens)
        nonce = secrets.token_hex(8)
        marks.upsert(
            ids=ids,
            embeddings=np.ones((len(ids), 1), dtype=np.float32),
            metadatas=[{"v": nonce}] * len(ids),
        )

    def _stamp(self, collection_name: str, token: str) -> str | None:
        """A channel's mark now (None: never marked). The marks' collection is made on first
        use, so that a project no one has marked yet costs one lookup, not one per search."""
        marks = self._collection(self._marks_name(collection_name), create=True)
        assert marks is not None
        got = marks.get(ids=[token], include=["metadatas"])
        metas = got.get("metadatas") or []
        return _str_or_none((metas[0] or {}).get("v")) if metas else None

    def delete(self, org_id: str, project_id: str, produced_for: str, uids: list[str]) -> None:
        token = self.channel_token(org_id, project_id, produced_for)
        self.delete_ids(self.project_collection(org_id, project_id), uids, [token])

    def drop_project(self, org_id: str, project_id: str, channels: list[str]) -> None:
        del channels  # one collection holds the whole project
        name = self.project_collection(org_id, project_id)
        with self._gate.shared():
            self._drop(name)
            self._drop(self._marks_name(name))

    def _drop(self, name: str) -> None:
        with self._lock:
            self._collections.pop(name, None)
            self._sizes.pop(name, None)
        self._cache.forget(name)
        try:
            self.client.delete_collection(name)
        except Exception:  # already gone
            return

    def ids(self, org_id: str, project_id: str, produced_for: str | None = None) -> set[str]:
        """The uids a search of this scope reaches (``produced_for`` None: the project)."""
        name = self.project_collection(org_id, project_id)
        with self._gate.shared():
            collection = self._collection(name, create=False)
            if collection is None:
                return set()
            return self._ids_of(collection, self._where(org_id, project_id, produced_for))

    def vector(
        self, org_id: str, project_id: str, produced_for: str | None, uid: str
    ) -> Vectors | None:
        """The vector a search of this scope compares for ``uid``; None when it has none."""
        name = self.project_collection(org_id, project_id)
        with self._gate.shared():
            collection = self._collection(name, create=False)
            if collection is None:
                return None
            got = collection.get(
                ids=[uid],
                where=self._where(org_id, project_id, produced_for),
                include=["embeddings"],
            )
        embeddings = got.get("embeddings")
        if not got["ids"] or embeddings is None:
            return None
        return np.asarray(embeddings[0], dtype=np.float32)

    def _our_collections(self, prefix: str = PROJECT_PREFIX) -> list[ChromaCollection]:
        out = []
        for name in self._names():
            if name.startswith(prefix):
                found = self._collection(name, create=False)
                if found is not None:
                    out.append(found)
        return out

    def count(self) -> int:
        """Vectors in the index (each is stored once)."""
        with self._gate.shared():
            return sum(c.count() for c in self._our_collections())

    def all_ids(self) -> dict[str, set[str]]:
        """Every collection's ids (for deep reconciliation and tests)."""
        out: dict[str, set[str]] = {}
        with self._gate.shared():
            for collection in self._our_collections():
                out[collection.name] = self._ids_of(collection)
        return out

    @staticmethod
    def _ids_of(collection: ChromaCollection, where: dict[str, Any] | None = None) -> set[str]:
        ids: set[str] = set()
        offset = 0
        while True:
            page = collection.get(include=[], where=where, limit=5000, offset=offset)
            ids.update(page["ids"])
            if len(page["ids"]) < 5000:
                return ids
            offset += 5000

    def delete_ids(
        self, collection_name: str, uids: list[str], channels: Collection[str] = ()
    ) -> None:
        """Delete vectors from a collection; ``channels``: the tokens of the channels they
        are in, when known (with a Chroma server the vectors' own are read too, to mark)."""
        with self._gate.shared():
            collection = self._collection(collection_name, create=False)
            if collection is not None and uids:
                changed = set(channels)
                for start in range(0, len(uids), MAX_BATCH):
                    chunk = uids[start : start + MAX_BATCH]
                    if self._shared:
                        got = collection.get(ids=chunk, include=["metadatas"])
                        metas = got.get("metadatas") or []
                        changed.update(str(m["c"]) for m in metas if m and m.get("c"))
                    collection.delete(ids=chunk)
                self._mark_touched(collection_name)
                self._mark(collection_name, changed)
                self._cache.remove(collection_name, uids)

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
            for name in self._names():
                if name.startswith((PROJECT_PREFIX, OLD_CHANNEL_PREFIX, MARKS_PREFIX)):
                    self._drop(name)
            with self._lock:
                self._collections.clear()
                self._sizes.clear()
            self._cache.forget()

    def upgrade_layout(self) -> int:
        """Convert an index in the layout of earlier versions (every vector also in a
        collection of its channel) to one copy per vector: tag each project vector with its
        channel, drop the channel collections and scrub their files. A vector no channel
        collection held is deleted (the engine's count check on open then re-embeds its row).
        Returns how many channel collections were converted; safe to repeat after a crash."""
        with self._gate.shared():
            old = self._our_collections(OLD_CHANNEL_PREFIX)
            if not old:
                return 0
            log.info(
                "the vector index keeps a second copy of each vector per channel (earlier"
                " versions): converting %d channel collections to one copy per vector",
                len(old),
            )
            owner: dict[str, ChromaCollection] = {}
            tagged: set[str] = set()  # already converted (a run a crash cut short)
            for project in self._our_collections():
                for uid, meta in self._metadatas(project):
                    owner[uid] = project
                    if meta.get("c"):
                        tagged.add(uid)
            for channel in old:
                token = self._folder_token(channel.name.removeprefix(OLD_CHANNEL_PREFIX))
                members: dict[str, list[str]] = {}
                for uid in self._ids_of(channel):
                    if uid in owner:
                        members.setdefault(owner[uid].name, []).append(uid)
                for uids in members.values():
                    project = owner[uids[0]]
                    for start in range(0, len(uids), MAX_BATCH):
                        chunk = uids[start : start + MAX_BATCH]
                        project.update(ids=chunk, metadatas=[{"c": token}] * len(chunk))
                    self._mark(project.name, [token])
                    tagged.update(uids)
                self._drop(channel.name)
            untagged: dict[str, list[str]] = {}
            for uid, project in owner.items():
                if uid not in tagged:
                    untagged.setdefault(project.name, []).append(uid)
        for name, uids in untagged.items():
            self.delete_ids(name, uids)
        self.scrub()
        return len(old)

    def upgrade_tokens(self) -> int:
        """Shorten the hex tokens earlier versions put in vectors' metadata to
        :func:`short_token` form (metadata-only updates: nothing is embedded again), then scrub
        the old values from Chroma's files. A collection is converted when its last vector
        still has a hex token (the conversion goes in Chroma's order, so a run a crash cut
        short is finished on the next open). Returns how many vectors were converted."""
        converted = 0
        with self._gate.shared():
            for collection in self._our_collections():
                total = collection.count()
                if not total:
                    continue
                last = collection.get(include=["metadatas"], limit=1, offset=total - 1)
                if not _has_long_token((last.get("metadatas") or [{}])[0] or {}):
                    continue
                log.info(
                    "the vector index holds the longer tokens of earlier versions: shortening"
                    " them in %d vectors (once, nothing is embedded again)",
                    total,
                )
                ids: list[str] = []
                metas: list[dict[str, str | int | float | bool | None]] = []
                for uid, meta in self._metadatas(collection):
                    if _has_long_token(meta):
                        ids.append(uid)
                        metas.append(
                            {k: self._folder_token(str(meta[k])) for k in TOKEN_KEYS if k in meta}
                        )
                for start in range(0, len(ids), MAX_BATCH):
                    end = start + MAX_BATCH
                    collection.update(ids=ids[start:end], metadatas=metas[start:end])  # type: ignore[arg-type]
                converted += len(ids)
        if converted:
            self.scrub()
        return converted

    def upgrade_search_ef(self) -> int:
        """Bring project collections made by earlier versions (Chroma's default ef_search, 100)
        to :data:`SEARCH_EF`: a configuration change, nothing is inserted or embedded again.
        Returns how many collections were changed.

        Chroma sets ef_search on an HNSW index when it loads it, and keeps a loaded index
        for as long as its process runs (measured on 1.5.9: after ``modify`` the same
        process, or server, still searched with the old value). So an embedded Chroma is
        restarted here, once, and searches with the new value at once. A Chroma server keeps
        its loaded indexes until it restarts: the new value is stored (every replica and the
        server's next start read it) but applies from the server's next restart."""
        changed = 0
        with self._gate.shared():
            for collection in self._our_collections():
                hnsw = (collection.configuration or {}).get("hnsw") or {}
                if hnsw.get("ef_search") == SEARCH_EF:
                    continue
                collection.modify(configuration={"hnsw": {"ef_search": SEARCH_EF}})
                changed += 1
        if not changed:
            return 0
        log.info(
            "the vector index searched %d project collections with Chroma's default HNSW"
            " ef_search: set to %d (once, nothing is embedded again)%s",
            changed,
            SEARCH_EF,
            "" if self.path is not None else "; the Chroma server applies it when it restarts",
        )
        if self.path is not None:
            with self._gate.exclusive():
                self._disconnect()
                self.client = self._connect()
        return changed

    @staticmethod
    def _metadatas(collection: ChromaCollection) -> Iterator[tuple[str, Mapping[str, Any]]]:
        offset = 0
        while True:
            page = collection.get(include=["metadatas"], limit=5000, offset=offset)
            metas = page.get("metadatas") or [{}] * len(page["ids"])
            for uid, meta in zip(page["ids"], metas, strict=True):
                yield uid, meta or {}
            if len(page["ids"]) < 5000:
                return
            offset += 5000

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
        self.wait_loads()
        with self._gate.exclusive():
            self._closed = True
            self._disconnect()
