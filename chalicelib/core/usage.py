"""Last use of every key: when, and for what, without a store write per use.

Each use is noted in process (`record`: a dict update under a lock, no store call). A key's
usage item is written inline by the use that finds its last write one flush period old
(`Settings.usage_flush_seconds`), and by the first use of the key in a process: at most one
store write per key per period per process. Lambda has no dependable background thread
between invocations, so the request that crosses the period pays for the write (one
conditional write; one read and one write when another process wrote the item meanwhile).

The item is one per key, apart from the key's record (writing the record would bump its
version, fail optimistic writes made against it and invalidate the caches of every process):

    pk "usage#{kind}#{ring}"    sk "key#{key id}"    {uses: {verb: epoch ms}, name, ...}

It is keyed by the key's id (a transit key's object id per incarnation, the other domains' key
ids), never its name, so a key made again under a deleted key's name starts unused. The last
time of each verb only moves forward: a write merges (maximum per verb) with what is stored
and is conditional on the version read (records.retry), so a slower writer in another
process never moves it back. A failed write is logged and never fails the request.

Bounds: the stored last use is at most one flush period older than the last use made in any
process (uses after a process's last write stay in that process until its next use past the
period, and are lost if it ends first). The delete guard (`guard`) reads the item and this
process's own uses, so it sees another process's uses at most one flush period late.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chalicelib.config import Settings
from chalicelib.core.access import Grant
from chalicelib.core.audit import Operation, allow_details
from chalicelib.core.clock import iso_millis
from chalicelib.core.records import retry, scan
from chalicelib.errors import InvalidState
from chalicelib.store import Store

log = logging.getLogger("keyfront.usage")

allow_details("forced")  # a delete forced by the admin function

KEY_PREFIX = "key#"
MAX_KEYS = 10_000  # keys remembered in process (least recently used go first)
MAX_VERBS = 16  # distinct verbs kept per key (verbs are the code's, never the client's)
KEEP_SECONDS = 400 * 24 * 3600  # a usage item outlives its key's last use by this (TTL)


@dataclass(frozen=True)
class Use:
    """What is known of one key's use: its last time (epoch ms) per verb."""

    kind: str
    ring: str
    key_id: str
    name: str
    uses: dict[str, int]

    @property
    def last_ms(self) -> int:
        """Epoch milliseconds of the last use of any kind."""
        return max(self.uses.values())

    @property
    def last_for(self) -> str:
        """The verb of the last use (the first by name among equal times)."""
        return min(self.uses, key=lambda v: (-self.uses[v], v))

    def to_dict(self) -> dict[str, Any]:
        """The admin function's view: ISO times, never material."""
        return {"kind": self.kind, "ring": self.ring, "key_id": self.key_id,
                "name": self.name, "last_used_at": iso_millis(self.last_ms / 1000),
                "last_used_for": self.last_for,
                "uses": {v: iso_millis(ms / 1000) for v, ms in sorted(self.uses.items())}}


