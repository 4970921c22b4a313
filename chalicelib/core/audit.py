"""Audit records: every change of state and every use of a key, never material or plaintext."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from chalicelib.core.tokens import Caller
from chalicelib.errors import (
    Forbidden,
    InvalidInput,
    KeyfrontError,
    MisplacedRecord,
    StoreConditionFailed,
    Unavailable,
)
from chalicelib.store import MAX_TRANSACTION_OPS, Op, Page, Put, Store, cursor_after

log = logging.getLogger("keyfront.audit")

# Only these detail keys are recorded: an allow-list keeps secrets out by construction.
# Domains extend it by declaration (`allow_details`), never per call.
SAFE_DETAIL_KEYS: set[str] = {
    "key_version", "to_version", "from_version", "kid", "algorithm", "type", "slot",
    "bits", "reason", "count", "name", "ring_kind",
}
MAX_DETAIL_TEXT = 256  # longest string detail kept: a bad value never costs the record
MAX_DETAIL_ITEMS = 16  # longest list of strings kept (names a change reached, say)
MAX_OBJECT_CHARS = 512  # audit object names carry client-chosen ids


def allow_details(*keys: str) -> None:
    """Declare more detail keys safe to record (a domain's own, never secrets)."""
    SAFE_DETAIL_KEYS.update(keys)


def _safe_details(details: dict[str, Any]) -> dict[str, Any]:
    """The allowed details the store can hold: out-of-range integers, long strings, long
    lists and other types are dropped."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        if k not in SAFE_DETAIL_KEYS:
            continue
        if v is None or isinstance(v, bool) \
                or (isinstance(v, int) and -(10**38) < v < 10**38) \
                or _text(v):
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) <= MAX_DETAIL_ITEMS \
                and all(_text(x) for x in v):
            out[k] = list(v)
    return out


def _text(v: Any) -> bool:
    """A string detail the store can hold."""
    return isinstance(v, str) and len(v) <= MAX_DETAIL_TEXT and _utf8(v)


def _utf8(text: str) -> bool:
    return text.isascii() or _escape(text) == text


def _escape(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_AUDITED = "_keyfront_audited"


def mark_audited(exc: BaseException) -> None:
    """Remember that this refusal or failure has its audit record (so that the request's last
    line of defence does not write a second one)."""
    setattr(exc, _AUDITED, True)


def was_audited(exc: BaseException) -> bool:
    """Has this refusal or failure been audited already?"""
    return bool(getattr(exc, _AUDITED, False))


def _neutral_code(exc: BaseException) -> str:
    """The code of the error's class in the one hierarchy (a dialect's subclass may carry
    its vendor's code; the record keeps the neutral one)."""
    for cls in type(exc).__mro__:
        if issubclass(cls, KeyfrontError) and cls.__module__ == KeyfrontError.__module__:
            return cls.code
    return "internal_error"


def object_name(name: str) -> str:
    """An audit object name that can always be written: cut to MAX_OBJECT_CHARS, anything
    that is not valid UTF-8 (a lone surrogate from a client's id) escaped."""
    name = name[:MAX_OBJECT_CHARS]
    return name if name.isascii() else _escape(name)


# The record fields repeated in the log line.
_LOGGED = ("time", "principal", "action", "object", "outcome", "request_id")


def _stamps(now: float) -> tuple[str, str, str]:
    """The UTC day, the sk time and the record time of `now`, from one datetime.

    The same strings as f"{stamp:%Y-%m-%d}", f"{stamp:%Y-%m-%dT%H:%M:%S.%fZ}" and
    stamp.isoformat() with "Z" for "+00:00" (microseconds only when non-zero), cut from one
    isoformat() instead of three strftime calls.
    """
    stamp = datetime.fromtimestamp(now, UTC)
    if stamp.year < 1000:  # strftime's %Y is not zero-padded there; isoformat's year is
        return (f"{stamp:%Y-%m-%d}", f"{stamp:%Y-%m-%dT%H:%M:%S.%fZ}",
                stamp.isoformat().replace("+00:00", "Z"))
    local = stamp.isoformat()[:-6]  # YYYY-MM-DDTHH:MM:SS[.ffffff], "+00:00" cut
    return (local[:10], (local if stamp.microsecond else local + ".000000") + "Z",
            local + "Z")


class GroupCommit:
    """Audit records of key use, written in batches: one store call for every record that
    arrived while the previous call was under way (group commit).

    Each caller returns only once its own record is durable (or raises the store's error,
    so that the operation it records is not acknowledged either): nothing acknowledged is
    lost. A caller that finds no write under way writes at once (sequential use costs what
    a single write costs); one that arrives during a write waits for it, and the next batch
    (at most `batch_max` records) is written by one of the waiting callers.
    """

    def __init__(self, store: Store, batch_max: int) -> None:
        self._store = store
        self._max = max(1, min(batch_max, MAX_TRANSACTION_OPS))
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._writing = False

    def write(self, item: dict[str, Any]) -> None:
        """Write `item` (its place is unique): return when it is stored, or raise."""
        mine = _Pending(item)
        with self._cond:
            self._pending.append(mine)
            while self._writing and not mine.done:
                self._cond.wait()
            if mine.done:
                mine.check(led=False)
                return
            self._writing = True  # this caller leads until its own record is written
        try:
            while not mine.done:
                with self._cond:
                    batch = self._pending[:self._max]
                    del self._pending[:self._max]
                error: BaseException | None = None
                try:
                    self._write([p.item for p in batch])
                except BaseException as exc:  # every waiter of the batch gets it
                    error = exc
                with self._cond:
                    for p in batch:
                        p.done, p.error = True, error
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
        mine.check(led=True)


    def _write(self, items: list[dict[str, Any]]) -> None:
        if len(items) == 1:
            # Alone (sequential use): one put, the store's cheapest write. Our own write,
            # retried by the store client after a lost response, finds itself there: that is
            # success (record sort keys carry 48 random bits: nothing else is at this place).
            try:
                self._store.put_if_absent(items[0])
            except StoreConditionFailed:
                if self._store.get(items[0]["pk"], items[0]["sk"]) is None:
                    raise
            return
        # unconditional puts: a batch retried after a lost response writes the same records
        self._store.transact([Put(item, if_absent=False) for item in items])


class _Pending:
    __slots__ = ("item", "done", "error")

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.done = False
        self.error: BaseException | None = None

    def check(self, led: bool) -> None:
        """Raise the batch's error: the store's own for the caller that wrote it, a fresh
        Unavailable for the others (one exception object is not raised in many threads)."""
        if self.error is not None:
            if led:
                raise self.error
            raise Unavailable("the audit record could not be written") from self.error


class AuditLog:
    """Writes audit records through the store, in `shards` partitions per UTC day.

    One partition of a store takes a bounded write rate (DynamoDB: about 1,000 writes/s), so
    each record goes to one of `shards` partitions of its day at random; readers merge them.
    With one shard the partition is "audit#<day>"; with more, "audit#<day>#<i>", and readers
    also read "audit#<day>" (records written before sharding was turned on).
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, *,
                 shards: int = 1, batch_max: int = 25) -> None:
        self._store = store
        self._clock = clock
        self._shards = max(1, shards)
        self._batches = GroupCommit(store, batch_max)

    def _partitions(self, day: str) -> list[str]:
        """The partitions of a day's records, in reading order."""
        base = f"audit#{day}"
        if self._shards == 1:
            return [base]
        return [base, *(f"{base}#{i:02d}" for i in range(self._shards))]

    def _partition(self, day: str) -> str:
        if self._shards == 1:
            return f"audit#{day}"
        return f"audit#{day}#{secrets.randbelow(self._shards):02d}"

    def record(self, caller: Caller | None, action: str, obj: str, outcome: str = "success",
               *, request_id: str | None = None, principal: str | None = None,
               **details: Any) -> dict[str, Any]:
        """Write one record: time, principal, action, object, outcome, request id."""
        item = self.item(caller, action, obj, outcome, request_id=request_id,
                         principal=principal, **details)
        # Batched with the records of concurrent requests; returns once this one is stored.
        # (Record sort keys carry 48 random bits: nothing else is at this place, and an
        # unconditional write retried after a lost response writes the same record.)
        self._batches.write(item)
        self.logged(item)
        return item

    def item(self, caller: Caller | None, action: str, obj: str, outcome: str = "success",
             *, request_id: str | None = None, principal: str | None = None,
             **details: Any) -> dict[str, Any]:
        """The record as a store item, not yet written (for a transaction of its own)."""
        now = self._clock()
        day, sk_time, iso_time = _stamps(now)
        item = {
            "pk": self._partition(day),
            "sk": f"{sk_time}#{secrets.token_hex(6)}",
            "time": iso_time,
            "principal": principal or (caller.principal.name if caller else "anonymous"),
            "token_id": caller.principal.token_id if caller else None,
            "action": action,
            "object": object_name(obj),
            "outcome": outcome,
            "request_id": request_id or (caller.request_id if caller else None),
            "details": _safe_details(details),
            "expires_at": int(now) + 400 * 24 * 3600,
        }
        return item

    @staticmethod
    def logged(item: dict[str, Any]) -> None:
        """The log line of a written record."""
        if log.isEnabledFor(logging.INFO):  # the JSON is built only for a line that is logged
            log.info(json.dumps({"audit": {k: item[k] for k in _LOGGED}}))

    def refused(self, caller: Caller | None, action: str, obj: str, exc: BaseException,
                details: dict[str, Any] | None = None, *,
                principal: str | None = None) -> None:
        """Record a refusal or failure: "denied" for a permission refusal, "failure"
        otherwise, with reason = the neutral error code (internal_error for anything
        unexpected), under `principal` where the service itself did the work (as `record`).
        A misplaced record is also logged as an error. If the record cannot be
        written with its details it is written without; if not at all, that is logged and
        the original error is the one reported."""
        mark_audited(exc)
        reason = _neutral_code(exc)
        outcome = "denied" if isinstance(exc, Forbidden) else "failure"
        if isinstance(exc, MisplacedRecord):
            log.error(json.dumps({"level": "error", "event": "stored record rejected",
                                  "request_id": caller.request_id if caller else None,
                                  "action": action, "object": object_name(obj),
                                  "problem": exc.detail}))
        for extra in (details or {}, {}):
            try:
                self.record(caller, action, obj, outcome, principal=principal, **extra,
                            reason=reason)
                return
            except Exception:  # noqa: BLE001 - retried without details, then logged
                log.warning("audit record of %s not written%s", action,
                            " with its details" if extra else "")
        log.error("audit write failed for %s", action)

    @contextmanager
    def operation(self, caller: Caller | None, action: str, obj: str, *,
                  principal: str | None = None) -> Iterator[Operation]:
        """Audit the enclosed operation once: success with its details (written in the same
        store transaction as the change when the change goes through `op.commit`), or its
        refusal or failure, unexpected exceptions included. `principal` names the service
        itself for work no caller asked for."""
        op = Operation(self, caller, action, obj, principal)
        try:
            yield op
        except BaseException as exc:
            if not op.committed and isinstance(exc, Exception):
                self.refused(caller, action, obj, exc, op.details, principal=principal)
            raise
        if not op.committed:
            self.record(caller, action, op.obj, "success", principal=principal, **op.details)

    def day(self, day: str, *, limit: int = 100, cursor: str | None = None) -> Page:
        """Records of one UTC day (YYYY-MM-DD), oldest first, its partitions merged.

        The cursor is the last record's sort key (unique: time and 48 random bits), so the
        next page asks each partition for what follows it."""
        parts = self._partitions(day)
        if len(parts) == 1:
            return self._store.query(parts[0], limit=limit, cursor=cursor)
        after = None if cursor is None else _decode_after(cursor)
        items: list[dict[str, Any]] = []
        more = False
        for pk in parts:
            page = self._store.query(pk, limit=limit,
                                     cursor=None if after is None else cursor_after(pk, after))
            items += page.items
            more = more or page.cursor is not None
        items.sort(key=lambda r: r["sk"])
        more = more or len(items) > limit
        items = items[:limit]
        return Page(items, _encode_after(items[-1]["sk"]) if more and items else None)

    def find(self, *, action: str | None = None, obj: str | None = None,
             request_id: str | None = None) -> list[dict[str, Any]]:
        """Today's records matching the filters (for the admin function and tests)."""
        day = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%d")
        out, cursor = [], None
        while True:
            page = self.day(day, limit=500, cursor=cursor)
            out += [r for r in page.items
                    if (action is None or r["action"] == action)
                    and (obj is None or r["object"] == obj)
                    and (request_id is None or r["request_id"] == request_id)]
            if not page.cursor:
                return out
            cursor = page.cursor


def _encode_after(sk: str) -> str:
    return base64.urlsafe_b64encode(sk.encode("utf-8")).rstrip(b"=").decode("ascii")


def _decode_after(cursor: str) -> str:
    try:
        sk = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError) as exc:
        raise InvalidInput("invalid pagination cursor") from exc
    if not sk:
        raise InvalidInput("invalid pagination cursor")
    return sk


