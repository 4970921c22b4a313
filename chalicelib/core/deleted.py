"""Recoverable deletion: a deleted key waits in a deleted-key entry for its window, then is
purged.

A domain's delete keeps answering as before, but in its one transaction (with its audit
record, the name claim's release and the ring head's count) the key's main record, the one
every access reads first, moves verbatim into an entry of the `deleted` partition:

    pk "deleted"   sk "{kind}#{ring}#{id}#{deletion}"   kind, ring, id, deletion, name,
                        deleted_at, deleted_by, purge_after, records (verbatim), meta, purging

`deletion` is random per delete: a key restored and deleted again gets a new entry at a new
place, so a purge or restore working from a listing of the old entry can never act on the new
one (a store version restarts at 1 with every new item, so the version alone could not tell
them apart).

The key is gone from every view at once (every access reads the main record first), and a
new key may take its name; its dependent items (versions, grants, ring keys, ...) stay where
they are, unreachable, until the purge. Within the window an operator restores it: ONE
conditional transaction puts the record(s) back (if absent), claims the name and counts the
ring head again (the caps hold), deletes the entry and writes the audit record.

After the window the purge deletes the dependents, then the entry. It first marks the entry
`purging` (a compare-and-swap): a restore that read it before fails its condition, one that
reads it after is refused, so a purge never races a restore into a half-restored key. Every
step deletes what is still there, so an interrupted purge finishes when run again and two
purges racing do each thing once; only the one that deletes the entry writes its record.

Each ring kind has an adapter (`Adapter`) that says how its records go back and what its
dependents are; the operator's tools build them (keyed by ring kind name) over the domains
the dialects use. A window of 0 purges in the delete itself, as before this existed.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.config import Settings
from chalicelib.core.audit import AuditLog, allow_details
from chalicelib.core.clock import iso_millis
from chalicelib.core.records import Place, parsed, retry, scan
from chalicelib.errors import (
    Conflict,
    InvalidInput,
    MisplacedRecord,
    NotFound,
    StoreConditionFailed,
    StoreTransactionCancelled,
)
from chalicelib.hsm import WrappedKey
from chalicelib.store import Delete, Op, Put, Store

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

log = logging.getLogger("keyfront.deleted")

DELETED_PK = "deleted"
RESTORE_ACTION = "key.restore_deleted"
PURGE_ACTION = "key.purge"

allow_details("deleted_by", "purge_after", "dropped")


def entry_prefix(kind: str, ring: str, oid: str) -> str:
    """The sort-key prefix of a deleted key's entries (one per deletion)."""
    return f"{kind}#{ring}#{oid}#"


