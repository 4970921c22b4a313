"""Tenant keys: RSA encryption keys per ring, at most one active, private-key use by grant.

A ring (a tenant) holds RSA key pairs of 1024, 2048 or 4096 bits, generated in the HSM or
imported (a public key alone makes an encrypt-only key; with its private key, decrypted with
its password only in memory and wrapped on the way in). One key of the ring may be active:
the one new data is encrypted under.

Store layout (prefix = the ring kind's store prefix):

  pk "{p}#{ring}#keys"           sk "head"        {"active": kid | None, "count": n}
                                 sk "key#<kid>"   one key: ring, id, name, private use, size,
                                                  public key PEM, wrapped private key or None
  pk "{p}#{ring}#grants#<kid>"   sk "user#<user>" one user granted the key

A deleted key's record moves into a deleted-key entry (core/deleted.py); its grants stay,
unreachable, until a restore brings the record back or the purge deletes them.

"Active" lives only in the head, so "at most one active key" holds by construction: making a
key active is one compare-and-swap of the head (retried), in the same transaction as the key
item and the audit record; the count in the head is the ring's cap. Key ids are time-ordered
UUIDs (version 7), so a ring's keys list in creation order.

Grants: the creator of a key is granted it; only a user granted a key may grant or revoke it
(whatever else their token holds). A key's private use is either GRANTED (only granted users
decrypt or export) or RING (any caller with the ring's read permission decrypts); exporting
always needs a grant. Every change and every private-key use is audited; a record not where
its place says is a MisplacedRecord (audited, left out of lists, a generic 500).

The rules (`added`, `changed`, `removed`, `check_private_use`, `check_granter`) are pure
functions over state; `TenantKeys` adds the HSM and the store.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import rsa

from chalicelib.config import Settings
from chalicelib.core import keyspecs, material
from chalicelib.core.access import Grant, RingKind
from chalicelib.core.audit import AuditLog, allow_details
from chalicelib.core.clock import iso_millis
from chalicelib.core.deleted import Bin, Deleted, forget_blob, restore_conflict
from chalicelib.core.keys import new_key_id
from chalicelib.core.limits import GenerationRate, cap, generation_cost
from chalicelib.core.records import Place, parsed, read_head, retry, scan
from chalicelib.core.rings import RingDomain
from chalicelib.core.usage import KeyUsage
from chalicelib.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidState,
    LimitExceeded,
    NotFound,
    StoreConditionFailed,
    StoreTransactionCancelled,
)
from chalicelib.hsm import WrappedKey
from chalicelib.store import Check, Delete, Op, Put, Store, Update

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

log = logging.getLogger("keyfront.tenant_keys")

KEY_BITS = (1024, 2048, 4096)
DEFAULT_BITS = 2048
GRANTED = "granted"  # only granted users use the private key
RING = "ring"  # any caller with the ring's read permission decrypts
PRIVATE_USES = (GRANTED, RING)
OAEP_HASHES = ("sha256", "sha1")
KEY_PREFIX = "key#"
USER_PREFIX = "user#"
MAX_PAGE = 1000

allow_details("active", "deactivated", "user", "hash", "private_use", "origin")


def key_not_found() -> NotFound:
    """No such key in this ring (the same answer for a key of another ring)."""
    return NotFound("key not found", reason="key_not_found")


MIN_EXPORT_PASSWORD_CHARS = 12


@dataclass(frozen=True)
class TenantKey:
    """One key as an API shows it: never its private key."""

    id: str
    ring: str
    name: str
    private_use: str
    active: bool
    bits: int
    has_private: bool
    public_pem: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class KeyPage:
    """A page of keys or user ids, the ring's (or key's) total and the next page's cursor."""

    items: list[Any]
    total: int
    cursor: str | None


# ---- the rules, as pure functions --------------------------------------------------------------

def added(head: dict[str, Any], kid: str, activate: bool, limit: int) \
        -> tuple[dict[str, Any], str | None]:
    """The head after adding key `kid` (active if `activate`), and the key it deactivated.
    LimitExceeded (cap_reached) if the ring holds `limit` keys already."""
    count = int(head.get("count", 0))
    cap(count, limit, "keys per ring")
    previous = head.get("active")
    if activate:
        return {"active": kid, "count": count + 1}, previous
    return {"active": previous, "count": count + 1}, None


def changed(head: dict[str, Any], kid: str, active: bool | None) \
        -> tuple[dict[str, Any], str | None]:
    """The head after setting key `kid` active (True), inactive (False) or leaving it (None),
    and the key it deactivated (another one, made inactive by activating `kid`)."""
    current = head.get("active")
    new = dict(head)
    new.setdefault("count", 0)
    if active is True and current != kid:
        new["active"] = kid
        return new, current
    if active is False and current == kid:
        new["active"] = None
    return new, None


