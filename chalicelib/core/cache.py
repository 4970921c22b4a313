"""A short-lived in-process cache of records read from the store, with a stated bound.

A record read from the store is used for at most `seconds` without reading it again, so a
change made by another process (a revocation, a rotation, a deletion) takes effect everywhere
within that bound; the process that makes a change drops or replaces its own entry at once.
`seconds = 0` turns the cache off (every use reads the store). The cache is bounded in
entries (least recently used go first) and thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_ENTRIES = 10_000


class TtlCache(Generic[K, V]):
    """Values by key, each usable for `seconds` after it was put."""

    def __init__(self, seconds: float, entries: int = DEFAULT_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._entries = entries
        self._clock = clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self._drops = 0  # how many drops so far: see `put`

    def drops(self) -> int:
        """A mark to pass to `put`: take it before reading the record from the store."""
        return self._drops

    def get(self, key: K) -> V | None:
        """The value put under `key` less than `seconds` ago, or None."""
        if self.seconds <= 0:
            return None
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            if self._clock() >= hit[0]:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return hit[1]

    def put(self, key: K, value: V, read_after: int | None = None) -> None:
        """Remember `value` (just read from the store) under `key`; not if anything was
        dropped since `read_after` (a `drops()` mark taken before the read), as the read may
        predate a change this process made meanwhile."""
        if self.seconds <= 0:
            return
        with self._lock:
            if read_after is not None and read_after != self._drops:
                return
            self._items[key] = (self._clock() + self.seconds, value)
            self._items.move_to_end(key)
            while len(self._items) > self._entries:
                self._items.popitem(last=False)

    def drop(self, key: K) -> None:
        """Forget `key` (this process changed its record)."""
        with self._lock:
            self._drops += 1
            self._items.pop(key, None)
