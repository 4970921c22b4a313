"""Keys: what every key domain shares about key records and their versions.

Lifecycle: a key record is `active` until it is deleted; deletion moves it into a deleted-key
entry (core/deleted.py) until a restore or the purge. Records in state `deleting` (the
tombstones of earlier releases) are treated as absent and purged by whoever meets them.

Version records are immutable once written (a version's wrapped blob never changes; it is only
ever deleted), so they are cached in-process, bounded, keyed by their place.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from enum import StrEnum

from chalicelib.hsm import WrappedKey

VERSION_CACHE_SIZE = 4096


class KeyState(StrEnum):
    """Where a key record is in its life (stored as its value)."""

    ACTIVE = "active"
    DELETING = "deleting"  # a tombstone: gone for every read, its purge pending


class VersionCache:
    """A bounded LRU of immutable version blobs by (partition, sort key); thread-safe."""

    def __init__(self, size: int = VERSION_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], WrappedKey] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, pk: str, sk: str) -> WrappedKey | None:
        """The cached blob at (pk, sk), or None."""
        with self._lock:
            hit = self._items.get((pk, sk))
            if hit is not None:
                self._items.move_to_end((pk, sk))
            return hit

    def put(self, pk: str, sk: str, wrapped: WrappedKey) -> None:
        """Remember the blob read at (pk, sk)."""
        with self._lock:
            self._items[(pk, sk)] = wrapped
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
