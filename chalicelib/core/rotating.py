"""Rotating rings: current / next / previous / revoked keys, made and certified in the HSM.

A ring is one store partition:

  sk "ring"      the head: the current kid, the next kid and, for a ring that keeps a bounded
                 number of previous keys, those kids (newest first). Every slot change is ONE
                 transaction that compare-and-swaps the head, so racing rotations serialise
                 on its version: exactly one current, one next. The head never grows with
                 history (DynamoDB items stop at 400 KB).
  sk "key#<kid>" one key: algorithm, wrapped private key (bound to its context), certificate,
                 and its own slot history: slot, current_since, current_until, revoked_at.
                 Written in the transaction that first names it from the head.

Rotation: next -> current, current -> previous, a new next. Only a previous key can be revoked;
revoking drops its wrapped private key for good. A ring may keep a bounded number of previous
keys; older ones are retired (deleted) in the rotating transaction.

Rings written before the head was bounded carry "previous", "revoked" and "times" lists in the
head; they are read as they are and moved into the key items, in bounded batches, before the
ring's next change.

The rules are pure functions (`initial_head`, `rotate_head`, `revoke_key`); `RotatingRings`
adds the HSM and the store. A key is known by where it is found: the ring it was looked up in
(`RingRef`, which names the HSM context) and the kid of its sort key; an item whose own `kid`
disagrees is a MisplacedRecord.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from chalicelib.core.audit import Operation
from chalicelib.core.clock import iso_millis
from chalicelib.core.deleted import forget_blob
from chalicelib.core.limits import cap
from chalicelib.core.records import Place, parsed, retry, scan
from chalicelib.errors import (
    Conflict,
    IntegrityError,
    InvalidState,
    MisplacedRecord,
    NotFound,
    StoreConditionFailed,
    StoreTransactionCancelled,
)
from chalicelib.formats.algorithms import SigningAlg, signing_alg
from chalicelib.formats.jwk import jwks, kid_from_bytes, public_jwk
from chalicelib.formats.x509cert import (
    MAX_COMMON_NAME,
    build_self_signed,
    certificate_pem,
    der_of,
    load_pem,
    pkcs7_pem,
    sha1_fingerprint,
    sha1_thumbprint,
    subject_dn,
)
from chalicelib.hsm import SignScheme, WrappedKey
from chalicelib.store import Check, Delete, Op, Put, Store, Update

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

RING_SK = "ring"
KEY_SK_PREFIX = "key#"
CERT_VALIDITY = timedelta(days=3650)
LEGACY_BATCH = 40  # legacy keys moved per transaction (DynamoDB allows 100 items)
SLOTS = ("current", "next", "previous", "revoked")

# JOSE alg -> the HSM signature scheme that produces JWS signatures for it
SIGN_SCHEMES: dict[str, SignScheme] = {
    "RS256": SignScheme.RSA_PKCS1_SHA256, "RS384": SignScheme.RSA_PKCS1_SHA384,
    "RS512": SignScheme.RSA_PKCS1_SHA512, "PS256": SignScheme.RSA_PSS_SHA256,
    "PS384": SignScheme.RSA_PSS_SHA384, "ES256": SignScheme.ECDSA_SHA256,
    "ES384": SignScheme.ECDSA_SHA384,
}


_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def key_not_found() -> NotFound:
    """No such key in this ring."""
    return NotFound("key not found", reason="key_not_found")


def ring_not_found() -> NotFound:
    """The ring has no keys (yet)."""
    return NotFound("the ring has no keys", reason="ring_not_found")


class RingExists(Conflict):
    """The ring's keys have already been created."""

    def __init__(self) -> None:
        super().__init__("the ring's keys exist", reason="ring_exists")


class OwnerGone(NotFound):
    """A condition the caller attached (e.g. "the owner still exists") failed."""

    def __init__(self) -> None:
        super().__init__("the ring's owner is gone", reason="owner_gone")


