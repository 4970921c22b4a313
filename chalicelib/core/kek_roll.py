"""The KEK roll: every stored key blob re-wrapped under KEK version N, the keys unchanged.

Every secret is stored as a `WrappedKey` dict somewhere inside a store item (a version
record, a ring key, a sealed field's key, ...), naming the KEK it is wrapped under. A roll
walks the whole store (`Store.scan_all`), finds every such dict in every item (nested dicts
and lists), has the HSM re-wrap the ones not yet under version N (same key, same binding
context, tag checked first and made again with version N's bind key) and writes the item
back with `update_if_version`: a live write in between wins, and the item is read again and
redone (`records.retry`). Items without blobs, or with every blob under N already, are not
written.

Partitions that never hold a blob (`NO_BLOBS`: the audit log) are passed over whole, with
a cursor past them: a live day's audit partition grows with the traffic.

Batched and resumable: the scan cursor and the counts live in a progress item of their own
(`kek-roll` / `v<N>`), written with each batch's audit record in one transaction, so a run
stopped anywhere continues from the last batch; a batch redone finds its blobs under N
already. A run after a finished pass starts a new pass (which changes nothing when nothing
is left). Audited: the start, every batch with its counts, the finish, and each item
written back, by a record of its own (naming the item) in the item's own transaction, so no
re-wrap is ever unaudited; never material.

A blob that fails its check is reported (logged and audited as a misplaced record, listed
in the progress) and left as it is, never re-tagged: one whose tag does not verify (edited),
one under a KEK the token does not hold, one that is malformed, and one whose context names
another ring kind or ring than the partition it is found in (copied between rings). A blob
copied within its ring keeps its own context, so a roll never makes it valid where it was
copied.

Caches: a process may hold a blob it read before the roll (the transit keys' version cache keeps
a blob under an older KEK for `cache_seconds` only); the old KEK must exist until that bound
has passed after the roll finished.

`destroy` is two-phase. It first retires the old KEK (`Hsm.retire_kek`: the token refuses to
wrap under it, in every process, at once), the barrier that keeps blobs from coming back
under it: new blobs are wrapped under the configured version, a blob stored again goes
through `Hsm.rebind`, which re-wraps it under the configured version, and a process still
configured for the old one can wrap nothing. Only once `destroy_wait` has passed since the
retirement (requests in flight, caches) and since the finished pass (restores of older
state: see KEYFRONT_KEK_DESTROY_AFTER_SECONDS), unless forced, does it make the full check
(any dict naming the KEK counts: fail closed) and destroy. Never the configured version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from chalicelib.config import Settings
from chalicelib.core.audit import AuditLog, Operation, allow_details
from chalicelib.core.kinds import KINDS
from chalicelib.core.records import PAGE, Place, retry
from chalicelib.errors import (
    BindingError,
    Conflict,
    InvalidInput,
    InvalidState,
    NotFound,
    StoreTransactionCancelled,
    Unavailable,
)
from chalicelib.hsm import Hsm, WrappedKey
from chalicelib.hsm.labels import kek_label, kek_version_of
from chalicelib.store import Item, Page, Put, Store, Update, cursor_past

PROGRESS_PK = "kek-roll"  # deploy.KEK_ROLL_PARTITIONS: the admin function writes it
MAX_PROBLEMS = 100  # places kept in the progress and in a check's answer
WRAPPED_FIELDS = frozenset(WrappedKey.__dataclass_fields__)
MAX_VERSION = 10**9 - 1  # a KEK label's version has at most 9 digits (hsm.labels)
# Partitions passed over whole: audit records hold allow-listed details only (never a key),
# and a live day's partition grows with the traffic, so a scan through it would chase it.
NO_BLOBS = ("audit#",)

allow_details("items", "rewritten", "rewrapped", "current", "failed", "done",
              "kek_version", "forced")

Path = tuple[str | int, ...]


# ---- pure rules -----------------------------------------------------------------------------

def is_wrapped(value: Any) -> bool:
    """Whether `value` is a stored WrappedKey (a dict of exactly its fields)."""
    return isinstance(value, dict) and value.keys() == WRAPPED_FIELDS


def find_labelled(value: Any, path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, dict) of every dict inside `value` that names a KEK (`kek_label`), whatever
    its other fields: what a destroy must not leave behind (fails closed on odd blobs)."""
    if isinstance(value, dict) and "kek_label" in value:
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from find_labelled(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from find_labelled(v, (*path, i))


def find_wrapped(value: Any, path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, dict) of every stored WrappedKey inside `value` (nested dicts and lists)."""
    if is_wrapped(value):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from find_wrapped(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from find_wrapped(v, (*path, i))


def replaced(value: Any, path: Path, new: Any) -> Any:
    """`value` with the element at `path` replaced by `new` (copies along the path only)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    out = list(value)
    out[head] = replaced(out[head], rest, new)  # type: ignore[index]
    return out


def path_text(path: Path) -> str:
    """A path as text for reports: "versions.3.wrapped"."""
    return ".".join(str(p) for p in path)


def home(item: dict[str, Any], path: Path) -> str:
    """The partition a blob at `path` of `item` belongs to: that of the innermost record on
    its way that names one. An item's own blobs belong to its partition; a record moved
    verbatim into another item (a deleted key's entry keeps its records, each with its pk)
    keeps its own."""
    pk = str(item["pk"])
    value: Any = item
    for step in path:
        value = value[step]
        if isinstance(value, dict) and isinstance(value.get("pk"), str):
            pk = value["pk"]
    return pk


def place_problem(pk: str, context: object) -> str | None:
    """Why a blob bound to `context` does not belong in partition `pk`, or None.

    Every domain binds its blobs to "<kind>/<ring>/..." and stores them in partitions
    "<kind's store prefix>#<ring>[#...]": a blob elsewhere was copied there.
    """
    if not isinstance(context, str):
        return "holds a key blob without a context"
    kind_name, _, rest = context.partition("/")
    kind = KINDS.get(kind_name)
    if kind is None or not kind.store_prefix:
        return "holds a key blob bound to no ring kind"
    prefix = f"{kind.store_prefix}#"
    if not pk.startswith(prefix):
        return "holds a key blob of another ring kind"
    tail = pk[len(prefix):]
    rings = [tail, *(tail[:i] for i, c in enumerate(tail) if c == "#")]
    if not any(ring and rest.startswith(ring + "/") for ring in rings):
        return "holds a key blob of another ring"
    return None


def check_version(value: object, name: str = "to_version") -> int:
    """A KEK version as given by an operator: an int from 1 to MAX_VERSION."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise InvalidInput(f"{name} must be a KEK version, 1 to {MAX_VERSION}", field=name)
    return value


# ---- results --------------------------------------------------------------------------------

@dataclass
class Counts:
    """What a pass met: items read and written back, blobs re-wrapped, already under the
    target KEK, and reported (left as they are)."""

    items: int = 0
    rewritten: int = 0
    rewrapped: int = 0
    current: int = 0
    failed: int = 0

    def add(self, other: Counts) -> None:
        """Add another count to this one."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RollStatus:
    """A pass of the roll to `to_version`: where it is and what it met so far."""

    to_version: int
    done: bool = False
    cursor: str | None = None
    counts: Counts = field(default_factory=Counts)
    problems: list[dict[str, str]] = field(default_factory=list)
    started_at: int = 0
    finished_at: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The status as an admin event's answer (the cursor is internal)."""
        out = asdict(self)
        out.pop("cursor")
        return out

    @classmethod
    def from_item(cls, item: Item) -> RollStatus:
        """The status stored in a progress item."""
        return cls(to_version=int(item["to_version"]), done=bool(item["done"]),
                   cursor=item.get("cursor"), counts=Counts(**item.get("counts", {})),
                   problems=list(item.get("problems", [])),
                   started_at=int(item.get("started_at", 0)),
                   finished_at=item.get("finished_at"))

    def item(self) -> Item:
        """The progress item of this status."""
        return {"pk": PROGRESS_PK, "sk": progress_sk(self.to_version),
                **asdict(self)}


def progress_sk(version: int) -> str:
    """The sort key of the progress item of a roll to `version`."""
    return f"v{version:09d}"


def retired_sk(version: int) -> str:
    """The sort key of the item that records when KEK `version` was retired."""
    return f"retired#v{version:09d}"


def destroy_wait(settings: Settings) -> float:
    """The least time between a finished pass (and the retirement) and a destroy: the
    configured one, never below the cache bound."""
    return max(float(settings.kek_destroy_after_seconds), settings.cache_seconds)


# ---- the roll -------------------------------------------------------------------------------

class KekRoll:
    """Re-wraps every stored blob under a KEK version, checks, and destroys old KEKs."""

    def __init__(self, store: Store, hsm: Hsm, audit: AuditLog, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._settings = settings
        self._clock = clock

    def _target(self, to_version: object) -> int:
        """The version a roll goes to: the configured one, whose KEK exists."""
        version = check_version(to_version)
        if version != self._settings.kek_version:
            raise InvalidInput(
                f"new blobs are wrapped under KEK version {self._settings.kek_version}: set "
                f"KEYFRONT_KEK_VERSION={version} (and deploy it) before rolling to it",
                field="to_version")
        if not self._hsm.kek_exists(version):
            raise InvalidState(f"KEK version {version} does not exist on the token: create "
                               "it first (keyfront hsm init)")
        return version

    def run(self, to_version: object, *, max_items: int | None = None,
            principal: str) -> RollStatus:
        """Continue (or start) the roll to `to_version` for at most `max_items` items
        (None: to the end of the pass); the status after this run (`done` when the pass
        reached the end of the store). Conflict (busy) if another run moved the progress."""
        version = self._target(to_version)
        if max_items is not None and (isinstance(max_items, bool)
                                      or not isinstance(max_items, int) or max_items < 1):
            raise InvalidInput("max_items must be a positive integer", field="max_items")
        obj = f"kek/v{version}"
        item = self._store.get(PROGRESS_PK, progress_sk(version))
        if item is None or item.get("done"):
            status = RollStatus(to_version=version, started_at=int(self._clock()))
            fresh = status.item()
            self._progress("kek.rewrap.start", obj, principal, {"to_version": version},
                           Put(fresh) if item is None else Update(fresh, item["version"]))
            expected = 1 if item is None else item["version"] + 1
        else:
            status, expected = RollStatus.from_item(item), item["version"]
        left = max_items
        while left is None or left > 0:
            items, cursor = self._page(status.cursor,
                                       PAGE if left is None else min(PAGE, left))
            batch = Counts()
            for found in items:
                batch.add(self._roll_item(found, version, status, principal))
            status.counts.add(batch)
            status.cursor = cursor
            status.done = cursor is None
            if status.done:
                status.finished_at = int(self._clock())
            self._progress("kek.rewrap.finish" if status.done else "kek.rewrap.batch", obj,
                           principal, {"to_version": version, "done": status.done,
                                       **asdict(batch)}, Update(status.item(), expected))
            expected += 1
            if left is not None:
                left -= max(1, len(items))  # a partition passed over counts as one
            if status.done:
                break
        return status

    def _progress(self, action: str, obj: str, principal: str, details: dict[str, Any],
                  write: Put | Update) -> None:
        """Write the progress item with its audit record, in one transaction; Conflict
        (busy) when another run of the roll moved it meanwhile."""
        try:
            with self._audit.operation(None, action, obj, principal=principal) as op:
                op.note(**details)
                op.commit([write])
        except StoreTransactionCancelled as exc:
            raise Conflict("another run of this KEK roll moved its progress; run it again "
                           "to continue", reason="busy") from exc

    def _page(self, cursor: str | None, limit: int) -> tuple[list[Item], str | None]:
        """The next items of the whole-store scan and the cursor after them; at the first
        item of a NO_BLOBS partition the page ends with a cursor past that partition."""
        page: Page = self._store.scan_all(cursor, limit=limit)
        for n, item in enumerate(page.items):
            if str(item["pk"]).startswith(NO_BLOBS):
                return page.items[:n], cursor_past(str(item["pk"]))
        return page.items, page.cursor

    def _roll_item(self, item: Item, version: int, status: RollStatus,
                   principal: str) -> Counts:
        """Re-wrap the blobs of one item not under `version` and write it back (read again
        and redone when a live write changed it meanwhile)."""
        target = kek_label(self._settings, version)
        place = Place(str(item["pk"]), str(item["sk"]))
        latest: list[Item | None] = [item]

        def attempt() -> Counts:
            current = latest[0]
            counts = Counts(items=1)
            if current is None:
                return counts  # deleted meanwhile
            new = current
            problems: list[tuple[Path, str]] = []
            for path, blob in find_wrapped(current):
                if blob.get("kek_label") == target:
                    counts.current += 1
                    continue
                problem = place_problem(home(current, path), blob.get("context"))
                if problem is None:
                    try:
                        wrapped = WrappedKey.from_dict(blob)
                        rolled = self._hsm.rewrap(wrapped, wrapped.context, version)
                    except (KeyError, TypeError, ValueError):
                        problem = "holds a malformed key blob"
                    except BindingError:
                        problem = "holds a key blob that fails its binding check"
                    except Unavailable:
                        if not self._kek_held(blob.get("kek_label")):
                            problem = "holds a key blob under a KEK the token does not hold"
                        else:
                            raise
                if problem is not None:
                    problems.append((path, problem))
                    continue
                new = replaced(new, path, rolled.to_dict())
                counts.rewrapped += 1
            if counts.rewrapped:
                # the item's write and its own audit record, in one transaction: no re-wrap
                # is ever unaudited, and the record names the item
                op = Operation(self._audit, None, "kek.rewrap.item",
                               f"store/{place.pk}/{place.sk}", principal)
                op.note(to_version=version, count=counts.rewrapped)
                try:
                    op.commit([Update(new, current["version"])])
                except StoreTransactionCancelled:
                    latest[0] = self._store.get(place.pk, place.sk)
                    raise
                counts.rewritten = 1
            for path, problem in problems:
                self._report(place, path, problem, status, principal)
            counts.failed = len(problems)
            return counts

        return retry(attempt, self._settings.retry_attempts, what=f"the item {place.pk}")

    def _kek_held(self, label: object) -> bool:
        """Whether the token holds the KEK a blob names (False for a label of no version)."""
        version = kek_version_of(self._settings, str(label))
        return version is not None and self._hsm.kek_exists(version)

    def _report(self, place: Place, path: Path, problem: str, status: RollStatus,
                principal: str) -> None:
        """A blob left as it is: logged and audited as a misplaced record, kept in the
        progress (the first MAX_PROBLEMS)."""
        where = path_text(path)
        exc = place.misplaced(f"{problem} at {where}")
        self._audit.refused(None, "kek.rewrap.blob", f"store/{place.pk}/{place.sk}", exc,
                            {"to_version": status.to_version}, principal=principal)
        if len(status.problems) < MAX_PROBLEMS:
            status.problems.append({"pk": place.pk, "sk": place.sk, "path": where,
                                    "problem": problem})

    def check(self, to_version: object) -> dict[str, Any]:
        """A full scan that changes nothing: blobs by the KEK they name, and the places
        (the first MAX_PROBLEMS) of those not under `to_version`."""
        version = check_version(to_version)
        target = kek_label(self._settings, version)
        by_kek: dict[str, int] = {}
        items = 0
        stale: list[dict[str, str]] = []
        for item in self._everything():
            items += 1
            for path, blob in find_labelled(item):
                label = str(blob.get("kek_label"))
                by_kek[label] = by_kek.get(label, 0) + 1
                if label != target and len(stale) < MAX_PROBLEMS:
                    stale.append({"pk": str(item["pk"]), "sk": str(item["sk"]),
                                  "path": path_text(path), "kek_label": label})
        others = sum(n for label, n in by_kek.items() if label != target)
        return {"to_version": version, "items": items, "blobs": by_kek, "other_kek": others,
                "done": others == 0, "places": stale}

    def _everything(self) -> Iterator[Item]:
        """Every item that may hold blobs (NO_BLOBS partitions passed over)."""
        cursor = None
        while True:
            items, cursor = self._page(cursor, PAGE)
            yield from items
            if cursor is None:
                return

    def destroy(self, version: object, *, principal: str, force: bool = False) \
            -> dict[str, Any]:
        """Destroy the KEK and bind key of `version` on the token, in two phases.

        First call: retire it (`Hsm.retire_kek`: the token refuses to wrap under it, for
        every process, at once) and record when; nothing is destroyed yet. A later call,
        once both the retirement and the finished pass of the roll to the configured version
        are `destroy_wait` old, makes a full check (any dict naming the KEK counts) and
        destroys. `force` skips the waits (never the retirement nor the check). Never the
        configured version; InvalidState while blobs remain or too early, NotFound when the
        token holds no such KEK. Audited either way (with `forced`).
        """
        version = check_version(version, "version")
        if not isinstance(force, bool):
            raise InvalidInput("force must be true or false", field="force")
        if version == self._settings.kek_version:
            raise InvalidState("the configured KEK version (KEYFRONT_KEK_VERSION) is never "
                               "destroyed")
        label = kek_label(self._settings, version)
        obj = f"kek/v{version}"
        now = self._clock()
        wait = destroy_wait(self._settings)
        retired = self._store.get(PROGRESS_PK, retired_sk(version))
        just_retired = retired is None
        if retired is None or not self._hsm.kek_retired(version):
            with self._audit.operation(None, "kek.retire", obj, principal=principal) as op:
                op.note(kek_version=version)
                if not self._hsm.retire_kek(version):
                    raise NotFound(f"the token holds no KEK version {version}")
                if retired is None:
                    retired = {"pk": PROGRESS_PK, "sk": retired_sk(version),
                               "kek_version": version, "retired_at": int(now)}
                    try:
                        op.commit([Put(retired)])
                    except StoreTransactionCancelled:  # retired meanwhile by another run
                        retired = self._store.get(PROGRESS_PK, retired_sk(version)) or retired
        after = int(retired["retired_at"]) + wait
        if just_retired and not force:
            return {"destroyed": [], "retired": True, "destroy_after": int(after)}
        with self._audit.operation(None, "kek.destroy", obj, principal=principal) as op:
            op.note(kek_version=version, forced=force)
            if not force:
                finished = self._store.get(PROGRESS_PK, progress_sk(self._settings.kek_version))
                if not finished or not finished.get("done"):
                    raise InvalidState(
                        f"no finished pass of the roll to KEK version "
                        f"{self._settings.kek_version}: run keyfront hsm rewrap first")
                after = max(after, int(finished["finished_at"]) + wait)
                if now < after:
                    raise InvalidState(
                        f"KEK version {version} is retired; it may be destroyed from "
                        f"{int(after)} (Unix time): KEYFRONT_KEK_DESTROY_AFTER_SECONDS after "
                        "the retirement and the roll's finished pass (force overrides)",
                        reason="too_early")
            left = sum(1 for item in self._everything() for _, blob in find_labelled(item)
                       if blob.get("kek_label") == label)
            if left:
                op.note(count=left)
                raise InvalidState(f"{left} stored key blobs are still wrapped under KEK "
                                   f"version {version}: roll them first (keyfront hsm rewrap)")
            destroyed = self._hsm.destroy_kek(version)
            if not destroyed:
                raise NotFound(f"the token holds no KEK version {version}")
            op.note(count=len(destroyed))
            return {"destroyed": destroyed, "retired": True, "destroy_after": int(after)}
