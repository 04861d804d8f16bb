"""One queue in front of the vector index's project-wide queries, shared by an engine's searches.

Each call to embedded Chroma's ``query`` has a fixed cost, whatever the number of query
vectors in it: about 1.2 ms of CPU for one vector at 2,000 vectors, 0.63 ms a vector in calls
of four and 0.5 ms in calls of eight (README, "Many clients"). Under load many searches of one
project wait for the index at the same moment (the embedding queue hands their vectors back
together), and each used to pay that cost alone. :class:`VectorQueryQueue` runs one index call
at a time per project and query shape; the vectors of every search that arrived meanwhile go
into the next call together, as a group commit does with writes.

Chroma answers each row of a query on its own (the same neighbours and distances as a call
with that row alone: ``tests/memory/test_vector_queue.py``), so a search's hits do not depend on
who else was in its call. A call that fails with several searches in it is repeated for each
search alone, so one failing search fails only itself.

Only project-wide queries come here: a channel's query reads that channel's vectors from the
index's cache (:meth:`memory.index.chroma.ChromaIndex.query_many`), which has no per-call cost
worth sharing.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

import numpy as np

from .embedders import Vectors
from .index.base import VectorIndex

Nearest = list[list[tuple[str, float]]]  # each query row's (uid, cosine), best first

#: Query rows in one index call at most (a caller's rows are never split).
ROWS_PER_CALL = 64


@dataclass(frozen=True)
class _Shape:
    """What must be equal for two searches to share an index call."""

    index: VectorIndex
    org_id: str
    project_id: str
    k: int
    producer: str | None
    thread_id: str | None


@dataclass(eq=False)
class _Request:
    vectors: Vectors
    done: asyncio.Future[Nearest]


class VectorQueryQueue:
    """Project-wide index queries for many concurrent searches in few index calls; see the
    module docstring. ``calls``: index calls made so far (``rows`` the query rows in them)."""

    def __init__(self, rows_per_call: int = ROWS_PER_CALL) -> None:
        self.rows_per_call = rows_per_call
        self.calls = 0
        self.rows = 0
        self._queues: dict[_Shape, collections.deque[_Request]] = {}
        self._workers: set[asyncio.Task[None]] = set()  # held so that they are not collected

    async def query(
        self,
        index: VectorIndex,
        org_id: str,
        project_id: str,
        vectors: Vectors,
        k: int,
        producer: str | None = None,
        thread_id: str | None = None,
    ) -> Nearest:
        """:meth:`VectorIndex.query_many` over the whole project (no channel), for each row of
        ``vectors``, best first."""
        if not len(vectors):
            return []
        shape = _Shape(index, org_id, project_id, k, producer, thread_id)
        request = _Request(vectors, asyncio.get_running_loop().create_future())
        queue = self._queues.get(shape)
        if queue is None:
            queue = self._queues[shape] = collections.deque([request])
            worker = asyncio.create_task(self._work(shape, queue), name="channelmind-vectors")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        else:
            queue.append(request)
        return await request.done

    def _take(self, queue: collections.deque[_Request]) -> list[_Request]:
        """The next call's searches: the waiting ones, up to ``rows_per_call`` rows (at least
        one search, whatever its rows)."""
        while queue and queue[0].done.done():  # its caller is gone
            queue.popleft()
        taken: list[_Request] = []
        rows = 0
        while queue and (not taken or rows + len(queue[0].vectors) <= self.rows_per_call):
            request = queue.popleft()
            if not request.done.done():
                taken.append(request)
                rows += len(request.vectors)
        return taken

    async def _work(self, shape: _Shape, queue: collections.deque[_Request]) -> None:
        taken: list[_Request] = []
        try:
            while taken := self._take(queue):
                try:
                    found = await self._call(shape, np.concatenate([r.vectors for r in taken]))
                except Exception as exc:
                    if len(taken) == 1:
                        _fail(taken[0], exc)
                        continue
                    # Several searches in the call: find out whose the index cannot answer.
                    for request in taken:
                        try:
                            _deliver(request, await self._call(shape, request.vectors))
                        except Exception as alone:
                            _fail(request, alone)
                    continue
                row = 0
                for request in taken:
                    _deliver(request, found[row : row + len(request.vectors)])
                    row += len(request.vectors)
            taken = []
        finally:
            # Removed in the same step that found the queue empty: a search queued after it
            # starts a new worker.
            if self._queues.get(shape) is queue:
                del self._queues[shape]
            for request in [*taken, *queue]:  # only when cancelled (the loop is closing)
                _fail(request, RuntimeError("the vector query queue stopped"))

    async def _call(self, shape: _Shape, matrix: Vectors) -> Nearest:
        self.calls += 1
        self.rows += len(matrix)
        found = await asyncio.to_thread(
            shape.index.query_many,
            shape.org_id,
            shape.project_id,
            None,
            matrix,
            shape.k,
            shape.producer,
            shape.thread_id,
        )
        if len(found) != len(matrix):
            raise ValueError(f"the index gave {len(found)} lists for {len(matrix)} queries")
        return found


def _deliver(request: _Request, found: Nearest) -> None:
    if not request.done.done():
        request.done.set_result(found)


def _fail(request: _Request, exc: BaseException) -> None:
    if not request.done.done():
        request.done.set_exception(exc)
