"""Master keys per ring, each handed out once under a password, and pre-shared secrets bound
to them (at most one per master key).

A ring holds at most `max_keys` master keys (AES-256, generated in the HSM, stored only
wrapped under the KEK) and `max_secrets` pre-shared secrets (32 random bytes, generated in
the HSM the same way). Each is given to its creator once, wrapped under a key derived from
the creator's password (material.wrap_under_password: scrypt, then RFC 5649 in the HSM); the
service keeps only its KEK-wrapped copy. Names are unique per ring (keys and secrets
separately) and are the objects' identities in the API; ids are time-ordered UUIDs.

Store layout (prefix = the ring kind's store prefix):

  pk "{p}#{ring}"   sk "head"            {"keys": n, "secrets": m}: the caps, by CAS
                    sk "key#<name>"      one master key: ring, id, name, usage, remarks,
                                         created_at, wrapped, bound (a secret's name or None)
                    sk "secret#<name>"   one secret: ring, id, name, key (its master key's
                                         name), remarks, created_at, wrapped

Every change is one conditional transaction with its audit record, retried: a create moves
the head (the cap holds under concurrent creates) and puts the record if absent (the name
holds); binding a secret updates its key's record at the version read (one secret per key
holds under races); deleting a key deletes it at the version read, so a secret bound in
between makes the delete retry and see it. The rules are the pure functions below.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from chalicelib.config import Settings
from chalicelib.core import material
from chalicelib.core.access import Grant, RingKind
from chalicelib.core.audit import AuditLog, allow_details
from chalicelib.core.clock import iso_millis
from chalicelib.core.deleted import Bin, Deleted, forget_blob, restore_conflict
from chalicelib.core.keys import new_key_id
from chalicelib.core.limits import GenerationRate, cap
from chalicelib.core.records import Place, parsed, read_head, retry, scan
from chalicelib.core.rings import RingDomain
from chalicelib.core.usage import KeyUsage
from chalicelib.errors import (
    Conflict,
    InvalidState,
    LimitExceeded,
    NotFound,
    StoreTransactionCancelled,
)
from chalicelib.hsm import WrappedKey
from chalicelib.store import Op, Put, Store, Update

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

KEY_PREFIX = "key#"
SECRET_PREFIX = "secret#"
KEY_BITS = 256  # master keys are AES-256; secrets are 32 random bytes
SORT_FIELDS = ("created", "name")
T = TypeVar("T", bound="Named")

allow_details("bound_key", "secret")


@dataclass(frozen=True)
class Named:
    """What master keys and secrets share: identity, name and creation time."""

    id: str
    ring: str
    name: str
    remarks: str
    created_at: str


@dataclass(frozen=True)
class MasterKey(Named):
    """A master key as the API shows it (never its material)."""

    usage: str
    bound: str | None  # the name of the secret bound to it


@dataclass(frozen=True)
class SharedSecret(Named):
    """A pre-shared secret as the API shows it (never its material)."""

    key: str  # the name of its master key


# ---- the rules, as pure functions --------------------------------------------------------------

def key_added(head: dict[str, Any], limit: int) -> dict[str, Any]:
    """The head after adding a master key; LimitExceeded (key_cap_reached) at `limit`."""
    keys = int(head.get("keys", 0))
    cap(keys, limit, "master keys per ring", reason="key_cap_reached")
    return {**head, "keys": keys + 1}


def key_removed(head: dict[str, Any]) -> dict[str, Any]:
    """The head after deleting a master key."""
    return {**head, "keys": max(0, int(head.get("keys", 0)) - 1)}


def secret_added(head: dict[str, Any], limit: int) -> dict[str, Any]:
    """The head after adding a secret; LimitExceeded (secret_cap_reached) at `limit`."""
    count = int(head.get("secrets", 0))
    cap(count, limit, "pre-shared secrets per ring", reason="secret_cap_reached")
    return {**head, "secrets": count + 1}


def secret_removed(head: dict[str, Any]) -> dict[str, Any]:
    """The head after deleting a secret."""
    return {**head, "secrets": max(0, int(head.get("secrets", 0)) - 1)}


def check_deletable(key: MasterKey) -> None:
    """A master key with a secret bound to it is not deleted (delete the secret first)."""
    if key.bound is not None:
        raise InvalidState("a pre-shared secret is bound to the master key",
                           reason="key_bound")


def check_bindable(key: MasterKey) -> None:
    """A master key takes one secret: Conflict (key_already_bound) if it has one."""
    if key.bound is not None:
        raise Conflict("the master key has a pre-shared secret already",
                       reason="key_already_bound")


def ordered(items: Iterable[T], by: str = "created", descending: bool = True,
            name_contains: str = "") -> list[T]:
    """Items whose name contains `name_contains`, sorted by creation (ties by id, which is
    time-ordered) or by name."""
    if by not in SORT_FIELDS:
        raise ValueError(f"sort by one of {SORT_FIELDS}")
    chosen = [i for i in items if name_contains in i.name]

    def sort_key(i: T) -> tuple[str, str]:
        return (i.created_at, i.id) if by == "created" else (i.name, i.id)
    return sorted(chosen, key=sort_key, reverse=descending)


def key_not_found() -> NotFound:
    """No such master key in this ring (the same answer for one of another ring)."""
    return NotFound("master key not found", reason="key_not_found")


def secret_not_found() -> NotFound:
    """No such secret in this ring."""
    return NotFound("pre-shared secret not found", reason="secret_not_found")


# ---- the domain ----------------------------------------------------------------------------

class MasterKeys(RingDomain):
    """The domain over the process's store, HSM, audit and limits; one per container."""

    def __init__(self, kind: RingKind, store: Store, hsm: Hsm, audit: AuditLog,
                 rate: GenerationRate, settings: Settings, *, max_keys: int,
                 max_secrets: int, clock: Callable[[], float] = time.time,
                 usage: KeyUsage | None = None) -> None:
        self.kind = kind
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._rate = rate
        self._attempts = settings.retry_attempts
        self._max_keys = max_keys
        self._max_secrets = max_secrets
        self._scrypt = settings.password_wrap_scrypt
        material.check_wrap_cost(*self._scrypt)  # a bad setting fails here, before any work
        self._clock = clock
        # a key's material is handed out once, by its create: its one use ("export")
        self.usage = usage or KeyUsage(store, settings, clock)
        self.bin = Bin.for_settings(store, audit, settings, clock)

    # ---- names ---------------------------------------------------------------------------

    def context(self, ring: str, what: str, oid: str) -> str:
        """The HSM binding context of a wrapped key or secret: its ring and id."""
        return f"{self.kind.name}/{ring}/{what}/{oid}"

    # ---- reading -------------------------------------------------------------------------

    def _key_view(self, ring: str, name: str, record: dict[str, Any]) -> MasterKey:
        place = Place(self.pk(ring), KEY_PREFIX + name)
        if record.get("ring") != ring or record.get("name") != name:
            raise place.misplaced("names another master key")
        try:
            bound = record.get("bound")
            return MasterKey(id=str(record["id"]), ring=ring, name=name,
                             usage=str(record["usage"]), remarks=str(record["remarks"]),
                             created_at=str(record["created_at"]),
                             bound=None if bound is None else str(bound))
        except (KeyError, TypeError) as exc:
            raise place.misplaced("is malformed") from exc

    def _secret_view(self, ring: str, name: str, record: dict[str, Any]) -> SharedSecret:
        place = Place(self.pk(ring), SECRET_PREFIX + name)
        if record.get("ring") != ring or record.get("name") != name:
            raise place.misplaced("names another secret")
        try:
            return SharedSecret(id=str(record["id"]), ring=ring, name=name,
                                key=str(record["key"]), remarks=str(record["remarks"]),
                                created_at=str(record["created_at"]))
        except (KeyError, TypeError) as exc:
            raise place.misplaced("is malformed") from exc

    def _key(self, ring: str, name: str) -> tuple[dict[str, Any], MasterKey]:
        record = self._store.get(self.pk(ring), KEY_PREFIX + name)
        if record is None:
            raise key_not_found()
        return record, self._key_view(ring, name, record)

    def _exists(self, ring: str, prefix: str, name: str) -> bool:
        return self._store.get(self.pk(ring), prefix + name) is not None

    def _scan(self, ring: str, prefix: str) -> Iterator[dict[str, Any]]:
        return scan(self._store, self.pk(ring), prefix)

    def keys(self, grant: Grant, *, by: str = "created", descending: bool = True,
             name_contains: str = "") -> list[MasterKey]:
        """The ring's master keys, filtered and sorted (see `ordered`)."""
        grant.require(self.action("key.list"))
        ring = grant.ring

        def parse(item: dict[str, Any]) -> MasterKey:
            return self._key_view(ring, str(item["sk"]).removeprefix(KEY_PREFIX), item)
        found = parsed(self._scan(ring, KEY_PREFIX), parse,
                       self._report(grant, self.obj(ring, "keys")))
        return ordered(found, by, descending, name_contains)

    def secrets(self, grant: Grant, *, by: str = "created", descending: bool = True,
                name_contains: str = "", key: str | None = None) -> list[SharedSecret]:
        """The ring's secrets (those bound to master key `key` if given), sorted."""
        grant.require(self.action("secret.list"))
        ring = grant.ring

        def parse(item: dict[str, Any]) -> SharedSecret:
            return self._secret_view(ring, str(item["sk"]).removeprefix(SECRET_PREFIX), item)
        found = parsed(self._scan(ring, SECRET_PREFIX), parse,
                       self._report(grant, self.obj(ring, "secrets")))
        chosen = [s for s in found if key is None or s.key == key]
        return ordered(chosen, by, descending, name_contains)

    # ---- changing ------------------------------------------------------------------------

    def _new(self, grant: Grant, what: str, password: str) -> tuple[str, WrappedKey, str]:
        """A fresh id, a 256-bit key generated in the HSM (wrapped, bound to its record) and
        that key wrapped under `password`: the HSM and KDF work, done before the
        transaction."""
        self._rate.spend(grant.caller)
        oid = new_key_id(self._clock())
        context = self.context(grant.ring, what, oid)
        wrapped = self._hsm.generate_aes(KEY_BITS, context, exportable=True)
        return oid, wrapped, material.wrap_under_password(self._hsm, wrapped, context,
                                                          password, scrypt=self._scrypt)

    def create_key(self, grant: Grant, *, name: str, usage: str, remarks: str,
                   password: str) -> tuple[MasterKey, str]:
        """Generate a master key; the key and its password-wrapped text (given out once).
        Conflict (key_name_taken) for a name in use; LimitExceeded (key_cap_reached) past
        the ring's cap, also under concurrent creates."""
        grant.require(self.action("key.create"))
        ring, pk = grant.ring, self.pk(grant.ring)
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(ring, "keys", name)) as op:
            # both checked before any HSM or KDF work, and again in the transaction
            key_added(read_head(self._store, pk).state, self._max_keys)
            if self._exists(ring, KEY_PREFIX, name):
                raise _key_name_taken()
            kid, wrapped, text = self._new(grant, "keys", password)
            record = {"pk": pk, "sk": KEY_PREFIX + name, "ring": ring, "id": kid,
                      "name": name, "usage": usage, "remarks": remarks,
                      "created_at": iso_millis(self._clock()), "bound": None,
                      "wrapped": wrapped.to_dict(),
                      "created_by": grant.caller.principal.name}
            op.note(kid=kid, bits=KEY_BITS)

            def attempt() -> None:
                head = read_head(self._store, pk)
                try:
                    op.commit([head.replaced(key_added(head.state, self._max_keys)),
                               Put(record)])
                except StoreTransactionCancelled:
                    if self._exists(ring, KEY_PREFIX, name):
                        raise _key_name_taken() from None
                    raise
            retry(attempt, self._attempts, what="the ring")
        self._used(ring, kid, "export", name)
        return self._key_view(ring, name, record), text

    def delete_key(self, grant: Grant, name: str) -> None:
        """Delete a master key; InvalidState (key_bound) while a secret is bound to it."""
        grant.require(self.action("key.delete"))
        ring, pk = grant.ring, self.pk(grant.ring)
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(ring, "keys", name)) as op:
            def attempt() -> Deleted:
                record, key = self._key(ring, name)
                check_deletable(key)
                self.usage.guard(grant, key.id, op)
                op.note(kid=key.id)
                head = read_head(self._store, pk)
                entry = self.bin.entry(self.kind.name, ring, key.id, name,
                                       grant.caller.principal.name, [record],
                                       {"what": "keys"})
                op.commit([head.replaced(key_removed(head.state)), *entry.moved()])
                return entry
            entry = retry(attempt, self._attempts, what="the ring")
        self.bin.settle(entry, self, principal=grant.caller.principal.name)

    def create_secret(self, grant: Grant, *, name: str, key: str, remarks: str,
                      password: str) -> tuple[SharedSecret, str]:
        """Generate a secret bound to master key `key`; the secret and its password-wrapped
        text (given out once). NotFound (key_not_found), Conflict (key_already_bound,
        secret_name_taken), LimitExceeded (secret_cap_reached)."""
        grant.require(self.action("secret.create"))
        ring, pk = grant.ring, self.pk(grant.ring)
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(ring, "secrets", name)) as op:
            op.note(bound_key=key)
            check_bindable(self._key(ring, key)[1])
            if self._exists(ring, SECRET_PREFIX, name):
                raise _secret_name_taken()
            secret_added(read_head(self._store, pk).state, self._max_secrets)
            sid, wrapped, text = self._new(grant, "secrets", password)
            record = {"pk": pk, "sk": SECRET_PREFIX + name, "ring": ring, "id": sid,
                      "name": name, "key": key, "remarks": remarks,
                      "created_at": iso_millis(self._clock()), "wrapped": wrapped.to_dict(),
                      "created_by": grant.caller.principal.name}
            op.note(kid=sid)

            def attempt() -> None:
                key_record, master = self._key(ring, key)
                check_bindable(master)
                head = read_head(self._store, pk)
                bound = {k: v for k, v in key_record.items() if k != "version"}
                bound["bound"] = name
                try:
                    op.commit([head.replaced(secret_added(head.state, self._max_secrets)),
                               Update(bound, int(key_record["version"])), Put(record)])
                except StoreTransactionCancelled:
                    if self._exists(ring, SECRET_PREFIX, name):
                        raise _secret_name_taken() from None
                    raise
            retry(attempt, self._attempts, what="the ring")
        self._used(ring, sid, "export", name)
        return self._secret_view(ring, name, record), text

    def delete_secret(self, grant: Grant, name: str) -> None:
        """Delete a secret, unbinding its master key in the same transaction."""
        grant.require(self.action("secret.delete"))
        ring, pk = grant.ring, self.pk(grant.ring)
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(ring, "secrets", name)) as op:
            def attempt() -> Deleted:
                record = self._store.get(pk, SECRET_PREFIX + name)
                if record is None:
                    raise secret_not_found()
                secret = self._secret_view(ring, name, record)
                self.usage.guard(grant, secret.id, op)
                op.note(kid=secret.id, bound_key=secret.key)
                key_record = self._store.get(pk, KEY_PREFIX + secret.key)
                if key_record is None or key_record.get("bound") != name:
                    raise Place(pk, SECRET_PREFIX + name).misplaced(
                        "is bound to a master key that does not name it")
                self._key_view(ring, secret.key, key_record)
                unbound = {k: v for k, v in key_record.items() if k != "version"}
                unbound["bound"] = None
                head = read_head(self._store, pk)
                entry = self.bin.entry(self.kind.name, ring, secret.id, name,
                                       grant.caller.principal.name, [record],
                                       {"what": "secrets", "key_id": key_record["id"]})
                op.commit([head.replaced(secret_removed(head.state)),
                           Update(unbound, int(key_record["version"])), *entry.moved()])
                return entry
            entry = retry(attempt, self._attempts, what="the ring")
        self.bin.settle(entry, self, principal=grant.caller.principal.name)

    # ---- the deleted-key adapter (core/deleted.py) -----------------------------------------

    def restore_ops(self, entry: Deleted) -> list[Op]:
        """A master key back under its name (if free, within the cap); a secret back under
        its name (if free, within the cap) and bound again to its master key, which must be
        the same key as before (not a new one of its name) and bound to no other secret."""
        ring, pk, name = entry.ring, self.pk(entry.ring), entry.name
        head = read_head(self._store, pk)
        try:
            if entry.meta.get("what") == "keys":
                if self._exists(ring, KEY_PREFIX, name):
                    raise restore_conflict(f"master key name {name} is taken")
                return [head.replaced(key_added(head.state, self._max_keys)),
                        *entry.put_back()]
            if self._exists(ring, SECRET_PREFIX, name):
                raise restore_conflict(f"pre-shared secret name {name} is taken")
            key_name = str(entry.records[0]["key"])
            key_record = self._store.get(pk, KEY_PREFIX + key_name)
            if key_record is None or key_record.get("id") != entry.meta.get("key_id"):
                raise restore_conflict(f"master key {key_name} of the secret is gone")
            if key_record.get("bound") is not None:
                raise restore_conflict(f"master key {key_name} is bound to another "
                                       "pre-shared secret")
            bound = {k: v for k, v in key_record.items() if k != "version"}
            bound["bound"] = name
            return [head.replaced(secret_added(head.state, self._max_secrets)),
                    Update(bound, int(key_record["version"])), *entry.put_back()]
        except LimitExceeded as exc:
            raise restore_conflict(f"the ring is full: {exc.message}") from None

    def purge_dependents(self, entry: Deleted) -> int:
        """Nothing in the store (the material is in the record, wrapped); this process's HSM
        session copy of it is dropped."""
        what = str(entry.meta.get("what"))
        forget_blob(self._hsm, entry.records[0].get("wrapped"),
                    self.context(entry.ring, what, entry.id))
        return 0

    def forget(self, entry: Deleted) -> None:
        """Nothing is cached in-process."""


def _key_name_taken() -> Conflict:
    return Conflict("a master key of that name exists", reason="key_name_taken")


def _secret_name_taken() -> Conflict:
    return Conflict("a pre-shared secret of that name exists", reason="secret_name_taken")