@dataclass(frozen=True)
class RingRef:
    """Where a ring lives and how its keys are named.

    `pk`: the store partition; `context`: the prefix of every key's HSM binding context
    (f"{context}/{kid}"); `common_name`: the certificates' CN; `keep_previous`: how many
    previous keys stay (None: all, until revoked).
    """

    pk: str
    context: str
    common_name: str
    keep_previous: int | None = None

    def key_context(self, kid: str) -> str:
        """The context a key's wrapped blob is bound to: its ring and its kid."""
        return f"{self.context}/{kid}"

    def place(self, kid: str) -> Place:
        """Where key `kid` of this ring is stored."""
        return Place(self.pk, KEY_SK_PREFIX + kid)


@dataclass(frozen=True)
class RingKey:
    """One key as an API shows it (public parts and slot only)."""

    kid: str
    algorithm: str
    cert: str
    pkcs7: str
    fingerprint: str
    thumbprint: str
    subject_dn: str
    created_at: str
    slot: str
    current_since: str | None = None
    current_until: str | None = None
    revoked_at: str | None = None

    @property
    def current(self) -> bool:
        """Signs now."""
        return self.slot == "current"

    @property
    def next(self) -> bool:
        """Signs after the next rotation."""
        return self.slot == "next"

    @property
    def previous(self) -> bool:
        """Signed before; still published until revoked."""
        return self.slot == "previous"

    @property
    def revoked(self) -> bool:
        """Revoked for good: its private key is gone."""
        return self.slot == "revoked"

    def jwk(self) -> dict[str, Any]:
        """The public JWK (with x5c/x5t) of this key."""
        cert = load_pem(self.cert)
        return public_jwk(cert.public_key(), kid=self.kid, alg=self.algorithm,  # type: ignore[arg-type]
                          cert_der=der_of(cert))


@dataclass(frozen=True)
class Signer:
    """What signing with the ring's current key needs (for token issuers and tests)."""

    kid: str
    algorithm: str
    scheme: SignScheme
    wrapped: WrappedKey
    context: str


# ---- the rules, as pure functions on the head and the key slots ------------------------------

def initial_head(current: str, next_: str) -> dict[str, Any]:
    """A fresh ring's head: `current` signs from now, `next` waits; two keys published."""
    return {"current": current, "next": next_, "previous": [], "published": 2}


def rotate_head(head: dict[str, Any], new_next: str, now: str,
                keep_previous: int | None = None) \
        -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """next -> current, current -> previous, `new_next` -> next.

    Returns (the new head, slot changes per kid, retired kids). The head keeps previous kids
    only for a bounded ring (at most keep_previous); an unbounded ring's previous keys are
    known by their own slot, so the head stays the same size forever.
    """
    old_current, old_next = head["current"], head["next"]
    if new_next in (old_current, old_next, *head.get("previous", [])):
        raise ValueError("the new key is already in the ring")
    rotations = int(head.get("rotations", 0)) + 1
    changes = {
        # `order`: the rotation that made it previous (times can tie within a millisecond)
        old_current: {"slot": "previous", "current_until": now, "order": rotations},
        old_next: {"slot": "current", "current_since": now},
        new_next: {"slot": "next"},
    }
    previous: list[str] = []
    retired: list[str] = []
    if keep_previous is not None:
        previous = [old_current, *head.get("previous", [])]
        previous, retired = previous[:keep_previous], previous[keep_previous:]
    published = int(head.get("published", 2)) + 1 - len(retired)
    return ({"current": old_next, "next": new_next, "previous": previous,
             "published": published, "rotations": rotations}, changes, retired)


def revoke_key(head: dict[str, Any], slot: dict[str, Any] | None, kid: str, now: str) \
        -> dict[str, Any]:
    """The slot change revoking `kid` (its item's slot fields given); only a previous key."""
    if slot is None:
        raise key_not_found()
    if slot.get("slot") == "revoked":
        raise InvalidState("the key has already been revoked", reason="key_revoked")
    if kid in (head["current"], head["next"]) or slot.get("slot") != "previous":
        raise InvalidState("only a previous key can be revoked", reason="key_not_revocable")
    return {"slot": "revoked", "revoked_at": now, "wrapped": None}


