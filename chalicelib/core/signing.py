"""Signing rings per ring and per connection: a ring's own rotating signing keys, its
connections (with sealed options) and each connection's rotating keys; public JWKS.

The rules: a token works on exactly one ring of the kind (the one its scopes name, or the
default ring for an all-rings token); a ring's signing keys are created on first access (by
a caller; an anonymous JWKS request creates them only for the default ring); connection keys
exist only for the connection types the dialect names; a connection keeps one previous key,
a ring's signing keys keep every previous key until it is revoked; expensive generation
(two key pairs and certificates, or one) is rate-limited per token.

Every change of state goes through one audit operation and is written with its record in
one transaction; opening a connection's sealed options is audited as a read; every refusal
is audited (access.authorize, audit.operation). Misplaced records are logged, audited, left
out of lists, a generic 500 when addressed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chalicelib.config import Settings
from chalicelib.core.access import Grant, RingKind, authorize, ring_of
from chalicelib.core.audit import AuditLog, allow_details
from chalicelib.core.connections import Connections
from chalicelib.core.connections import not_found as connection_not_found
from chalicelib.core.deleted import Bin, Deleted
from chalicelib.core.limits import GenerationRate, generation_cost
from chalicelib.core.records import retry
from chalicelib.core.rings import RingDomain
from chalicelib.core.rotating import OwnerGone, RingExists, RingKey, RingRef, RotatingRings, Signer
from chalicelib.core.rotation import Entry, Schedule, Superseded, drop
from chalicelib.core.tokens import Caller, Principal
from chalicelib.core.usage import KeyUsage
from chalicelib.errors import Forbidden, InvalidState, KeyfrontError, MisplacedRecord, NotFound
from chalicelib.formats.algorithms import signing_alg
from chalicelib.store import Op, Store

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

RING_SIGNING_ALG = "RS256"  # a ring's own signing keys: RSA-2048 / RS256
SIGNING_TARGET = "signing"  # the rotation target of a ring's own signing keys (else a cid)
_RING_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?$")

allow_details("strategy")


def _cost(alg: str) -> int:
    """The rate a key pair of this JOSE algorithm spends (an unknown one is the caller's
    400, reported by the ring when it parses it)."""
    try:
        return generation_cost(signing_alg(alg).rsa_bits)
    except KeyfrontError:
        return 1


def valid_ring(ring: object) -> bool:
    """Ring ids are 1-64 of letters, digits, '.', '_', '-' (they become store keys)."""
    return isinstance(ring, str) and bool(_RING_RE.match(ring))


def token_ring(principal: Principal, kind: str, default_ring: str) -> str:
    """The ring a token works on (access.ring_of: no ring in the request), which must be a
    valid ring id; Forbidden otherwise."""
    ring = ring_of(principal, kind, default_ring)
    if not valid_ring(ring):
        raise Forbidden("the token's ring is not a valid ring id", reason="invalid_ring")
    return ring


class SigningRings(RingDomain):
    """The domain over the process's store, HSM, audit and limits; one per container."""

    def __init__(self, kind: RingKind, store: Store, hsm: Hsm, audit: AuditLog,
                 rate: GenerationRate, settings: Settings, keyed_types: frozenset[str], *,
                 usage: KeyUsage | None = None, clock: Callable[[], float] = time.time) -> None:
        self.kind = kind
        self._clock = clock
        self._schedule = Schedule(store)
        # the one use of a signing key is a signature by the ring's current key (`signer`);
        # the API signs nothing itself and never hands private keys out
        self.usage = usage or KeyUsage(store, settings)
        self._audit = audit
        self._rate = rate
        self._default = settings.default_ring
        self._keyed = keyed_types
        self.connections = Connections(kind.store_prefix, kind.name, store, hsm,
                                       settings.retry_attempts)
        self.rings = RotatingRings(store, hsm, settings.retry_attempts,
                                   settings.max_keys_per_ring)
        self._attempts = settings.retry_attempts
        self.bin = Bin.for_settings(store, audit, settings)

    # ---- names and access --------------------------------------------------------------------

    @property
    def default_ring(self) -> str:
        """The ring of all-rings tokens and of the un-prefixed public documents."""
        return self._default

    def ring_ref(self, ring: str) -> RingRef:
        """The ring's own signing keys: every previous key stays until revoked."""
        p = self.kind.store_prefix
        return RingRef(pk=f"{p}#{ring}#signing", context=f"{self.kind.name}/{ring}/signing",
                       common_name=ring, keep_previous=None)

    def connection_ref(self, ring: str, connection: dict[str, Any]) -> RingRef:
        """A connection's keys: current, next and one previous (there is no revoke).
        `connection` is a record Connections.get returned for `ring`: its id is its place."""
        cid, p = connection["id"], self.kind.store_prefix
        return RingRef(pk=f"{p}#{ring}#conkeys#{cid}",
                       context=f"{self.kind.name}/{ring}/connections/{cid}/keys",
                       common_name=connection["name"], keep_previous=1)

    def authorize(self, caller: Caller, verb: str, *parts: str) -> Grant:
        """The caller's grant for `verb` on the ring its token works on; every refusal is
        audited under the action."""
        action = self.action(verb)
        try:
            ring = token_ring(caller.principal, self.kind.name, self._default)
        except Forbidden as exc:
            self._audit.refused(caller, action, self.kind.name, exc)
            raise
        return authorize(self._audit, caller, self.kind, ring, action, self.obj(ring, *parts))

    def _misplaced(self, grant: Grant, obj: str) -> Callable[[MisplacedRecord], None]:
        def report(exc: MisplacedRecord) -> None:
            self._audit.refused(grant.caller, grant.action, obj, exc)
        return report

    # ---- connections -------------------------------------------------------------------------

    def create_connection(self, grant: Grant, fields: dict[str, Any]) -> dict[str, Any]:
        """A new connection; returns it (options opened)."""
        grant.require(self.action("connection.create"))
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(grant.ring, "connections")) as op:
            record = self.connections.create(op, grant.ring, fields)
        return self._public(grant.ring, record)

    def get_connection(self, grant: Grant, cid: str) -> dict[str, Any]:
        """One connection (its sealed options are opened: audited)."""
        grant.require(self.action("connection.read"))
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(grant.ring, "connections", cid)) as op:
            record = self.connections.get(grant.ring, cid)
            op.note(name=record["name"], strategy=record["strategy"])
            return self._public(grant.ring, record)

    def list_connections(self, grant: Grant, *, types: list[str] | None = None,
                         name: str | None = None) -> list[dict[str, Any]]:
        """The ring's connections, filtered, by name (one audit record for the call)."""
        grant.require(self.action("connection.list"))
        obj = self.obj(grant.ring, "connections")
        with self._audit.operation(grant.caller, grant.action, obj) as op:
            records = [r for r in self.connections.list(grant.ring, self._misplaced(grant, obj))
                       if (not types or r["strategy"] in types)
                       and (name is None or r["name"] == name)]
            records.sort(key=lambda r: (r["name"], r["id"]))
            out = []
            for record in records:
                try:
                    out.append(self._public(grant.ring, record))
                except MisplacedRecord as exc:  # sealed for another place: left out
                    self._audit.refused(grant.caller, grant.action, obj, exc)
            op.note(count=len(out))
            return out

    def delete_connection(self, grant: Grant, cid: str) -> None:
        """The connection moves into a deleted-key entry and its name is released, in one
        transaction with the audit record; its keys stay (unreachable: every access reads
        the connection first) until the purge after the deletion window."""
        grant.require(self.action("connection.delete"))
        entries: list[Deleted] = []
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(grant.ring, "connections", cid)) as op:
            def move(record: dict[str, Any]) -> list[Op]:
                entries[:] = [self.bin.entry(self.kind.name, grant.ring, cid,
                                             str(record["name"]), grant.caller.principal.name,
                                             [record])]
                return entries[0].moved()
            self.connections.delete(op, grant.ring, cid, move)
        self.bin.settle(entries[0], self, principal=grant.caller.principal.name)

    # ---- the deleted-key adapter (core/deleted.py) -------------------------------------------

    def restore_ops(self, entry: Deleted) -> list[Op]:
        """The connection back, its name claimed again (if free)."""
        return [*entry.put_back(), *self.connections.restore_ops(entry.ring, entry.records[0])]

    def purge_dependents(self, entry: Deleted) -> int:
        """The connection's keys (their own partition), and this process's HSM session copies
        of them and of its options key."""
        self.connections.forget(entry.ring, entry.records[0])
        return self.rings.purge(self.connection_ref(entry.ring, entry.records[0]))

    def forget(self, entry: Deleted) -> None:
        """Nothing of a connection is cached in-process."""

    def _public(self, ring: str, record: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in record.items()
               if k not in ("pk", "sk", "version", "tenant", "options_key", "options_ct")}
        out["options"] = self.connections.options(ring, record["id"], record)
        return out

    # ---- connection keys ---------------------------------------------------------------------

    def _keyed_connection(self, ring: str, cid: str) -> dict[str, Any]:
        con = self.connections.get(ring, cid)
        if con["strategy"] not in self._keyed:
            raise InvalidState("keys are not supported for this connection type",
                               reason="keys_not_supported")
        return con

    def connection_keys(self, grant: Grant, cid: str) -> list[RingKey]:
        """The connection's keys (empty before they are created)."""
        grant.require(self.action("connection_key.list"))
        obj = self.obj(grant.ring, "connections", cid, "keys")
        try:
            con = self._keyed_connection(grant.ring, cid)
            return self.rings.keys(self.connection_ref(grant.ring, con),
                                   self._misplaced(grant, obj))
        except MisplacedRecord as exc:
            self._audit.refused(grant.caller, grant.action, obj, exc)
            raise

    def create_connection_keys(self, grant: Grant, cid: str, alg: str) -> list[RingKey]:
        """A current and a next key; Conflict (ring_exists) if the connection has keys."""
        grant.require(self.action("connection_key.create"))
        obj = self.obj(grant.ring, "connections", cid, "keys")
        with self._audit.operation(grant.caller, grant.action, obj) as op:
            con = self._keyed_connection(grant.ring, cid)
            self._rate.spend(grant.caller, 2 * _cost(alg))
            try:
                return self.rings.create(op, self.connection_ref(grant.ring, con), alg, obj,
                                         conditions=[self.connections.exists_check(con)])
            except OwnerGone:
                raise connection_not_found() from None

    def rotate_connection_keys(self, grant: Grant, cid: str, alg: str) -> RingKey:
        """Rotate: the new next key. A connection without keys gets them (current + next)
        and the next key is returned, so rotate-only clients work from the start."""
        grant.require(self.action("connection_key.rotate"))
        obj = self.obj(grant.ring, "connections", cid, "keys")
        with self._audit.operation(grant.caller, grant.action, obj) as op:
            con = self._keyed_connection(grant.ring, cid)
            ref = self.connection_ref(grant.ring, con)
            if not self.rings.exists(ref):
                self._rate.spend(grant.caller, 2 * _cost(alg))
                try:
                    keys = self.rings.create(op, ref, alg, obj,
                                             conditions=[self.connections.exists_check(con)])
                    return keys[1]
                except OwnerGone:
                    raise connection_not_found() from None
                except RingExists:
                    pass  # created meanwhile: rotate it
            self._rate.spend(grant.caller, _cost(alg))
            try:
                # the connection still there: a rotation never outlives its delete
                new, _ = self.rings.rotate(op, ref, alg, obj,
                                           conditions=[self.connections.exists_check(con)],
                                           also=lambda: self._pushed(grant.ring, cid, cid))
            except OwnerGone:
                raise connection_not_found() from None
            return new

    def connection_jwks(self, ring: str, cid: str) -> dict[str, Any]:
        """The connection's public JWKS (public by nature)."""
        if not valid_ring(ring):
            raise connection_not_found()
        report = self._public_misplaced(ring)
        try:
            con = self._keyed_connection(ring, cid)
        except MisplacedRecord as exc:
            report(exc)  # logged and audited like every misplaced record, then a 500
            raise
        return self.rings.jwks(self.connection_ref(ring, con), report)

    # ---- the ring's own signing keys ---------------------------------------------------------

    def _ensure(self, caller: Caller | None, ring: str) -> RingRef:
        ref = self.ring_ref(ring)
        if self.rings.exists(ref):
            return ref
        obj = self.obj(ring, "signing")
        try:
            with self._audit.operation(caller, self.action("signing_key.create"), obj,
                                       principal=None if caller else "keyfront") as op:
                self._rate.spend(caller, 2 * _cost(RING_SIGNING_ALG))
                self.rings.create(op, ref, RING_SIGNING_ALG, obj)
        except RingExists:
            pass  # a racing first call made them
        return ref

    def signing_keys(self, grant: Grant) -> list[RingKey]:
        """Every signing key of the ring (created on first access)."""
        grant.require(self.action("signing_key.list"))
        ref = self._ensure(grant.caller, grant.ring)
        return self.rings.keys(ref, self._misplaced(grant, self.obj(grant.ring, "signing")))

    def signing_key(self, grant: Grant, kid: str) -> RingKey:
        """One signing key (a misplaced record there is audited and a 500)."""
        grant.require(self.action("signing_key.read"))
        ref = self._ensure(grant.caller, grant.ring)
        try:
            return self.rings.key(ref, kid)
        except MisplacedRecord as exc:
            self._audit.refused(grant.caller, grant.action,
                                self.obj(grant.ring, "signing", kid), exc)
            raise

    def rotate_signing_key(self, grant: Grant) -> RingKey:
        """Next becomes current; the new next key is returned."""
        grant.require(self.action("signing_key.rotate"))
        ref = self._ensure(grant.caller, grant.ring)
        obj = self.obj(grant.ring, "signing")
        with self._audit.operation(grant.caller, grant.action, obj) as op:
            self._rate.spend(grant.caller, _cost(RING_SIGNING_ALG))
            new, _ = self.rings.rotate(op, ref, RING_SIGNING_ALG, obj, also=lambda: self._pushed(
                grant.ring, SIGNING_TARGET, SIGNING_TARGET))
            return new

    def revoke_signing_key(self, grant: Grant, kid: str) -> RingKey:
        """Revoke a previous key; it never comes back."""
        grant.require(self.action("signing_key.revoke"))
        ref = self._ensure(grant.caller, grant.ring)
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(grant.ring, "signing", kid)) as op:
            return self.rings.revoke(op, ref, kid)

    def ring_jwks(self, ring: str) -> dict[str, Any]:
        """The ring's public JWKS. Only the default ring's keys are created by this
        (anonymous) call: an arbitrary ring name must not make the service mint keys."""
        if not valid_ring(ring):
            raise NotFound("ring not found", reason="ring_not_found")
        ref = self.ring_ref(ring)
        if ring == self._default:
            self._ensure(None, ring)
        elif not self.rings.exists(ref):
            raise NotFound("ring not found", reason="ring_not_found")
        return self.rings.jwks(ref, self._public_misplaced(ring))

    def signer(self, ring: str) -> Signer:
        """The ring's current key for signing tokens (what an issuer would use): a use of
        that key ("sign")."""
        signer = self.rings.signer(self._ensure(None, ring))
        self._used(ring, signer.kid, "sign")
        return signer

    # ---- scheduled rotation (core/rotation.py): target "signing" or a connection id ---------

    def _pushed(self, ring: str, target: str, incarnation: str) -> list[Op]:
        """A caller's rotation moves the schedule on (counted from the last rotation)."""
        return self._schedule.pushed_ops(self.kind.name, ring, target, incarnation,
                                         self._clock())

    def _target(self, ring: str, target: str) \
            -> tuple[RingRef, str, str, list[Op]] | None:
        """(ring, audit verb, audit object, conditions of its owner) of a rotation target;
        None when there is no such ring with keys. Connection ids are never reused, so the
        id is the incarnation."""
        if not valid_ring(ring):
            return None
        if target == SIGNING_TARGET:
            ref = self.ring_ref(ring)
            if not self.rings.exists(ref):
                return None
            return ref, "signing_key", self.obj(ring, "signing"), []
        try:
            con = self._keyed_connection(ring, target)
        except NotFound:
            return None
        ref = self.connection_ref(ring, con)
        if not self.rings.exists(ref):
            return None
        return (ref, "connection_key", self.obj(ring, "connections", target, "keys"),
                [self.connections.exists_check(con)])

    def _require_target(self, ring: str, target: str) \
            -> tuple[RingRef, str, str, list[Op]]:
        found = self._target(ring, target)
        if found is None:
            raise NotFound(f"no key ring {target} with keys in ring {ring} (the ring's "
                           f"\"{SIGNING_TARGET}\" keys, or a connection id whose keys exist)",
                           reason="ring_not_found")
        return found

    def rotation(self, ring: str, target: str) -> Entry | None:
        """The target's rotation schedule (None: none); NotFound if there is no such ring."""
        self._require_target(ring, target)
        return self._schedule.get(self.kind.name, ring, target)

    def set_rotation(self, ring: str, target: str, period: int, *,
                     principal: str) -> Entry | None:
        """Set the target's rotation period in seconds (0: off), audited under `principal`:
        the index item, a check of the ring's head (and of its connection) and the audit
        record in one transaction."""
        ref, verb, obj, owner = self._require_target(ring, target)
        with self._audit.operation(None, self.action(f"{verb}.schedule"), obj,
                                   principal=principal) as op:
            op.note(period=period)

            def attempt() -> Entry | None:
                ops, entry = self._schedule.set_ops(self.kind.name, ring, target, period,
                                                    target, self._clock())
                op.commit([self.rings.unchanged(ref), *owner, *ops])
                return entry
            return retry(attempt, self._attempts, what="the ring")

    def rotate_due(self, entry: Entry, now: float, *, principal: str) -> str:
        """The scheduler's rotation of a due ring (see rotation.Rotatable.rotate_due): a new
        next key of the next key's algorithm, the index moved in the same transaction."""
        found = self._target(entry.ring, entry.target)
        if found is None:
            signing = entry.target == SIGNING_TARGET
            return drop(self._audit, entry,
                        self.action("signing_key.schedule" if signing
                                    else "connection_key.schedule"),
                        self.obj(entry.ring, "signing") if signing
                        else self.obj(entry.ring, "connections", entry.target, "keys"),
                        principal=principal)
        ref, verb, obj, owner = found

        def moved() -> list[Op]:
            self._schedule.still(entry)  # after a failed transaction: who won?
            return [entry.moved(now)]
        self._schedule.still(entry)  # a race lost before it began is not audited
        with self._audit.operation(None, self.action(f"{verb}.rotate"), obj,
                                   principal=principal) as op:
            try:
                # the connection still there: a rotation never outlives its delete
                self.rings.rotate(op, ref, None, obj, conditions=owner, also=moved)
            except OwnerGone:
                raise Superseded() from None  # deleted meanwhile: dropped next run
        return "rotated"

    def _public_misplaced(self, ring: str) -> Callable[[MisplacedRecord], None]:
        def report(exc: MisplacedRecord) -> None:
            self._audit.refused(None, self.action("jwks.read"), self.obj(ring), exc)
        return report


__all__ = ["RING_SIGNING_ALG", "RingKey", "Signer", "SigningRings", "token_ring", "valid_ring"]
