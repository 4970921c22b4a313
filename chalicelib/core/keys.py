"""Keys: what every key domain shares about key records and their versions.

Lifecycle: a key record is `active` until it is deleted; deletion moves it into a deleted-key
entry (core/deleted.py) until a restore or the purge. Records in state `deleting` (the
tombstones of earlier releases) are treated as absent and purged by whoever meets them.

Version records are immutable once written (a version's key never changes; it is only ever
deleted), so they are cached in-process, bounded, keyed by their place. A KEK roll re-wraps
the blob under a new KEK (same key): a blob naming another KEK than the current one is cached
for `cache_seconds` only, so that the old KEK can be destroyed that long after the roll.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum

from chalicelib.hsm import WrappedKey

VERSION_CACHE_SIZE = 4096


class KeyState(StrEnum):
    """Where a key record is in its life (stored as its value)."""

    ACTIVE = "active"
    DELETING = "deleting"  # a tombstone: gone for every read, its purge pending


class VersionCache:
    """A bounded LRU of immutable version blobs by (partition, sort key); thread-safe.

    Blobs under `current_kek` stay until evicted; a blob under another KEK (one a KEK roll
    is replacing) is used for `seconds` after it was read, then read again.
    """

    def __init__(self, size: int = VERSION_CACHE_SIZE, *, current_kek: str | None = None,
                 seconds: float = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._current_kek = current_kek
        self._seconds = seconds
        self._clock = clock
        # (pk, sk) -> (blob, when it must be read again; None: never)
        self._items: OrderedDict[tuple[str, str], tuple[WrappedKey, float | None]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def get(self, pk: str, sk: str) -> WrappedKey | None:
        """The cached blob at (pk, sk), or None."""
        with self._lock:
            hit = self._items.get((pk, sk))
            if hit is None:
                return None
            if hit[1] is not None and self._clock() >= hit[1]:
                del self._items[(pk, sk)]
                return None
            self._items.move_to_end((pk, sk))
            return hit[0]

    def put(self, pk: str, sk: str, wrapped: WrappedKey) -> None:
        """Remember the blob read at (pk, sk)."""
        until = None
        if self._current_kek is not None and wrapped.kek_label != self._current_kek:
            if self._seconds <= 0:
                return
            until = self._clock() + self._seconds
        with self._lock:
            self._items[(pk, sk)] = (wrapped, until)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, pk: str, below: int | None = None) -> None:
        """Forget a partition's versions (all, or those numbered below `below`: sort keys
        "v#{n:010d}")."""
        with self._lock:
            for ck in [ck for ck in self._items if ck[0] == pk
                       and (below is None or int(ck[1][2:]) < below)]:
                del self._items[ck]


def new_key_id(now: float) -> str:
    """A UUID version 7: 48 bits of milliseconds, then random bits (sorts by creation)."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((int(now * 1000) & (2**48 - 1)) << 80) | (0x7 << 76) \
        | (((rand >> 62) & 0xFFF) << 64) | (0b10 << 62) | (rand & (2**62 - 1))
    return str(uuid.UUID(int=value))
