"""The collector setting a serving process runs under (:mod:`memory.server.gc_tuning`); that
``channelmind serve`` applies it is tested in tests/bot/test_app.py."""

from __future__ import annotations

import gc
import weakref

from memory.server.gc_tuning import YOUNG_THRESHOLD, tuned_gc


class Node:
    def __init__(self) -> None:
        self.other: Node = self


def tracked(obj: object) -> bool:
    """Whether ``obj`` is in a generation a collection walks (frozen objects are not)."""
    return any(o is obj for o in gc.get_objects())


def test_what_is_alive_is_frozen_and_the_young_threshold_raised_until_the_block_ends() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    alive = [[]]
    with tuned_gc():
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
        assert not tracked(alive)
        made = [[]]
        assert tracked(made)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert tracked(alive)


def test_a_cycle_made_while_tuned_is_still_collected() -> None:
    with tuned_gc():
        ref = weakref.ref(Node())
        assert ref() is not None  # only a collection frees a cycle
        gc.collect()
        assert ref() is None
