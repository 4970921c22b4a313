"""Transparent encryption (the StoredSafe model): named AES-GCM keys per vault, with versions.

A vault is a key ring of kind "storedsafe"; a token's scope on it carries the vendor's bits
Read(1), Write(2), Admin(4), which are hierarchical here (Admin implies Write implies Read).

Store layout (one partition per vault for the key records, one per key incarnation for its
versions, so that a deleted and re-created name never meets the old versions):

    pk "ss#{vault}"                      sk "key#{name}"   the key record (latest version,
                                                           min_decryption_version, flags, ...)
    pk "ss#{vault}#{name}#{objectid}"    sk "v#{n:010d}"   version n: its WrappedKey

Every version's data key is generated in the HSM and stored only wrapped under the KEK, bound to
the context "storedsafe/{vault}/{name}/{objectid}/{n}". Ciphertext is
"storedsafe:v{n}:" + base64(nonce(12) || ciphertext || tag(16)), AES-GCM in the HSM, with an AAD
naming the key's origin (vault, name and objectid where it was created) and the version: a
ciphertext presented to another key, vault or version fails its tag check. The origin travels
with a backup, so a restored key still opens what the original encrypted.

A vault is a tenant: a backup names the vault it was taken from (bound by the digest its blobs
are rebound to) and restores only into that vault, under any name. So a key's origin is always
in the key's own vault, and a record whose origin is not is refused.

A key record is used only where it is found: its vault and name (hence the HSM contexts of its
versions and their partition) come from its pk and sk, never from its contents. A record whose
contents disagree with its place, or a version blob that fails its HSM binding, is our own
store's fault, not the client's: StoredRecordError, logged, a generic 500 to the client.

Version records are immutable, so they are cached in-process; the key record is read on every
request (another container may have rotated, reconfigured or deleted the key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from chalicelib.config import Settings
from chalicelib.core.audit import AuditLog
from chalicelib.core.permissions import STOREDSAFE
from chalicelib.core.tokens import Caller
from chalicelib.errors import (
    BindingError,
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidInput,
    InvalidState,
    KeyfrontError,
    LimitExceeded,
    NotFound,
    StoreConditionFailed,
    StoreTransactionCancelled,
)
from chalicelib.formats.ciphertext import (
    MAX_VERSION,
    NONCE_BYTES,
    TAG_BYTES,
    b64decode_strict,
    format_ciphertext,
    parse_ciphertext,
)
from chalicelib.hsm import Hsm, WrappedKey
from chalicelib.store import Put, Store, Update

log = logging.getLogger("keyfront.transparent")

KIND = STOREDSAFE
KEY_TYPES: dict[str, int] = {"aes128-gcm96": 128, "aes256-gcm96": 256}
DEFAULT_KEY_TYPE = "aes128-gcm96"
DATAKEY_BITS = (128, 256, 512)
DEFAULT_DATAKEY_BITS = 256
MAX_INFO_CHARS = 1024
CONFLICT_RETRIES = 64  # optimistic-concurrency attempts before a clear 409
VERSION_CACHE_SIZE = 4096
BACKUP_FORMAT = "keyfront-storedsafe-backup"
BACKUP_FORMAT_VERSION = 2  # 2 names the source vault; 1 (older) is still read, see _backup_vault
MAX_AUDIT_TEXT = 256  # longest string detail put into an audit record

# Which scope permissions satisfy a needed level: the vendor's levels are hierarchical.
LEVELS: dict[str, frozenset[str]] = {
    "read": frozenset({"read", "write", "admin"}),
    "write": frozenset({"write", "admin"}),
    "admin": frozenset({"admin"}),
}

_VAULT_RE = re.compile(r"[0-9]{1,20}\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_OBJECTID_RE = re.compile(r"[0-9]{1,20}\Z")


class StoredRecordError(KeyfrontError):
    """One of our own stored records is not what its place says: moved, edited or corrupted.

    Never the client's fault: `detail` goes to the log only, the client gets a generic 500.
    """

    status = 500
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__("internal error")
        self.detail = detail


# ---- pure formats (no I/O) ------------------------------------------------------------------

def validate_vault(vault: object) -> str:
    """A vault id: 1 to 20 decimal digits; InvalidInput otherwise."""
    if not isinstance(vault, str) or not _VAULT_RE.match(vault):
        raise InvalidInput("vaultid must be a decimal vault id", field="vaultid")
    return vault


def validate_name(name: object) -> str:
    """A key name: 1-128 of A-Z a-z 0-9 _ . - (starting with a letter or digit)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput("name must be 1-128 characters of A-Z, a-z, 0-9, '_', '.', '-', "
                           "starting with a letter or digit", field="name")
    return name