def _stored(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as it is written again (the store manages `version`)."""
    return {k: v for k, v in record.items() if k != "version"}


@dataclass(frozen=True)
class Deleted:
    """One deleted key: who deleted it when, until when it can be restored, and its moved
    records (verbatim, with their store versions) and whatever its domain needs back."""

    kind: str
    ring: str
    id: str
    name: str
    deleted_at: int
    deleted_by: str
    purge_after: int
    records: tuple[dict[str, Any], ...]
    deletion: str  # random per delete: which deletion of the key this entry is
    meta: dict[str, Any] = field(default_factory=dict)
    purging: bool = False
    version: int = 0  # the entry's store version (0: not yet written)

    @property
    def sk(self) -> str:
        """The entry's sort key."""
        return entry_prefix(self.kind, self.ring, self.id) + self.deletion

    @property
    def ref(self) -> str:
        """The deleted key as the operator names it: "{kind}#{ring}#{id}"."""
        return f"{self.kind}#{self.ring}#{self.id}"

    def due(self, now: float) -> bool:
        """Past its window (or already being purged)."""
        return self.purging or now >= self.purge_after

    def to_item(self) -> dict[str, Any]:
        """The store item (without its version)."""
        return {"pk": DELETED_PK, "sk": self.sk, "kind": self.kind, "ring": self.ring,
                "id": self.id, "deletion": self.deletion, "name": self.name,
                "deleted_at": self.deleted_at,
                "deleted_by": self.deleted_by, "purge_after": self.purge_after,
                "records": [dict(r) for r in self.records], "meta": dict(self.meta),
                "purging": self.purging}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Deleted:
        """Inverse of to_item."""
        return cls(kind=str(item["kind"]), ring=str(item["ring"]), id=str(item["id"]),
                   name=str(item["name"]), deleted_at=int(item["deleted_at"]),
                   deleted_by=str(item["deleted_by"]), purge_after=int(item["purge_after"]),
                   records=tuple(dict(r) for r in item["records"]),
                   deletion=str(item["deletion"]), meta=dict(item.get("meta") or {}),
                   purging=bool(item.get("purging")),
                   version=int(item["version"]))

    def summary(self, now: float) -> dict[str, Any]:
        """What a listing shows: never a record (they hold wrapped material)."""
        return {"kind": self.kind, "ring": self.ring, "id": self.id, "name": self.name,
                "deleted_at": iso_millis(self.deleted_at), "deleted_by": self.deleted_by,
                "purge_after": iso_millis(self.purge_after), "due": self.due(now),
                "purging": self.purging}

    def moved(self) -> list[Op]:
        """The delete's operations: each record deleted at the version read, the entry put."""
        return [*(Delete(str(r["pk"]), str(r["sk"]), int(r["version"])) for r in self.records),
                Put(self.to_item())]

    def put_back(self) -> list[Op]:
        """A restore's operations on the records: each put back if its place is free."""
        return [Put(_stored(r)) for r in self.records]


class Adapter(Protocol):
    """What a ring kind's domain tells the mechanism about its deleted keys."""

    def restore_ops(self, entry: Deleted) -> list[Op]:
        """The conditional operations bringing the key back (records, name, head count),
        read now; Conflict (reason restore_conflict) naming what stands in the way."""

    def purge_dependents(self, entry: Deleted) -> int:
        """Delete what only the deleted key used (idempotent); how many items went."""

    def forget(self, entry: Deleted) -> None:
        """Drop this process's cached state of the key (after a restore or a purge)."""


def forget_blob(hsm: Hsm, wrapped: Any, context: str) -> None:
    """Drop this process's HSM session copy of a purged key's wrapped blob (stored as a
    dict; anything else was never usable, so there is nothing to drop)."""
    if not isinstance(wrapped, Mapping):
        return
    try:
        key = WrappedKey.from_dict(dict(wrapped))
    except (KeyError, TypeError, ValueError):
        return
    hsm.forget(key, context)


def _entry(item: Mapping[str, Any]) -> Deleted:
    """A stored entry, or MisplacedRecord for an item of the partition that is not one."""
    try:
        return Deleted.from_item(item)
    except (KeyError, TypeError, ValueError) as exc:
        raise Place(DELETED_PK, str(item.get("sk"))).misplaced(
            "is not a deleted-key entry") from exc


def _report(exc: MisplacedRecord) -> None:
    # left out of every list and purge, the others go on; never the item's contents
    log.error("%s", exc.detail)


def restore_conflict(message: str) -> Conflict:
    """The refusal of a restore: `message` names what stands in the way."""
    return Conflict(message, reason="restore_conflict")


class Bin:
    """The deleted-key entries: what a domain's delete writes, and the operator's list,
    restore and purge. `clock` is the source of "now" (tests inject theirs)."""

    def __init__(self, store: Store, audit: AuditLog, *, window_seconds: int, attempts: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._audit = audit
        self.window = window_seconds
        self._attempts = attempts
        self._clock = clock

    @classmethod
    def for_settings(cls, store: Store, audit: AuditLog, settings: Settings,
                     clock: Callable[[], float] = time.time) -> Bin:
        """The bin with the configured deletion window and retry attempts."""
        return cls(store, audit, window_seconds=settings.deletion_window_seconds,
                   attempts=settings.retry_attempts, clock=clock)

    # ---- written by a domain's delete --------------------------------------------------------

    def entry(self, kind: str, ring: str, oid: str, name: str, deleted_by: str,
              records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) \
            -> Deleted:
        """The entry a delete writes (its `moved()` ops join the delete's transaction)."""
        now = int(self._clock())
        return Deleted(kind=kind, ring=ring, id=oid, name=name, deleted_at=now,
                       deleted_by=deleted_by, purge_after=now + self.window,
                       records=tuple(dict(r) for r in records),
                       deletion=secrets.token_hex(8), meta=dict(meta or {}), version=1)

    def settle(self, entry: Deleted, adapter: Adapter, *, principal: str) -> None:
        """After a delete committed: with a window of 0 the key is purged at once (as
        deletion was before windows); otherwise the process's caches of it are dropped."""
        if self.window <= 0:
            self.purge_entry(entry, adapter, principal=principal)
        else:
            adapter.forget(entry)

    # ---- the operator's side -----------------------------------------------------------------

    def entries(self, kind: str | None = None, ring: str | None = None) -> list[Deleted]:
        """Every entry (of `kind`, of `ring`), oldest deletion first."""
        prefix = f"{kind}#" if kind is not None and ring is None else \
            f"{kind}#{ring}#" if kind is not None else ""
        found = list(parsed(scan(self._store, DELETED_PK, prefix), _entry, _report))
        found = [d for d in found if (kind is None or d.kind == kind)
                 and (ring is None or d.ring == ring)]
        return sorted(found, key=lambda d: (d.deleted_at, d.sk))

    def get(self, kind: str, ring: str, oid: str) -> Deleted:
        """The key's entry (its latest deletion, should there be two); NotFound (reason
        deleted_key_not_found) if there is none."""
        found = [d for d in parsed(scan(self._store, DELETED_PK, entry_prefix(kind, ring, oid)),
                                   _entry, _report)
                 if (d.kind, d.ring, d.id) == (kind, ring, oid)]
        if not found:
            raise NotFound(f"no deleted {kind} key {oid} in ring {ring}",
                           reason="deleted_key_not_found")
        return max(found, key=lambda d: (d.deleted_at, d.sk))

    def restore(self, kind: str, ring: str, oid: str, adapter: Adapter, *,
                principal: str) -> Deleted:
        """Bring a deleted key back as it was: one conditional transaction (the adapter's
        operations, the entry deleted at the version read, the audit record), retried when
        another writer moved first; Conflict (restore_conflict) when its name or place is
        taken, a cap is reached or what it needs is gone."""
        obj = f"{kind}/{ring}/deleted/{oid}"
        with self._audit.operation(None, f"{kind}.{RESTORE_ACTION}", obj,
                                   principal=principal) as op:
            def attempt() -> Deleted:
                entry = self.get(kind, ring, oid)
                if entry.purging:
                    raise restore_conflict(f"deleted key {oid} is being purged")
                op.note(name=entry.name, deleted_by=entry.deleted_by)
                op.commit([*adapter.restore_ops(entry),
                           Delete(DELETED_PK, entry.sk, entry.version)])
                return entry
            entry = retry(attempt, self._attempts, what=f"deleted key {oid}")
        adapter.forget(entry)
        return entry

    def purge(self, adapters: Mapping[str, Adapter], *, principal: str,
              now: float | None = None, kind: str | None = None, ring: str | None = None,
              oid: str | None = None) -> dict[str, Any]:
        """Purge every entry past its window (or the one named, due or not); a summary:
        how many were purged, how many are still waiting, and the failures by entry."""
        at = self._clock() if now is None else now
        if oid is not None:
            if kind is None or ring is None:
                raise InvalidInput("name the deleted key by kind, ring and id", field="id")
            chosen = [self.get(kind, ring, oid)]
        else:
            chosen = [d for d in self.entries(kind, ring) if d.due(at)]
        purged, failed = 0, []
        for entry in chosen:
            adapter = adapters.get(entry.kind)
            if adapter is None:
                failed.append(entry.ref)
                log.error("no deletion adapter for ring kind %s", entry.kind)
                continue
            try:
                purged += self.purge_entry(entry, adapter, principal=principal)
            except Exception:  # noqa: BLE001 - one entry must not stop the others
                log.exception("purge of a deleted key failed")
                failed.append(entry.ref)
        waiting = 0 if oid is not None else \
            sum(1 for d in self.entries(kind, ring) if not d.due(at))
        return {"purged": purged, "waiting": waiting, "failed": failed}

    def purge_entry(self, entry: Deleted, adapter: Adapter, *, principal: str) -> int:
        """Destroy one deleted key: mark the entry (a restore can no longer win), delete its
        dependents, drop cached state, then delete the entry with its audit record. 1 if
        this call deleted the entry, 0 if another purge (or a restore) got there first."""
        marked = self._mark(entry)
        if marked is None:
            return 0
        count = adapter.purge_dependents(marked)
        adapter.forget(marked)
        record = self._audit.item(None, f"{marked.kind}.{PURGE_ACTION}",
                                  f"{marked.kind}/{marked.ring}/deleted/{marked.id}",
                                  principal=principal, name=marked.name, count=count)
        try:
            self._store.transact([Delete(DELETED_PK, marked.sk, marked.version), Put(record)])
        except StoreTransactionCancelled:
            return 0  # a racing purge deleted it
        self._audit.logged(record)
        return 1

    def _mark(self, entry: Deleted) -> Deleted | None:
        """The entry marked `purging` (CAS, re-read on a lost race); None once it is gone."""
        current: Deleted | None = entry
        for _ in range(self._attempts):
            if current is None:
                return None
            if current.purging:
                return current
            try:
                item = self._store.update_if_version(replace(current, purging=True).to_item(),
                                                     current.version)
                return Deleted.from_item(item)
            except StoreConditionFailed:
                got = self._store.get(DELETED_PK, current.sk)
                current = None if got is None else Deleted.from_item(got)
        raise Conflict("the deleted key is being changed concurrently; retry", reason="busy")
