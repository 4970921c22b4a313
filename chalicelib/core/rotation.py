"""Scheduled rotation: a rotation period per key, and the index the scheduler reads.

Every scheduled key has ONE index item in a partition of its own, so the scheduler finds due
keys without reading any ring:

    pk "rotation"   sk "{kind}#{ring}#{target}"   period (seconds), next_due (epoch seconds),
                                                  incarnation (which key it was set on)

The item is what the scheduler goes by (a key without one is not scheduled); a domain may
keep a copy of the period in its key record, written in the same transaction (so a read of
the key shows it without reading the index). The kinds that rotate have no "#" in their
ring ids, so the sort key names its key unambiguously; it is the only source of the key's
identity (records.Place). `incarnation` names the one key the period was set on (a key id
that a re-created name does not reuse), so a schedule never applies to a later key of the
same name.

Every change goes through a compare-and-swap on the item's version, in the same transaction
as what it is about:
- setting a period: the item's put/update/delete, the key's record (changed, or checked
  unchanged), the audit record;
- a scheduled rotation: the key's new version and the item's next_due moved, conditional on
  the item's version AS READ: of two schedulers racing, one commits, the other finds the item
  changed and stops (`Superseded`), so a due key rotates exactly once;
- a rotation by a caller: next_due moved to now + period (as Vault: auto rotation counts from
  the last rotation), in the rotation's own transaction.

The rules (`parse_period`, `due`) are pure functions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from chalicelib.core.audit import AuditLog, allow_details
from chalicelib.core.records import Place, parsed, scan
from chalicelib.errors import (
    Conflict,
    InvalidInput,
    KeyfrontError,
    MisplacedRecord,
    StoreTransactionCancelled,
)
from chalicelib.store import Check, Delete, Op, Put, Store, Update

log = logging.getLogger("keyfront.rotation")

PK = "rotation"
MIN_PERIOD = 3600  # as Vault's transit: at least an hour
MAX_PERIOD = 100 * 365 * 86400  # a bound, so the times stay integers a store can hold
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d{1,10})([dhms]))")

allow_details("period")


class Superseded(Conflict):
    """The schedule changed since it was read (another scheduler rotated the key, a caller
    rotated it or changed its period): the due rotation is not this one's to do."""

    def __init__(self) -> None:
        super().__init__("the rotation schedule changed meanwhile", reason="superseded")


def parse_period(value: object, field: str = "period") -> int:
    """A rotation period in seconds from an integer of seconds, a string of digits, or a
    duration such as "24h", "30d" or "1h30m" (units d, h, m, s). 0 turns rotation off;
    otherwise at least MIN_PERIOD. InvalidInput for anything else."""
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and value.isascii():
        text = value.strip()
        if text.isdigit() and len(text) <= 12:
            seconds = int(text)
        elif text and _DURATION.sub("", text) == "":
            seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(text))
    if seconds is None or seconds < 0:
        raise InvalidInput(f"{field} must be a number of seconds or a duration such as "
                           "\"24h\" or \"30d\" (0 turns rotation off)", field=field)
    if seconds and not MIN_PERIOD <= seconds <= MAX_PERIOD:
        raise InvalidInput(f"{field} must be 0 (off) or between {MIN_PERIOD} seconds (1h) "
                           f"and {MAX_PERIOD} seconds", field=field)
    return seconds


