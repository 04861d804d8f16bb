"""How a long-running server process sets Python's cyclic garbage collector.

Measured with ``channelmind bench load --clients 40 --seconds 20 --embedder hash`` (2,000
seeded messages, ~200,000 live container objects after start-up; ``gc.callbacks``): under
default thresholds (700, 10, 10) the collector took about 2.4 s of the server's 16.9 s of CPU
(~14%): ~1,600 young collections, ~145 middle ones, and 14 full ones of ~130 ms CPU each
(~250 ms wall, every request in flight waiting), three quarters of it in the full ones, which
walk every live object: the imported modules, Chroma's, the model's, the caches'.

:func:`tuned_gc` freezes what is alive once start-up is done (:func:`gc.freeze`: those objects
go to a permanent generation no collection walks; they are long-lived anyway) and raises the
young generation's threshold, so that the many short-lived containers a request makes (rows,
lists, dicts, Chroma's answers) are mostly freed by reference counting before a collection
runs. Reference cycles still get collected, only later: a young collection now waits for
:data:`YOUNG_THRESHOLD` net new containers instead of 700.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Net container allocations before a young collection (CPython's default is 700).
YOUNG_THRESHOLD = 10_000


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """Freeze the objects alive now and raise the young threshold while the block runs (the
    process serves); then put back the thresholds and unfreeze. Enter it once start-up is done."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
