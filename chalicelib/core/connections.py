"""Connections: named objects of a ring with sealed options, that a rotating ring can hang on.

Store layout, one partition per ring (pk "{prefix}#{ring}#connections"):
  sk "con#<id>"    the connection (id, name, type, options sealed in the HSM, other fields)
  sk "name#<name>" the name claim (records.claim): written in the same transaction as the
                   connection, so two racing creates of one name leave exactly one.

A deleted connection's record moves into a deleted-key entry (core/deleted.py) and its name
is released in the delete's transaction; a restore claims the name again.

`options` may hold client secrets, so they are sealed (material.seal_json) under a
per-connection key generated in the HSM. Their HSM context and AAD come from where the record
was found (ring and id), never from fields inside it: a record copied elsewhere cannot be
opened there, and a record whose own ring/id disagree with its place is a MisplacedRecord.

Every field must be storable strict JSON (`json_problem`): no non-finite numbers, no lone
surrogates, bounded depth. What a field may hold beyond that is the dialect's to check.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from chalicelib.core import material
from chalicelib.core.audit import Operation
from chalicelib.core.clock import iso_millis
from chalicelib.core.deleted import forget_blob, restore_conflict
from chalicelib.core.records import Place, claim, claimed, parsed, release, retry, scan
from chalicelib.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    MisplacedRecord,
    NotFound,
    StoreTransactionCancelled,
)
from chalicelib.formats.strict_json import json_problem
from chalicelib.store import Check, Op, Put, Store

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

MAX_OPTIONS_BYTES = 64 * 1024
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_RE = re.compile(r"con_[A-Za-z0-9]{1,60}\Z")


def not_found() -> NotFound:
    """No such connection in this ring (the same answer for a malformed id)."""
    return NotFound("connection not found", reason="connection_not_found")


def new_connection_id() -> str:
    """"con_" and 16 random alphanumerics."""
    return "con_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def check_fields(fields: dict[str, Any]) -> None:
    """InvalidInput unless every field is storable strict JSON (options are sealed as JSON
    text; other fields are stored as they are, and a store map cannot have an empty key)."""
    problem = json_problem(fields)
    if problem is not None:
        where, what = problem
        raise InvalidInput(f"{where or 'body'}: {what}", field=where.split(".")[0] or "body")
    for name, value in fields.items():
        if name != "options" and _empty_key(value):
            raise InvalidInput(f"{name}: property names must not be empty", field=name)


def _empty_key(value: Any) -> bool:
    if isinstance(value, dict):
        return "" in value or any(_empty_key(v) for v in value.values())
    if isinstance(value, list):
        return any(_empty_key(v) for v in value)
    return False


class Connections:
    """Create, read, list and delete a ring's connections."""

    def __init__(self, prefix: str, kind: str, store: Store, hsm: Hsm, attempts: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._prefix = prefix
        self._kind = kind
        self._store = store
        self._hsm = hsm
        self._attempts = attempts
        self._clock = clock

    def pk(self, ring: str) -> str:
        """The ring's connection partition."""
        return f"{self._prefix}#{ring}#connections"

    def _context(self, ring: str, cid: str) -> str:
        return f"{self._kind}/{ring}/connections/{cid}/options"

    def create(self, op: Operation, ring: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Store a new connection (name and type given) with its name claim and its audit
        record in one transaction; Conflict (reason name_taken) on a duplicate name."""
        name, kind = fields["name"], fields["strategy"]
        check_fields(fields)
        cid = new_connection_id()
        record: dict[str, Any] = {
            "pk": self.pk(ring), "sk": f"con#{cid}", "tenant": ring, "id": cid, "name": name,
            "strategy": kind, "created_at": iso_millis(self._clock()),
            **{k: v for k, v in fields.items()
               if k not in ("name", "strategy", "options") and v is not None},
        }
        record.update(self._seal_options(ring, cid, fields.get("options") or {}))
        op.note(name=name, strategy=kind)
        try:
            op.commit([claim(self.pk(ring), name, cid), Put(record)],
                      obj=f"{op.obj}/{cid}")
        except StoreTransactionCancelled:
            if claimed(self._store, self.pk(ring), name) is not None:
                raise Conflict("a connection with the same name already exists",
                               reason="name_taken") from None
            raise
        return record

    def get(self, ring: str, cid: str) -> dict[str, Any]:
        """The stored record (with its version); NotFound if there is none there,
        MisplacedRecord if the record there says it is another one."""
        if not isinstance(cid, str) or not _ID_RE.match(cid):
            raise not_found()
        record = self._store.get(self.pk(ring), f"con#{cid}")
        if record is None:
            raise not_found()
        self._in_place(record, ring, cid)
        return record

    def list(self, ring: str, on_misplaced: Callable[[MisplacedRecord], None]) \
            -> list[dict[str, Any]]:
        """Every connection record of the ring, by id; misplaced ones reported, left out."""
        def parse(record: dict[str, Any]) -> dict[str, Any]:
            self._in_place(record, ring, str(record["sk"]).removeprefix("con#"))
            return record
        return list(parsed(scan(self._store, self.pk(ring), "con#"), parse, on_misplaced))

    def _in_place(self, record: dict[str, Any], ring: str, cid: str) -> None:
        """MisplacedRecord unless the record found at (ring, cid) says it is that one."""
        if record.get("tenant") != ring or record.get("id") != cid:
            raise Place(self.pk(ring), f"con#{cid}").misplaced("names another connection")

    def delete(self, op: Operation, ring: str, cid: str,
               move: Callable[[dict[str, Any]], Sequence[Op]]) -> dict[str, Any]:
        """Delete the connection: `move(record)` (the operations taking the record away, at
        the version read), its name claim released and its audit record, atomically."""
        def attempt() -> dict[str, Any]:
            record = self.get(ring, cid)
            op.note(name=record["name"], strategy=record["strategy"])
            op.commit([*move(record), release(self.pk(ring), record["name"])])
            return record
        return retry(attempt, self._attempts, what="the connection")

    def restore_ops(self, ring: str, record: dict[str, Any]) -> list[Op]:
        """The claim of a deleted connection's name again (the caller puts the record back);
        Conflict (restore_conflict) if another connection holds the name now."""
        if claimed(self._store, self.pk(ring), record["name"]) is not None:
            raise restore_conflict(f"a connection named {record['name']} exists")
        return [claim(self.pk(ring), record["name"], record["id"])]

    def forget(self, ring: str, record: dict[str, Any]) -> None:
        """Drop this process's HSM session copy of a purged connection's options key."""
        forget_blob(self._hsm, record.get("options_key"), self._context(ring, record["id"]))

    @staticmethod
    def exists_check(record: dict[str, Any]) -> Check:
        """A transaction condition: this connection still exists, unchanged."""
        return Check(record["pk"], record["sk"], int(record["version"]))

    def options(self, ring: str, cid: str, record: dict[str, Any]) -> dict[str, Any]:
        """The connection's options, opened against the place the record was found at. A
        blob sealed for another place is a MisplacedRecord."""
        if not record.get("options_key"):
            return {}
        try:
            value = material.open_json(self._hsm, self._context(ring, cid),
                                       {"key": record["options_key"],
                                        "ct": record["options_ct"]})
        except IntegrityError as exc:
            raise Place(self.pk(ring), f"con#{cid}").misplaced(
                "holds options sealed for another place") from exc
        return value if isinstance(value, dict) else {}

    def _seal_options(self, ring: str, cid: str, options: dict[str, Any]) -> dict[str, Any]:
        if not options:
            return {"options_key": None, "options_ct": None}
        problem = json_problem(options, "options")
        if problem is not None:
            raise InvalidInput(f"{problem[0]}: {problem[1]}", field="options")
        sealed = material.seal_json(self._hsm, self._context(ring, cid), options,
                                    max_bytes=MAX_OPTIONS_BYTES, field="options")
        return {"options_key": sealed["key"], "options_ct": sealed["ct"]}