def removed(head: dict[str, Any], kid: str) -> dict[str, Any]:
    """The head after deleting key `kid` (an active key leaves the ring without one)."""
    return {"active": None if head.get("active") == kid else head.get("active"),
            "count": max(0, int(head.get("count", 0)) - 1)}


def check_private_use(key: TenantKey, *, granted: bool, export: bool = False) -> None:
    """May a caller (granted the key or not) use its private key? InvalidState for an
    encrypt-only key; Forbidden (not_granted) without the grant it needs."""
    if not key.has_private:
        raise InvalidState("the key has no private key: it only encrypts",
                           reason="no_private_key")
    if not granted and (export or key.private_use == GRANTED):
        raise Forbidden("the key is usable only by users granted it", reason="not_granted")


def check_granter(granted: bool) -> None:
    """Only a user granted a key grants or revokes it (whatever else their token holds)."""
    if not granted:
        raise Forbidden("only a user granted the key grants or revokes it",
                        reason="not_granted")


# ---- the domain ----------------------------------------------------------------------------

class TenantKeys(RingDomain):
    """The domain over the process's store, HSM, audit and limits; one per container."""

    def __init__(self, kind: RingKind, store: Store, hsm: Hsm, audit: AuditLog,
                 rate: GenerationRate, settings: Settings,
                 clock: Callable[[], float] = time.time, *,
                 usage: KeyUsage | None = None) -> None:
        self.kind = kind
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._rate = rate
        self._attempts = settings.retry_attempts
        self._max_keys = settings.max_keys_per_ring
        self.default_ring = settings.default_ring
        self._clock = clock
        self.usage = usage or KeyUsage(store, settings, clock)
        self.bin = Bin.for_settings(store, audit, settings, clock)

    # ---- names ---------------------------------------------------------------------------

    def obj(self, ring: str, *parts: str) -> str:
        """An audit object name under the ring's keys."""
        return super().obj(ring, "keys", *parts)

    def pk(self, ring: str) -> str:
        """The ring's key partition (head and keys)."""
        return f"{super().pk(ring)}#keys"

    def grants_pk(self, ring: str, kid: str) -> str:
        """The partition of the users granted key `kid`."""
        return f"{self.kind.store_prefix}#{ring}#grants#{kid}"

    def context(self, ring: str, kid: str) -> str:
        """The HSM binding context of a key's wrapped private key: its ring and id."""
        return f"{self.kind.name}/{ring}/keys/{kid}"

    # ---- reading -------------------------------------------------------------------------

    def _view(self, ring: str, kid: str, record: dict[str, Any], active: str | None) \
            -> TenantKey:
        """The key found at (ring, kid); MisplacedRecord if the item says it is another."""
        place = Place(self.pk(ring), KEY_PREFIX + kid)
        if record.get("ring") != ring or record.get("id") != kid:
            raise place.misplaced("names another key")
        try:
            return TenantKey(
                id=kid, ring=ring, name=record["name"], private_use=record["private_use"],
                active=active == kid, bits=int(record["bits"]),
                has_private=record.get("wrapped") is not None,
                public_pem=record["public_pem"], created_at=record["created_at"],
                updated_at=record["updated_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise place.misplaced("is malformed") from exc

    def _record(self, ring: str, kid: str) -> tuple[dict[str, Any], TenantKey]:
        record = self._store.get(self.pk(ring), KEY_PREFIX + kid)
        if record is None:
            raise key_not_found()
        head = read_head(self._store, self.pk(ring))
        return record, self._view(ring, kid, record, head.state.get("active"))

    def _granted(self, ring: str, kid: str, user: str) -> dict[str, Any] | None:
        """The grant item of `user` on the key, None if there is none; MisplacedRecord if
        the item there names another ring, key or user (a copied grant grants nothing)."""
        item = self._store.get(self.grants_pk(ring, kid), USER_PREFIX + user)
        if item is None:
            return None
        if item.get("ring") != ring or item.get("key") != kid or item.get("user") != user:
            raise Place(self.grants_pk(ring, kid), USER_PREFIX + user).misplaced(
                "names another grant")
        return item

    def _grant_item(self, ring: str, kid: str, user: str, by: str) -> dict[str, Any]:
        return {"pk": self.grants_pk(ring, kid), "sk": USER_PREFIX + user, "ring": ring,
                "key": kid, "user": user, "granted_by": by,
                "granted_at": iso_millis(self._clock())}

    def get(self, grant: Grant, kid: str) -> TenantKey:
        """One key of the grant's ring; NotFound if there is none."""
        grant.require(self.action("key.read"))
        return self._audited(grant, self.obj(grant.ring, kid),
                             lambda: self._record(grant.ring, kid)[1])

    def list(self, grant: Grant, *, limit: int, cursor: str | None) -> KeyPage:
        """A page of the ring's keys in creation order; total = the ring's key count."""
        grant.require(self.action("key.list"))
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit is 1 to {MAX_PAGE}", field="limit")
        pk = self.pk(grant.ring)
        head = read_head(self._store, pk)
        page = self._store.query(pk, KEY_PREFIX, limit=limit, cursor=cursor)
        active = head.state.get("active")

        def parse(item: dict[str, Any]) -> TenantKey:
            kid = str(item["sk"]).removeprefix(KEY_PREFIX)
            return self._view(grant.ring, kid, item, active)
        keys = list(parsed(iter(page.items), parse, self._report(grant, self.obj(grant.ring))))
        return KeyPage(keys, int(head.state.get("count", 0)), page.cursor)

    # ---- changing ------------------------------------------------------------------------

    def create(self, grant: Grant, *, name: str, private_use: str, activate: bool,
               bits: int | None = None, public_key: str | None = None,
               private_key: str | None = None, password: str | None = None) -> TenantKey:
        """Generate (`bits`) or import (`public_key`, optionally `private_key` and its
        `password`) a key; the creator is granted it; with `activate` it becomes the ring's
        active key and the previous one inactive, all in one transaction with the record."""
        grant.require(self.action("key.create"))
        if private_use not in PRIVATE_USES:
            raise InvalidInput(f"private use is one of {', '.join(PRIVATE_USES)}",
                               field="private_use")
        ring, user = grant.ring, grant.caller.principal.name
        pk = self.pk(ring)
        with self._audit.operation(grant.caller, grant.action, self.obj(ring)) as op:
            # the cap is checked before any HSM work, and again in the transaction
            cap(int(read_head(self._store, pk).state.get("count", 0)), self._max_keys,
                "keys per ring")
            now = self._clock()
            kid = new_key_id(now)
            context = self.context(ring, kid)
            if public_key is None:
                size = DEFAULT_BITS if bits is None else bits
                if size not in KEY_BITS:
                    raise InvalidInput("key sizes are 1024, 2048 or 4096 bits", field="bits")
                self._rate.spend(grant.caller, generation_cost(size))
                made = material.describe(keyspecs.generate(self._hsm, f"RSA_{size}", context))
                origin = "generated"
            else:
                size = self._imported_size(public_key)
                self._rate.spend(grant.caller)  # opening an encrypted key costs too
                if private_key is None:
                    made = material.import_public_key(public_key, field="public_key")
                else:
                    made = material.import_private_key(
                        self._hsm, private_key, context, password=password,
                        public_key=public_key, field="private_key",
                        password_field="private_key_password", public_key_field="public_key")
                origin = "imported"
            stamp = iso_millis(now)
            record = {
                "pk": pk, "sk": KEY_PREFIX + kid, "ring": ring, "id": kid, "name": name,
                "private_use": private_use, "bits": size, "origin": origin,
                "public_pem": made.public_pem, "fingerprint": made.fingerprint,
                "wrapped": None if made.wrapped is None else made.wrapped.to_dict(),
                "created_by": user, "created_at": stamp, "updated_at": stamp,
            }
            op.note(kid=kid, bits=size, origin=origin, private_use=private_use,
                    active=bool(activate))

            def attempt() -> None:
                head = read_head(self._store, pk)
                state, deactivated = added(head.state, kid, bool(activate), self._max_keys)
                op.note(deactivated=deactivated)
                op.commit([head.replaced(state), Put(record),
                           Put(self._grant_item(ring, kid, user, user))],
                          obj=self.obj(ring, kid))
            retry(attempt, self._attempts, what="the ring")
        return self._view(ring, kid, record, kid if activate else None)

    @staticmethod
    def _imported_size(public_key: str) -> int:
        """The size of an imported public key, which must be RSA of 1024/2048/4096 bits."""
        public = material.parse_public_key(public_key, field="public_key")
        if not isinstance(public, rsa.RSAPublicKey):
            raise InvalidInput("the key must be an RSA key", field="public_key")
        if public.key_size not in KEY_BITS:
            raise InvalidInput("RSA keys are 1024, 2048 or 4096 bits", field="public_key")
        return int(public.key_size)

    def update(self, grant: Grant, kid: str, *, name: str | None = None,
               active: bool | None = None) -> TenantKey:
        """Rename and/or (de)activate a key; activating it deactivates the previous active
        key in the same transaction (a compare-and-swap of the head, retried)."""
        grant.require(self.action("key.update"))
        ring, pk = grant.ring, self.pk(grant.ring)
        with self._audit.operation(grant.caller, grant.action, self.obj(ring, kid)) as op:
            def attempt() -> TenantKey:
                record, _ = self._record(ring, kid)
                head = read_head(self._store, pk)
                state, deactivated = changed(head.state, kid, active)
                stored = {k: v for k, v in record.items() if k != "version"}
                if name is not None:
                    stored["name"] = name
                stored["updated_at"] = iso_millis(self._clock())
                op.note(kid=kid, active=active, deactivated=deactivated)
                # the head is part of the transaction either way: what "active" means is
                # decided against the head as read
                head_op = head.replaced(state) if state != head.state else head.unchanged()
                op.commit([head_op, Update(stored, int(record["version"]))])
                return self._view(ring, kid, stored, state.get("active"))
            return retry(attempt, self._attempts, what="the ring")

    def delete(self, grant: Grant, kid: str) -> None:
        """Delete a key (an active key leaves the ring without one): its record moves into a
        deleted-key entry with the head's change and the audit record; its grants stay
        (unreachable: every grant use reads the key first, and key ids are never reused)
        until the purge after the deletion window."""
        grant.require(self.action("key.delete"))
        ring, pk = grant.ring, self.pk(grant.ring)
        with self._audit.operation(grant.caller, grant.action, self.obj(ring, kid)) as op:
            def attempt() -> Deleted:
                record, key = self._record(ring, kid)
                self.usage.guard(grant, kid, op)
                head = read_head(self._store, pk)
                op.note(kid=kid, active=key.active)
                entry = self.bin.entry(self.kind.name, ring, kid, key.name,
                                       grant.caller.principal.name, [record],
                                       {"active": key.active})
                op.commit([head.replaced(removed(head.state, kid)), *entry.moved()])
                return entry
            entry = retry(attempt, self._attempts, what="the ring")
        self.bin.settle(entry, self, principal=grant.caller.principal.name)

    # ---- the deleted-key adapter (core/deleted.py) -----------------------------------------

    def restore_ops(self, entry: Deleted) -> list[Op]:
        """The record back and the ring's count (within its cap); a key that was active is
        active again unless the ring has another active key now (then it comes back
        inactive: "at most one active" holds)."""
        head = read_head(self._store, self.pk(entry.ring))
        activate = bool(entry.meta.get("active")) and head.state.get("active") is None
        try:
            state, _ = added(head.state, entry.id, activate, self._max_keys)
        except LimitExceeded as exc:
            raise restore_conflict(f"the ring is full: {exc.message}") from None
        return [head.replaced(state), *entry.put_back()]

    def purge_dependents(self, entry: Deleted) -> int:
        """The key's grants, one by one (a key may have more than a transaction holds); this
        process's HSM session copy of its private key first."""
        forget_blob(self._hsm, entry.records[0].get("wrapped"), self.context(entry.ring, entry.id))
        gone = 0
        for item in list(self._scan_users(self.grants_pk(entry.ring, entry.id))):
            try:
                self._store.delete_if(item["pk"], item["sk"])
                gone += 1
            except StoreConditionFailed:
                pass  # not there any more
        return gone

    def forget(self, entry: Deleted) -> None:
        """Nothing of a key is cached in-process."""

    # ---- grants --------------------------------------------------------------------------

    def grant_user(self, grant: Grant, kid: str, user: str) -> None:
        """Grant `user` the key; only a user granted it may. Conflict (already_granted) if
        the user is granted already."""
        grant.require(self.action("grant.create"))
        ring = grant.ring
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(ring, kid, "users", user)) as op:
            op.note(kid=kid, user=user)

            def attempt() -> None:
                record, _ = self._record(ring, kid)
                check_granter(self._granted(ring, kid, grant.caller.principal.name)
                              is not None)
                try:
                    op.commit([Check(record["pk"], record["sk"], int(record["version"])),
                               Put(self._grant_item(ring, kid, user,
                                                    grant.caller.principal.name))])
                except StoreTransactionCancelled:
                    if self._granted(ring, kid, user) is not None:
                        raise Conflict("the user is granted the key already",
                                       reason="already_granted") from None
                    raise
            retry(attempt, self._attempts, what="the key")

    def revoke_user(self, grant: Grant, kid: str, user: str) -> None:
        """Revoke `user`'s grant; only a user granted the key may. NotFound
        (grant_not_found) if the user is not granted it."""
        grant.require(self.action("grant.delete"))
        ring = grant.ring
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(ring, kid, "users", user)) as op:
            op.note(kid=kid, user=user)

            def attempt() -> None:
                record, _ = self._record(ring, kid)
                check_granter(self._granted(ring, kid, grant.caller.principal.name)
                              is not None)
                item = self._granted(ring, kid, user)
                if item is None:
                    raise NotFound("the user is not granted the key", reason="grant_not_found")
                op.commit([Check(record["pk"], record["sk"], int(record["version"])),
                           Delete(item["pk"], item["sk"], int(item["version"]))])
            retry(attempt, self._attempts, what="the key")

    def users(self, grant: Grant, kid: str, *, limit: int, cursor: str | None) -> KeyPage:
        """A page of the users granted the key (ids), and how many there are."""
        grant.require(self.action("grant.list"))
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit is 1 to {MAX_PAGE}", field="limit")
        ring = grant.ring
        obj = self.obj(ring, kid, "users")

        def read() -> KeyPage:
            self._record(ring, kid)
            pk = self.grants_pk(ring, kid)
            page = self._store.query(pk, USER_PREFIX, limit=limit, cursor=cursor)

            def parse(item: dict[str, Any]) -> str:
                user = str(item["sk"]).removeprefix(USER_PREFIX)
                if item.get("ring") != ring or item.get("key") != kid \
                        or item.get("user") != user:
                    raise Place(pk, str(item["sk"])).misplaced("names another grant")
                return user
            users = list(parsed(iter(page.items), parse, self._report(grant, obj)))
            total = sum(1 for _ in self._scan_users(pk))
            return KeyPage(users, total, page.cursor)
        return self._audited(grant, obj, read)  # type: ignore[no-any-return]

    def _scan_users(self, pk: str) -> Iterator[dict[str, Any]]:
        return scan(self._store, pk, USER_PREFIX)

    # ---- private-key use -----------------------------------------------------------------

    def _private(self, grant: Grant, kid: str, export: bool) -> WrappedKey:
        """The key's wrapped private key, if the caller may use it (see check_private_use)."""
        record, key = self._record(grant.ring, kid)
        granted = self._granted(grant.ring, kid, grant.caller.principal.name) is not None
        check_private_use(key, granted=granted, export=export)
        return WrappedKey.from_dict(record["wrapped"])

    def decrypt(self, grant: Grant, kid: str, ciphertext: bytes, hash_name: str) -> bytes:
        """RSA-OAEP decryption inside the HSM (a wrapped session key, typically)."""
        grant.require(self.action("key.decrypt"))
        if hash_name not in OAEP_HASHES:
            raise InvalidInput(f"the hash is one of {', '.join(OAEP_HASHES)}", field="hash")
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(grant.ring, kid)) as op:
            op.note(kid=kid, hash=hash_name)
            wrapped = self._private(grant, kid, export=False)
            plaintext = self._hsm.decrypt_rsa_oaep(wrapped, self.context(grant.ring, kid),
                                                   ciphertext, hash_name)
            self._used(grant.ring, kid, "decrypt")
            return plaintext

    def export(self, grant: Grant, kid: str, password: str) -> bytes:
        """The private key as PKCS#8 PEM encrypted under `password`: the one way private
        material leaves the service, for a granted user with the manage permission."""
        grant.require(self.action("key.export"))
        try:
            # NFC: the same password typed on another system opens the file
            text = unicodedata.normalize("NFC", password) if isinstance(password, str) else ""
            secret = text.encode("utf-8")
        except UnicodeEncodeError:
            secret = b""  # a lone surrogate: not a password anyone can type
        if len(text) < MIN_EXPORT_PASSWORD_CHARS or len(secret) > material.MAX_PASSWORD_BYTES:
            # the file's own key derivation is light (PBKDF2, 2,048 rounds): the strength
            # must come from the password
            raise InvalidInput(f"the password is {MIN_EXPORT_PASSWORD_CHARS} characters to "
                               f"{material.MAX_PASSWORD_BYTES} bytes", field="password")
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(grant.ring, kid)) as op:
            op.note(kid=kid, type="pkcs8")
            wrapped = self._private(grant, kid, export=True)
            pem = self._hsm.export_private_key_pkcs8(wrapped, self.context(grant.ring, kid),
                                                     secret)
            self._used(grant.ring, kid, "export")
            return pem