def merged(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """The later time of each verb of `a` and `b`: what a write keeps, never less."""
    out = dict(a)
    for verb, ms in b.items():
        if ms > out.get(verb, -1):
            out[verb] = ms
    return out


@dataclass
class _Local:
    """One key's uses as this process knows them."""

    uses: dict[str, int] = field(default_factory=dict)
    name: str = ""
    flushed_at: float | None = None  # clock time of the last write (attempt)
    version: int | None = None  # the item's version after our last write, if it succeeded
    writing: bool = False


def _stored_uses(item: dict[str, Any]) -> dict[str, int]:
    """The item's uses, what of them is well formed (a bad item is not worth a failure)."""
    uses = item.get("uses")
    if not isinstance(uses, dict):
        return {}
    return {str(k): int(v) for k, v in uses.items()
            if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}


class KeyUsage:
    """Last use per key, noted in process and written coalesced; one per domain."""

    def __init__(self, store: Store, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.flush_seconds = settings.usage_flush_seconds
        self.guard_seconds = settings.delete_guard_seconds
        self._attempts = settings.retry_attempts
        self.clock = clock  # public: tests move it
        self._lock = threading.Lock()
        self._local: OrderedDict[tuple[str, str, str], _Local] = OrderedDict()

    @staticmethod
    def pk(kind: str, ring: str) -> str:
        """The partition of a ring's usage items."""
        return f"usage#{kind}#{ring}"

    # ---- recording -------------------------------------------------------------------------

    def record(self, kind: str, ring: str, key_id: str, what: str, *, name: str = "") -> None:
        """Note a use of key `key_id` (named `name`) for `what`; write the key's item if its
        last write is a flush period old. Never raises for a store failure."""
        now = self.clock()
        ms = int(now * 1000)
        where = (kind, ring, key_id)
        with self._lock:
            local = self._local.get(where)
            if local is None:
                local = self._local[where] = _Local()
                while len(self._local) > MAX_KEYS:
                    self._local.popitem(last=False)
            self._local.move_to_end(where)
            if what in local.uses or len(local.uses) < MAX_VERBS:
                local.uses[what] = max(ms, local.uses.get(what, -1))
            local.name = name or local.name
            if local.writing or (local.flushed_at is not None
                                 and now - local.flushed_at < self.flush_seconds):
                return
            local.flushed_at, local.writing = now, True
            uses, known, name = dict(local.uses), local.version, local.name
        version: int | None = None
        try:
            version, uses = self._write(kind, ring, key_id, name, uses, known)
        except Exception:  # noqa: BLE001 - a use is never refused for its bookkeeping
            log.warning("last use of a %s key not written (retried after %s s)", kind,
                        self.flush_seconds, exc_info=True)
        finally:
            with self._lock:
                local.writing, local.version = False, version
                if version is not None:
                    local.uses = merged(local.uses, uses)

    def _write(self, kind: str, ring: str, key_id: str, name: str, uses: dict[str, int],
               known: int | None) -> tuple[int, dict[str, int]]:
        """Store `uses` merged with the item's: the item's new version and what it holds.
        `known` is the version our last write left: written blind at it (nobody else wrote
        since, so what is stored is ours, which `uses` includes); else, or if another
        process wrote meanwhile, read, merge and write conditionally."""
        pk, sk = self.pk(kind, ring), KEY_PREFIX + key_id
        blind = [known]

        def item(of: dict[str, int]) -> dict[str, Any]:
            return {"pk": pk, "sk": sk, "kind": kind, "ring": ring, "key": key_id,
                    "name": name, "uses": of,
                    "expires_at": max(of.values()) // 1000 + KEEP_SECONDS}

        def attempt() -> tuple[int, dict[str, int]]:
            if blind[0] is not None:
                expected, blind[0] = blind[0], None  # once: a failure means another writer
                self._store.update_if_version(item(uses), expected)
                return expected + 1, uses
            stored = self._store.get(pk, sk)
            if stored is None:
                self._store.put_if_absent(item(uses))
                return 1, uses
            both = merged(_stored_uses(stored), uses)
            if both == _stored_uses(stored) and stored.get("name") == name:
                return int(stored["version"]), both  # nothing newer to say
            self._store.update_if_version(item(both), int(stored["version"]))
            return int(stored["version"]) + 1, both
        return retry(attempt, self._attempts, what="the key's usage")

    # ---- reading ---------------------------------------------------------------------------

    def _with_local(self, kind: str, ring: str, key_id: str, name: str,
                    uses: dict[str, int]) -> Use | None:
        with self._lock:
            local = self._local.get((kind, ring, key_id))
            if local is not None:
                uses = merged(uses, local.uses)
                name = local.name or name
        return Use(kind, ring, key_id, name, uses) if uses else None

    def last(self, kind: str, ring: str, key_id: str) -> Use | None:
        """The key's last uses, stored and this process's own; None if never used."""
        stored = self._store.get(self.pk(kind, ring), KEY_PREFIX + key_id) or {}
        return self._with_local(kind, ring, key_id, str(stored.get("name") or ""),
                                _stored_uses(stored))

    def ring(self, kind: str, ring: str) -> Iterator[Use]:
        """Every key of the ring with a recorded use (deleted keys' too, by id), stored and
        this process's own, in key-id order."""
        seen: set[str] = set()
        for item in scan(self._store, self.pk(kind, ring), KEY_PREFIX):
            key_id = str(item["sk"]).removeprefix(KEY_PREFIX)
            seen.add(key_id)
            use = self._with_local(kind, ring, key_id, str(item.get("name") or ""),
                                   _stored_uses(item))
            if use is not None:
                yield use
        with self._lock:
            pending = sorted(k[2] for k in self._local if k[:2] == (kind, ring)
                             and k[2] not in seen)
        for key_id in pending:
            use = self._with_local(kind, ring, key_id, "", {})
            if use is not None:
                yield use

    # ---- the delete guard ------------------------------------------------------------------

    def guard(self, grant: Grant, key_id: str, op: Operation) -> None:
        """Refuse (InvalidState, reason key_in_use) the delete of a key used within
        `Settings.delete_guard_seconds`, unless the grant is the admin function's forced
        one, which is noted (`forced`) in the delete's own audit operation `op`, so that it
        is written with the delete. Reads the key's usage item (one store read) when the
        guard is on."""
        if grant.force:
            op.note(forced=True)
            return
        if self.guard_seconds <= 0:
            return
        use = self.last(grant.kind.name, grant.ring, key_id)
        if use is None:
            return
        ago = max(0.0, self.clock() - use.last_ms / 1000)
        if ago < self.guard_seconds:
            raise InvalidState(
                f"the key was used {int(ago)} s ago ({use.last_for}); a key used within "
                f"{self.guard_seconds} s is not deleted (an administrator can force it)",
                reason="key_in_use")


__all__ = ["KeyUsage", "Use", "merged"]