def key_bits(key_type: object) -> int:
    """Key size in bits of a supported key type; InvalidInput for any other type."""
    bits = KEY_TYPES.get(key_type) if isinstance(key_type, str) else None
    if bits is None:
        raise InvalidInput(f"unsupported key type; supported: {', '.join(KEY_TYPES)}",
                           field="type")
    return bits


def origin_vault(origin: object) -> str:
    """The vault of an origin "vault/name/objectid"; ValueError if it is not one."""
    parts = origin.split("/") if isinstance(origin, str) else []
    if len(parts) != 3 or not _VAULT_RE.match(parts[0]) or not _NAME_RE.match(parts[1]) \
            or not _OBJECTID_RE.match(parts[2]):
        raise ValueError("origin is not vault/name/objectid")
    return parts[0]


def version_aad(origin: str, version: int) -> bytes:
    """The AAD of every message under one key version: binds origin (vault/name/id) and N."""
    return f"storedsafe|{origin}|v{version}".encode()


def version_context(vault: str, name: str, objectid: str, version: int) -> str:
    """The HSM binding context of a version blob: the record it belongs to."""
    return f"storedsafe/{vault}/{name}/{objectid}/{version}"


def _backup_context(digest: str, version: int) -> str:
    # Blobs inside a backup are bound to a digest of the backup's metadata, so editing any
    # metadata (flags, versions, origin, source vault) makes the HSM refuse to rebind them on
    # restore.
    return f"storedsafe-backup/{digest}/{version}"


def _backup_format(meta: dict[str, Any]) -> int:
    # v2 metadata has "vault" (the source vault), v1 metadata has not: _parse_backup holds
    # each version to exactly its own fields, so the metadata tells its format.
    return BACKUP_FORMAT_VERSION if "vault" in meta else 1


