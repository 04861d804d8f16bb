"""MemoryEngine: the one object a process opens on its memory (a data folder by default).

Writes commit to the store first and return; a background task claims new rows in batches,
embeds them and writes them to the vector index, and drops the vectors of deleted rows. A crash
in between loses nothing: rows remember whether they are indexed, a claim is a lease that ends,
deletions leave tombstones in the same transaction, and the next open picks up where the last
one stopped.

One process owns a data folder (:mod:`memory.folder`); a row that cannot be read or embedded is
set aside (counted in ``stats().set_aside``, logged once, deletable) and never stops the others.
Forgetting and editing are complete when the call returns: rows, FTS, the WAL, and every byte of
the old vectors in Chroma's files (:meth:`memory.index.base.VectorIndex.scrub_touched`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import enum
import functools
import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import MemorySettings
from .embed_queue import EmbedQueue
from .embedders import Embedder, Vectors, folder_embedder, make_embedder, similarities
from .filters import Filter, parse_filter
from .folder import FolderLock
from .index.base import Member, Members, VectorIndex, VectorItem
from .index.chroma import NEW_TOKEN_CHARS, SHORT_TOKEN_CHARS, ChromaIndex
from .model import (
    EMBED_TEXT_VERSION,
    Added,
    Brief,
    Episode,
    Fact,
    ForgetReport,
    Hit,
    InvalidInput,
    Scope,
    SearchMode,
    SearchResult,
    Source,
    SourceRef,
    Stats,
    TimeRange,
    check_safe_id,
    check_text,
    check_time,
    embed_text,
    utcnow,
)
from .retrieval import (
    AuthorsMet,
    Candidate,
    Query,
    Ranking,
    name_like,
    named_authors,
    without_names,
)
from .store.base import Claim, KeywordHit, Project, Store
from .store.factory import make_store
from .text import asks
from .vector_queue import VectorQueryQueue

if TYPE_CHECKING:
    from .protocol import Memory

log = logging.getLogger(__name__)

#: A vector list searched without some words of the query, and that query (ranking stage 0).
#: A vector candidate: its row key, its Brief, its cosine and its neighbours' keys in the
#: channel (:attr:`memory.store.base.Found.adjacent`).
VectorHit = tuple[int, Brief, float, tuple[int | None, int | None] | None]
Guessed = tuple[str, list[VectorHit]] | None

# Candidates taken from each list (keyword, vector) before ranking: 50 instead of 100 cost
# 1.5 points of LoCoMo recall@10, 200 gained 0.3 (README, "Benchmarks").
SEARCH_DEPTH = 100


class _Step(enum.Enum):
    """What an indexing step did."""

    IDLE = "nothing to do"
    DRAINED = "a batch: every row pending when it claimed"  # the rest waits for a wake
    MORE = "a full batch, or tombstoned vectors: more may be waiting"


class EmbedderMismatch(RuntimeError):
    """The configured embedder is not the one the index was built with."""


class MemoryEngine:
    def __init__(
        self,
        data_dir: Path,
        embedder: Embedder,
        chroma_url: str | None = None,
        *,
        index_batch: int = 512,
        ranking: Ranking | None = None,
        store: Store | None = None,
        claim_lease_s: float = 300.0,
    ) -> None:
        """``store``: where the records live (default: the embedded SQLite file in the data
        folder; :meth:`open` takes it from ``CHANNELMIND_DATABASE_URL``)."""
        self.data_dir = Path(data_dir)
        self._use_embedder(embedder)
        self.chroma_url = chroma_url
        self.index_batch = index_batch
        self.ranking = ranking or Ranking()
        self._authors_met = AuthorsMet()
        self.store: Store = store or make_store(None, self.data_dir)
        self.claim_lease_s = claim_lease_s  # CHANNELMIND_CLAIM_LEASE_SECONDS
        self.index: VectorIndex | None = None
        # Project-wide searches waiting at the same moment share one index call.
        self.vector_queries = VectorQueryQueue()
        self.folder: FolderLock | None = None
        self._wake = asyncio.Event()
        self._indexer: asyncio.Task[None] | None = None
        # Held by each indexing step and by whatever drops vectors (forget, edit): a step's
        # upsert never lands after a forget has scrubbed the index.
        self._index_lock = asyncio.Lock()
        self._closed = False
        self.index_errors = 0

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        data_dir: Path | str | None = None,
        embedder: Embedder | str | None = None,
        chroma_url: str | None = None,
        *,
        settings: MemorySettings | None = None,
        allow_embedder_change: bool = False,
        background: bool = True,
        **kwargs: Any,
    ) -> MemoryEngine:
        """Open the engine on a data folder. Arguments left out come from the settings
        (``CHANNELMIND_DATA_DIR``, ``CHANNELMIND_DATABASE_URL``, ``CHANNELMIND_EMBEDDER``,
        ``CHANNELMIND_CHROMA_URL``...)."""
        settings = settings or MemorySettings()
        folder = Path(data_dir) if data_dir is not None else settings.data_dir
        if "store" not in kwargs:  # a bad CHANNELMIND_DATABASE_URL fails before the model loads
            kwargs["store"] = make_store(settings.database_url_text(), folder)
        kwargs.setdefault("claim_lease_s", settings.claim_lease_seconds)
        if embedder is None or isinstance(embedder, str):
            key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
            embedder = await asyncio.to_thread(
                make_embedder,
                embedder or settings.embedder,
                model=settings.embedding_model,
                base_url=settings.openai_base_url,
                api_key=key,
                backend=settings.embedder_backend,
            )
        engine = cls(
            folder,
            embedder,
            chroma_url if chroma_url is not None else settings.chroma_url,
            **kwargs,
        )
        await engine._start(allow_embedder_change, background, settings.embedder_backend)
        return engine

    def _use_embedder(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.embedding = EmbedQueue(embedder)  # every model call of this engine goes through it

    async def _start(
        self, allow_embedder_change: bool, background: bool, backend: str | None
    ) -> None:
        # FolderInUse / FolderNotWritable, before anything is touched.
        self.folder = await asyncio.to_thread(FolderLock.acquire, self.data_dir)
        try:
            await self.store.open()
            await self._check_embedder(allow_embedder_change, backend)
            await self._open_index()
            await self._check_embed_text()
            await self._drain_tombstones()
            if await self.store.needs_scrub():
                await self._scrub()
            await self._reconcile_counts()
        except BaseException:
            await self._release()
            raise
        if background:
            self._indexer = asyncio.create_task(self._index_loop(), name="channelmind-indexer")
            self._wake.set()

    async def _open_index(self) -> None:
        """Open Chroma with the folder's naming key (made on first open; an index built
        before there was one is rebuilt, as its collection names reveal ids)."""
        made = secrets.token_hex(32)
        key = await self.store.init_meta("index_key", made)
        fresh = key == made
        # A new key names a new (or rebuilt) index: its tokens take the new, shorter form.
        # An index named before keeps the form its vectors hold.
        chars = await self.store.init_meta(
            "index_token_chars", str(NEW_TOKEN_CHARS if fresh else SHORT_TOKEN_CHARS)
        )
        self.index = index = await asyncio.to_thread(
            ChromaIndex.open, self.data_dir, self.chroma_url, bytes.fromhex(key), int(chars)
        )
        if fresh and await self.store.count_indexed():
            log.info("the vector index predates keyed names: rebuilding it")
            await asyncio.to_thread(index.reset)
            await self.store.requeue()
            await self.store.request_scrub()

    async def _check_embed_text(self) -> None:
        """Vectors written from an older :func:`embed_text` would search worse without any
        error (the embedder is the same, so its fingerprint matches): every row goes back in
        the queue, and the indexer overwrites them in the background while the old vectors
        keep answering."""
        stored = await self.store.get_meta("embed_text")
        if stored == EMBED_TEXT_VERSION:
            return
        if await self.store.count_indexed():
            log.info(
                "the vector index was written for message format %s, this version writes %s:"
                " re-embedding every message in the background",
                stored or "1",
                EMBED_TEXT_VERSION,
            )
            await self.store.requeue()
        await self.store.set_meta("embed_text", EMBED_TEXT_VERSION)

    async def serving_at(self, url: str | None) -> None:
        """Record in the folder's lock file where this process serves the memory API, so that
        another command finds it (:func:`memory.folder.read_owner`); None when it stops."""
        if self.folder is not None:
            await asyncio.to_thread(self.folder.set_url, url)

    async def _check_embedder(self, allow_change: bool, backend: str | None) -> None:
        """Refuse an index built by another embedder, unless ``allow_change`` (a reindex
        follows) or it is the same local model on another backend and ``backend`` is unset:
        the folder then keeps the one it was indexed with (:func:`folder_embedder`)."""
        current = self.embedder.fingerprint
        stored = await self.store.init_meta("embedder", current)
        if stored == current or allow_change:
            return
        found = await asyncio.to_thread(folder_embedder, stored, self.embedder, backend)
        if found is None:
            raise EmbedderMismatch(
                f"the vector index was built with the embedder {stored!r}, but {current!r} is"
                " configured; run `channelmind reindex` to rebuild the index with it, or set"
                " CHANNELMIND_EMBEDDER (and CHANNELMIND_EMBEDDER_BACKEND) back"
            )
        log.info(
            "embedding with %s, as this folder was indexed with it; `channelmind reindex`"
            " moves it to %s",
            stored,
            current,
        )
        self._use_embedder(found)

    async def close(self) -> None:
        self._closed = True
        if self._indexer is not None:
            self._indexer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._indexer
            self._indexer = None
        await self._release()

    async def _release(self) -> None:
        """Close Chroma, the store and the folder lock (whatever of them is open)."""
        try:
            if self.index is not None:
                index, self.index = self.index, None
                await asyncio.to_thread(index.close)
        finally:
            try:
                await self.store.close()
            finally:
                if self.folder is not None:
                    folder, self.folder = self.folder, None
                    folder.release()

    async def __aenter__(self) -> MemoryEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _vectors(self) -> VectorIndex:
        if self.index is None:
            raise RuntimeError("the engine is not open")
        return self.index

    # -- indexing --------------------------------------------------------------------------

    async def _index_loop(self) -> None:
        backoff = 0.5
        while not self._closed:
            await self._wake.wait()
            try:
                await self.embedding.gathered()  # a burst of new messages: one model call
                self._wake.clear()
                # Back to back only while a backlog is left: rows that came in during a step
                # wait for the next wake and its gathering, not for a step of their own. An
                # embedded Chroma upsert holds the GIL for its whole call, 40-70 ms of it
                # fixed: at 40 clients, stepping again at once wrote three upserts a second
                # of ~30 rows each, and the server's requests waited for them a quarter of
                # the time (README "Many clients").
                while await self._locked_step() is _Step.MORE:
                    pass
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception:
                self.index_errors += 1
                log.exception("indexing failed; retrying in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._wake.set()

    async def index_step(self) -> bool:
        """Drop one batch of tombstoned vectors or embed one batch of pending rows.
        Returns False when there was nothing to do."""
        return await self._locked_step() is not _Step.IDLE

    async def _locked_step(self) -> _Step:
        async with self._index_lock:
            return await self._index_step()

    async def _index_step(self) -> _Step:
        index = self._vectors()
        if await self._drop_tombstoned(self.index_batch * 4):
            return _Step.MORE
        claim = await self.store.claim(self.index_batch, self.claim_lease_s)
        if claim is None:
            return _Step.IDLE
        full = len(claim.episodes) >= self.index_batch
        try:
            episodes, vectors = await self._embed(claim)
            items = [
                VectorItem(e.uid, e.org_id, e.project_id, e.produced_for, e.producer, e.thread_id)
                for e in episodes
            ]
            if items:
                await asyncio.to_thread(index.upsert, items, vectors)
        except BaseException:
            # The embedder or the index failed, not the rows: hand them back at once.
            await self.store.release(claim)
            raise
        await self.store.complete(claim, [e.uid for e in episodes])
        # A row deleted while it was being embedded may have had its tombstone drained (by
        # another process) before the upsert above, which then re-created its vector: drop the
        # vectors of such rows.
        by_project: dict[tuple[str, str], builtins.list[VectorItem]] = {}
        for item in items:
            by_project.setdefault((item.org_id, item.project_id), []).append(item)
        for (org, proj), group in by_project.items():
            alive = set(await self.store.existing(org, proj, [i.uid for i in group]))
            for item in group:
                if item.uid not in alive:
                    await asyncio.to_thread(index.delete, org, proj, item.produced_for, [item.uid])
        return _Step.MORE if full else _Step.DRAINED

    async def _embed(self, claim: Claim) -> tuple[builtins.list[Episode], Vectors]:
        """Vectors for the claimed rows that can be embedded; a row that cannot (the embedder
        fails on it, or answers a non-finite vector) is set aside. When every row fails and so
        does a plain probe text, the embedder itself is down: that raises, and the indexer
        retries."""
        pending = list(claim.episodes)
        texts = [embed_text(e) for e in pending]
        try:
            vectors = await self.embedding.embed(texts)
        except Exception as batch_error:
            if len(pending) == 1 and not await self._embedder_works():
                raise
            results: builtins.list[Vectors | BaseException] = []
            for text in texts:
                try:
                    results.append(await self.embedding.embed([text]))
                except Exception as exc:
                    results.append(exc)
            if all(isinstance(r, BaseException) for r in results) and not (
                await self._embedder_works()
            ):
                raise batch_error
            failed: dict[str, builtins.list[str]] = {}
            for e, r in zip(pending, results, strict=True):
                if isinstance(r, BaseException):
                    reason = f"cannot be embedded: {type(r).__name__}: {r}"
                    failed.setdefault(reason, []).append(e.uid)
            for reason, uids in failed.items():
                await self.store.set_aside(claim, uids, reason)
            rows = [np.asarray(r)[0] for r in results if not isinstance(r, BaseException)]
            pending = [
                e for e, r in zip(pending, results, strict=True) if not isinstance(r, BaseException)
            ]
            vectors = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
        finite = np.all(np.isfinite(vectors), axis=1)
        if not finite.all():
            bad = [e.uid for e, ok in zip(pending, finite, strict=True) if not ok]
            await self.store.set_aside(claim, bad, "its vector is not finite")
            pending = [e for e, ok in zip(pending, finite, strict=True) if ok]
            vectors = vectors[finite]
        return pending, vectors

    async def _embedder_works(self) -> bool:
        try:
            await self.embedding.embed(["probe"])
        except Exception:
            return False
        return True

    async def similarities(self, query: str, texts: Sequence[str]) -> builtins.list[float] | None:
        """Cosine similarity of each text to ``query`` under this engine's embedder; None when
        the embedder cannot tell meaning (the hashing one)."""
        return await asyncio.to_thread(similarities, self.embedder, query, texts)

    async def wait_indexed(self, timeout: float | None = 120.0) -> None:  # noqa: ASYNC109
        """Wait until every stored row is in the vector index (tests, benchmarks, CLI)."""

        async def settled() -> None:
            while True:
                if self._indexer is None:
                    while await self.index_step():
                        pass
                    return
                if await self.store.count_pending() == 0 and not await self.store.tombstones(1):
                    return
                self._wake.set()
                await asyncio.sleep(0.02)

        await asyncio.wait_for(settled(), timeout)

    async def _reconcile_counts(self) -> None:
        """Cheap check on open: when Chroma does not hold exactly the indexed rows (a crash,
        a restored backup, a lost Chroma folder), compare ids and repair."""
        index = self._vectors()
        indexed = await self.store.count_indexed()
        vectors = await asyncio.to_thread(index.count)
        if vectors != indexed or await self.store.tombstones(1):
            await self.reconcile()

    async def reconcile(self) -> dict[str, int]:
        """Deep check: drop vectors whose rows are gone, re-queue rows whose vectors are."""
        index = self._vectors()
        # Vectors first, rows second: a row stored in between (and embedded by another
        # process) is then never taken for an orphan; at worst it is embedded again.
        vectors = await asyncio.to_thread(index.vector_ids)
        rows = await self.store.all_uids()
        orphans, missing = vectors - rows, rows - vectors
        await asyncio.to_thread(index.drop, orphans)
        await self.store.requeue(sorted(missing))
        if orphans:
            await self._scrub()
        self._wake.set()
        return {"dropped_vectors": len(orphans), "requeued_rows": len(missing)}

    async def start_reindex(self) -> int:
        """Drop the vector index and queue every row to be embedded again with the configured
        embedder; the indexer (or :meth:`reindex`) does the rest. Returns the rows queued."""
        index = self._vectors()
        async with self._index_lock:
            await asyncio.to_thread(index.reset)
            await self.store.clear_tombstones()
            await self.store.requeue()
            await self.store.set_meta("embedder", self.embedder.fingerprint)
            await self.store.set_meta("embed_text", EMBED_TEXT_VERSION)
            await self._scrub()
        self._wake.set()
        return await self.store.count_pending()

    async def reindex(self, progress: bool = True) -> int:
        """Rebuild the vector index from the store with the configured embedder."""
        from tqdm import tqdm

        total = await self.start_reindex()
        left = total
        with tqdm(total=total, disable=not progress, unit="msg", desc="reindex") as bar:
            # A background indexer may take some of the batches; every step waits for its.
            while await self.index_step():
                now = await self.store.count_pending()
                bar.update(max(0, left - now))
                left = now
        return total

    # -- writes ----------------------------------------------------------------------------

    async def add(self, episodes: Sequence[Episode]) -> builtins.list[str]:
        """Store episodes (committed when this returns); returns their uids in order."""
        return [a.uid for a in await self.add_outcomes(episodes)]

    async def add_outcomes(self, episodes: Sequence[Episode]) -> builtins.list[Added]:
        """Store episodes; for each, its uid and whether this call stored it (``new`` is False
        for a source stored before: a platform's retry, a second worker given the same event,
        a re-import). Of concurrent adds of one source, exactly one is told it is new."""
        if not episodes:
            return []
        self.embedding.arrived()  # the indexer defers its pass while adds keep coming
        added = await self.store.add(episodes)
        self._wake.set()
        return added

    async def edit(
        self, ref: SourceRef | str, content: str, *, org_id: str = "", project_id: str = ""
    ) -> Episode | None:
        """Replace a message's content, found by its source ref or by uid (then org and
        project are required). Returns the edited episode, or None if it is unknown. Nothing
        of the old text is left when this returns: not in the store (its full-text index,
        SQLite's WAL), not in the vector index, and no fact learned from it."""
        if isinstance(ref, SourceRef):
            found = await self.store.find_source(
                ref.org_id, ref.project_id, ref.platform, ref.source_id
            )
        else:
            got = await self.store.get(org_id, project_id, [ref])
            found = got[0] if got else None
        if found is None:
            return None
        Episode.model_validate({**found.model_dump(), "content": content})
        async with self._index_lock:
            if not await self.store.edit(
                found.org_id, found.project_id, found.uid, content, utcnow()
            ):
                return None
            await self._drop_vectors()
        await self.store.purge()
        self._wake.set()
        return found.model_copy(update={"content": content})

    async def delete(self, org_id: str, project_id: str, uids: Sequence[str]) -> builtins.list[str]:
        """Delete episodes of one org and project by uid (others are ignored); their vectors
        and the facts that cite only them go too. Rows set aside (unreadable) can be deleted
        like any other. Returns the uids that were deleted."""
        gone = set((await self.store.delete(org_id, project_id, list(uids))).uids)
        await self._after_forget(bool(gone))
        return [u for u in dict.fromkeys(uids) if u in gone]

    async def forget(
        self,
        org_id: str,
        *,
        project_id: str | None = None,
        producer: str | None = None,
        produced_for: str | None = None,
        thread_id: str | None = None,
        filters: str | Filter | None = None,
        facts_about_producer: bool = True,
    ) -> ForgetReport:
        """Forget everything that matches: e.g. all a producer said in an org (every project),
        one channel, one thread. Facts citing the episodes go; with ``producer`` set, so do
        the facts about that person, and forgetting a whole channel drops the facts learned
        in it."""
        check_safe_id(org_id, "org_id")
        filt = parse_filter(filters) if isinstance(filters, str) else filters
        projects = (
            [project_id]
            if project_id
            else [p.project_id for p in await self.store.projects(org_id)]
        )
        whole_channel = (
            produced_for is not None and producer is None and thread_id is None and filt is None
        )
        drop_facts = (producer is not None and facts_about_producer and filt is None) or (
            whole_channel
        )
        uids: builtins.list[str] = []
        facts = 0
        for proj in projects:
            scope = Scope(
                org_id=org_id,
                project_id=proj,
                producer=producer,
                produced_for=produced_for,
                thread_id=thread_id,
            )
            gone = await self.store.forget(scope, filt, drop_facts=drop_facts)
            uids += gone.uids
            facts += gone.facts
        await self._after_forget(bool(uids or facts))
        return ForgetReport(episodes=len(uids), facts=facts, uids=uids)

    async def _after_forget(self, changed: bool) -> None:
        """Make a forget complete when the call returns: vectors gone from Chroma and from
        its files, WAL folded."""
        if not changed:
            return
        self._authors_met.forget()
        async with self._index_lock:
            await self._drop_vectors()
        await self.store.purge()
        self._wake.set()

    async def _drop_vectors(self) -> None:
        """Drop every tombstoned vector and scrub the index's files (under the index lock)."""
        await self._drain_tombstones()
        await self._scrub()

    async def _scrub(self) -> None:
        """Leave no deleted vector in the vector index's files (embedded Chroma)."""
        await self.store.request_scrub()
        report = await asyncio.to_thread(self._vectors().scrub_touched)
        await self.store.scrubbed()
        if report is not None and (report.queue_rows or report.hnsw_elements):
            log.debug(
                "scrubbed %d queue rows and %d HNSW elements",
                report.queue_rows,
                report.hnsw_elements,
            )

    async def _drain_tombstones(self) -> None:
        while await self._drop_tombstoned(1000):
            pass

    async def _drop_tombstoned(self, limit: int) -> bool:
        """Delete one batch of tombstoned vectors from Chroma, grouped by channel so that each
        collection gets one call. Returns False when there were none."""
        stones = await self.store.tombstones(limit)
        if not stones:
            return False
        index = self._vectors()
        groups: dict[tuple[str, str, str], builtins.list[str]] = {}
        for stone in stones:
            groups.setdefault((stone.org_id, stone.project_id, stone.produced_for), []).append(
                stone.uid
            )
        for (org, proj, chan), uids in groups.items():
            await asyncio.to_thread(index.delete, org, proj, chan, uids)
        await self.store.clear_tombstones([stone.id for stone in stones])
        return True

    # -- reads -----------------------------------------------------------------------------

    async def get(
        self, org_id: str, project_id: str, uids: Sequence[str]
    ) -> builtins.list[Episode]:
        return await self.store.get(org_id, project_id, list(uids))

    async def existing(
        self, org_id: str, project_id: str, uids: Sequence[str]
    ) -> builtins.list[str]:
        """Which of ``uids`` are stored in this org and project, readable or set aside."""
        return await self.store.existing(org_id, project_id, list(uids))

    async def get_by_source(self, ref: SourceRef) -> Episode | None:
        return await self.store.find_source(ref.org_id, ref.project_id, ref.platform, ref.source_id)

    async def list(
        self,
        scope: Scope,
        filters: str | Filter | None = None,
        page_size: int = 100,
        page_num: int = 0,
        time: TimeRange | None = None,
    ) -> builtins.list[Episode]:
        """A page of episodes in time order (oldest first), zero-based pages."""
        if page_size < 1 or page_size > 10_000 or page_num < 0:
            raise InvalidInput("page_size must be 1-10000 and page_num >= 0")
        filt = parse_filter(filters) if isinstance(filters, str) else filters
        return await self.store.list_episodes(scope, filt, time, page_size, page_size * page_num)

    async def count(self, scope: Scope, filters: str | Filter | None = None) -> int:
        filt = parse_filter(filters) if isinstance(filters, str) else filters
        return await self.store.count(scope, filt)

    async def recent(self, scope: Scope, n: int = 20) -> builtins.list[Episode]:
        """The last ``n`` episodes of the scope (a channel, a thread), oldest first."""
        rows = await self.store.list_episodes(scope, None, None, n, 0, newest_first=True)
        return list(reversed(rows))

    async def search(
        self,
        query: str,
        scope: Scope,
        filters: str | Filter | None = None,
        top_k: int = 10,
        expand_context: int = 0,
        *,
        time: TimeRange | None = None,
        mode: SearchMode = "hybrid",
        score_threshold: float | None = None,
        statements_only: bool = False,
    ) -> SearchResult:
        """Hybrid retrieval inside one org and project, narrowed by the scope's producer,
        channel and thread, a time range and a filter (MemMachine's filter language).

        ``statements_only`` leaves out messages that ask (:func:`memory.text.asks`), as hits
        and as the neighbours added for context: what callers want as evidence. They are left
        out after ranking, so a statement still borrows from the question it answers."""
        check_text(query, "query")
        if top_k < 1 or top_k > 1000:
            raise InvalidInput("top_k must be between 1 and 1000")
        if expand_context < 0 or expand_context > 20:
            raise InvalidInput("expand_context must be between 0 and 20")
        filt = parse_filter(filters) if isinstance(filters, str) else filters
        candidates, q = await self.candidates(
            query, scope, filt, time=time, depth=max(SEARCH_DEPTH, top_k * 5), mode=mode
        )
        ranked = self.ranking.rank(candidates, q)
        if statements_only:
            ranked = [c for c in ranked if not asks(c.episode.content)]
        if score_threshold is not None:
            ranked = [c for c in ranked if c.score >= score_threshold]
        # The candidates are Briefs (what ranking reads); the hits get whole Episodes.
        top = [c.episode.uid for c in ranked[:top_k]]
        full = {ep.uid: ep for ep in await self.store.get(scope.org_id, scope.project_id, top)}
        returned = [c for c in ranked[:top_k] if c.episode.uid in full]  # not forgotten since
        hits = [self._hit(full[c.episode.uid], c.score) for c in returned]
        if expand_context and hits:
            hits = await self._expand(returned, full, expand_context, top_k, statements_only)
        scores = {c.episode.uid: c.score for c in ranked}
        return SearchResult(hits=hits, query=query, scores=scores)

    async def candidates(
        self,
        query: str,
        scope: Scope,
        filt: Filter | None = None,
        *,
        time: TimeRange | None = None,
        depth: int = SEARCH_DEPTH,
        mode: SearchMode = "hybrid",
    ) -> tuple[dict[int, Candidate], Query]:
        """Keyword and vector candidates under ``scope`` with their ranking features, not yet
        scored (``search`` scores them; the LoCoMo benchmark fits the weights on them)."""
        candidates: dict[int, Candidate] = {}
        guessed = await self._gather(candidates, query, scope, filt, time, depth, mode)
        contextual = mode == "hybrid"
        asked_top = None
        if contextual:
            self._authors_met.note((scope.org_id, scope.project_id), candidates.values())
            asked_top = await self._vectors_without_names(
                candidates, query, scope, filt, time, depth, guessed
            )
            # The stores read each candidate's neighbours with it; ask only for any they did not.
            missing = [key for key, c in candidates.items() if c.adjacent is None]
            if missing:
                for key, a in (await self.store.adjacent(missing)).items():
                    candidates[key].adjacent = a
        q = self.ranking.describe(
            candidates, query, utcnow(), contextual=contextual, asked_top=asked_top
        )
        return candidates, q

    async def _gather(
        self,
        candidates: dict[int, Candidate],
        query: str,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        depth: int,
        mode: SearchMode,
    ) -> Guessed:
        """Add keyword and vector candidates under ``scope`` to ``candidates``. The two
        searches run at once (the keyword one in the database, the vector one in the index's
        thread), so a search waits for the slower of them, not their sum. In hybrid mode a
        query with capitalised words, or with names of authors this project's searches have
        met, is also searched without them, on a guess that they name authors of the
        candidates (ranking stage 0): returned for :meth:`_vectors_without_names`, which
        would otherwise wait for a second search."""
        guess = None
        if mode == "hybrid":
            met = self._authors_met.named((scope.org_id, scope.project_id), query)
            guess = without_names(query, [*name_like(query), *met])
        guessed: Guessed = None

        async def keyword() -> builtins.list[KeywordHit]:
            if mode not in ("hybrid", "keyword"):
                return []
            return await self.store.keyword_search(
                scope, filt, time, query, depth, neighbours=mode == "hybrid"
            )

        async def vector() -> builtins.list[VectorHit]:
            nonlocal guessed
            if mode not in ("hybrid", "vector") or not query.strip():
                return []
            try:
                texts = [query] if guess is None else [query, guess]
                lists = await self._vector_candidates(
                    texts, scope, filt, time, depth, neighbours=mode == "hybrid"
                )
            except Exception:
                # A failing vector index degrades search to keywords; it never fails it.
                log.exception("vector search failed; answering from keywords only")
                return []
            if guess is not None:
                guessed = (guess, lists[1])
            return lists[0]

        by_keyword, by_vector = await asyncio.gather(keyword(), vector())
        for hit in by_keyword:
            found = Candidate(hit.key, hit.episode, adjacent=hit.adjacent)
            candidates.setdefault(hit.key, found).keyword = hit.score
        for rid, ep, sim, around in by_vector:
            candidates.setdefault(rid, Candidate(rid, ep, adjacent=around)).vector = sim
        return guessed

    async def _vectors_without_names(
        self,
        candidates: dict[int, Candidate],
        query: str,
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        depth: int,
        guessed: Guessed = None,
    ) -> float | None:
        """Ranking's stage 0 (memory/retrieval.py): when the query names authors of the
        candidates, replace the vector list by one searched without their names (``guessed``
        already holds it when :meth:`_gather` guessed those names right). Keyword candidates
        stay; vector-only ones of the first list go. On failure the first list stays. Returns
        the first list's best cosine when it was replaced: how well the query as asked
        matched, names included (a name of someone who wrote here is a good sign)."""
        first = [c.vector for c in candidates.values() if c.vector is not None]
        if not first:
            return None  # no vector list to replace (none in the scope, or the index failed)
        plain = without_names(query, named_authors(candidates.values(), query))
        if plain is None:
            return None
        try:
            if guessed is not None and guessed[0] == plain:
                hits = guessed[1]
            else:
                # The candidates are already read (and inside the scope): read only new rows.
                known = {c.episode.uid: c for c in candidates.values()}
                [hits] = await self._vector_candidates([plain], scope, filt, time, depth, known)
        except Exception:
            log.exception("vector search without names failed; keeping the first one")
            return None
        for rid, c in list(candidates.items()):
            c.vector = None
            if c.keyword is None:
                del candidates[rid]
        for rid, ep, sim, around in hits:
            candidates.setdefault(rid, Candidate(rid, ep, adjacent=around)).vector = sim
        return max(first)

    async def _vector_candidates(
        self,
        queries: Sequence[str],
        scope: Scope,
        filt: Filter | None,
        time: TimeRange | None,
        depth: int,
        known: Mapping[str, Candidate] | None = None,
        *,
        neighbours: bool = True,
    ) -> builtins.list[builtins.list[VectorHit]]:
        """Each query's nearest episodes under ``scope``, best first: one embedding call for
        all of them, one index search for all of them, one read of the rows (as Briefs) but those
        ``known`` (candidates of this scope already read, by uid). A channel search lets the
        index list the channel's rows from the store, when and if it needs them (it reads a
        channel's vectors by uid; the moment of the listing is its consistency rule's)."""
        index = self._vectors()
        vectors = await self.embedding.embed(list(queries), urgent=True)
        narrowed = filt is not None or time is not None
        members: Members | None = None
        if scope.produced_for is not None:
            loop = asyncio.get_running_loop()
            listing = functools.partial(
                self.store.channel_members, scope.org_id, scope.project_id, scope.produced_for
            )

            def members() -> list[Member]:  # in the index's thread; the loop awaits it
                return asyncio.run_coroutine_threadsafe(listing(), loop).result()

        k = depth * 4 if narrowed else depth
        if scope.produced_for is None:
            # Shares an index call with the project-wide searches waiting at the same moment.
            found = await self.vector_queries.query(
                index, scope.org_id, scope.project_id, vectors, k, scope.producer, scope.thread_id
            )
        else:
            found = await asyncio.to_thread(
                index.query_many,
                scope.org_id,
                scope.project_id,
                scope.produced_for,
                vectors,
                k,
                scope.producer,
                scope.thread_id,
                members,
            )
        known = known or {}
        uids = list(dict.fromkeys(u for nearest in found for u, _ in nearest if u not in known))
        fetched = await self.store.get_scoped(scope, filt, time, uids, neighbours=neighbours)
        lists: builtins.list[builtins.list[VectorHit]] = []
        for nearest in found:
            hits: builtins.list[VectorHit] = []
            for u, sim in nearest:
                if (c := known.get(u)) is not None:
                    hits.append((c.row_id, c.episode, sim, c.adjacent))
                elif (f := fetched.get(u)) is not None:
                    hits.append((f.key, f.episode, sim, f.adjacent))
            lists.append(hits)
        return lists

    @staticmethod
    def _hit(ep: Episode, score: float, expanded: bool = False) -> Hit:
        return Hit(
            episode=ep,
            score=round(score, 6),
            expanded=expanded,
            source=Source(
                platform=ep.platform,
                channel=ep.produced_for,
                source_id=ep.source_id,
                thread_id=ep.thread_id,
                link=ep.link,
            ),
        )

    async def _expand(
        self,
        ranked: builtins.list[Candidate],
        full: Mapping[str, Episode],
        n: int,
        top_k: int,
        statements_only: bool = False,
    ) -> builtins.list[Hit]:
        """Each hit with up to ``n`` neighbours either side, in conversation order; the list
        is cut at ``top_k`` entries, neighbours counting. ``full``: the hits' Episodes."""
        around = await self.store.neighbours([c.row_id for c in ranked], n, n)
        out: builtins.list[Hit] = []
        seen: set[str] = set()
        matched = {c.episode.uid: c.score for c in ranked}
        for c in ranked:
            context = around.get(c.row_id)
            before = [r.episode for r in reversed(context.before)] if context else []
            after = [r.episode for r in context.after] if context else []
            group = [*before, full[c.episode.uid], *after]
            for ep in group:
                if ep.uid in seen or (statements_only and asks(ep.content)):
                    continue
                seen.add(ep.uid)
                if ep.uid in matched:  # a match in its own right, even if also a neighbour
                    out.append(self._hit(ep, matched[ep.uid]))
                else:
                    out.append(self._hit(ep, c.score * 0.9, expanded=True))
            if len(out) >= top_k:
                break
        return out[:top_k]

    # -- facts -----------------------------------------------------------------------------

    async def add_fact(self, fact: Fact) -> str:
        return await self.store.add_fact(fact)

    async def facts(
        self,
        org_id: str,
        project_id: str,
        *,
        subject: str | None = None,
        produced_for: str | None = None,
        include_superseded: bool = False,
        uids: Sequence[str] | None = None,
    ) -> builtins.list[Fact]:
        return await self.store.facts(
            org_id,
            project_id,
            subject=subject,
            produced_for=produced_for,
            include_superseded=include_superseded,
            uids=uids,
        )

    async def supersede_fact(
        self, org_id: str, project_id: str, uid: str, by: str, when: datetime | None = None
    ) -> bool:
        """Mark a fact replaced by another of the same org and project; False (and nothing
        changed) unless both are facts there."""
        when = check_time(when, "when") if when is not None else utcnow()
        return await self.store.supersede_fact(org_id, project_id, uid, by, when)

    async def fact_uids(
        self, org_id: str, project_id: str, uids: Sequence[str]
    ) -> builtins.list[str]:
        """Which of ``uids`` are facts of this org and project, readable or set aside."""
        return await self.store.fact_uids(org_id, project_id, list(uids))

    async def delete_facts(self, org_id: str, project_id: str, uids: Sequence[str]) -> int:
        return await self.store.delete_facts(org_id, project_id, uids)

    # -- projects and settings -------------------------------------------------------------

    async def create_project(
        self,
        org_id: str,
        project_id: str,
        description: str = "",
        config: dict[str, Any] | None = None,
    ) -> bool:
        check_safe_id(org_id, "org_id")
        check_safe_id(project_id, "project_id")
        return await self.store.create_project(org_id, project_id, description, config or {})

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        return await self.store.get_project(org_id, project_id)

    async def list_projects(self, org_id: str | None = None) -> builtins.list[tuple[str, str]]:
        return [(p.org_id, p.project_id) for p in await self.store.projects(org_id)]

    async def delete_project(self, org_id: str, project_id: str) -> ForgetReport:
        """Delete a project and everything in it; complete when this returns."""
        gone = await self.store.delete_project(org_id, project_id)
        self._authors_met.forget()
        async with self._index_lock:
            index = self._vectors()
            await asyncio.to_thread(index.drop_project, org_id, project_id, gone.channels)
            await self._drop_vectors()
        await self.store.purge()
        self._wake.set()
        return ForgetReport(episodes=len(gone.uids), facts=gone.facts, uids=gone.uids)

    async def get_setting(self, org_id: str, project_id: str, subject: str, key: str) -> str | None:
        return await self.store.get_setting(org_id, project_id, subject, key)

    async def set_setting(
        self, org_id: str, project_id: str, subject: str, key: str, value: str | None
    ) -> None:
        await self.store.set_setting(org_id, project_id, subject, key, value)

    # -- stats -----------------------------------------------------------------------------

    async def count_set_aside(self) -> int:
        """Records set aside: stored, but unreadable or unembeddable."""
        return await self.store.count_set_aside()

    async def stats(self) -> Stats:
        counts = dataclasses.asdict(await self.store.counts())
        vectors = await asyncio.to_thread(self._vectors().count)
        disk = (
            sum(f.stat().st_size for f in self.data_dir.rglob("*") if f.is_file())
            if self.data_dir.exists()
            else 0
        )
        return Stats(**counts, vectors=vectors, embedder=self.embedder.fingerprint, disk_bytes=disk)


if TYPE_CHECKING:  # mypy proves that the engine is a Memory

    def _is_a_memory(engine: MemoryEngine) -> Memory:
        return engine
