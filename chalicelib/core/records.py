"""Records: how every domain reads and changes its store items.

- Placement: a record is used only where it is found. Its place (pk, sk) names the object and
  its HSM context, never its contents; a record whose contents disagree with its place is a
  `MisplacedRecord`: logged as an error and audited (by the operation that met it), left out
  of lists, a generic 500 when addressed directly. One policy, every domain.
- `retry`: the one loop for optimistic transactions (Settings.retry_attempts).
- `scan`: the one paged partition scan.
- Name claims: a unique name is an item of its own, written in the same transaction as the
  object; a rename deletes the old claim and puts the new one in one transaction.
- Ring head: one item per ring, changed only by compare-and-swap, for ring-wide rules (a slot
  state, "one active key", "at most N keys").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from chalicelib.errors import (
    Conflict,
    MisplacedRecord,
    StoreConditionFailed,
    StoreTransactionCancelled,
)
from chalicelib.store import Check, Delete, Put, Store, Update

T = TypeVar("T")
HEAD_SK = "head"
CLAIM_PREFIX = "name#"
PAGE = 100


@dataclass(frozen=True)
class Place:
    """Where a record was found: the only source of its identity."""

    pk: str
    sk: str

    def misplaced(self, why: str) -> MisplacedRecord:
        """The error for a record here that is not what its place says (never the client's
        doing: says where, never what the record holds)."""
        return MisplacedRecord(f"the record at {self.pk} / {self.sk} {why}",
                               (self.pk, self.sk))


def retry(attempt: Callable[[], T], attempts: int, *, what: str = "the object") -> T:
    """Run `attempt` until it returns; a failed store condition (another writer won) means
    read again and retry, up to `attempts` times, then a clear Conflict (reason busy)."""
    for _ in range(attempts):
        try:
            return attempt()
        except (StoreConditionFailed, StoreTransactionCancelled):
            continue
    raise Conflict(f"{what} is being changed concurrently; retry", reason="busy")


def scan(store: Store, pk: str, prefix: str = "", *, page: int = PAGE) \
        -> Iterator[dict[str, Any]]:
    """Every item of partition `pk` whose sort key starts with `prefix`, in sort-key order,
    read a page at a time."""
    cursor = None
    while True:
        got = store.query(pk, prefix, limit=page, cursor=cursor)
        yield from got.items
        if not got.cursor:
            return
        cursor = got.cursor


def parsed(items: Iterator[dict[str, Any]], parse: Callable[[dict[str, Any]], T],
           on_misplaced: Callable[[MisplacedRecord], None]) -> Iterator[T]:
    """`parse` each item (it raises MisplacedRecord for one that is not what its place
    says); a misplaced one is reported to `on_misplaced` and left out. The one way every
    list meets a misplaced record."""
    for item in items:
        try:
            yield parse(item)
        except MisplacedRecord as exc:
            if exc.where is None:
                exc.where = (str(item.get("pk")), str(item.get("sk")))
            on_misplaced(exc)


# ---- name claims ----------------------------------------------------------------------------

def claim(pk: str, name: str, owner: str) -> Put:
    """The claim of `name` in partition pk by `owner` (fails if the name is taken)."""
    return Put({"pk": pk, "sk": CLAIM_PREFIX + name, "id": owner})


def release(pk: str, name: str) -> Delete:
    """Release a claim (it must exist)."""
    return Delete(pk, CLAIM_PREFIX + name)


def claimed(store: Store, pk: str, name: str) -> str | None:
    """The owner of a claimed name, or None."""
    item = store.get(pk, CLAIM_PREFIX + name)
    return None if item is None else str(item.get("id") or "")


def rename(pk: str, old: str, new: str, owner: str) -> list[Put | Delete]:
    """The operations moving `owner`'s claim from `old` to `new` (one transaction)."""
    return [release(pk, old), claim(pk, new, owner)]


# ---- ring head ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Head:
    """A ring's head item as read: its state and the version a CAS must match (0: absent)."""

    pk: str
    state: dict[str, Any]
    version: int

    def replaced(self, state: dict[str, Any]) -> Put | Update:
        """The compare-and-swap write of a new state (a Put-if-absent for a new head)."""
        item = {"pk": self.pk, "sk": HEAD_SK, **state}
        return Put(item) if self.version == 0 else Update(item, self.version)

    def unchanged(self) -> Check:
        """A transaction condition: the head is still as read."""
        return Check(self.pk, HEAD_SK, self.version or None)


def read_head(store: Store, pk: str) -> Head:
    """The ring's head (an empty state with version 0 when the ring has none yet)."""
    item = store.get(pk, HEAD_SK)
    if item is None:
        return Head(pk, {}, 0)
    state = {k: v for k, v in item.items() if k not in ("pk", "sk", "version")}
    return Head(pk, state, int(item["version"]))
