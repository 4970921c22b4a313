"""Audit records: every change of state and every use of a key, never material or plaintext."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chalicelib.core.tokens import Caller
from chalicelib.store import Page, Store

log = logging.getLogger("keyfront.audit")

# Only these detail keys are recorded: an allow-list keeps secrets out by construction.
SAFE_DETAIL_KEYS = frozenset({
    "key_version", "to_version", "from_version", "kid", "algorithm", "type", "slot",
    "bits", "reason", "count", "strategy", "name", "ring_kind",
})


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


class AuditLog:
    """Writes audit records through the store, one partition per UTC day."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def record(self, caller: Caller | None, action: str, obj: str, outcome: str = "success",
               *, request_id: str | None = None, principal: str | None = None,
               **details: Any) -> dict[str, Any]:
        """Write one record: time, principal, action, object, outcome, request id."""
        now = self._clock()
        day, sk_time, iso_time = _stamps(now)
        item = {
            "pk": f"audit#{day}",
            "sk": f"{sk_time}#{secrets.token_hex(6)}",
            "time": iso_time,
            "principal": principal or (caller.principal.name if caller else "anonymous"),
            "token_id": caller.principal.token_id if caller else None,
            "action": action,
            "object": obj,
            "outcome": outcome,
            "request_id": request_id or (caller.request_id if caller else None),
            "details": {k: v for k, v in details.items()
                        if k in SAFE_DETAIL_KEYS and isinstance(v, str | int | bool | None)},
            "expires_at": int(now) + 400 * 24 * 3600,
        }
        self._store.put_if_absent(item)
        if log.isEnabledFor(logging.INFO):  # the JSON is built only for a line that is logged
            log.info(json.dumps({"audit": {k: item[k] for k in _LOGGED}}))
        return item

    def day(self, day: str, *, limit: int = 100, cursor: str | None = None) -> Page:
        """Records of one UTC day (YYYY-MM-DD), oldest first."""
        return self._store.query(f"audit#{day}", limit=limit, cursor=cursor)

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