@dataclass(frozen=True)
class Entry:
    """One scheduled key's index item, as read (`version` is the CAS the next change
    matches)."""

    kind: str
    ring: str
    target: str
    period: int
    next_due: int
    incarnation: str
    version: int
    last_rotated: int | None = None

    @property
    def sk(self) -> str:
        """The item's sort key."""
        return sort_key(self.kind, self.ring, self.target)

    def due(self, now: float) -> bool:
        """Is the key's rotation due at `now`?"""
        return due(self.next_due, now)

    def moved(self, now: float) -> Update:
        """The CAS write of a rotation done at `now`: next_due = now + period."""
        return Update(_item(self.kind, self.ring, self.target, self.period,
                            int(now) + self.period, self.incarnation, int(now)),
                      self.version)

    def unchanged(self) -> Check:
        """A transaction condition: the item is still as read."""
        return Check(PK, self.sk, self.version)

    def dropped(self) -> Delete:
        """The delete of this item, as read."""
        return Delete(PK, self.sk, self.version)

    def view(self) -> dict[str, Any]:
        """What the admin function shows."""
        return {"kind": self.kind, "ring": self.ring, "id": self.target,
                "period_seconds": self.period, "next_due": self.next_due,
                "last_rotated": self.last_rotated}


def due(next_due: int, now: float) -> bool:
    """A rotation is due once its time has come."""
    return next_due <= now


def sort_key(kind: str, ring: str, target: str) -> str:
    """The index item's sort key of one key."""
    return f"{kind}#{ring}#{target}"


def _item(kind: str, ring: str, target: str, period: int, next_due: int, incarnation: str,
          last_rotated: int | None) -> dict[str, Any]:
    item: dict[str, Any] = {"pk": PK, "sk": sort_key(kind, ring, target), "period": period,
                            "next_due": next_due, "incarnation": incarnation}
    if last_rotated is not None:
        item["last_rotated"] = last_rotated
    return item


def from_item(item: dict[str, Any]) -> Entry:
    """The entry of an index item; its key comes from its sort key. MisplacedRecord for an
    item that is not an index item of this shape."""
    sk = item.get("sk")
    here = Place(PK, str(sk))
    parts = sk.split("#", 2) if isinstance(sk, str) else []
    if item.get("pk") != PK or len(parts) != 3 or not all(parts):
        raise here.misplaced("is not in its place")
    try:
        last = item.get("last_rotated")
        entry = Entry(kind=parts[0], ring=parts[1], target=parts[2],
                      period=int(item["period"]), next_due=int(item["next_due"]),
                      incarnation=str(item["incarnation"]), version=int(item["version"]),
                      last_rotated=None if last is None else int(last))
    except (KeyError, TypeError, ValueError) as exc:
        raise here.misplaced("is malformed") from exc
    if not MIN_PERIOD <= entry.period <= MAX_PERIOD:
        raise here.misplaced("is malformed")
    return entry


class Schedule:
    """The index over a store: read one entry, read them all, and the writes that go into a
    domain's transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, kind: str, ring: str, target: str) -> Entry | None:
        """The key's entry, or None when it is not scheduled."""
        item = self._store.get(PK, sort_key(kind, ring, target))
        return None if item is None else from_item(item)

    def still(self, entry: Entry) -> None:
        """Superseded unless the entry is still as read (another scheduler or a caller has
        rotated the key, or its period changed)."""
        current = self.get(entry.kind, entry.ring, entry.target)
        if current is None or current.version != entry.version:
            raise Superseded()

    def entries(self, on_misplaced: Callable[[MisplacedRecord], None] | None = None) \
            -> Iterator[Entry]:
        """Every entry, a page at a time (records.scan); an item that is not an entry is
        logged as an error, reported to `on_misplaced` and left out."""
        def misplaced(exc: MisplacedRecord) -> None:
            log.error("rotation index: %s", exc.message)
            if on_misplaced is not None:
                on_misplaced(exc)
        return parsed(scan(self._store, PK), from_item, misplaced)

    def set_ops(self, kind: str, ring: str, target: str, period: int, incarnation: str,
                now: float) -> tuple[list[Op], Entry | None]:
        """The writes setting the key's period (0: off) and the entry they leave, against
        the entry as read now: conditional, so a racing change fails the transaction."""
        current = self.get(kind, ring, target)
        if period == 0:
            return ([current.dropped()] if current else [Check(PK, sort_key(kind, ring, target))],
                    None)
        last = current.last_rotated if current and current.incarnation == incarnation else None
        # a changed period counts from the last rotation, else from now (Vault: from the
        # key's last rotation)
        start = int(now) if last is None else last
        item = _item(kind, ring, target, period, max(start + period, int(now)), incarnation,
                     last)
        op: Op = Put(item) if current is None else Update(item, current.version)
        return [op], Entry(kind, ring, target, period, item["next_due"], incarnation,
                           1 if current is None else current.version + 1, last)

    def pushed_ops(self, kind: str, ring: str, target: str, incarnation: str,
                   now: float) -> list[Op]:
        """For a rotation a caller asked for: next_due moved to now + period (nothing when
        the key is not scheduled, or the entry was set on another key of the name)."""
        try:
            current = self.get(kind, ring, target)
        except MisplacedRecord:
            return []  # the scheduler reports it; a caller's rotation does not depend on it
        if current is None or current.incarnation != incarnation:
            return []
        return [current.moved(now)]