def _backup_digest(meta: dict[str, Any]) -> str:
    canonical = json.dumps({"format": BACKUP_FORMAT, "v": _backup_format(meta), "key": meta},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _backup_vault(meta: dict[str, Any]) -> str:
    """The vault a backup was taken from: its "vault", or for v1 backups its origin's vault
    (covered by the v1 digest too; a key's origin is in its own vault)."""
    return meta["vault"] if "vault" in meta else origin_vault(meta["origin"])


def _wrapped_to_json(key: WrappedKey) -> dict[str, Any]:
    d = key.to_dict()
    for k in ("blob", "public_der", "tag"):
        if d[k] is not None:
            d[k] = base64.b64encode(d[k]).decode("ascii")
    return d


def _wrapped_from_json(d: object) -> WrappedKey:
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


def _new_objectid() -> str:
    # numeric-looking like the vendor's object ids; unique per key incarnation
    return str(10**11 + secrets.randbelow(9 * 10**11))


# ---- domain types ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TransitKey:
    """One named key's record (metadata only; the material lives in its version records)."""

    vault: str
    name: str
    type: str
    latest_version: int
    min_decryption_version: int
    allow_export: bool
    allow_backup: bool
    allow_delete: bool
    info: str
    objectid: str
    origin: str  # "vault/name/objectid" where the key was first created (AAD binding)
    created_at: int
    updated_at: int
    item_version: int = 0  # the store's optimistic-concurrency version of the record

    @property
    def bits(self) -> int:
        """AES key size of this key's type."""
        return KEY_TYPES[self.type]

    @property
    def pk(self) -> str:
        """Partition of the key record."""
        return f"ss#{self.vault}"

    @property
    def sk(self) -> str:
        """Sort key of the key record."""
        return f"key#{self.name}"

    @property
    def versions_pk(self) -> str:
        """Partition holding this incarnation's version records."""
        return f"ss#{self.vault}#{self.name}#{self.objectid}"

    def context(self, version: int) -> str:
        """HSM binding context of version `version`'s blob."""
        return version_context(self.vault, self.name, self.objectid, version)

    def to_item(self) -> dict[str, Any]:
        """The store item (without the store-managed version)."""
        return {
            "pk": self.pk, "sk": self.sk, "name": self.name, "type": self.type,
            "latest_version": self.latest_version,
            "min_decryption_version": self.min_decryption_version,
            "allow_export": self.allow_export, "allow_backup": self.allow_backup,
            "allow_delete": self.allow_delete, "info": self.info, "objectid": self.objectid,
            "origin": self.origin, "created_at": self.created_at, "updated_at": self.updated_at,
        }

    @classmethod
    def from_item(cls, vault: str, item: dict[str, Any]) -> TransitKey:
        """Inverse of to_item, for a record found in the vault's partition.

        Vault and name come from where the record was found (pk "ss#{vault}", sk
        "key#{name}"), never from its contents. StoredRecordError if the record is not in that
        partition, its own name differs from its sort key, its origin is not in its vault, or
        a field is malformed.
        """
        pk, sk = item.get("pk"), item.get("sk")
        name = sk[4:] if isinstance(sk, str) and sk.startswith("key#") else ""
        where = _obj(vault, name or "?")
        if pk != f"ss#{vault}" or not _NAME_RE.match(name):
            raise StoredRecordError(f"the key record of {where} is not in its place")
        if item.get("name") != name:
            raise StoredRecordError(f"the key record at {where} names another key")
        try:
            objectid, origin = item["objectid"], item["origin"]
            if not isinstance(objectid, str) or not _OBJECTID_RE.match(objectid) \
                    or item["type"] not in KEY_TYPES:
                raise ValueError("objectid or type")
            home = origin_vault(origin)
            key = cls(
                vault=vault, name=name, type=item["type"],
                latest_version=int(item["latest_version"]),
                min_decryption_version=int(item["min_decryption_version"]),
                allow_export=bool(item["allow_export"]),
                allow_backup=bool(item["allow_backup"]),
                allow_delete=bool(item["allow_delete"]), info=str(item.get("info") or ""),
                objectid=objectid, origin=origin,
                created_at=int(item["created_at"]), updated_at=int(item["updated_at"]),
                item_version=int(item["version"]),
            )
            if not 1 <= key.min_decryption_version <= key.latest_version <= MAX_VERSION:
                raise ValueError("versions")
        except (KeyError, TypeError, ValueError) as exc:
            raise StoredRecordError(f"the key record at {where} is malformed") from exc
        if home != vault:
            raise StoredRecordError(f"the key record at {where} has its origin in another "
                                    "vault")
        return key

    def metadata(self) -> dict[str, Any]:
        """Public metadata (the vendor's KEYS entry plus min_decryption_version)."""
        return {
            "name": self.name, "key_version": str(self.latest_version), "type": self.type,
            "allow_backup": self.allow_backup, "allow_export": self.allow_export,
            "allow_delete": self.allow_delete, "supports_signing": False, "info": self.info,
            "min_decryption_version": str(self.min_decryption_version),
            "objectid": self.objectid,
        }


@dataclass(frozen=True)
class Encrypted:
    """Result of encrypt/rewrap: the ciphertext string and the version it used."""

    ciphertext: str
    key_version: int
    key: TransitKey
    created: bool = False  # encrypt created the key (Write token, missing key)


@dataclass(frozen=True)
class Decrypted:
    """Result of decrypt."""

    plaintext: bytes
    key_version: int
    key: TransitKey


@dataclass(frozen=True)
class DataKey:
    """A fresh data key, wrapped under a named key; plaintext only when asked for."""

    ciphertext: str
    plaintext: bytes | None
    key_version: int
    bits: int
    key: TransitKey


# ---- the service ----------------------------------------------------------------------------

class TransparentService:
    """Named keys, versions and AES-GCM operations of one vault family, with audit."""

    def __init__(self, store: Store, hsm: Hsm, audit: AuditLog, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._settings = settings
        self._clock = clock
        self._versions: OrderedDict[tuple[str, str], WrappedKey] = OrderedDict()
        self._versions_lock = threading.Lock()

    # ---- permissions and audit ------------------------------------------------------------

    @staticmethod
    def can(caller: Caller, vault: str, level: str) -> bool:
        """Does the caller hold `level` (read/write/admin, hierarchical) in the vault?"""
        return bool(caller.principal.perms(KIND, vault) & LEVELS[level])

    def _check(self, caller: Caller, vault: str, level: str) -> None:
        # One answer whether or not the vault or the key exists (no existence oracle).
        if not self.can(caller, vault, level):
            raise Forbidden(f"{level.capitalize()} permission is required in vault {vault}",
                            needed=(level,))

    def authorize(self, caller: Caller, vault: str, level: str, action: str, name: str = "") \
            -> None:
        """Raise Forbidden (audited as denied) unless the caller holds `level` in the vault.

        Dialects call it before validating a body, so that permission answers come first.
        """
        try:
            self._check(caller, vault, level)
        except Forbidden as exc:
            self._record(caller, action, _obj(vault, name), "denied", reason=exc.code)
            raise

    def _record(self, caller: Caller, action: str, obj: str, outcome: str,
                **details: Any) -> None:
        self._audit.record(caller, action, obj, outcome, **_storable(details))

    def _record_failure(self, caller: Caller, action: str, obj: str, outcome: str,
                        reason: str, details: dict[str, Any]) -> None:
        """Write the failure record whatever its details: without them if they are refused."""
        try:
            self._record(caller, action, obj, outcome, **details, reason=reason)
            return
        except Exception:  # noqa: BLE001 - retried below with the reason alone
            log.warning("audit record of %s refused with its details; writing it without",
                        action)
        try:
            self._record(caller, action, obj, outcome, reason=reason)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("audit write failed for %s", action)

    @staticmethod
    def _log_rejected(caller: Caller, action: str, obj: str, exc: StoredRecordError) -> None:
        log.error(json.dumps({"level": "error", "event": "storedsafe stored record rejected",
                              "request_id": caller.request_id, "action": action,
                              "object": obj, "problem": exc.detail}))

    @contextmanager
    def _op(self, caller: Caller, action: str, obj: str) -> Iterator[dict[str, Any]]:
        """Audit the enclosed operation: success with its details, or its failure reason.

        Every failure is audited, an unexpected exception too (reason internal_error), and a
        rejected stored record is logged as an error.
        """
        details: dict[str, Any] = {}
        try:
            yield details
        except KeyfrontError as exc:
            if isinstance(exc, StoredRecordError):
                self._log_rejected(caller, action, obj, exc)
            outcome = "denied" if isinstance(exc, Forbidden) else "failure"
            self._record_failure(caller, action, obj, outcome, exc.code, details)
            raise
        except Exception:
            self._record_failure(caller, action, obj, "failure", "internal_error", details)
            raise
        self._record(caller, action, obj, "success", **details)

    def _reading(self, caller: Caller, action: str, obj: str,
                 exc: StoredRecordError) -> None:
        """A read that met a rejected record: logged and audited as a failure."""
        self._log_rejected(caller, action, obj, exc)
        self._record_failure(caller, action, obj, "failure", exc.code, {})

    # ---- store access -----------------------------------------------------------------------

    def _find(self, vault: str, name: str) -> TransitKey | None:
        item = self._store.get(f"ss#{vault}", f"key#{name}")
        return None if item is None else TransitKey.from_item(vault, item)

    def _require(self, vault: str, name: str) -> TransitKey:
        key = self._find(vault, name)
        if key is None:
            raise NotFound(f"key {name} not found in vault {vault}")
        return key

    def _version_key(self, key: TransitKey, version: int) -> WrappedKey:
        """The WrappedKey of one version (version records are immutable: cached)."""
        ck = (key.versions_pk, f"v#{version:010d}")
        with self._versions_lock:
            hit = self._versions.get(ck)
            if hit is not None:
                self._versions.move_to_end(ck)
                if hit.size == key.bits:
                    return hit
        item = self._store.get(*ck)
        if item is None:
            # the key record named it, so the key was deleted or replaced meanwhile
            raise NotFound(f"key version {version} of {key.name} not found")
        try:
            wrapped = WrappedKey.from_dict(item["wrapped"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoredRecordError(f"version {version} of {_obj(key.vault, key.name)} is "
                                    "malformed") from exc
        if wrapped.kind != "aes" or wrapped.size != key.bits:
            # checked here: the HSM would answer a wrong kind as the caller's bad input
            raise StoredRecordError(f"version {version} of {_obj(key.vault, key.name)} is "
                                    f"not an AES-{key.bits} key")
        with self._versions_lock:
            self._versions[ck] = wrapped
            while len(self._versions) > VERSION_CACHE_SIZE:
                self._versions.popitem(last=False)
        return wrapped

    def _version_item(self, key: TransitKey, version: int, wrapped: WrappedKey) \
            -> dict[str, Any]:
        return {"pk": key.versions_pk, "sk": f"v#{version:010d}", "key_version": version,
                "created_at": int(self._clock()), "wrapped": wrapped.to_dict()}

    def _purge_versions(self, versions_pk: str, latest: int) -> None:
        """Best-effort removal of a dead incarnation's version records (unreachable anyway)."""
        try:
            for _ in range(latest // 100 + 2):  # bounded; each round deletes a page
                page = self._store.query(versions_pk, "v#", limit=100)
                if not page.items:
                    break
                for item in page.items:
                    try:
                        self._store.delete_if(versions_pk, item["sk"])
                    except StoreConditionFailed:
                        pass  # someone else removed it
        except KeyfrontError:
            log.warning("could not purge version records of a deleted key")
        with self._versions_lock:
            for ck in [ck for ck in self._versions if ck[0] == versions_pk]:
                del self._versions[ck]

    # ---- crypto helpers ---------------------------------------------------------------------

    def _check_plaintext(self, plaintext: bytes) -> None:
        limit = self._settings.max_plaintext_bytes
        if len(plaintext) > limit:
            raise LimitExceeded(f"plaintext is larger than {limit} bytes")

    def _pick(self, key: TransitKey, requested: int | None, field: str) -> int:
        """The version to use: latest, or `requested` if it exists and is not retired."""
        if requested is None:
            return key.latest_version
        if requested < 1 or requested > key.latest_version:
            raise NotFound(f"key version {requested} of {key.name} not found")
        if requested < key.min_decryption_version:
            raise InvalidState(f"{field} {requested} is below the key's "
                               f"min_decryption_version {key.min_decryption_version}")
        return requested

    def _seal(self, key: TransitKey, version: int, plaintext: bytes) -> str:
        wrapped = self._version_key(key, version)
        try:
            data = self._hsm.encrypt_gcm(wrapped, key.context(version), plaintext,
                                         version_aad(key.origin, version))
        except BindingError as exc:
            raise _blob_failed(key, version) from exc
        return format_ciphertext(version, data)

    def _open(self, key: TransitKey, ciphertext: str) -> tuple[bytes, int]:
        version, data = parse_ciphertext(ciphertext)
        if len(data) > self._settings.max_plaintext_bytes + NONCE_BYTES + TAG_BYTES:
            raise LimitExceeded("ciphertext is larger than the largest plaintext allows")
        if version > key.latest_version:
            raise NotFound(f"key version {version} of {key.name} not found")
        if version < key.min_decryption_version:
            raise InvalidState(f"ciphertext version {version} is below the key's "
                               f"min_decryption_version {key.min_decryption_version}")
        wrapped = self._version_key(key, version)
        try:
            plaintext = self._hsm.decrypt_gcm(wrapped, key.context(version), data,
                                              version_aad(key.origin, version))
        except BindingError as exc:
            # our stored version blob failed its binding: not the client's ciphertext
            raise _blob_failed(key, version) from exc
        except IntegrityError as exc:
            # the GCM tag of the client's ciphertext (the blob checked out)
            raise IntegrityError("ciphertext failed verification: tampered, truncated, or "
                                 "not made by this key") from exc
        return plaintext, version

    # ---- key lifecycle ----------------------------------------------------------------------

    def _insert_new(self, vault: str, name: str, key_type: str, *, allow_export: bool,
                    allow_backup: bool, allow_delete: bool, info: str) -> TransitKey:
        """Create version 1 and the record in one transaction; Conflict if the name exists."""
        bits = key_bits(key_type)
        now = int(self._clock())
        objectid = _new_objectid()
        key = TransitKey(vault=vault, name=name, type=key_type, latest_version=1,
                         min_decryption_version=1, allow_export=allow_export,
                         allow_backup=allow_backup, allow_delete=allow_delete, info=info,
                         objectid=objectid, origin=f"{vault}/{name}/{objectid}",
                         created_at=now, updated_at=now, item_version=1)
        wrapped = self._hsm.generate_aes(bits, key.context(1), exportable=allow_export)
        try:
            self._store.transact([Put(key.to_item()), Put(self._version_item(key, 1, wrapped))])
        except StoreTransactionCancelled as exc:
            raise Conflict(f"key {name} already exists in vault {vault}") from exc
        return key

    def create_key(self, caller: Caller, vault: str, name: str, *,
                   key_type: str = DEFAULT_KEY_TYPE, allow_export: bool = True,
                   allow_backup: bool = True, allow_delete: bool = True,
                   info: str = "") -> TransitKey:
        """Create a named key (version 1). Write; Conflict if it exists."""
        with self._op(caller, "storedsafe.key.create", _obj(vault, name)) as details:
            self._check(caller, vault, "write")
            details.update(type=key_type if key_type in KEY_TYPES else None)
            if len(info) > MAX_INFO_CHARS:
                raise InvalidInput(f"info is longer than {MAX_INFO_CHARS} characters",
                                   field="info")
            key = self._insert_new(vault, name, key_type, allow_export=allow_export,
                                   allow_backup=allow_backup, allow_delete=allow_delete,
                                   info=info)
            details.update(key_version=1)
            return key

    def list_keys(self, caller: Caller, vault: str) -> list[TransitKey]:
        """Every key of the vault, by name. Read."""
        self.authorize(caller, vault, "read", "storedsafe.key.list")
        out: list[TransitKey] = []
        cursor = None
        while True:
            page = self._store.query(f"ss#{vault}", "key#", limit=100, cursor=cursor)
            for it in page.items:
                try:
                    out.append(TransitKey.from_item(vault, it))
                except StoredRecordError as exc:
                    # not a key of this place: left out (as not found), logged and audited
                    sk = it.get("sk")
                    name = sk[4:] if isinstance(sk, str) and _NAME_RE.match(sk[4:]) else ""
                    self._reading(caller, "storedsafe.key.list", _obj(vault, name), exc)
            if not page.cursor:
                return out
            cursor = page.cursor

    def read_key(self, caller: Caller, vault: str, name: str) -> TransitKey:
        """One key's metadata. Read."""
        self.authorize(caller, vault, "read", "storedsafe.key.read", name)
        try:
            return self._require(vault, name)
        except StoredRecordError as exc:
            self._reading(caller, "storedsafe.key.read", _obj(vault, name), exc)
            raise

    def rotate(self, caller: Caller, vault: str, name: str) -> TransitKey:
        """Add version latest+1. Write. Racing rotations get distinct versions (retry on CAS)."""
        with self._op(caller, "storedsafe.key.rotate", _obj(vault, name)) as details:
            self._check(caller, vault, "write")
            for _ in range(CONFLICT_RETRIES):
                key = self._require(vault, name)
                n = key.latest_version + 1
                if n > MAX_VERSION:
                    raise LimitExceeded("the key has reached its maximum version")
                wrapped = self._hsm.generate_aes(key.bits, key.context(n),
                                                 exportable=key.allow_export)
                new = replace(key, latest_version=n, updated_at=int(self._clock()))
                try:
                    # the record's version is the lock: a concurrent rotation makes this fail
                    self._store.transact([Update(new.to_item(), key.item_version),
                                          Put(self._version_item(key, n, wrapped))])
                except StoreTransactionCancelled:
                    continue
                details.update(key_version=n)
                return replace(new, item_version=key.item_version + 1)
            raise Conflict("the key is being changed concurrently; retry")

    def configure(self, caller: Caller, vault: str, name: str, *,
                  min_decryption_version: int | None = None,
                  allow_delete: bool | None = None) -> TransitKey:
        """Set min_decryption_version and/or allow_delete (beyond the vendor). Admin."""
        with self._op(caller, "storedsafe.key.config", _obj(vault, name)) as details:
            self._check(caller, vault, "admin")
            if min_decryption_version is None and allow_delete is None:
                raise InvalidInput("give min_decryption_version or allow_delete")
            for _ in range(CONFLICT_RETRIES):
                key = self._require(vault, name)
                changes: dict[str, Any] = {}
                if min_decryption_version is not None:
                    if not 1 <= min_decryption_version <= key.latest_version:
                        raise InvalidInput(
                            f"min_decryption_version must be 1..{key.latest_version}",
                            field="min_decryption_version")
                    changes["min_decryption_version"] = min_decryption_version
                if allow_delete is not None:
                    changes["allow_delete"] = allow_delete
                new = replace(key, updated_at=int(self._clock()), **changes)
                try:
                    self._store.update_if_version(new.to_item(), key.item_version)
                except StoreConditionFailed:
                    continue
                details.update(key_version=new.latest_version)
                return replace(new, item_version=key.item_version + 1)
            raise Conflict("the key is being changed concurrently; retry")

    def delete(self, caller: Caller, vault: str, name: str) -> TransitKey:
        """Delete a key and all its versions. Write, and refused unless allow_delete."""
        with self._op(caller, "storedsafe.key.delete", _obj(vault, name)) as details:
            self._check(caller, vault, "write")
            for _ in range(CONFLICT_RETRIES):
                key = self._require(vault, name)
                if not key.allow_delete:
                    raise InvalidState(f"deletion is not allowed for key {name} "
                                       "(allow_delete is false)")
                try:
                    # conditional on the version read: a concurrent config change wins
                    self._store.delete_if(key.pk, key.sk, key.item_version)
                except StoreConditionFailed:
                    continue
                details.update(key_version=key.latest_version)
                self._purge_versions(key.versions_pk, key.latest_version)
                return key
            raise Conflict("the key is being changed concurrently; retry")

    # ---- key use ----------------------------------------------------------------------------

    def encrypt(self, caller: Caller, vault: str, name: str, plaintext: bytes, *,
                key_version: int | None = None, key_type: str | None = None) -> Encrypted:
        """Encrypt under the latest (or a given) version. Read; a Write token creates a
        missing key (of `key_type`, default aes128-gcm96)."""
        with self._op(caller, "storedsafe.encrypt", _obj(vault, name)) as details:
            self._check(caller, vault, "read")
            self._check_plaintext(plaintext)
            if key_type is not None:
                key_bits(key_type)
            key = self._find(vault, name)
            created = False
            if key is None:
                if not self.can(caller, vault, "write"):
                    raise NotFound(f"key {name} not found in vault {vault}")
                key, created = self._create_for_encrypt(caller, vault, name,
                                                        key_type or DEFAULT_KEY_TYPE)
            n = self._pick(key, key_version, "key_version")
            details.update(key_version=n)
            return Encrypted(self._seal(key, n, plaintext), n, key, created)

    def _create_for_encrypt(self, caller: Caller, vault: str, name: str,
                            key_type: str) -> tuple[TransitKey, bool]:
        try:
            with self._op(caller, "storedsafe.key.create", _obj(vault, name)) as details:
                details.update(type=key_type, key_version=1)
                key = self._insert_new(vault, name, key_type, allow_export=True,
                                       allow_backup=True, allow_delete=True, info="")
            return key, True
        except Conflict:
            # created concurrently by another request: use that one
            return self._require(vault, name), False

    def decrypt(self, caller: Caller, vault: str, name: str, ciphertext: str) -> Decrypted:
        """Decrypt; the version comes from the ciphertext prefix. Read."""
        with self._op(caller, "storedsafe.decrypt", _obj(vault, name)) as details:
            self._check(caller, vault, "read")
            key = self._require(vault, name)
            plaintext, n = self._open(key, ciphertext)
            details.update(key_version=n)
            return Decrypted(plaintext, n, key)

    def rewrap(self, caller: Caller, vault: str, name: str, ciphertext: str, *,
               to_version: int | None = None) -> Encrypted:
        """Re-encrypt a ciphertext under to_version (default latest); the plaintext never
        leaves the service. Read."""
        with self._op(caller, "storedsafe.rewrap", _obj(vault, name)) as details:
            self._check(caller, vault, "read")
            key = self._require(vault, name)
            plaintext, old = self._open(key, ciphertext)
            n = self._pick(key, to_version, "to_version")
            details.update(from_version=old, to_version=n)
            return Encrypted(self._seal(key, n, plaintext), n, key)

    def datakey(self, caller: Caller, vault: str, name: str, *, bits: int = DEFAULT_DATAKEY_BITS,
                key_version: int | None = None, with_plaintext: bool) -> DataKey:
        """A fresh random data key, encrypted under the named key. Read; Write to also get
        its plaintext."""
        with self._op(caller, "storedsafe.datakey", _obj(vault, name)) as details:
            self._check(caller, vault, "write" if with_plaintext else "read")
            details.update(type="plaintext" if with_plaintext else "wrapped")
            if type(bits) is not int or bits not in DATAKEY_BITS:
                raise InvalidInput("bits must be 128, 256 or 512", field="bits")
            details.update(bits=bits)  # validated first: only a valid value is audited
            key = self._require(vault, name)
            n = self._pick(key, key_version, "key_version")
            raw = self._hsm.random_bytes(bits // 8)
            details.update(key_version=n)
            return DataKey(self._seal(key, n, raw), raw if with_plaintext else None, n, bits,
                           key)

    # ---- export, backup, restore ------------------------------------------------------------

    def export(self, caller: Caller, vault: str, name: str, *,
               key_version: int | None = None) -> tuple[TransitKey, dict[int, bytes]]:
        """Raw material of one version, or of every version not below
        min_decryption_version. Admin, and only for keys created with allow_export."""
        with self._op(caller, "storedsafe.key.export", _obj(vault, name)) as details:
            self._check(caller, vault, "admin")
            key = self._require(vault, name)
            if not key.allow_export:
                raise InvalidState(f"export is not allowed for key {name} "
                                   "(allow_export is false)")
            if key_version is None:
                versions = range(key.min_decryption_version, key.latest_version + 1)
            else:
                versions = range(self._pick(key, key_version, "key_version"), key_version + 1)
            details.update(key_version=key_version, count=len(versions))
            material: dict[int, bytes] = {}
            for n in versions:
                wrapped = self._version_key(key, n)
                try:
                    material[n] = self._hsm.export_secret(wrapped, key.context(n))
                except (BindingError, Forbidden) as exc:
                    # the record allows export: a blob that fails or refuses is not its own
                    raise _blob_failed(key, n) from exc
            return key, material

    def backup(self, caller: Caller, vault: str, name: str) -> tuple[TransitKey, str]:
        """A protected backup of the key and all its versions: wrapped blobs only, restorable
        only by a service with the same KEK. Admin, and only with allow_backup."""
        with self._op(caller, "storedsafe.key.backup", _obj(vault, name)) as details:
            self._check(caller, vault, "admin")
            key = self._require(vault, name)
            if not key.allow_backup:
                raise InvalidState(f"backup is not allowed for key {name} "
                                   "(allow_backup is false)")
            meta = {
                "type": key.type, "allow_export": key.allow_export,
                "allow_backup": key.allow_backup, "allow_delete": key.allow_delete,
                "info": key.info, "latest_version": key.latest_version,
                "min_decryption_version": key.min_decryption_version, "origin": key.origin,
                "vault": key.vault,  # the source vault: the only vault it restores into
            }
            digest = _backup_digest(meta)
            versions = []
            for n in range(1, key.latest_version + 1):
                wrapped = self._version_key(key, n)
                try:
                    moved = self._hsm.rebind(wrapped, key.context(n),
                                             _backup_context(digest, n))
                except BindingError as exc:
                    raise _blob_failed(key, n) from exc
                versions.append({"key_version": n, "wrapped": _wrapped_to_json(moved)})
            doc = {"format": BACKUP_FORMAT, "v": BACKUP_FORMAT_VERSION, "key": meta,
                   "versions": versions}
            details.update(key_version=key.latest_version, count=len(versions))
            raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
            return key, base64.b64encode(raw).decode("ascii")

    def restore(self, caller: Caller, vault: str, name: str, backup: str) -> TransitKey:
        """Restore a backup under vault/name as a new key (all versions). Write.

        Only into the vault the backup was taken from (InvalidInput otherwise: vaults are
        tenants, a backup never moves a key between them), under any free name; Conflict if
        the name exists; IntegrityError if the backup was altered.
        """
        with self._op(caller, "storedsafe.key.restore", _obj(vault, name)) as details:
            self._check(caller, vault, "write")
            meta, blobs = _parse_backup(backup)
            details.update(key_version=meta["latest_version"], type=meta["type"])
            if _backup_vault(meta) != vault:
                raise InvalidInput("the backup was taken from another vault: a backup restores "
                                   "only into the vault it was taken from", field="backup")
            if self._find(vault, name) is not None:
                raise Conflict(f"key {name} already exists in vault {vault}")
            now = int(self._clock())
            objectid = _new_objectid()
            key = TransitKey(vault=vault, name=name, type=meta["type"],
                             latest_version=meta["latest_version"],
                             min_decryption_version=meta["min_decryption_version"],
                             allow_export=meta["allow_export"],
                             allow_backup=meta["allow_backup"],
                             allow_delete=meta["allow_delete"], info=meta["info"],
                             objectid=objectid, origin=meta["origin"], created_at=now,
                             updated_at=now, item_version=1)
            digest = _backup_digest(meta)
            rebound: list[WrappedKey] = []
            for n, wrapped in enumerate(blobs, start=1):
                if wrapped.kind != "aes" or wrapped.size != key.bits:
                    raise IntegrityError("backup failed its integrity check")
                try:
                    rebound.append(self._hsm.rebind(wrapped, _backup_context(digest, n),
                                                    key.context(n)))
                except IntegrityError as exc:  # the client's backup: its 400
                    raise IntegrityError("backup failed its integrity check") from exc
            if origin_vault(key.origin) != vault:
                # the digest vouches for the metadata; we never wrote such a backup
                raise IntegrityError("backup failed its integrity check")
            # versions first (invisible until the record exists), then the record, which
            # decides the race for the name
            for n, wrapped in enumerate(rebound, start=1):
                self._store.put_if_absent(self._version_item(key, n, wrapped))
            try:
                self._store.put_if_absent(key.to_item())
            except StoreConditionFailed as exc:
                self._purge_versions(key.versions_pk, key.latest_version)
                raise Conflict(f"key {name} already exists in vault {vault}") from exc
            return key


def _parse_backup(backup: str) -> tuple[dict[str, Any], list[WrappedKey]]:
    """Metadata and blobs of a backup string (format 2, or 1 without "vault"); InvalidInput
    if it is not one."""
    try:
        doc = json.loads(b64decode_strict(backup))
        if not isinstance(doc, dict) or doc.get("format") != BACKUP_FORMAT \
                or type(doc.get("v")) is not int or doc["v"] not in (1, BACKUP_FORMAT_VERSION):
            raise ValueError("not a backup")
        meta, versions = doc["key"], doc["versions"]
        if not isinstance(meta, dict) or not isinstance(versions, list):
            raise ValueError("bad shape")
        expect = {"type": str, "allow_export": bool, "allow_backup": bool,
                  "allow_delete": bool, "info": str, "latest_version": int,
                  "min_decryption_version": int, "origin": str}
        if doc["v"] == BACKUP_FORMAT_VERSION:
            expect["vault"] = str
        if set(meta) != set(expect) or any(type(meta[k]) is not t for k, t in expect.items()):
            raise ValueError("bad metadata")
        key_bits(meta["type"])
        origin_vault(meta["origin"])
        if "vault" in meta:
            validate_vault(meta["vault"])
        latest, lowest = meta["latest_version"], meta["min_decryption_version"]
        if not 1 <= lowest <= latest <= MAX_VERSION or len(versions) != latest:
            raise ValueError("bad versions")
        blobs = []
        for n, v in enumerate(versions, start=1):
            if not isinstance(v, dict) or v.get("key_version") != n:
                raise ValueError("versions must be 1..latest in order")
            blobs.append(_wrapped_from_json(v.get("wrapped")))
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError,
            RecursionError, InvalidInput) as exc:
        # RecursionError: deeply nested JSON exhausts the parser's stack
        raise InvalidInput("backup is not a valid key backup", field="backup") from exc
    return meta, blobs


def _blob_failed(key: TransitKey, version: int) -> StoredRecordError:
    return StoredRecordError(f"version {version} of {_obj(key.vault, key.name)} failed its "
                             "HSM binding check")


def _storable(details: dict[str, Any]) -> dict[str, Any]:
    """The audit details the store can hold: out-of-range integers and long or odd values are
    dropped, so that a bad value never costs the record itself."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        if v is None or isinstance(v, bool) \
                or (isinstance(v, int) and -(10**38) < v < 10**38) \
                or (isinstance(v, str) and len(v) <= MAX_AUDIT_TEXT):
            out[k] = v
    return out


def _obj(vault: str, name: str = "") -> str:
    return f"storedsafe/{vault}/{name}" if name else f"storedsafe/{vault}"

