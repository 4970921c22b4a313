"""SQLite backend: one file in WAL mode, for local development, tests and single-host runs.

Values are stored as one JSON document per item. JSON lacks bytes, so bytes are tagged as
{"$b": "<base64>"}; to keep that unambiguous every dict key that starts with "$" is escaped
by one more "$" (so a user dict {"$b": 1} is stored as {"$$b": 1} and comes back intact).
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chalicelib.errors import StoreConditionFailed, StoreTransactionCancelled, Unavailable
from chalicelib.store._items import (
    CONDITION_FAILED,
    check_key,
    check_limit,
    check_ops,
    check_query,
    decode_cursor,
    decode_scan_cursor,
    encode_cursor,
    split_item,
    stored,
)
from chalicelib.store.base import Check, Delete, Item, Op, Page, Put, Store, Update

_BYTES_TAG = "$b"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID
"""


def _encode_value(value: Any) -> Any:
    """Turn a validated value into plain JSON data (bytes tagged, "$" keys escaped)."""
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {("$" + k if k.startswith("$") else k): _encode_value(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_value(v) for v in value]
    return value


def _decode_object(obj: dict[str, Any]) -> Any:
    """json object_hook: undo _encode_value for one dict (called innermost first)."""
    if len(obj) == 1 and _BYTES_TAG in obj:
        return base64.b64decode(obj[_BYTES_TAG])
    if any(k.startswith("$") for k in obj):
        return {(k[1:] if k.startswith("$") else k): v for k, v in obj.items()}
    return obj


def _dumps(attrs: dict[str, Any]) -> str:
    return json.dumps(_encode_value(attrs), ensure_ascii=False, separators=(",", ":"))


def _loads(data: str) -> dict[str, Any]:
    return json.loads(data, object_hook=_decode_object)


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with prefix (None: no bound).

    SQLite compares TEXT as UTF-8 bytes, which is code point order, so bumping the last code
    point is exact; appending '\\uffff' instead would miss sk's with astral characters.
    """
    chars = list(prefix)
    while chars:
        c = ord(chars.pop()) + 1
        if c == 0xD800:  # surrogates cannot be stored; skip past them
            c = 0xE000
        if c <= 0x10FFFF:
            return "".join(chars) + chr(c)
    return None


class SqliteStore(Store):
    """Store on one SQLite file, safe to share between the threads of one process.

    One connection guarded by a lock: a per-op lock costs well under a microsecond, while
    per-thread connections would mean a connection per request thread of the HTTP server.
    Conditions are evaluated inside the write statement or a BEGIN IMMEDIATE transaction,
    so they are atomic across threads and across processes sharing the file.
    """

    __eq__ = object.__eq__  # the dataclass base would compare stores by name only
    __hash__ = object.__hash__

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self.name = "sqlite"
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode (isolation_level=None): we issue BEGIN IMMEDIATE ourselves.
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000,
                                         isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: durable against app crashes, may lose the last commits
            # on power loss; fsync per commit would dominate write latency.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._conn.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise Unavailable("the item store cannot be opened") from e

    def close(self) -> None:
        """Close the connection; the store must not be used afterwards."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, with SQLite failures mapped to Unavailable."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as e:
                # e.g. "database is locked" after busy_timeout, disk full, I/O error
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise Unavailable("the item store is unavailable") from e

    def get(self, pk: str, sk: str) -> Item | None:
        """The item at (pk, sk), or None."""
        check_key(pk, sk)
        with self._db() as db:
            row = db.execute("SELECT version, data FROM items WHERE pk = ? AND sk = ?",
                             (pk, sk)).fetchone()
        return None if row is None else stored(pk, sk, _loads(row[1]), row[0])

    def query(self, pk: str, sk_prefix: str = "", *, limit: int = 100,
              cursor: str | None = None, descending: bool = False) -> Page:
        """Items of partition pk whose sk starts with sk_prefix, in sk order, paged."""
        check_query(pk, sk_prefix, limit)
        sql = "SELECT sk, version, data FROM items WHERE pk = ?"
        params: list[Any] = [pk]
        if sk_prefix:
            # A range rather than LIKE: it uses the primary key and needs no escaping.
            sql += " AND sk >= ?"
            params.append(sk_prefix)
            upper = _prefix_upper_bound(sk_prefix)
            if upper is not None:
                sql += " AND sk < ?"
                params.append(upper)
        if cursor is not None:
            sql += " AND sk < ?" if descending else " AND sk > ?"
            params.append(decode_cursor(cursor, pk, sk_prefix))
        # One row more than asked tells whether another page exists.
        sql += f" ORDER BY sk {'DESC' if descending else 'ASC'} LIMIT ?"
        params.append(limit + 1)
        with self._db() as db:
            rows = db.execute(sql, params).fetchall()
        items = [stored(pk, sk, _loads(data), version) for sk, version, data in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(pk, items[-1]["sk"]) if more else None)

    def scan_all(self, cursor: str | None = None, *, limit: int = 100) -> Page:
        """Every item of the store in (pk, sk) order, a page at a time."""
        check_limit(limit)
        sql = "SELECT pk, sk, version, data FROM items"
        params: list[Any] = []
        if cursor is not None:
            sql += " WHERE (pk, sk) > (?, ?)"  # a row value: the primary key's order
            params += decode_scan_cursor(cursor)
        sql += " ORDER BY pk, sk LIMIT ?"
        params.append(limit + 1)
        with self._db() as db:
            rows = db.execute(sql, params).fetchall()
        items = [stored(pk, sk, _loads(data), version) for pk, sk, version, data in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1]["pk"], items[-1]["sk"]) if more else None)

    def put_if_absent(self, item: Item) -> Item:
        """Write item with version 1; StoreConditionFailed if (pk, sk) exists."""
        pk, sk, attrs = split_item(item)
        data = _dumps(attrs)
        # A single statement is its own write transaction: check and insert are atomic.
        with self._db() as db:
            cur = db.execute("INSERT INTO items (pk, sk, version, data) VALUES (?, ?, 1, ?) "
                             "ON CONFLICT (pk, sk) DO NOTHING", (pk, sk, data))
        if cur.rowcount != 1:
            raise StoreConditionFailed("the item already exists")
        return stored(pk, sk, attrs, 1)

    def update_if_version(self, item: Item, expected_version: int) -> Item:
        """Replace item (version becomes expected+1); StoreConditionFailed otherwise."""
        pk, sk, attrs = split_item(item)
        data = _dumps(attrs)
        with self._db() as db:
            cur = db.execute("UPDATE items SET version = ?, data = ? "
                             "WHERE pk = ? AND sk = ? AND version = ?",
                             (expected_version + 1, data, pk, sk, expected_version))
        if cur.rowcount != 1:
            raise StoreConditionFailed("the item is missing or has another version")
        return stored(pk, sk, attrs, expected_version + 1)

    def delete_if(self, pk: str, sk: str, expected_version: int | None = None) -> None:
        """Delete the item; StoreConditionFailed if missing or the version differs."""
        check_key(pk, sk)
        with self._db() as db:
            if expected_version is None:
                cur = db.execute("DELETE FROM items WHERE pk = ? AND sk = ?", (pk, sk))
            else:
                cur = db.execute("DELETE FROM items WHERE pk = ? AND sk = ? AND version = ?",
                                 (pk, sk, expected_version))
        if cur.rowcount != 1:
            raise StoreConditionFailed("the item is missing or has another version")

    def transact(self, ops: list[Op]) -> None:
        """All-or-nothing; StoreTransactionCancelled(reasons) names the failed conditions."""
        check_ops(ops)
        if not ops:
            return
        # Encode (and validate) before taking the write lock.
        encoded = [(op, split_item(op.item)) if isinstance(op, (Put, Update)) else (op, None)
                   for op in ops]
        blobs = [None if parts is None else _dumps(parts[2]) for _, parts in encoded]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")  # take the write lock before reading conditions
            try:
                reasons = [None if self._holds(db, op) else CONDITION_FAILED for op in ops]
                if any(reasons):
                    # Like DynamoDB: every failing op is named, and nothing is written.
                    db.rollback()
                    raise StoreTransactionCancelled(reasons)
                for op, blob in zip(ops, blobs, strict=True):
                    self._apply(db, op, blob)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.rollback()
                raise

    @staticmethod
    def _holds(db: sqlite3.Connection, op: Op) -> bool:
        """Whether op's condition holds for the current row."""
        if isinstance(op, (Put, Update)):
            pk, sk = op.item["pk"], op.item["sk"]
        else:
            pk, sk = op.pk, op.sk
        row = db.execute("SELECT version FROM items WHERE pk = ? AND sk = ?",
                         (pk, sk)).fetchone()
        current = None if row is None else row[0]
        if isinstance(op, Put):
            return current is None or not op.if_absent
        if isinstance(op, Update):
            return current == op.expected_version
        if isinstance(op, Delete):
            if op.expected_version is None:
                return current is not None
            return current == op.expected_version
        if isinstance(op, Check):
            return current == op.expected_version  # None: the item must not exist
        raise TypeError(f"not a store operation: {type(op).__name__}")

    @staticmethod
    def _apply(db: sqlite3.Connection, op: Op, blob: str | None) -> None:
        """Write op (its condition already holds)."""
        if isinstance(op, Put):
            # An unconditional Put (if_absent=False) also (re)starts the item at version 1.
            db.execute("INSERT INTO items (pk, sk, version, data) VALUES (?, ?, 1, ?) "
                       "ON CONFLICT (pk, sk) DO UPDATE SET version = 1, data = excluded.data",
                       (op.item["pk"], op.item["sk"], blob))
        elif isinstance(op, Update):
            db.execute("UPDATE items SET version = ?, data = ? WHERE pk = ? AND sk = ?",
                       (op.expected_version + 1, blob, op.item["pk"], op.item["sk"]))
        elif isinstance(op, Delete):
            db.execute("DELETE FROM items WHERE pk = ? AND sk = ?", (op.pk, op.sk))
        # Check writes nothing.

    def ping(self) -> None:
        """Raise Unavailable if the file cannot be read."""
        with self._db() as db:
            db.execute("SELECT 1 FROM items LIMIT 1").fetchall()
