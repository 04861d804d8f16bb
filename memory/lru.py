"""One small bounded cache, for every place that remembers the last N of something (seen
events, links, channels, users, where facts live)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class Lru(Generic[K, V]):
    """A map that keeps the ``size`` most recently written keys and drops the oldest."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        return self._items.get(key, default)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


class LruSet(Generic[K]):
    """The ``size`` most recently added keys."""

    def __init__(self, size: int) -> None:
        self._keys: Lru[K, None] = Lru(size)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: K) -> bool:
        """Add ``key``; False when it was there already (a repeat)."""
        if key in self._keys:
            return False
        self._keys.put(key, None)
        return True