def _bound_context(record: dict[str, Any]) -> str | None:
    """The HSM context a key item says it belongs to: its blob's, or for a revoked key (its
    blob destroyed) the one recorded when it was revoked."""
    wrapped = record.get("wrapped")
    if isinstance(wrapped, dict):
        context = wrapped.get("context")
        return context if isinstance(context, str) else ""
    context = record.get("context")
    return context if isinstance(context, str) else None


def slot_of(head: dict[str, Any], kid: str, item: dict[str, Any]) -> dict[str, Any]:
    """A key's slot fields: the head decides current and next; otherwise the item's own
    (or, for a ring written before heads were bounded, the head's lists)."""
    times = dict((head.get("times") or {}).get(kid) or {})
    own = {k: item[k] for k in ("current_since", "current_until", "revoked_at") if k in item}
    fields = {**times, **own}
    if kid == head["current"]:
        slot = "current"
    elif kid == head["next"]:
        slot = "next"
    elif "slot" in item:
        slot = item["slot"]
    elif kid in (head.get("revoked") or []):
        slot = "revoked"
    else:
        slot = "previous"
    return {"slot": slot, **fields}


def check_ring(head: dict[str, Any], keys: Sequence[RingKey]) -> None:
    """Assert the slot invariants (used by tests): one current, one next, each key one slot,
    and a head that does not grow with history."""
    slots = [k.slot for k in keys]
    assert slots.count("current") == 1 and slots.count("next") == 1, slots
    assert head["current"] != head["next"]
    assert len({k.kid for k in keys}) == len(keys)
    assert not {"times", "revoked"} & set(head), "history lives in the key items"


# ---- the ring service ------------------------------------------------------------------------

def _head(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("pk", "sk", "version")}


def _stored(item: dict[str, Any]) -> dict[str, Any]:
    """An item as read, ready to be written back (the store manages `version`)."""
    return {k: v for k, v in item.items() if k != "version"}


