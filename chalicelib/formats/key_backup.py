"""Key backups of the transit domain, as pure functions (no I/O): the document, its digest,
the contexts its blobs are bound to, and its strict parser.

A backup is base64 of JSON {"format": "keyfront-<kind>-backup", "v": 1|2|3, "key": meta,
"versions": [{"key_version": n, "wrapped": WrappedKey as JSON}, ...]}. Its blobs are bound
(by the HSM) to a digest of the metadata, so editing any metadata field makes restore fail.
Format 1 has no source ring; 2 names it ("vault", the field name kept); 3 also names the
lowest version it holds (versions below were trimmed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Collection
from typing import Any

from chalicelib.errors import InvalidInput, KeyfrontError
from chalicelib.formats.ciphertext import MAX_VERSION, b64decode_strict
from chalicelib.hsm.types import WrappedKey

BACKUP_FORMAT_VERSION = 3
OBJECT_ID_RE = re.compile(r"[0-9]{1,20}\Z")
_PART_RE = re.compile(r"[^/]{1,128}\Z")


def origin_ring(origin: object) -> str:
    """The ring of an origin "ring/name/objectid"; ValueError if it is not one."""
    parts = origin.split("/") if isinstance(origin, str) else []
    if len(parts) != 3 or not all(_PART_RE.match(p) for p in parts) \
            or not OBJECT_ID_RE.match(parts[2]):
        raise ValueError("origin is not ring/name/objectid")
    return parts[0]


def backup_document(kind: str, meta: dict[str, Any], versions: list[dict[str, Any]]) \
        -> dict[str, Any]:
    """The backup document of `meta` and its (rebound, JSON) versions."""
    return {"format": format_name(kind), "v": BACKUP_FORMAT_VERSION, "key": meta,
            "versions": versions}


def format_name(kind: str) -> str:
    return f"keyfront-{kind}-backup"


def backup_context(kind: str, digest: str, version: int) -> str:
    # Blobs inside a backup are bound to a digest of the backup's metadata, so editing any
    # metadata (flags, versions, origin, source ring) makes the HSM refuse to rebind them on
    # restore.
    return f"{kind}-backup/{digest}/{version}"


def _format(meta: dict[str, Any]) -> int:
    # Each format has exactly its own metadata fields (_parse_backup holds it to them).
    if "min_available_version" in meta:
        return BACKUP_FORMAT_VERSION
    return 2 if "vault" in meta else 1


def backup_digest(kind: str, meta: dict[str, Any]) -> str:
    canonical = json.dumps({"format": format_name(kind), "v": _format(meta),
                            "key": meta}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def backup_ring(meta: dict[str, Any]) -> str:
    """The ring a backup was taken from: its "vault" (the field name of format 2, kept), or
    for format 1 its origin's ring (covered by that digest too)."""
    return meta["vault"] if "vault" in meta else origin_ring(meta["origin"])


def wrapped_to_json(key: WrappedKey) -> dict[str, Any]:
    d = key.to_dict()
    for k in ("blob", "public_der", "tag"):
        if d[k] is not None:
            d[k] = base64.b64encode(d[k]).decode("ascii")
    return d


def wrapped_from_json(d: object) -> WrappedKey:
    if not isinstance(d, dict):
        raise ValueError("wrapped key is not an object")
    d = dict(d)
    for k in ("blob", "public_der", "tag"):
        if d.get(k) is not None:
            if not isinstance(d[k], str):
                raise ValueError("binary fields are base64 strings")
            d[k] = b64decode_strict(d[k])
    for k in ("kind", "kek_label", "mechanism", "context"):
        if not isinstance(d.get(k), str):
            raise ValueError(f"{k} must be a string")
    if type(d.get("size")) is not int or type(d.get("exportable")) is not bool:
        raise ValueError("size is an int and exportable a bool")
    return WrappedKey.from_dict(d)


def parse_backup(kind: str, backup: str, key_types: Collection[str]) \
        -> tuple[dict[str, Any], list[WrappedKey]]:
    """Metadata and blobs of a backup string (format 3, 2 or 1) of keys of `key_types`;
    InvalidInput if it is not one."""
    try:
        doc = json.loads(b64decode_strict(backup))
        if not isinstance(doc, dict) or doc.get("format") != format_name(kind) \
                or type(doc.get("v")) is not int or doc["v"] not in (1, 2, 3):
            raise ValueError("not a backup")
        meta, versions = doc["key"], doc["versions"]
        if not isinstance(meta, dict) or not isinstance(versions, list):
            raise ValueError("bad shape")
        expect: dict[str, type] = {
            "type": str, "allow_export": bool, "allow_backup": bool, "allow_delete": bool,
            "info": str, "latest_version": int, "min_decryption_version": int, "origin": str}
        if doc["v"] >= 2:
            expect["vault"] = str
        if doc["v"] >= 3:
            expect["min_available_version"] = int
        if set(meta) != set(expect) or any(type(meta[k]) is not t for k, t in expect.items()):
            raise ValueError("bad metadata")
        if meta["type"] not in key_types:
            raise ValueError("key type")
        origin_ring(meta["origin"])
        if "vault" in meta and not _PART_RE.match(meta["vault"]):
            raise ValueError("bad ring")
        latest, lowest = meta["latest_version"], meta["min_decryption_version"]
        first = meta.get("min_available_version", 1)
        if not 1 <= first <= lowest <= latest <= MAX_VERSION \
                or len(versions) != latest - first + 1:
            raise ValueError("bad versions")
        blobs = []
        for n, v in enumerate(versions, start=first):
            if not isinstance(v, dict) or v.get("key_version") != n:
                raise ValueError("versions must be in order")
            blobs.append(wrapped_from_json(v.get("wrapped")))
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError,
            RecursionError, KeyfrontError) as exc:
        # RecursionError: deeply nested JSON exhausts the parser's stack
        raise InvalidInput("backup is not a valid key backup", field="backup") from exc
    return meta, blobs
