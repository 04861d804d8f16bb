"""One queue in front of the embedding model, shared by every caller of an engine.

A search embeds one query; the indexer embeds batches of new messages. Each used to call the
model on its own, so under load up to six model calls ran at once on two cores (the default
executor's threads), each with torch's own intra-op threads, and each search paid the model's
per-call cost for one text. :class:`EmbedQueue` runs two lanes, one model call at a time in
each: searches, and the indexer. The texts of every search that arrived while a search call
ran go into the next call, as a group commit does with writes; a search never waits behind an
indexing batch (measured: one lane for both, the indexer's rows topping up search calls, halved
the throughput at 40 clients), and at most two model calls run at once.

A call that fails with several callers' texts in it is repeated for each caller alone, so one
text the model cannot take fails only its own caller.

The queue also decides when the indexer starts a pass (:meth:`EmbedQueue.gathered`). Embedded
Chroma's upsert holds the GIL for its whole call (about 20-40 ms here, nearly all of it a
fixed cost per call, whatever the number of vectors), so a request that arrives meanwhile
waits for it: with one client, that was the slow tail of adds. While callers keep arriving,
the indexer therefore defers its pass, up to :data:`MAX_DEFER_S`, and then indexes what came
in one model call and one upsert; when nobody else is waiting, it starts after
:data:`GATHER_S` as before.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import numpy as np

from .embedders import Embedder, Vectors


@dataclass(eq=False)
class _Request:
    texts: list[str]
    done: asyncio.Future[Vectors]
    taken: int = 0  # texts handed to a model call so far
    parts: dict[int, Vectors] = field(default_factory=dict)  # rows by their first text's index

    def deliver(self, start: int, rows: Vectors) -> None:
        if self.done.done():  # the caller gave up, or an earlier part failed
            return
        self.parts[start] = rows
        if sum(len(p) for p in self.parts.values()) == len(self.texts):
            self.done.set_result(np.concatenate([self.parts[s] for s in sorted(self.parts)]))

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


#: How long the indexer waits after a wake for more new messages (see EmbedQueue.gathered):
#: the delay before a message can be found by meaning, against one model call per message.
GATHER_S = 0.1
#: The longest the indexer defers a pass while callers keep arriving: the delay before a
#: message can be found by meaning under steady traffic, against how many requests wait
#: behind the index's writes.
MAX_DEFER_S = 1.0

_Piece = tuple[_Request, int, int]  # a request's texts [start, stop) in one model call


class EmbedQueue:
    """Embeds for many concurrent callers with few model calls; see the module docstring."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        rows_per_call: int = 64,
        gather_s: float = GATHER_S,
        max_defer_s: float = MAX_DEFER_S,
    ) -> None:
        self.embedder = embedder
        self.rows_per_call = rows_per_call
        self.gather_s = gather_s
        self.max_defer_s = max_defer_s
        self.arrivals = 0  # callers seen so far: searches queued here, adds told (arrived)
        self._search_call: asyncio.Future[None] | None = None  # ends with the search call
        self._urgent: collections.deque[_Request] = collections.deque()
        self._bulk: collections.deque[_Request] = collections.deque()
        self._workers: set[asyncio.Task[None]] = set()  # held so that they are not collected
        self._working: set[bool] = set()  # the lanes (urgent or not) with a worker

    @property
    def waiting(self) -> int:
        """Texts queued and not yet handed to a model call."""
        return sum(len(r.texts) - r.taken for r in (*self._urgent, *self._bulk))

    def arrived(self) -> None:
        """Count a caller the indexer should not hold up (an add): see :meth:`gathered`."""
        self.arrivals += 1

    async def gathered(self) -> None:
        """What the indexer awaits when new messages wake it, before it reads them: a short
        moment (``gather_s``), again while callers arrived during the last one (adds,
        searches) or a search's model call runs, at most ``max_defer_s`` in all; and then the
        end of the search call running, if any (someone waits for that one: it goes first). A
        burst of messages is then embedded in one model call and written in one upsert, rather
        than one of each per message, and under steady traffic fewer requests wait behind the
        index's writes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_defer_s
        while True:
            seen = self.arrivals
            await asyncio.sleep(max(0.0, min(self.gather_s, deadline - loop.time())))
            quiet = self.arrivals == seen and self._search_call is None
            if quiet or loop.time() >= deadline:
                break
        if self._search_call is not None:
            await asyncio.shield(self._search_call)

    async def embed(self, texts: list[str], *, urgent: bool = False) -> Vectors:
        """Unit-length rows for ``texts``, in order. ``urgent``: a caller someone waits for
        (a search): it goes in the search lane, never behind an indexing batch."""
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        request = _Request(list(texts), asyncio.get_running_loop().create_future())
        (self._urgent if urgent else self._bulk).append(request)
        if urgent:
            self.arrived()
        if urgent not in self._working:
            self._working.add(urgent)
            worker = asyncio.create_task(self._work(urgent), name="channelmind-embed")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        return await request.done

    def _take(self, urgent: bool) -> list[_Piece]:
        """The next call's texts in a lane: up to ``rows_per_call`` of the waiting searches'
        (one request larger than the room left is split across calls), or the indexer's next
        batch whole (it sends one at a time; the model batches it by itself)."""
        queue = self._urgent if urgent else self._bulk
        while queue and queue[0].done.done():  # its caller is gone: nobody wants its vectors
            queue.popleft()
        if not queue:
            return []
        if not urgent:
            request = queue.popleft()
            request.taken = len(request.texts)
            return [(request, 0, len(request.texts))]
        pieces: list[_Piece] = []
        room = self.rows_per_call
        while queue and room:
            request = queue[0]
            start = request.taken
            stop = min(len(request.texts), start + room)
            pieces.append((request, start, stop))
            request.taken = stop
            room -= stop - start
            if stop == len(request.texts):
                queue.popleft()
        return pieces

    async def _work(self, urgent: bool) -> None:
        pieces: list[_Piece] = []
        try:
            while pieces := self._take(urgent):
                texts = [t for request, a, b in pieces for t in request.texts[a:b]]
                try:
                    vectors = await self._call(texts, urgent)
                except Exception as exc:
                    if len({id(request) for request, _, _ in pieces}) == 1:
                        for request, _, _ in pieces:
                            request.fail(exc)
                        continue
                    # Several callers' texts: find out whose the model cannot take.
                    for request, a, b in pieces:
                        try:
                            request.deliver(a, await self._call(request.texts[a:b], urgent))
                        except Exception as alone:
                            request.fail(alone)
                    continue
                row = 0
                for request, a, b in pieces:
                    request.deliver(a, vectors[row : row + b - a])
                    row += b - a
            pieces = []
        finally:
            # Counted out in the same step that found the queue empty: a request queued after
            # it starts a new worker (the task's own done callback would run too late).
            self._working.discard(urgent)
            # Only when cancelled mid-way (the loop is closing): nobody is left waiting.
            for request, _, _ in pieces:
                request.fail(RuntimeError("the embedding queue stopped"))

    async def _call(self, texts: list[str], urgent: bool) -> Vectors:
        ended = asyncio.get_running_loop().create_future()
        if urgent:
            self._search_call = ended
        try:
            vectors = np.asarray(await asyncio.to_thread(self.embedder.embed, texts))
        finally:
            ended.set_result(None)
            if self._search_call is ended:
                self._search_call = None
        if vectors.shape[0] != len(texts):
            raise ValueError(f"the embedder gave {vectors.shape[0]} rows for {len(texts)} texts")
        return vectors