class RotatingRings:
    """Create, rotate, revoke and read rings; keys are generated and certified in the HSM.

    Changes go through an audit Operation: the change and its record(s) are one transaction.
    """

    def __init__(self, store: Store, hsm: Hsm, attempts: int, max_published: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._hsm = hsm
        self._attempts = attempts
        self._max_published = max_published
        self._clock = clock

    # -- reading --

    def exists(self, ref: RingRef) -> bool:
        """Does the ring have keys?"""
        return self._store.get(ref.pk, RING_SK) is not None

    def unchanged(self, ref: RingRef) -> Check:
        """A transaction condition: the ring's head is as read now (ring_not_found if the
        ring has no keys)."""
        ring = self._store.get(ref.pk, RING_SK)
        if ring is None:
            raise ring_not_found()
        return Check(ref.pk, RING_SK, int(ring["version"]))

    def keys(self, ref: RingRef, on_misplaced: Callable[[MisplacedRecord], None]) \
            -> list[RingKey]:
        """Every key: current, next, previous (newest first), revoked (newest first).

        Empty when the ring does not exist. Misplaced items are reported and left out.
        """
        if self._store.get(ref.pk, RING_SK) is None:
            return []
        found = list(self._items(ref, on_misplaced))
        rank = {"current": 0, "next": 1, "previous": 2, "revoked": 3}

        def newest_first(entry: tuple[RingKey, dict[str, Any]]) -> tuple[Any, ...]:
            key, item = entry
            when = key.revoked_at if key.revoked else key.current_until
            return (rank[key.slot], -int(item.get("order", 0)), -_stamp(when))
        found.sort(key=newest_first)
        return [k for k, _ in found]

    def key(self, ref: RingRef, kid: str) -> RingKey:
        """One key of the ring; NotFound if it is not (or no longer) in the ring, a
        MisplacedRecord if the item there is another key."""
        ring = self._store.get(ref.pk, RING_SK)
        if ring is None or not isinstance(kid, str) or not _KID_RE.match(kid):
            raise key_not_found()  # a kid we never make is not in any ring
        record = self._store.get(ref.pk, KEY_SK_PREFIX + kid)
        if record is None:
            raise key_not_found()
        return self._view(ref, _head(ring), kid, record)

    def jwks(self, ref: RingRef, on_misplaced: Callable[[MisplacedRecord], None]) \
            -> dict[str, Any]:
        """The ring's JWK Set: current, next, previous until revoked."""
        return jwks(k.jwk() for k in self.keys(ref, on_misplaced) if not k.revoked)

    def signer(self, ref: RingRef) -> Signer:
        """The current key, ready for Hsm.sign (JWS signatures)."""
        ring = self._store.get(ref.pk, RING_SK)
        if ring is None:
            raise ring_not_found()
        kid = ring["current"]
        record = self._store.get(ref.pk, KEY_SK_PREFIX + kid)
        if record is None or record.get("wrapped") is None:
            raise ring_not_found()
        self._view(ref, _head(ring), kid, record)  # the item is that key, where it is
        return Signer(kid=kid, algorithm=record["algorithm"],
                      scheme=SIGN_SCHEMES[record["algorithm"]],
                      wrapped=WrappedKey.from_dict(record["wrapped"]),
                      context=ref.key_context(kid))

    # -- changing --

    def create(self, op: Operation, ref: RingRef, alg: str, obj: str, *,
               conditions: Sequence[Check] = ()) -> list[RingKey]:
        """Create the ring with a current and a next key, and one audit record per key
        (object f"{obj}/{kid}"), in one transaction. RingExists if it has keys already;
        OwnerGone if one of `conditions` (checked in the same transaction) fails."""
        spec = signing_alg(alg)
        if self.exists(ref):
            raise RingExists
        now = self._clock()
        first, second = self._new_key(ref, spec, now), self._new_key(ref, spec, now)
        first.update(slot="current", current_since=iso_millis(now))
        second.update(slot="next")
        head = {"pk": ref.pk, "sk": RING_SK, **initial_head(first["kid"], second["kid"])}
        ops: list[Op] = [Put(head), Put(first), Put(second), *conditions]
        records = [(f"{obj}/{k['kid']}", {"kid": k["kid"], "algorithm": k["algorithm"],
                                          "slot": k["slot"]}) for k in (first, second)]
        try:
            op.commit(ops, records=records)
        except StoreTransactionCancelled as exc:
            failed = exc.failed_index
            if failed is not None and 3 <= failed < 3 + len(conditions):
                raise OwnerGone from None
            if self.exists(ref):
                raise RingExists from None
            raise Conflict("the ring is being changed concurrently; retry",
                           reason="busy") from None
        head_state = _head(head)
        return [self._view(ref, head_state, k["kid"], k) for k in (first, second)]

    def rotate(self, op: Operation, ref: RingRef, alg: str | None, obj: str, *,
               conditions: Sequence[Check] = (),
               also: Callable[[], Sequence[Op]] = tuple) -> tuple[RingKey, list[str]]:
        """Rotate: returns (the new next key, retired kids); the audit record (object
        f"{obj}/{kid}") and the writes `also()` returns (read again on every attempt) are in
        the rotating transaction. The new key is generated once (of `alg`, or None: of the
        next key's algorithm); the slot change is retried against fresh head versions.
        OwnerGone if one of `conditions` (checked in the same transaction) fails."""
        ring = self._settled(ref)
        if alg is None:
            upcoming = self._store.get(ref.pk, KEY_SK_PREFIX + str(ring["next"]))
            if upcoming is None:
                raise ring_not_found()
            alg = str(upcoming["algorithm"])
        spec = signing_alg(alg)
        cap(int(ring.get("published", 2)) - (1 if ref.keep_previous is not None
                                             and len(ring.get("previous", []))
                                             >= ref.keep_previous else 0),
            self._max_published, "published keys per ring (revoke previous keys)")
        record = self._new_key(ref, spec, self._clock())
        kid = record["kid"]

        def attempt() -> tuple[RingKey, list[str]]:
            ring = self._settled(ref)
            head, changes, retired = rotate_head(_head(ring), kid, iso_millis(self._clock()),
                                                 ref.keep_previous)
            ops: list[Op] = [Update({"pk": ref.pk, "sk": RING_SK, **head},
                                    expected_version=int(ring["version"])),
                             Put({**record, **changes[kid]})]
            for other in (ring["current"], ring["next"]):
                item = self._store.get(ref.pk, KEY_SK_PREFIX + other)
                if item is not None:
                    ops.append(Update({**_stored(item), **changes[other]},
                                      expected_version=int(item["version"])))
            ops += [Delete(ref.pk, KEY_SK_PREFIX + r) for r in retired]
            ops += also()
            op.note(kid=kid, algorithm=record["algorithm"], slot="next", count=len(retired))
            try:
                op.commit([*conditions, *ops], obj=f"{obj}/{kid}")
            except StoreTransactionCancelled as exc:
                failed = exc.failed_index
                if failed is not None and failed < len(conditions):
                    raise OwnerGone from None
                raise
            return self._view(ref, head, kid, {**record, **changes[kid]}), retired
        return retry(attempt, self._attempts, what="the ring")

    def revoke(self, op: Operation, ref: RingRef, kid: str) -> RingKey:
        """Revoke a previous key: its wrapped private key is dropped, it leaves the JWKS."""
        if not isinstance(kid, str) or not _KID_RE.match(kid):
            raise key_not_found()

        def attempt() -> RingKey:
            ring = self._settled(ref)
            record = self._store.get(ref.pk, KEY_SK_PREFIX + kid)
            head = _head(ring)
            if record is not None:
                self._view(ref, head, kid, record)  # a misplaced item is not this key
            change = revoke_key(head, None if record is None
                                else slot_of(head, kid, record), kid,
                                iso_millis(self._clock()))
            shredded = {**_stored(record or {}), **change, "context": ref.key_context(kid)}
            op.note(kid=kid, algorithm=shredded.get("algorithm"), slot="revoked")
            published = max(0, int(head.get("published", 3)) - 1)
            op.commit([Update({"pk": ref.pk, "sk": RING_SK, **head, "published": published},
                              expected_version=int(ring["version"])),
                       Update(shredded, expected_version=int(record["version"]))])  # type: ignore[index]
            return self._view(ref, head, kid, shredded)
        return retry(attempt, self._attempts, what="the ring")

    def purge(self, ref: RingRef) -> int:
        """Delete the ring's keys (each after this process's HSM session copy of it), then its
        head, one by one (its owner is gone for good: nothing reads the ring); idempotent. How
        many items went."""
        gone = 0
        found = list(scan(self._store, ref.pk, KEY_SK_PREFIX))
        for it in found:
            forget_blob(self._hsm, it.get("wrapped"),
                        ref.key_context(str(it["sk"]).removeprefix(KEY_SK_PREFIX)))
        for sk in [*(it["sk"] for it in found), RING_SK]:
            try:
                self._store.delete_if(ref.pk, sk)
                gone += 1
            except StoreConditionFailed:
                pass  # not there (any more)
        return gone

    # -- internals --

    def _settled(self, ref: RingRef) -> dict[str, Any]:
        """The head, after moving a legacy head's history into the key items (in bounded
        batches, each one transaction with a head CAS)."""
        for _ in range(self._attempts + 10**6 // LEGACY_BATCH):
            ring = self._store.get(ref.pk, RING_SK)
            if ring is None:
                raise ring_not_found()
            head = _head(ring)
            if "times" not in head:
                return ring
            kids = [k for k in head["times"] if k not in (head["current"], head["next"])]
            batch = kids[:LEGACY_BATCH]
            ops: list[Op] = []
            for kid in batch:
                item = self._store.get(ref.pk, KEY_SK_PREFIX + kid)
                if item is not None:
                    ops.append(Update({**_stored(item), **slot_of(head, kid, item)},
                                      expected_version=int(item["version"])))
            for kid in (head["current"], head["next"]):
                item = self._store.get(ref.pk, KEY_SK_PREFIX + kid)
                if item is not None and kid not in batch:
                    ops.append(Update({**_stored(item), **slot_of(head, kid, item)},
                                      expected_version=int(item["version"])))
                    batch.append(kid)
            rest = {k: v for k, v in head["times"].items() if k not in batch}
            new = {**head, "times": rest,
                   "revoked": [k for k in head.get("revoked", []) if k not in batch]}
            if not [k for k in rest if k not in (head["current"], head["next"])]:
                new = {"current": head["current"], "next": head["next"],
                       "previous": head["previous"][:ref.keep_previous]
                       if ref.keep_previous is not None else [],
                       "published": 2 + len(head["previous"])}
            ops.insert(0, Update({"pk": ref.pk, "sk": RING_SK, **new},
                                 expected_version=int(ring["version"])))
            try:
                self._store.transact(ops)
            except StoreTransactionCancelled:
                continue  # another writer moved first: read the head again
        raise Conflict("the ring is being changed concurrently; retry", reason="busy")

    def _items(self, ref: RingRef, on_misplaced: Callable[[MisplacedRecord], None]) \
            -> Iterator[tuple[RingKey, dict[str, Any]]]:
        ring = self._store.get(ref.pk, RING_SK)
        head = _head(ring) if ring else {"current": "", "next": ""}

        def parse(item: dict[str, Any]) -> tuple[RingKey, dict[str, Any]]:
            kid = str(item["sk"]).removeprefix(KEY_SK_PREFIX)
            return self._view(ref, head, kid, item), item
        yield from parsed(scan(self._store, ref.pk, KEY_SK_PREFIX), parse, on_misplaced)

    def _view(self, ref: RingRef, head: dict[str, Any], kid: str,
              record: dict[str, Any]) -> RingKey:
        """The key found at ref/kid; MisplacedRecord if the item is another key or belongs
        to another ring: its kid, the context its blob is bound to (checked in the HSM, so an
        edited context does not pass) and its certificate's public key must all be this
        place's."""
        here = ref.place(kid)
        if record.get("kid") != kid:
            raise here.misplaced("names another key")
        bound = _bound_context(record)
        if bound is not None and bound != ref.key_context(kid):
            raise here.misplaced("is bound to another ring")
        if isinstance(record.get("wrapped"), dict):
            try:
                wrapped = WrappedKey.from_dict(record["wrapped"])
                self._hsm.check_binding(wrapped, ref.key_context(kid))
                cert_key = load_pem(record["cert"]).public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            except (IntegrityError, KeyError, TypeError, ValueError) as exc:
                raise here.misplaced("failed its HSM binding check") from exc
            if cert_key != wrapped.public_der:
                raise here.misplaced("certifies another key")
        slot = slot_of(head, kid, record)
        try:
            return RingKey(
                kid=kid, algorithm=record["algorithm"], cert=record["cert"],
                pkcs7=record["pkcs7"], fingerprint=record["fingerprint"],
                thumbprint=record["thumbprint"], subject_dn=record["subject_dn"],
                created_at=record["created_at"], slot=slot["slot"],
                current_since=slot.get("current_since"),
                current_until=slot.get("current_until"), revoked_at=slot.get("revoked_at"))
        except KeyError as exc:
            raise ref.place(kid).misplaced("is malformed") from exc

    def _new_key(self, ref: RingRef, spec: SigningAlg, now: float) -> dict[str, Any]:
        """Generate a key pair in the HSM and its self-signed certificate (signed in the HSM)."""
        kid = kid_from_bytes(secrets.token_bytes(16))
        context = ref.key_context(kid)
        if spec.kty == "RSA":
            wrapped = self._hsm.generate_rsa(spec.rsa_bits or 2048, context)
        else:
            wrapped = self._hsm.generate_ec(spec.curve or "", context)
        private = self._hsm.private_key(wrapped, context)
        start = datetime.fromtimestamp(int(now), UTC)
        cert: x509.Certificate = build_self_signed(
            private, spec, ref.common_name[:MAX_COMMON_NAME], serial=x509.random_serial_number(),
            not_before=start, not_after=start + CERT_VALIDITY)
        der = der_of(cert)
        return {
            "pk": ref.pk, "sk": KEY_SK_PREFIX + kid, "kid": kid, "algorithm": spec.name,
            "wrapped": wrapped.to_dict(), "cert": certificate_pem(cert), "pkcs7": pkcs7_pem(cert),
            "fingerprint": sha1_fingerprint(der), "thumbprint": sha1_thumbprint(der),
            "subject_dn": subject_dn(cert), "created_at": iso_millis(now),
        }


def _stamp(iso: str | None) -> float:
    """Sort key of an ISO time (missing: oldest)."""
    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
