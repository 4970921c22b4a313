"""Rotating signing-key rings: current / next / previous slots, keys made in the HSM.

A ring (a tenant's signing keys, or one connection's keys) is one store partition:

  sk "ring"      the slot state: current kid, next kid, previous kids (newest first),
                 revoked kids (newest first) and per-kid times. Every slot change is ONE
                 conditional write of this item (update_if_version inside a transaction), so
                 racing rotations serialise on its version: exactly one current, one next.
  sk "key#<kid>" one key: algorithm, wrapped private key (bound to its context), certificate
                 PEM, PKCS#7 PEM, fingerprint, thumbprint, subject DN. Written in the same
                 transaction that first references it from the ring, so the ring never names
                 a key that does not exist.

Rotation: next -> current, current -> previous, a new next. Only a previous key can be
revoked; revoking drops the wrapped private key (the key can never sign again) and moves it
to `revoked` for good. A ring may keep a bounded number of previous keys (connections keep
one): older ones are retired, i.e. deleted, in the rotating transaction.

The pure state functions (`initial_state`, `rotate_state`, `revoke_state`) carry the rules;
`SigningKeyRings` adds the HSM (key generation, certificate signing) and the store.

A key is known by where it is found: the ring it was looked up in (`RingRef`, which names the
HSM context) and the kid of its sort key. Its HSM context is built from those, never from the
item's own `kid`; an item whose `kid` disagrees with its sort key is out of place (copied or
moved) and is not that key: reads leave it out, signing refuses it (IntegrityError).
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from chalicelib.errors import (
    Conflict,
    IntegrityError,
    InvalidState,
    NotFound,
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
from chalicelib.hsm import Hsm, SignScheme, WrappedKey
from chalicelib.store import Check, Delete, Op, Put, Store, Update

RING_SK = "ring"
KEY_SK_PREFIX = "key#"
CERT_VALIDITY = timedelta(days=3650)
MAX_ATTEMPTS = 16  # optimistic retries of one rotation/revocation against racing writers

log = logging.getLogger("keyfront.signing_keys")

# JOSE alg -> the HSM signature scheme that produces JWS signatures for it
SIGN_SCHEMES: dict[str, SignScheme] = {
    "RS256": SignScheme.RSA_PKCS1_SHA256, "RS384": SignScheme.RSA_PKCS1_SHA384,
    "RS512": SignScheme.RSA_PKCS1_SHA512, "PS256": SignScheme.RSA_PSS_SHA256,
    "PS384": SignScheme.RSA_PSS_SHA384, "ES256": SignScheme.ECDSA_SHA256,
    "ES384": SignScheme.ECDSA_SHA384,
}


class KeyNotFound(NotFound):
    """No such key in this ring."""

    code = "key_not_found"


class RingNotFound(NotFound):
    """The ring has no keys (yet)."""

    code = "ring_not_found"


class RingExists(Conflict):
    """The ring's keys have already been created."""

    code = "ring_exists"


class KeyNotRevocable(InvalidState):
    """Only a previous key can be revoked."""

    code = "key_not_revocable"


class KeyAlreadyRevoked(InvalidState):
    """The key has already been revoked."""

    code = "key_revoked"


class RingBusy(Conflict):
    """Concurrent changes kept winning; the caller may retry."""

    code = "ring_busy"


class OwnerGone(NotFound):
    """A condition the caller attached (e.g. the owning connection exists) failed."""

    code = "owner_gone"


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


@dataclass(frozen=True)
class SigningKey:
    """One key as the API shows it (public parts and slot flags only)."""

    kid: str
    algorithm: str
    cert: str
    pkcs7: str
    fingerprint: str
    thumbprint: str
    subject_dn: str
    created_at: str
    current: bool = False
    next: bool = False
    previous: bool = False
    revoked: bool = False
    current_since: str | None = None
    current_until: str | None = None
    revoked_at: str | None = None

    @property
    def cert_der(self) -> bytes:
        """The certificate in DER."""
        return der_of(load_pem(self.cert))

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