def drop(audit: AuditLog, entry: Entry, action: str, obj: str, *, principal: str) -> str:
    """Remove the entry of a key that is gone (audited as the period set to 0): "dropped";
    Superseded when the entry changed since it was read."""
    with audit.operation(None, action, obj, principal=principal) as op:
        op.note(period=0)
        try:
            op.commit([entry.dropped()])
        except StoreTransactionCancelled:
            raise Superseded() from None
    return "dropped"


# ---- the scheduler --------------------------------------------------------------------------

class Rotatable(Protocol):
    """What a domain whose keys rotate offers the admin function and the scheduler; `target`
    is a key of the ring in the domain's own terms."""

    def set_rotation(self, ring: str, target: str, period: int, *,
                     principal: str) -> Entry | None:
        """Set the key's period (0: off), audited under `principal`; NotFound if no key."""

    def rotation(self, ring: str, target: str) -> Entry | None:
        """The key's schedule (None: not scheduled); NotFound if there is no such key."""

    def rotate_due(self, entry: Entry, now: float, *, principal: str) -> str:
        """Rotate the key of a due entry, moving its next_due in the same transaction,
        conditional on the entry as read: "rotated"; "dropped" when the key is gone (the
        entry is removed); Superseded when the entry changed meanwhile."""


def run_due(store: Store, domains: Mapping[str, Rotatable], now: float, *,
            principal: str) -> dict[str, Any]:
    """Rotate every due key of the index (read a page at a time), each through its domain.
    A failure on one key is reported in the summary and does not stop the others; a key
    another scheduler (or a caller) rotated meanwhile is counted as skipped."""
    out: dict[str, Any] = {"scheduled": 0, "due": 0, "rotated": 0, "skipped": 0,
                           "dropped": 0, "failed": []}

    def misplaced(exc: MisplacedRecord) -> None:
        out["failed"].append({"item": exc.where[1] if exc.where else "",
                              "error": exc.code, "message": "malformed index item"})

    for entry in Schedule(store).entries(misplaced):
        out["scheduled"] += 1
        if not entry.due(now):
            continue
        out["due"] += 1
        where = {"kind": entry.kind, "ring": entry.ring, "id": entry.target}
        domain = domains.get(entry.kind)
        try:
            if domain is None:
                raise InvalidInput(f"keys of kind {entry.kind} do not rotate")
            result = domain.rotate_due(entry, now, principal=principal)
            out["rotated" if result == "rotated" else "dropped"] += 1
        except Superseded:
            out["skipped"] += 1
        except KeyfrontError as exc:
            out["failed"].append({**where, "error": exc.code, "message": exc.message})
        except Exception:  # noqa: BLE001 - one key's failure must not stop the others
            log.exception("scheduled rotation of %s/%s/%s failed", entry.kind, entry.ring,
                          entry.target)
            out["failed"].append({**where, "error": "internal",
                                  "message": "the rotation failed; see the logs"})
    return out
