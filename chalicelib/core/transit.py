"""Transit keys: named AES-GCM keys per ring, with immutable versions (Vault's transit model).

Store layout (one partition per ring for the key records, one per key incarnation for its
versions, so that a deleted and re-created name never meets the old versions); P is the ring
kind's store prefix:

    pk "P#{ring}"                       sk "key#{name}"   the key record (latest version,
                                                          min_decryption_version, flags, ...)
    pk "P#{ring}"                       sk "head"         the ring head: how many keys
    pk "P#{ring}#{name}#{objectid}"     sk "v#{n:010d}"   version n: its WrappedKey

Every version's data key is generated in the HSM and stored only wrapped under the KEK, bound to
the context "{kind}/{ring}/{name}/{objectid}/{n}". Ciphertext is "{kind}:v{n}:" +
base64(nonce || ct || tag), AES-GCM in the HSM, with an AAD naming the key's origin (ring,
name and objectid where it was created) and the version. The origin travels with a backup, so a
restored key still opens what the original encrypted; a backup restores only into its own ring.

A key record is used only where it is found (records.Place): ring and name come from its pk
and sk, never from its contents; one that disagrees is a MisplacedRecord.

Deletion moves the key record into a deleted-key entry (core/deleted.py) in one transaction
with the ring's count and the audit record; the version records stay, unreachable (every use
reads the record first, and a new key of the name is a new incarnation with its own objectid
and versions partition), until a restore puts the record back or the purge after the window
deletes them. A record in state "deleting" (a tombstone written before deleted-key entries)
is still treated as absent and purged by whoever meets it.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from chalicelib.config import Settings
from chalicelib.core.access import Grant, RingKind
from chalicelib.core.audit import AuditLog, Operation
from chalicelib.core.cache import TtlCache
from chalicelib.core.deleted import Bin, Deleted, forget_blob, restore_conflict
from chalicelib.core.keys import KeyState, VersionCache
from chalicelib.core.limits import cap
from chalicelib.core.records import Place, parsed, read_head, retry, scan
from chalicelib.core.rotation import Entry, Schedule, Superseded, drop
from chalicelib.core.usage import KeyUsage
from chalicelib.errors import (
    BindingError,
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidInput,
    InvalidState,
    KeyfrontError,
    LimitExceeded,
    MisplacedRecord,
    NotFound,
    StoreConditionFailed,
)
from chalicelib.formats.ciphertext import (
    MAX_VERSION,
    NONCE_BYTES,
    TAG_BYTES,
    format_ciphertext,
    parse_ciphertext,
)
from chalicelib.formats.key_backup import (
    OBJECT_ID_RE,
    backup_context,
    backup_digest,
    backup_document,
    backup_ring,
    origin_ring,
    parse_backup,
    wrapped_to_json,
)
from chalicelib.hsm import WrappedKey
from chalicelib.hsm.labels import kek_label
from chalicelib.store import Op, Put, Store, Update

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

log = logging.getLogger("keyfront.transit")

KEY_TYPES: dict[str, int] = {"aes128-gcm96": 128, "aes256-gcm96": 256}
DEFAULT_KEY_TYPE = "aes128-gcm96"
DATAKEY_BITS = (128, 256, 512)
DEFAULT_DATAKEY_BITS = 256
MAX_INFO_CHARS = 1024
# A backup's bytes per version (measured: ~330; bounded with room) and its fixed overhead:
# what backup may produce, restore must accept (see restore_body_limit).
BACKUP_BYTES_PER_VERSION = 640
# the metadata at its largest: info of MAX_INFO_CHARS astral characters, each escaped to 12
# bytes of JSON, twice base64'd (the backup string, then inside the request body)
BACKUP_OVERHEAD_BYTES = 16 * 1024 + MAX_INFO_CHARS * 12 * 16 // 9


# Key uses read the key record through the cache; every other verb drops its entry.
KEY_USES = frozenset({"encrypt", "decrypt", "rewrap", "datakey"})


def key_bits(key_type: object) -> int:
    """Key size in bits of a supported key type; InvalidInput for any other type."""
    bits = KEY_TYPES.get(key_type) if isinstance(key_type, str) else None
    if bits is None:
        raise InvalidInput(f"unsupported key type; supported: {', '.join(KEY_TYPES)}",
                           field="type", reason="unsupported_key_type")
    return bits


def version_aad(kind: str, origin: str, version: int) -> bytes:
    """The AAD of every message under one key version: binds kind, origin and version."""
    return f"{kind}|{origin}|v{version}".encode()


def restore_body_limit(settings: Settings) -> int:
    """The largest restore request to accept: a backup of a key at its version cap, in a
    JSON body, with room for the envelope fields."""
    per_version = BACKUP_BYTES_PER_VERSION * 4 // 3 + 1  # the backup string is base64
    return BACKUP_OVERHEAD_BYTES + settings.max_versions_per_key * per_version


def _new_objectid() -> str:
    # numeric-looking like the vendor's object ids; unique per key incarnation
    return str(10**11 + secrets.randbelow(9 * 10**11))


# ---- domain types ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TransitKey:
    """One named key's record (metadata only; the material lives in its version records)."""

    kind: str
    prefix: str
    ring: str
    name: str
    type: str
    latest_version: int
    min_decryption_version: int
    allow_export: bool
    allow_backup: bool
    allow_delete: bool
    info: str
    objectid: str
    origin: str  # "ring/name/objectid" where the key was first created (AAD binding)
    created_at: int
    updated_at: int
    min_available_version: int = 1  # versions below were trimmed away
    # seconds between scheduled rotations (0: none); the scheduler's own copy is the index
    # item (core/rotation.py), written in the same transaction
    rotation_period: int = 0
    state: KeyState = KeyState.ACTIVE
    item_version: int = 0  # the store's optimistic-concurrency version of the record

    @property
    def bits(self) -> int:
        """AES key size of this key's type."""
        return KEY_TYPES[self.type]

    @property
    def pk(self) -> str:
        """Partition of the key record."""
        return f"{self.prefix}#{self.ring}"

    @property
    def sk(self) -> str:
        """Sort key of the key record."""
        return f"key#{self.name}"

    @property
    def versions_pk(self) -> str:
        """Partition holding this incarnation's version records."""
        return f"{self.prefix}#{self.ring}#{self.name}#{self.objectid}"

    def context(self, version: int) -> str:
        """HSM binding context of version `version`'s blob."""
        return f"{self.kind}/{self.ring}/{self.name}/{self.objectid}/{version}"

    def aad(self, version: int) -> bytes:
        """The AAD of every message under one version: binds origin and version."""
        return version_aad(self.kind, self.origin, version)

    def to_item(self) -> dict[str, Any]:
        """The store item (without the store-managed version)."""
        item = {
            "pk": self.pk, "sk": self.sk, "name": self.name, "type": self.type,
            "latest_version": self.latest_version,
            "min_decryption_version": self.min_decryption_version,
            "allow_export": self.allow_export, "allow_backup": self.allow_backup,
            "allow_delete": self.allow_delete, "info": self.info, "objectid": self.objectid,
            "origin": self.origin, "created_at": self.created_at, "updated_at": self.updated_at,
        }
        # written only when they differ from what records older than them meant
        if self.min_available_version != 1:
            item["min_available_version"] = self.min_available_version
        if self.rotation_period:
            item["rotation_period"] = self.rotation_period
        if self.state != KeyState.ACTIVE:
            item["state"] = str(self.state)
        return item

    @classmethod
    def from_item(cls, kind: RingKind, ring: str, item: dict[str, Any]) -> TransitKey:
        """Inverse of to_item, for a record found in the ring's partition.

        Ring and name come from where the record was found, never from its contents.
        MisplacedRecord if the record is not in that partition, its own name differs from its
        sort key, its origin is not in its ring, or a field is malformed.
        """
        pk, sk = item.get("pk"), item.get("sk")
        name = sk[4:] if isinstance(sk, str) and sk.startswith("key#") else ""
        here = Place(f"{kind.store_prefix}#{ring}", f"key#{name}")
        if pk != here.pk or not name:
            raise here.misplaced("is not in its place")
        if item.get("name") != name:
            raise here.misplaced("names another key")
        try:
            objectid, origin = item["objectid"], item["origin"]
            if not isinstance(objectid, str) or not OBJECT_ID_RE.match(objectid) \
                    or item["type"] not in KEY_TYPES:
                raise ValueError("objectid or type")
            home = origin_ring(origin)
            key = cls(
                kind=kind.name, prefix=kind.store_prefix, ring=ring, name=name,
                type=item["type"], latest_version=int(item["latest_version"]),
                min_decryption_version=int(item["min_decryption_version"]),
                allow_export=bool(item["allow_export"]),
                allow_backup=bool(item["allow_backup"]),
                allow_delete=bool(item["allow_delete"]), info=str(item.get("info") or ""),
                objectid=objectid, origin=origin,
                created_at=int(item["created_at"]), updated_at=int(item["updated_at"]),
                min_available_version=int(item.get("min_available_version", 1)),
                rotation_period=int(item.get("rotation_period", 0)),
                state=KeyState(item.get("state", KeyState.ACTIVE)),
                item_version=int(item["version"]),
            )
            # (KeyState() refuses an unknown state with ValueError: malformed)
            if not 1 <= key.min_available_version <= key.min_decryption_version \
                    <= key.latest_version <= MAX_VERSION:
                raise ValueError("versions")
        except (KeyError, TypeError, ValueError) as exc:
            raise here.misplaced("is malformed") from exc
        if home != ring:
            raise here.misplaced("has its origin in another ring")
        return key


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

