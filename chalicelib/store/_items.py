"""Rules both backends share, so that SQLite (dev) and DynamoDB (prod) accept the same items.

Validation follows DynamoDB's limits: a write that works locally must also work in prod.
Everything here is backend-neutral; no boto3 or sqlite3.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from chalicelib.errors import InvalidInput
from chalicelib.store.base import Check, Delete, Item, Op, Put, Update

# Attributes the store owns: the key and the optimistic-concurrency version.
KEY_ATTRS = ("pk", "sk")
VERSION_ATTR = "version"
RESERVED_ATTRS = frozenset((*KEY_ATTRS, VERSION_ATTR))

# DynamoDB limits (bytes of UTF-8 for keys); enforced for SQLite too for dev/prod parity.
MAX_PK_BYTES = 2048
MAX_SK_BYTES = 1024
MAX_DEPTH = 32  # DynamoDB allows 32 levels of nested lists/maps
INT_LIMIT = 10**38  # DynamoDB numbers carry 38 significant digits; keep ints exact
MAX_TRANSACT_OPS = 100

CONDITION_FAILED = "ConditionalCheckFailed"  # the reason code DynamoDB uses; SQLite mirrors it


def check_key(pk: object, sk: object) -> None:
    """Reject keys DynamoDB would reject: non-strings, empty strings, over-long keys."""
    for name, value, limit in (("pk", pk, MAX_PK_BYTES), ("sk", sk, MAX_SK_BYTES)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        if not value:
            raise ValueError(f"{name} must not be empty")
        if len(value.encode("utf-8")) > limit:
            raise ValueError(f"{name} is longer than {limit} bytes")


def check_value(value: object, depth: int = 0) -> None:
    """Raise TypeError/ValueError unless value is a storable str/int/bool/None/bytes/list/dict."""
    if value is None or isinstance(value, (str, bool, bytes, bytearray)):
        return
    if isinstance(value, int):
        if not -INT_LIMIT < value < INT_LIMIT:
            raise ValueError("integers must have at most 38 digits")
        return
    if isinstance(value, float):
        # DynamoDB stores decimals, SQLite JSON stores doubles: they would not round-trip alike.
        raise TypeError("floats are not supported; store ints or strings")
    if depth >= MAX_DEPTH:
        raise ValueError(f"values may nest at most {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for v in value:
            check_value(v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"dict keys must be str, not {type(k).__name__}")
            if not k:
                raise ValueError("dict keys must not be empty")  # DynamoDB map keys
            check_value(v, depth + 1)
        return
    raise TypeError(f"unsupported value type {type(value).__name__}")


def split_item(item: Item) -> tuple[str, str, dict[str, Any]]:
    """Validate item and return (pk, sk, attributes without pk/sk/version)."""
    if not isinstance(item, dict):
        raise TypeError(f"an item is a dict, not {type(item).__name__}")
    pk, sk = item.get("pk"), item.get("sk")
    check_key(pk, sk)
    attrs = {k: v for k, v in item.items() if k not in RESERVED_ATTRS}
    for name, value in attrs.items():
        if not isinstance(name, str) or not name:
            raise TypeError("attribute names must be non-empty str")
        check_value(value, 1)
    return pk, sk, attrs  # type: ignore[return-value]  # check_key proved both are str


def stored(pk: str, sk: str, attrs: dict[str, Any], version: int) -> Item:
    """The item as get() would return it."""
    return {"pk": pk, "sk": sk, **attrs, VERSION_ATTR: version}


def op_key(op: Op) -> tuple[str, str]:
    """(pk, sk) an operation targets."""
    if isinstance(op, (Put, Update)):
        return op.item.get("pk"), op.item.get("sk")  # type: ignore[return-value]
    if isinstance(op, (Delete, Check)):
        return op.pk, op.sk
    raise TypeError(f"not a store operation: {type(op).__name__}")


def check_ops(ops: list[Op]) -> None:
    """Reject transactions DynamoDB would reject: too many ops, or two ops on one item."""
    if len(ops) > MAX_TRANSACT_OPS:
        raise ValueError(f"a transaction holds at most {MAX_TRANSACT_OPS} operations")
    seen: set[tuple[str, str]] = set()
    for op in ops:
        key = op_key(op)
        check_key(*key)
        if key in seen:
            raise ValueError(f"two operations in one transaction target {key}")
        seen.add(key)
        if isinstance(op, Update) and not isinstance(op.expected_version, int):
            raise TypeError("expected_version must be an int")


def check_query(pk: object, sk_prefix: object, limit: object) -> None:
    """A query names a valid partition, a str prefix and a positive page size."""
    check_key(pk, "-")
    if not isinstance(sk_prefix, str):
        raise TypeError("sk_prefix must be a str")
    check_limit(limit)  # type: ignore[arg-type]


def check_limit(limit: int) -> None:
    """Page sizes are positive ints."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError("limit must be a positive int")


def encode_cursor(pk: str, sk: str) -> str:
    """Opaque page cursor: unpadded base64url of {"pk", "sk"} of the last item returned.

    Both backends use the same format, mirroring DynamoDB's ExclusiveStartKey.
    """
    raw = json.dumps({"pk": pk, "sk": sk}, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode("utf-8")).rstrip(b"=").decode("ascii")


# Above every sort key in use (the largest code point): a cursor "after" it is past the whole
# partition, in both backends' scan order (a partition's items are contiguous there).
PARTITION_END = "\U0010ffff"


def cursor_past(pk: str) -> str:
    """A scan_all cursor that resumes after every item of partition pk."""
    return encode_cursor(pk, PARTITION_END)


def decode_scan_cursor(cursor: str) -> tuple[str, str]:
    """(pk, sk) to continue a whole-store scan after; InvalidInput for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode("utf-8"))
        pk, sk = data["pk"], data["sk"]
    except (binascii.Error, ValueError, UnicodeError, TypeError, KeyError) as e:
        raise InvalidInput("invalid pagination cursor") from e
    if not isinstance(pk, str) or not isinstance(sk, str) or not pk or not sk:
        raise InvalidInput("invalid pagination cursor")
    return pk, sk


def decode_cursor(cursor: str, pk: str, sk_prefix: str) -> str:
    """The sk to continue after; InvalidInput for a cursor not made by this query."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode("utf-8"))
        cpk, csk = data["pk"], data["sk"]
    except (binascii.Error, ValueError, UnicodeError, TypeError, KeyError) as e:
        raise InvalidInput("invalid pagination cursor") from e
    # A cursor from another partition or prefix would make DynamoDB reject the query.
    if cpk != pk or not isinstance(csk, str) or not csk.startswith(sk_prefix) or not csk:
        raise InvalidInput("invalid pagination cursor")
    return csk