class Operation:
    """One audited operation: its details, and the commit of its change with its record."""

    def __init__(self, log_: AuditLog, caller: Caller | None, action: str, obj: str,
                 principal: str | None = None) -> None:
        self._log = log_
        self.caller = caller
        self.principal = principal
        self.action = action
        self.obj = obj
        self.details: dict[str, Any] = {}
        self.committed = False

    def note(self, **details: Any) -> None:
        """Add details to the record (only allow-listed keys are kept)."""
        self.details.update(details)

    def commit(self, ops: Sequence[Op], *, obj: str | None = None,
               records: Sequence[tuple[str, dict[str, Any]]] | None = None) -> None:
        """Write `ops` and the success record in ONE store transaction: a change is never
        acknowledged without its record, nor recorded without having happened. Conditions
        failing raise StoreTransactionCancelled (the record is not written either).

        `records` (object, details) replace the one record where a change creates several
        objects (one record each)."""
        if obj is not None:
            self.obj = obj
        items = [self._log.item(self.caller, self.action, o, "success",
                                principal=self.principal, **d)
                 for o, d in (records if records is not None else [(self.obj, self.details)])]
        self._log._store.transact([*ops, *(Put(i) for i in items)])
        self.committed = True
        for item in items:
            self._log.logged(item)