class TransitKeys:
    """Named keys, versions and AES-GCM operations of one ring kind, with audit.

    Every operation takes a Grant (access.authorize) for its own action: the permission was
    decided once, before the operation; the operation audits itself.
    """

    def __init__(self, kind: RingKind, store: Store, hsm: Hsm, audit: AuditLog,
                 settings: Settings, clock: Callable[[], float] = time.time, *,
                 usage: KeyUsage | None = None) -> None:
        self.kind = kind
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._settings = settings
        self._clock = clock
        # last use per key incarnation (its objectid), written coalesced
        self.usage = usage or KeyUsage(store, settings, clock)
        self.bin = Bin.for_settings(store, audit, settings, clock)
        # version blobs under an older KEK only for the cache bound (a KEK roll replaces them)
        self._versions = VersionCache(current_kek=kek_label(settings),
                                      seconds=settings.cache_seconds)
        self._schedule = Schedule(store)
        # Key records for key use (encrypt, decrypt, rewrap, data keys), for the settings'
        # bound; every other operation on a key drops its entry in this process.
        self._records: TtlCache[tuple[str, str], TransitKey] = TtlCache(settings.cache_seconds)

    # ---- names ------------------------------------------------------------------------------

    def action(self, verb: str) -> str:
        """The audit/access action name of a verb ("key.create" -> "<kind>.key.create")."""
        return f"{self.kind.name}.{verb}"

    def obj(self, ring: str, name: str = "") -> str:
        """The audit object of a ring or a key."""
        return f"{self.kind.name}/{ring}/{name}" if name else f"{self.kind.name}/{ring}"

    @contextmanager
    def _op(self, grant: Grant, verb: str, name: str = "") -> Iterator[Operation]:
        grant.require(self.action(verb))
        try:
            with self._audit.operation(grant.caller, self.action(verb),
                                       self.obj(grant.ring, name)) as op:
                yield op
        finally:
            if name and verb not in KEY_USES:
                self._records.drop((grant.ring, name))  # it may have changed the record

    def _pk(self, ring: str) -> str:
        return f"{self.kind.store_prefix}#{ring}"

    def _used(self, key: TransitKey, what: str) -> None:
        """Note a use of the key (no store call but once per flush period)."""
        self.usage.record(self.kind.name, key.ring, key.objectid, what, name=key.name)

    # ---- store access -----------------------------------------------------------------------

    def _find(self, ring: str, name: str) -> TransitKey | None:
        item = self._store.get(self._pk(ring), f"key#{name}")
        if item is None:
            return None
        key = TransitKey.from_item(self.kind, ring, item)
        if key.state == KeyState.DELETING:
            self._purge(key)  # finish an interrupted deletion: the key is gone
            return None
        return key

    def _use(self, ring: str, name: str, version: int | None = None) -> TransitKey | None:
        """The key record for a key use, from the cache while it is fresh; read again when
        the use names a version newer than the cached latest (a rotation elsewhere)."""
        cached = self._records.get((ring, name))
        if cached is not None and (version is None or version <= cached.latest_version):
            return cached
        mark = self._records.drops()
        key = self._find(ring, name)
        if key is not None:
            self._records.put((ring, name), key, read_after=mark)
        return key

    def _require_use(self, ring: str, name: str, version: int | None = None) -> TransitKey:
        key = self._use(ring, name, version)
        if key is None:
            raise NotFound(f"key {name} not found", reason="key_not_found", name=name,
                           ring=ring)
        return key

    def _require(self, ring: str, name: str) -> TransitKey:
        key = self._find(ring, name)
        if key is None:
            raise NotFound(f"key {name} not found", reason="key_not_found", name=name,
                           ring=ring)
        return key

    def _version_key(self, key: TransitKey, version: int) -> WrappedKey:
        """The WrappedKey of one version (version records are immutable: cached)."""
        where = Place(key.versions_pk, f"v#{version:010d}")
        hit = self._versions.get(where.pk, where.sk)
        if hit is not None and hit.size == key.bits:
            return hit
        item = self._store.get(where.pk, where.sk)
        if item is None:
            # the key record named it, so the key was deleted or replaced meanwhile
            raise NotFound(f"key version {version} of {key.name} not found",
                           reason="version_not_found", name=key.name, version=version)
        try:
            wrapped = WrappedKey.from_dict(item["wrapped"])
        except (KeyError, TypeError, ValueError) as exc:
            raise where.misplaced("is malformed") from exc
        if wrapped.kind != "aes" or wrapped.size != key.bits:
            # checked here: the HSM would answer a wrong kind as the caller's bad input
            raise where.misplaced(f"is not an AES-{key.bits} key")
        self._versions.put(where.pk, where.sk, wrapped)
        return wrapped

    def _version_item(self, key: TransitKey, version: int, wrapped: WrappedKey) \
            -> dict[str, Any]:
        return {"pk": key.versions_pk, "sk": f"v#{version:010d}", "key_version": version,
                "created_at": int(self._clock()), "wrapped": wrapped.to_dict()}

    def _purge(self, key: TransitKey, below: int | None = None) -> None:
        """Delete version records (all, or those below `below`), then a tombstone. Idempotent
        and resumable: each step deletes what is still there."""
        for item in list(scan(self._store, key.versions_pk, "v#")):
            n = int(item.get("key_version") or str(item["sk"])[2:])
            if below is not None and n >= below:
                break
            try:
                self._store.delete_if(key.versions_pk, item["sk"])
            except StoreConditionFailed:
                pass  # someone else removed it
        self._versions.drop(key.versions_pk, below)
        if below is None and key.state == KeyState.DELETING:
            try:
                self._store.delete_if(key.pk, key.sk, key.item_version)
            except StoreConditionFailed:
                pass  # already purged by another request

    # ---- ring head: the key count behind the per-ring cap ----------------------------------

    def _count_ops(self, ring: str, delta: int) -> list[Op]:
        """The head CAS moving the ring's key count by delta (refused past the cap)."""
        head = read_head(self._store, self._pk(ring))
        count = head.state.get("keys")
        if not isinstance(count, int):  # a ring from before heads: count once
            count = sum(1 for it in scan(self._store, self._pk(ring), "key#")
                        if it.get("state", KeyState.ACTIVE) == KeyState.ACTIVE)
        if delta > 0:
            cap(count, self._settings.max_keys_per_ring, "keys per ring")
        return [head.replaced({**head.state, "keys": max(0, count + delta)})]

    # ---- crypto helpers ---------------------------------------------------------------------

    def _check_plaintext(self, plaintext: bytes) -> None:
        limit = self._settings.max_plaintext_bytes
        if len(plaintext) > limit:
            raise LimitExceeded(f"plaintext is larger than {limit} bytes",
                                reason="plaintext_too_large")

    @staticmethod
    def _pick(key: TransitKey, requested: int | None, field: str) -> int:
        """The version to use: latest, or `requested` if it exists and is not retired."""
        if requested is None:
            return key.latest_version
        if requested < 1 or requested > key.latest_version:
            raise NotFound(f"key version {requested} of {key.name} not found",
                           reason="version_not_found")
        if requested < key.min_decryption_version:
            raise InvalidState(f"{field} {requested} is below the key's "
                               f"min_decryption_version {key.min_decryption_version}",
                               reason="version_retired")
        return requested

    def _blob_failed(self, key: TransitKey, version: int) -> MisplacedRecord:
        return Place(key.versions_pk, f"v#{version:010d}").misplaced(
            "failed its HSM binding check")

    def _seal(self, key: TransitKey, version: int, plaintext: bytes) -> str:
        wrapped = self._version_key(key, version)
        try:
            data = self._hsm.encrypt_gcm(wrapped, key.context(version), plaintext,
                                         key.aad(version))
        except BindingError as exc:
            raise self._blob_failed(key, version) from exc
        return format_ciphertext(version, data)

    def _open(self, key: TransitKey, parsed: tuple[int, bytes] | KeyfrontError) \
            -> tuple[bytes, int]:
        if isinstance(parsed, KeyfrontError):
            raise parsed  # a malformed ciphertext, reported once its key is found
        version, data = parsed
        if len(data) > self._settings.max_plaintext_bytes + NONCE_BYTES + TAG_BYTES:
            raise LimitExceeded("ciphertext is larger than the largest plaintext allows",
                                reason="ciphertext_too_large")
        self._pick(key, version, "ciphertext version")  # it exists and is not retired
        wrapped = self._version_key(key, version)
        try:
            plaintext = self._hsm.decrypt_gcm(wrapped, key.context(version), data,
                                              key.aad(version))
        except BindingError as exc:
            # our stored version blob failed its binding: not the client's ciphertext
            raise self._blob_failed(key, version) from exc
        except IntegrityError as exc:
            # the GCM tag of the client's ciphertext (the blob checked out)
            raise IntegrityError("ciphertext failed verification: tampered, truncated, or "
                                 "not made by this key", reason="ciphertext_invalid") from exc
        return plaintext, version

    # ---- key lifecycle ----------------------------------------------------------------------

    def _insert_new(self, op: Operation, ring: str, name: str, key_type: str, *,
                    allow_export: bool, allow_backup: bool, allow_delete: bool,
                    info: str) -> TransitKey:
        """Create version 1, the record, the count and the audit record in one transaction;
        Conflict if the name exists."""
        bits = key_bits(key_type)
        now = int(self._clock())
        objectid = _new_objectid()
        key = TransitKey(kind=self.kind.name, prefix=self.kind.store_prefix, ring=ring,
                         name=name, type=key_type, latest_version=1, min_decryption_version=1,
                         allow_export=allow_export, allow_backup=allow_backup,
                         allow_delete=allow_delete, info=info, objectid=objectid,
                         origin=f"{ring}/{name}/{objectid}", created_at=now, updated_at=now,
                         item_version=1)
        wrapped = self._hsm.generate_aes(bits, key.context(1), exportable=allow_export)
        op.note(key_version=1)

        def attempt() -> TransitKey:
            if self._find(ring, name) is not None:  # also finishes a pending deletion
                raise _exists(name)
            op.commit([*self._count_ops(ring, +1), Put(key.to_item()),
                       Put(self._version_item(key, 1, wrapped))])
            return key
        return retry(attempt, self._settings.retry_attempts, what=f"key {name}")

    def create_key(self, grant: Grant, name: str, *, key_type: str = DEFAULT_KEY_TYPE,
                   allow_export: bool = False, allow_backup: bool = True,
                   allow_delete: bool = True, info: str = "") -> TransitKey:
        """Create a named key (version 1); Conflict if it exists. Export is off unless asked
        for (as in Vault: exporting key material is an explicit choice at creation)."""
        with self._op(grant, "key.create", name) as op:
            op.note(type=key_type if key_type in KEY_TYPES else None)
            if len(info) > MAX_INFO_CHARS:
                raise InvalidInput(f"info is longer than {MAX_INFO_CHARS} characters",
                                   field="info")
            return self._insert_new(op, grant.ring, name, key_type, allow_export=allow_export,
                                    allow_backup=allow_backup, allow_delete=allow_delete,
                                    info=info)

    def list_keys(self, grant: Grant) -> list[TransitKey]:
        """Every key of the ring, by name (misplaced records left out, logged, audited)."""
        grant.require(self.action("key.list"))

        def misplaced(exc: MisplacedRecord) -> None:
            sk = exc.where[1] if exc.where else ""
            name = sk[4:] if sk.startswith("key#") else ""
            self._audit.refused(grant.caller, grant.action, self.obj(grant.ring, name[:128]),
                                exc)
        out: list[TransitKey] = []
        for key in parsed(scan(self._store, self._pk(grant.ring), "key#"),
                          lambda item: TransitKey.from_item(self.kind, grant.ring, item),
                          misplaced):
            if key.state == KeyState.DELETING:
                self._purge(key)
                continue
            out.append(key)
        return out

    def read_key(self, grant: Grant, name: str) -> TransitKey:
        """One key's metadata (a misplaced record is audited as a failed read)."""
        grant.require(self.action("key.read"))
        try:
            return self._require(grant.ring, name)
        except MisplacedRecord as exc:
            self._audit.refused(grant.caller, self.action("key.read"),
                                self.obj(grant.ring, name), exc)
            raise

    def rotate(self, grant: Grant, name: str) -> TransitKey:
        """Add version latest+1; racing rotations get distinct versions (retry on CAS). The
        new version and its audit record are written in one transaction, with the key's
        rotation schedule moved on (auto rotation counts from the last rotation)."""
        with self._op(grant, "key.rotate", name) as op:
            def attempt() -> TransitKey:
                key = self._require(grant.ring, name)
                return self._rotated(op, key, self._schedule.pushed_ops(
                    self.kind.name, key.ring, key.name, key.objectid, self._clock())
                    if key.rotation_period else [])
            return retry(attempt, self._settings.retry_attempts, what=f"key {name}")

    def _rotated(self, op: Operation, key: TransitKey, also: list[Op]) -> TransitKey:
        """Generate version latest+1 in the HSM, then write it, the record and `also` in
        one transaction conditional on the record as read."""
        n = key.latest_version + 1
        if n > MAX_VERSION:
            raise LimitExceeded("the key has reached its maximum version",
                                reason="version_cap")
        cap(n - key.min_available_version, self._settings.max_versions_per_key,
            "versions per key (trim the key to make room)")
        wrapped = self._hsm.generate_aes(key.bits, key.context(n),
                                         exportable=key.allow_export)
        new = replace(key, latest_version=n, updated_at=int(self._clock()))
        op.note(key_version=n)
        # the record's version is the lock: a concurrent rotation makes this fail
        op.commit([Update(new.to_item(), key.item_version),
                   Put(self._version_item(key, n, wrapped)), *also])
        return replace(new, item_version=key.item_version + 1)

    # ---- scheduled rotation (core/rotation.py) ----------------------------------------------

    def rotation(self, ring: str, name: str) -> Entry | None:
        """The key's rotation schedule (None: none); NotFound if there is no such key."""
        key = self._require(ring, name)
        entry = self._schedule.get(self.kind.name, ring, name)
        return entry if entry is not None and entry.incarnation == key.objectid else None

    def set_rotation(self, ring: str, name: str, period: int, *,
                     principal: str) -> Entry | None:
        """Set the key's rotation period in seconds (0: off), audited under `principal`:
        the record, the index item and the audit record in one transaction."""
        with self._audit.operation(None, self.action("key.schedule"), self.obj(ring, name),
                                   principal=principal) as op:
            op.note(period=period)

            def attempt() -> Entry | None:
                key = self._require(ring, name)
                ops, entry = self._scheduled(key, period)
                op.commit(ops)
                return entry
            try:
                return retry(attempt, self._settings.retry_attempts, what=f"key {name}")
            finally:
                self._records.drop((ring, name))

    def _scheduled(self, key: TransitKey, period: int) -> tuple[list[Op], Entry | None]:
        """The record with its period and the index item, conditional on both as read, and
        the entry they leave."""
        index, entry = self._schedule.set_ops(self.kind.name, key.ring, key.name, period,
                                              key.objectid, self._clock())
        new = replace(key, rotation_period=period, updated_at=int(self._clock()))
        return [Update(new.to_item(), key.item_version), *index], entry

    def rotate_due(self, entry: Entry, now: float, *, principal: str) -> str:
        """The scheduler's rotation of a due key (see rotation.Rotatable.rotate_due)."""
        ring, name = entry.ring, entry.target
        try:
            key = self._find(ring, name)
        except MisplacedRecord as exc:
            self._audit.refused(None, self.action("key.rotate"), self.obj(ring, name), exc,
                                principal=principal)
            raise
        if key is None or key.objectid != entry.incarnation:
            return drop(self._audit, entry, self.action("key.schedule"), self.obj(ring, name),
                        principal=principal)
        self._schedule.still(entry)  # a race lost before it began is not audited
        try:
            with self._audit.operation(None, self.action("key.rotate"), self.obj(ring, name),
                                       principal=principal) as op:
                def attempt() -> TransitKey:
                    self._schedule.still(entry)  # after a failed transaction: who won?
                    key = self._require(ring, name)
                    if key.objectid != entry.incarnation:
                        raise Superseded()  # deleted and created again: dropped next run
                    return self._rotated(op, key, [entry.moved(now)])
                retry(attempt, self._settings.retry_attempts, what=f"key {name}")
        finally:
            self._records.drop((ring, name))
        return "rotated"

    def configure(self, grant: Grant, name: str, *, min_decryption_version: int | None = None,
                  allow_delete: bool | None = None,
                  rotation_period: int | None = None) -> TransitKey:
        """Set min_decryption_version, allow_delete and/or the rotation period in seconds
        (0: off; beyond the vendor). A period is written in the record's transaction."""
        with self._op(grant, "key.config", name) as op:
            if min_decryption_version is None and allow_delete is None \
                    and rotation_period is None:
                raise InvalidInput("give min_decryption_version, allow_delete or a rotation "
                                   "period")

            def attempt() -> TransitKey:
                key = self._require(grant.ring, name)
                changes: dict[str, Any] = {}
                if min_decryption_version is not None:
                    if not key.min_available_version <= min_decryption_version \
                            <= key.latest_version:
                        raise InvalidInput(
                            f"min_decryption_version must be {key.min_available_version}.."
                            f"{key.latest_version}", field="min_decryption_version")
                    changes["min_decryption_version"] = min_decryption_version
                if allow_delete is not None:
                    changes["allow_delete"] = allow_delete
                ops: list[Op] = []
                if rotation_period is not None:
                    changes["rotation_period"] = rotation_period
                    op.note(period=rotation_period)
                    ops = self._schedule.set_ops(self.kind.name, key.ring, key.name,
                                                 rotation_period, key.objectid,
                                                 self._clock())[0]
                new = replace(key, updated_at=int(self._clock()), **changes)
                op.note(key_version=new.latest_version)
                op.commit([Update(new.to_item(), key.item_version), *ops])
                return replace(new, item_version=key.item_version + 1)
            return retry(attempt, self._settings.retry_attempts, what=f"key {name}")

    def trim(self, grant: Grant, name: str, min_available_version: int | None = None) \
            -> TransitKey:
        """Delete the versions below min_available_version (default: the key's
        min_decryption_version, which it may not exceed), as Vault's trim: what they encrypted
        can never be decrypted again. The record change and its audit record are one
        transaction; the version records go after it (idempotently)."""
        with self._op(grant, "key.trim", name) as op:
            def attempt() -> TransitKey:
                key = self._require(grant.ring, name)
                floor = key.min_decryption_version if min_available_version is None \
                    else min_available_version
                if not key.min_available_version <= floor <= key.min_decryption_version:
                    raise InvalidInput(
                        f"min_available_version must be {key.min_available_version}.."
                        f"{key.min_decryption_version} (the key's min_decryption_version)",
                        field="min_available_version")
                new = replace(key, min_available_version=floor, updated_at=int(self._clock()))
                op.note(key_version=floor, count=floor - key.min_available_version)
                op.commit([Update(new.to_item(), key.item_version)])
                return replace(new, item_version=key.item_version + 1)
            key = retry(attempt, self._settings.retry_attempts, what=f"key {name}")
        self._purge(key, below=key.min_available_version)
        return key

    def delete(self, grant: Grant, name: str) -> TransitKey:
        """Delete a key; refused unless allow_delete. The record moves into a deleted-key
        entry in one transaction with the count and the audit record; its versions go with
        the purge after the deletion window (at once with a window of 0)."""
        with self._op(grant, "key.delete", name) as op:
            def attempt() -> tuple[TransitKey, Deleted]:
                key = self._require(grant.ring, name)
                if not key.allow_delete:
                    raise InvalidState(f"deletion is not allowed for key {name} "
                                       "(allow_delete is false)", reason="delete_not_allowed")
                self.usage.guard(grant, key.objectid, op)
                entry = self.bin.entry(self.kind.name, grant.ring, key.objectid, name,
                                       grant.caller.principal.name,
                                       [{**key.to_item(), "version": key.item_version}])
                op.note(key_version=key.latest_version)
                # conditional on the version read: a concurrent config change wins
                op.commit([*entry.moved(), *self._count_ops(grant.ring, -1)])
                return key, entry
            key, entry = retry(attempt, self._settings.retry_attempts, what=f"key {name}")
        self.bin.settle(entry, self, principal=grant.caller.principal.name)
        return key

    # ---- the deleted-key adapter (core/deleted.py) -----------------------------------------

    def _deleted_key(self, entry: Deleted) -> TransitKey:
        return TransitKey.from_item(self.kind, entry.ring, entry.records[0])

    def restore_ops(self, entry: Deleted) -> list[Op]:
        """The record back (if its name is free), the ring's count (within its cap) and its
        rotation schedule, if it had one (the scheduler drops a deleted key's)."""
        if self._find(entry.ring, entry.name) is not None:
            raise restore_conflict(f"key name {entry.name} is taken by another key")
        try:
            count = self._count_ops(entry.ring, +1)
        except LimitExceeded as exc:
            raise restore_conflict(f"the ring is full: {exc.message}") from None
        key = self._deleted_key(entry)
        schedule = self._schedule.set_ops(
            self.kind.name, key.ring, key.name, key.rotation_period, key.objectid,
            self._clock())[0] if key.rotation_period else []
        return [*entry.put_back(), *count, *schedule]

    def purge_dependents(self, entry: Deleted) -> int:
        """The key's version records (its incarnation's own partition), each after this
        process's HSM session copy of it."""
        key = self._deleted_key(entry)
        gone = 0
        for item in list(scan(self._store, key.versions_pk, "v#")):
            forget_blob(self._hsm, item.get("wrapped"),
                        key.context(int(item.get("key_version") or str(item["sk"])[2:])))
            try:
                self._store.delete_if(key.versions_pk, item["sk"])
                gone += 1
            except StoreConditionFailed:
                pass  # someone else removed it
        return gone

    def forget(self, entry: Deleted) -> None:
        """Drop the key's cached record and versions."""
        self._records.drop((entry.ring, entry.name))
        self._versions.drop(self._deleted_key(entry).versions_pk)

    # ---- key use ----------------------------------------------------------------------------

    def encrypt(self, grant: Grant, name: str, plaintext: bytes, *,
                key_version: int | None = None, key_type: str | None = None) -> Encrypted:
        """Encrypt under the latest (or a given) version; a caller who may also create keys
        (`key.create`) creates a missing key (of `key_type`, default aes128-gcm96)."""
        with self._op(grant, "encrypt", name) as op:
            self._check_plaintext(plaintext)
            if key_type is not None:
                key_bits(key_type)
            key = self._use(grant.ring, name, key_version)
            created = False
            if key is None:
                if not grant.holds(*self.kind.needed(self.action("key.create"))):
                    raise NotFound(f"key {name} not found", reason="key_not_found",
                                   name=name, ring=grant.ring)
                key, created = self._create_for_encrypt(grant, name,
                                                        key_type or DEFAULT_KEY_TYPE)
            n = self._pick(key, key_version, "key_version")
            op.note(key_version=n)
            sealed = self._seal(key, n, plaintext)
            self._used(key, "encrypt")
            return Encrypted(sealed, n, key, created)

    def _create_for_encrypt(self, grant: Grant, name: str,
                            key_type: str) -> tuple[TransitKey, bool]:
        action = self.action("key.create")
        try:
            with self._audit.operation(grant.caller, action, self.obj(grant.ring, name)) as op:
                op.note(type=key_type)
                # made on first use with the defaults of create_key: export is never implied
                key = self._insert_new(op, grant.ring, name, key_type, allow_export=False,
                                       allow_backup=True, allow_delete=True, info="")
            return key, True
        except Conflict:
            # created concurrently by another request: use that one
            return self._require(grant.ring, name), False

    def decrypt(self, grant: Grant, name: str, ciphertext: str) -> Decrypted:
        """Decrypt; the version comes from the ciphertext prefix."""
        with self._op(grant, "decrypt", name) as op:
            parsed = _parsed(ciphertext)
            key = self._require_use(grant.ring, name, _version_of(parsed))
            plaintext, n = self._open(key, parsed)
            op.note(key_version=n)
            self._used(key, "decrypt")
            return Decrypted(plaintext, n, key)

    def rewrap(self, grant: Grant, name: str, ciphertext: str, *,
               to_version: int | None = None) -> Encrypted:
        """Re-encrypt a ciphertext under to_version (default latest); the plaintext never
        leaves the service."""
        with self._op(grant, "rewrap", name) as op:
            parsed = _parsed(ciphertext)
            key = self._require_use(grant.ring, name,
                                    max(_version_of(parsed) or 0, to_version or 0) or None)
            plaintext, old = self._open(key, parsed)
            n = self._pick(key, to_version, "to_version")
            op.note(from_version=old, to_version=n)
            sealed = self._seal(key, n, plaintext)
            self._used(key, "rewrap")
            return Encrypted(sealed, n, key)

    def datakey(self, grant: Grant, name: str, *, bits: int = DEFAULT_DATAKEY_BITS,
                key_version: int | None = None) -> DataKey:
        """A fresh random data key, encrypted under the named key; its plaintext too when the
        grant is for the `plaintext` variant."""
        with_plaintext = grant.variant == "plaintext"
        with self._op(grant, "datakey", name) as op:
            op.note(type="plaintext" if with_plaintext else "wrapped")
            if type(bits) is not int or bits not in DATAKEY_BITS:
                raise InvalidInput("bits must be 128, 256 or 512", field="bits")
            op.note(bits=bits)  # validated first: only a valid value is audited
            key = self._require_use(grant.ring, name, key_version)
            n = self._pick(key, key_version, "key_version")
            raw = self._hsm.random_bytes(bits // 8)
            op.note(key_version=n)
            sealed = self._seal(key, n, raw)
            self._used(key, "datakey")
            return DataKey(sealed, raw if with_plaintext else None, n, bits, key)

    # ---- export, backup, restore ------------------------------------------------------------

    def export(self, grant: Grant, name: str, *,
               key_version: int | None = None) -> tuple[TransitKey, dict[int, bytes]]:
        """Raw material of one version, or of every version not below
        min_decryption_version; only for keys created with allow_export."""
        with self._op(grant, "key.export", name) as op:
            key = self._require(grant.ring, name)
            if not key.allow_export:
                raise InvalidState(f"export is not allowed for key {name} "
                                   "(allow_export is false)", reason="export_not_allowed")
            if key_version is None:
                versions = range(key.min_decryption_version, key.latest_version + 1)
            else:
                versions = range(self._pick(key, key_version, "key_version"), key_version + 1)
            op.note(key_version=key_version, count=len(versions))
            material: dict[int, bytes] = {}
            for n in versions:
                wrapped = self._version_key(key, n)
                try:
                    material[n] = self._hsm.export_secret(wrapped, key.context(n))
                except (BindingError, Forbidden) as exc:
                    # the record allows export: a blob that fails or refuses is not its own
                    raise self._blob_failed(key, n) from exc
            self._used(key, "export")
            return key, material

    def backup(self, grant: Grant, name: str) -> tuple[TransitKey, str]:
        """A protected backup of the key and its available versions: wrapped blobs only,
        restorable only by a service with the same KEK, into the same ring. Refused when it
        would be larger than restore accepts (trim the key first)."""
        with self._op(grant, "key.backup", name) as op:
            key = self._require(grant.ring, name)
            if not key.allow_backup:
                raise InvalidState(f"backup is not allowed for key {name} "
                                   "(allow_backup is false)", reason="backup_not_allowed")
            meta = {
                "type": key.type, "allow_export": key.allow_export,
                "allow_backup": key.allow_backup, "allow_delete": key.allow_delete,
                "info": key.info, "latest_version": key.latest_version,
                "min_decryption_version": key.min_decryption_version, "origin": key.origin,
                "vault": key.ring,  # the source ring: the only ring it restores into
                "min_available_version": key.min_available_version,
            }
            available = key.latest_version - key.min_available_version + 1
            cap(available - 1, self._settings.max_versions_per_key,
                "versions in a backup (trim the key first)")
            digest = backup_digest(self.kind.name, meta)
            versions = []
            for n in range(key.min_available_version, key.latest_version + 1):
                wrapped = self._version_key(key, n)
                try:
                    moved = self._hsm.rebind(wrapped, key.context(n),
                                             backup_context(self.kind.name, digest, n))
                except BindingError as exc:
                    raise self._blob_failed(key, n) from exc
                versions.append({"key_version": n, "wrapped": wrapped_to_json(moved)})
            doc = backup_document(self.kind.name, meta, versions)
            op.note(key_version=key.latest_version, count=len(versions))
            self._used(key, "backup")
            raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
            return key, base64.b64encode(raw).decode("ascii")

    def restore(self, grant: Grant, name: str, backup: str) -> TransitKey:
        """Restore a backup under ring/name as a new key (all its versions).

        Only into the ring the backup was taken from (InvalidInput otherwise: rings are
        tenants, a backup never moves a key between them), under any free name; Conflict if
        the name exists; IntegrityError if the backup was altered.
        """
        ring = grant.ring
        with self._op(grant, "key.restore", name) as op:
            meta, blobs = parse_backup(self.kind.name, backup, KEY_TYPES)
            op.note(key_version=meta["latest_version"], type=meta["type"])
            if backup_ring(meta) != ring:
                raise InvalidInput("the backup was taken from another ring: a backup restores "
                                   "only into the ring it was taken from", field="backup",
                                   reason="backup_foreign_ring")
            if self._find(ring, name) is not None:
                raise _exists(name)
            now = int(self._clock())
            objectid = _new_objectid()
            lowest = meta.get("min_available_version", 1)
            key = TransitKey(kind=self.kind.name, prefix=self.kind.store_prefix, ring=ring,
                             name=name, type=meta["type"],
                             latest_version=meta["latest_version"],
                             min_decryption_version=meta["min_decryption_version"],
                             allow_export=meta["allow_export"],
                             allow_backup=meta["allow_backup"],
                             allow_delete=meta["allow_delete"], info=meta["info"],
                             objectid=objectid, origin=meta["origin"], created_at=now,
                             updated_at=now, min_available_version=lowest, item_version=1)
            digest = backup_digest(self.kind.name, meta)
            rebound: list[tuple[int, WrappedKey]] = []
            for n, wrapped in enumerate(blobs, start=lowest):
                if wrapped.kind != "aes" or wrapped.size != key.bits:
                    raise IntegrityError("backup failed its integrity check")
                try:
                    rebound.append((n, self._hsm.rebind(
                        wrapped, backup_context(self.kind.name, digest, n), key.context(n))))
                except IntegrityError as exc:  # the client's backup: its 400
                    raise IntegrityError("backup failed its integrity check") from exc
            if origin_ring(key.origin) != ring:
                # the digest vouches for the metadata; we never wrote such a backup
                raise IntegrityError("backup failed its integrity check")
            # versions first (invisible until the record exists), then the record with its
            # count and audit record, which decides the race for the name
            # (a crash between the two leaves version records under a fresh objectid that no
            # record names: unreachable, never used)
            for n, wrapped in rebound:
                self._store.put_if_absent(self._version_item(key, n, wrapped))

            def attempt() -> TransitKey:
                if self._find(ring, name) is not None:
                    raise _exists(name)
                # a lost race on the ring's count (another key created or deleted) is retried
                op.commit([*self._count_ops(ring, +1), Put(key.to_item())])
                return key
            try:
                return retry(attempt, self._settings.retry_attempts, what=f"key {name}")
            except KeyfrontError:
                self._purge(replace(key, state=KeyState.ACTIVE))
                raise


def _parsed(ciphertext: str) -> tuple[int, bytes] | KeyfrontError:
    """The ciphertext parsed once per request: (version, bytes), or the parser's error (raised
    by `_open` once the key is found, so a missing key is still reported first)."""
    try:
        return parse_ciphertext(ciphertext)
    except KeyfrontError as exc:
        return exc


def _version_of(parsed: tuple[int, bytes] | KeyfrontError) -> int | None:
    """The key version a parsed ciphertext names (None for a malformed one)."""
    return None if isinstance(parsed, KeyfrontError) else parsed[0]


def _exists(name: str) -> Conflict:
    return Conflict(f"key {name} already exists", reason="key_exists", name=name)