# ---- the rules, as pure functions on the ring state ------------------------------------------

def _times(state: dict[str, Any], kid: str) -> dict[str, Any]:
    return state["times"].setdefault(kid, {})


def initial_state(current: str, next_: str, now: str) -> dict[str, Any]:
    """A fresh ring: `current` signs from now, `next` waits."""
    return {"current": current, "next": next_, "previous": [], "revoked": [],
            "times": {current: {"current_since": now}, next_: {}}}


def rotate_state(state: dict[str, Any], new_next: str, now: str,
                 keep_previous: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """next -> current, current -> previous, `new_next` -> next; returns (state, retired kids).

    With keep_previous=n only the n newest previous keys stay; older ones are retired.
    """
    s = copy.deepcopy(state)
    if new_next in s["times"]:
        raise ValueError("the new key is already in the ring")
    old_current, old_next = s["current"], s["next"]
    _times(s, old_current)["current_until"] = now
    _times(s, old_next)["current_since"] = now
    s["times"][new_next] = {}
    s["previous"] = [old_current, *s["previous"]]
    retired: list[str] = []
    if keep_previous is not None and len(s["previous"]) > keep_previous:
        retired = s["previous"][keep_previous:]
        s["previous"] = s["previous"][:keep_previous]
        for kid in retired:
            s["times"].pop(kid, None)
    s["current"], s["next"] = old_next, new_next
    return s, retired


def revoke_state(state: dict[str, Any], kid: str, now: str) -> dict[str, Any]:
    """Move a previous key to revoked; anything else is refused (a revoked key stays so)."""
    if kid in state["revoked"]:
        raise KeyAlreadyRevoked("The signing key has already been revoked.")
    if kid not in state["previous"]:
        if kid in (state["current"], state["next"]):
            raise KeyNotRevocable("Only a previously used signing key can be revoked.")
        raise KeyNotFound("Signing key not found.")
    s = copy.deepcopy(state)
    s["previous"].remove(kid)
    s["revoked"] = [kid, *s["revoked"]]
    _times(s, kid)["revoked_at"] = now
    return s


def check_state(state: dict[str, Any]) -> None:
    """Assert the slot invariants (used by tests): one current, one next, disjoint slots."""
    cur, nxt, prev, rev = state["current"], state["next"], state["previous"], state["revoked"]
    slots = [cur, nxt, *prev, *rev]
    assert cur and nxt and cur != nxt, "exactly one current and one next"
    assert len(slots) == len(set(slots)), "a key is in one slot only"
    assert set(slots) == set(state["times"]), "times cover exactly the ring's keys"


def _state_of(item: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(item[k]) for k in ("current", "next", "previous", "revoked", "times")}


def _in_place(ref: RingRef, kid: str, record: dict[str, Any]) -> bool:
    """Is the item found at (ref.pk, "key#<kid>") that key by its own account?"""
    if record.get("kid") == kid:
        return True
    # tampering or a bug, never a client's doing: say where, never what the item holds
    log.warning(json.dumps({"level": "warning", "event": "signing_key_out_of_place",
                            "pk": ref.pk, "sk": KEY_SK_PREFIX + kid}))
    return False


# ---- the ring service ------------------------------------------------------------------------

def _iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds, as Auth0 prints dates."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class SigningKeyRings:
    """Create, rotate, revoke and read rings; keys are generated and certified in the HSM."""

    def __init__(self, store: Store, hsm: Hsm, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._hsm = hsm
        self._clock = clock

    # -- reading --

    def exists(self, ref: RingRef) -> bool:
        """Does the ring have keys?"""
        return self._store.get(ref.pk, RING_SK) is not None

    def keys(self, ref: RingRef) -> list[SigningKey]:
        """Every key of the ring: current, next, previous (newest first), revoked (newest first).

        Empty when the ring does not exist. The ring item is read first and key items are
        immutable apart from revocation, so the slot flags come from one consistent state.
        """
        ring = self._store.get(ref.pk, RING_SK)
        if ring is None:
            return []
        records = self._key_records(ref)
        state = _state_of(ring)
        order = [state["current"], state["next"], *state["previous"], *state["revoked"]]
        return [self._view(records[kid], state) for kid in order if kid in records]

    def key(self, ref: RingRef, kid: str) -> SigningKey:
        """One key of the ring; KeyNotFound if it is not (or no longer) in the ring."""
        ring = self._store.get(ref.pk, RING_SK)
        if ring is None or not isinstance(kid, str) or kid not in ring["times"]:
            raise KeyNotFound("Signing key not found.")
        record = self._store.get(ref.pk, KEY_SK_PREFIX + kid)
        if record is None or not _in_place(ref, kid, record):
            raise KeyNotFound("Signing key not found.")
        return self._view(record, _state_of(ring))

    def published(self, ref: RingRef) -> list[SigningKey]:
        """The keys a JWKS publishes: current, next and the unrevoked previous keys."""
        return [k for k in self.keys(ref) if not k.revoked]

    def jwks(self, ref: RingRef) -> dict[str, Any]:
        """The ring's JWK Set (current, next, previous until revoked)."""
        return jwks(k.jwk() for k in self.published(ref))

    def signer(self, ref: RingRef) -> Signer:
        """The current key, ready for Hsm.sign (JWS signatures)."""
        ring = self._store.get(ref.pk, RING_SK)
        if ring is None:
            raise RingNotFound("no keys")
        kid = ring["current"]
        record = self._store.get(ref.pk, KEY_SK_PREFIX + kid)
        if record is None or record.get("wrapped") is None:
            raise RingNotFound("no current key")
        if not _in_place(ref, kid, record):
            raise IntegrityError("the current key's record is not the current key")
        # the context is the ring's and the kid the ring names: where the key was found
        return Signer(kid=kid, algorithm=record["algorithm"],
                      scheme=SIGN_SCHEMES[record["algorithm"]],
                      wrapped=WrappedKey.from_dict(record["wrapped"]),
                      context=ref.key_context(kid))

    # -- changing --

    def create(self, ref: RingRef, alg: str, *, conditions: Sequence[Check] = ()) -> \
            list[SigningKey]:
        """Create the ring with a current and a next key; RingExists if it has keys already.

        `conditions` are checked in the same transaction (e.g. "the connection still exists");
        if one fails, OwnerGone.
        """
        spec = signing_alg(alg)
        if self.exists(ref):
            raise RingExists("keys exist")
        now = self._clock()
        first, second = self._new_key(ref, spec, now), self._new_key(ref, spec, now)
        ring = {"pk": ref.pk, "sk": RING_SK,
                **initial_state(first["kid"], second["kid"], _iso(now))}
        ops: list[Op] = [Put(ring), Put(first), Put(second), *conditions]
        try:
            self._store.transact(ops)
        except StoreTransactionCancelled as exc:
            failed = exc.failed_index
            if failed is not None and failed >= 3:
                raise OwnerGone("the ring's owner is gone") from None
            if self.exists(ref):
                raise RingExists("keys exist") from None
            raise RingBusy("concurrent change, retry") from None
        state = _state_of(ring)
        return [self._view(first, state), self._view(second, state)]

    def ensure(self, ref: RingRef, alg: str) -> bool:
        """Create the ring if it has no keys yet; True if this call created it.

        Racing first calls each generate keys, one transaction wins, the others' keys are
        never written (the HSM objects were session objects, nothing leaks to the store).
        """
        if self.exists(ref):
            return False
        try:
            self.create(ref, alg)
        except (RingExists, RingBusy):
            if self.exists(ref):
                return False
            raise
        return True

    def rotate(self, ref: RingRef, alg: str) -> tuple[SigningKey, list[str]]:
        """Rotate: returns (the new next key, retired kids). RingNotFound without keys.

        The new key is generated once; the slot change is retried against fresh ring versions
        (each failed attempt means another writer succeeded, so racers all finish).
        """
        spec = signing_alg(alg)
        if not self.exists(ref):
            raise RingNotFound("no keys")
        record = self._new_key(ref, spec, self._clock())
        for _ in range(MAX_ATTEMPTS):
            ring = self._store.get(ref.pk, RING_SK)
            if ring is None:
                raise RingNotFound("no keys")
            state, retired = rotate_state(_state_of(ring), record["kid"], _iso(self._clock()),
                                          ref.keep_previous)
            ops: list[Op] = [Update({"pk": ref.pk, "sk": RING_SK, **state},
                                    expected_version=int(ring["version"])),
                             Put(record)]
            ops += [Delete(ref.pk, KEY_SK_PREFIX + kid) for kid in retired]
            try:
                self._store.transact(ops)
            except StoreTransactionCancelled:
                continue
            return self._view(record, state), retired
        raise RingBusy("The keys are being changed concurrently; retry.")

    def revoke(self, ref: RingRef, kid: str) -> SigningKey:
        """Revoke a previous key: its wrapped private key is dropped, it leaves the JWKS."""
        for _ in range(MAX_ATTEMPTS):
            ring = self._store.get(ref.pk, RING_SK)
            if ring is None or not isinstance(kid, str):
                raise KeyNotFound("Signing key not found.")
            state = revoke_state(_state_of(ring), kid, _iso(self._clock()))
            record = self._store.get(ref.pk, KEY_SK_PREFIX + kid)
            if record is None or not _in_place(ref, kid, record):
                raise KeyNotFound("Signing key not found.")
            # the private key can never sign again: only the certificate stays
            shredded = {k: v for k, v in record.items() if k != "version"} | {"wrapped": None}
            try:
                self._store.transact([
                    Update({"pk": ref.pk, "sk": RING_SK, **state},
                           expected_version=int(ring["version"])),
                    Update(shredded, expected_version=int(record["version"])),
                ])
            except StoreTransactionCancelled:
                continue
            return self._view(shredded, state)
        raise RingBusy("The keys are being changed concurrently; retry.")

    def delete_ops(self, ref: RingRef) -> list[Op]:
        """Operations deleting the ring and its keys (for the owner's deleting transaction).

        The ring delete is conditional on its version, so a racing rotation fails one side.
        """
        ring = self._store.get(ref.pk, RING_SK)
        if ring is None:
            return [Check(ref.pk, RING_SK, None)]
        return [Delete(ref.pk, RING_SK, int(ring["version"])),
                *(Delete(ref.pk, KEY_SK_PREFIX + kid)
                  for kid in self._key_records(ref, all_items=True))]

    # -- internals --

    def _key_records(self, ref: RingRef, *, all_items: bool = False) -> \
            dict[str, dict[str, Any]]:
        """The ring's key items by the kid of their sort key (where they are).

        Items out of place are left out, unless `all_items` (deleting a ring deletes them too).
        """
        out: dict[str, dict[str, Any]] = {}
        cursor = None
        while True:
            page = self._store.query(ref.pk, KEY_SK_PREFIX, limit=100, cursor=cursor)
            for it in page.items:
                kid = str(it["sk"]).removeprefix(KEY_SK_PREFIX)
                if all_items or _in_place(ref, kid, it):
                    out[kid] = it
            if not page.cursor:
                return out
            cursor = page.cursor

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
            "subject_dn": subject_dn(cert), "created_at": _iso(now),
        }

    @staticmethod
    def _view(record: dict[str, Any], state: dict[str, Any]) -> SigningKey:
        kid = record["kid"]
        times = state["times"].get(kid, {})
        return SigningKey(
            kid=kid, algorithm=record["algorithm"], cert=record["cert"], pkcs7=record["pkcs7"],
            fingerprint=record["fingerprint"], thumbprint=record["thumbprint"],
            subject_dn=record["subject_dn"], created_at=record["created_at"],
            current=kid == state["current"], next=kid == state["next"],
            previous=kid in state["previous"], revoked=kid in state["revoked"],
            current_since=times.get("current_since"), current_until=times.get("current_until"),
            revoked_at=times.get("revoked_at"))
