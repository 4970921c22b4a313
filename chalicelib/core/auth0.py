"""The Auth0 Management API domain: tenants, scopes, connections, connection keys, tenant
signing keys, JWKS and audit. The dialect parses and shapes; every decision is made here.

A tenant is the key ring of an `auth0` token scope: a token whose auth0 scopes name exactly
one concrete tenant works on that tenant; an all-rings ("*") token works on the default
tenant (KEYFRONT_AUTH0_DEFAULT_TENANT, default "default"). Another tenant's objects are
simply not there for it (404), and a missing scope is 403 before any lookup.

Audit: every change of state and every opening of a connection's sealed options (GET one
connection: one record; GET the list: one record for the call, with the count) is recorded
with its outcome; every refusal (403) is recorded as "denied", reads of public key material
included. Records carry names, ids and error codes, never options or key material.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from chalicelib.core.audit import allow_details
from chalicelib.core.connections import KEY_STRATEGIES, ConnectionNotFound, Connections
from chalicelib.core.kinds import SIGNING as AUTH0
from chalicelib.core.services import Services
from chalicelib.core.signing_keys import (
    KeyNotFound,
    OwnerGone,
    RingExists,
    RingRef,
    Signer,
    SigningKey,
    SigningKeyRings,
)
from chalicelib.core.tokens import ALL_RINGS, Caller, Principal
from chalicelib.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidState,
    KeyfrontError,
    NotFound,
)
from chalicelib.formats.algorithms import DEFAULT_SIGNING_ALG

DEFAULT_TENANT_ENV = "KEYFRONT_AUTH0_DEFAULT_TENANT"
TENANT_SIGNING_ALG = "RS256"  # Auth0 tenant signing keys are RSA-2048 / RS256
_TENANT_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?$")
MAX_OBJECT_CHARS = 512  # audit object names carry client-chosen ids: bounded, valid UTF-8
T = TypeVar("T")

log = logging.getLogger("keyfront.auth0")
allow_details("strategy")


class KeysNotSupported(InvalidState):
    """Connection keys exist only for okta and oidc connections."""

    code = "invalid_strategy"


class ConnectionKeysExist(Conflict):
    """POST /connections/{id}/keys when the connection has keys."""

    code = "connection_keys_exist"


class SigningKeyNotFound(KeyNotFound):
    """No such tenant signing key."""

    code = "inexistent_signing_key"


class TenantNotFound(NotFound):
    """A public JWKS request for a tenant without keys."""

    code = "inexistent_tenant"


def default_tenant() -> str:
    """The tenant of all-rings tokens and of the un-prefixed public JWKS."""
    return os.environ.get(DEFAULT_TENANT_ENV) or "default"


def valid_tenant(tenant: object) -> bool:
    """Tenant ids are 1-64 of letters, digits, '.', '_', '-' (they become store keys)."""
    return isinstance(tenant, str) and bool(_TENANT_RE.match(tenant))


def tenant_of(principal: Principal) -> str:
    """The tenant a token works on (see the module docstring)."""
    rings = {s.ring for s in principal.scopes if s.kind == AUTH0}
    concrete = rings - {ALL_RINGS}
    if len(concrete) == 1:
        tenant = next(iter(concrete))
    elif len(concrete) > 1:
        raise Forbidden("The token is bound to more than one tenant.")
    else:
        # an all-rings token, or one without auth0 scopes (it then fails the scope check)
        tenant = default_tenant()
    if not valid_tenant(tenant):
        raise Forbidden("The token's tenant is not a valid tenant id.")
    return tenant


def tenant_ring(tenant: str) -> RingRef:
    """The tenant's signing keys: every previous key stays until revoked."""
    return RingRef(pk=f"auth0#{tenant}#signing", context=f"auth0/{tenant}/signing",
                   common_name=tenant, keep_previous=None)


def connection_ring(tenant: str, connection: dict[str, Any]) -> RingRef:
    """A connection's keys: current, next and one previous (there is no revoke endpoint).

    `connection` is a record Connections.get/create returned for `tenant`, so its id is the
    id it was found under (Connections checks that a record is where it says it is).
    """
    if connection.get("tenant", tenant) != tenant:
        raise IntegrityError("the connection record belongs to another tenant")
    cid = connection["id"]
    return RingRef(pk=f"auth0#{tenant}#conkeys#{cid}",
                   context=f"auth0/{tenant}/connections/{cid}/keys",
                   common_name=connection["name"], keep_previous=1)


def _obj(name: str) -> str:
    """An audit object name: client-chosen ids are cut to MAX_OBJECT_CHARS, and anything
    that is not valid UTF-8 (a lone surrogate) is escaped, so the record can always be written.
    """
    name = name[:MAX_OBJECT_CHARS]
    if not name.isascii():
        name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name


class Auth0:
    """Auth0 operations for one process; each call names the caller and the tenant."""

    def __init__(self, services: Services) -> None:
        self.connections = Connections(services.store, services.hsm)
        self.rings = SigningKeyRings(services.store, services.hsm)
        self._audit = services.audit

    # ---- helpers -----------------------------------------------------------------------------

    def _refused(self, caller: Caller | None, action: str, obj: str,
                 exc: KeyfrontError, **details: Any) -> None:
        """Audit a refusal: "denied" for a 403, "failure" otherwise (reason = error code).

        A failing audit write is logged and the original error is the one reported.
        """
        outcome = "denied" if isinstance(exc, Forbidden) else "failure"
        try:
            self._audit.record(caller, action, _obj(obj), outcome, reason=exc.code, **details)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("audit write failed for %s", action)

    def _audited(self, caller: Caller | None, action: str, obj: str,
                 fn: Callable[[], T]) -> T:
        """Run a state change; a refusal is audited too (reason = error code, nothing else)."""
        try:
            return fn()
        except KeyfrontError as exc:
            self._refused(caller, action, obj, exc)
            raise

    @contextmanager
    def _op(self, caller: Caller, action: str, obj: str) -> Iterator[dict[str, Any]]:
        """Audit the enclosed use of a key: success with its details, or the refusal."""
        details: dict[str, Any] = {}
        try:
            yield details
        except KeyfrontError as exc:
            self._refused(caller, action, obj, exc)
            raise
        self._audit.record(caller, action, _obj(obj), "success", **details)

    def _require(self, caller: Caller, tenant: str, *perms: str, action: str = "",
                 obj: str = "") -> None:
        """The caller's token holds every perm on the tenant; a refusal is audited (denied)
        when `action` is given (state changes audit theirs in _audited/_op)."""
        try:
            caller.principal.require(AUTH0, tenant, *perms)
        except Forbidden as exc:
            if action:
                self._refused(caller, action, obj or f"auth0/{tenant}", exc)
            raise

    def caller_tenant(self, caller: Caller, action: str) -> str:
        """The tenant the caller's token works on (tenant_of); a refusal is audited."""
        try:
            return tenant_of(caller.principal)
        except Forbidden as exc:
            self._refused(caller, action, "auth0", exc)
            raise

    def _key_connection(self, tenant: str, cid: str) -> dict[str, Any]:
        con = self.connections.get(tenant, cid)
        if con["strategy"] not in KEY_STRATEGIES:
            raise KeysNotSupported(
                "Connection keys are only supported for the okta and oidc strategies.")
        return con

    def _ensure_tenant(self, caller: Caller | None, tenant: str) -> RingRef:
        ref = tenant_ring(tenant)
        if self.rings.ensure(ref, TENANT_SIGNING_ALG):
            for key in self.rings.keys(ref):
                self._audit.record(caller, "auth0.signing_key.create",
                                   f"auth0/{tenant}/signing/{key.kid}",
                                   principal=None if caller else "keyfront",
                                   kid=key.kid, algorithm=key.algorithm,
                                   slot="current" if key.current else "next")
        return ref

    # ---- connections -------------------------------------------------------------------------

    def create_connection(self, caller: Caller, tenant: str,
                          fields: dict[str, Any]) -> dict[str, Any]:
        """POST /connections."""
        def run() -> dict[str, Any]:
            self._require(caller, tenant, "create:connections")
            record = self.connections.create(tenant, fields)
            self._audit.record(caller, "auth0.connection.create",
                               f"auth0/{tenant}/connections/{record['id']}",
                               name=record["name"], strategy=record["strategy"])
            return self.connections.view(tenant, record["id"], record)
        return self._audited(caller, "auth0.connection.create", f"auth0/{tenant}/connections",
                             run)

    def get_connection(self, caller: Caller, tenant: str, cid: str) -> dict[str, Any]:
        """GET /connections/{id} (its sealed options are opened: audited)."""
        with self._op(caller, "auth0.connection.read",
                      f"auth0/{tenant}/connections/{cid}") as details:
            self._require(caller, tenant, "read:connections")
            record = self.connections.get(tenant, cid)
            details.update(name=record["name"], strategy=record["strategy"])
            return self.connections.view(tenant, cid, record)

    def list_connections(self, caller: Caller, tenant: str, *, strategies: list[str] | None = None,
                         name: str | None = None) -> list[dict[str, Any]]:
        """GET /connections, filtered, sorted by name (one audit record for the call)."""
        with self._op(caller, "auth0.connection.list",
                      f"auth0/{tenant}/connections") as details:
            self._require(caller, tenant, "read:connections")
            records = [r for r in self.connections.list(tenant)
                       if (not strategies or r["strategy"] in strategies)
                       and (name is None or r["name"] == name)]
            records.sort(key=lambda r: (r["name"], r["id"]))
            views = [self.connections.view(tenant, r["id"], r) for r in records]
            details.update(count=len(views))
            return views

    def delete_connection(self, caller: Caller, tenant: str, cid: str) -> None:
        """DELETE /connections/{id}: the connection and its keys go in one transaction."""
        obj = f"auth0/{tenant}/connections/{cid}"

        def run() -> None:
            self._require(caller, tenant, "delete:connections")
            con = self.connections.get(tenant, cid)
            ref = connection_ring(tenant, con)
            self.connections.delete(tenant, cid, lambda: self.rings.delete_ops(ref))
            self._audit.record(caller, "auth0.connection.delete", obj, name=con["name"],
                               strategy=con["strategy"])
        self._audited(caller, "auth0.connection.delete", obj, run)

    # ---- connection keys ---------------------------------------------------------------------

    def connection_keys(self, caller: Caller, tenant: str, cid: str) -> list[SigningKey]:
        """GET /connections/{id}/keys (empty before keys are created)."""
        self._require(caller, tenant, "read:connections_keys", action="auth0.connection_key.list",
                      obj=f"auth0/{tenant}/connections/{cid}/keys")
        con = self._key_connection(tenant, cid)
        return self.rings.keys(connection_ring(tenant, con))

    def create_connection_keys(self, caller: Caller, tenant: str, cid: str,
                               alg: str | None) -> list[SigningKey]:
        """POST /connections/{id}/keys: a current and a next key; 409 if keys exist."""
        obj = f"auth0/{tenant}/connections/{cid}/keys"

        def run() -> list[SigningKey]:
            self._require(caller, tenant, "create:connections_keys")
            con = self._key_connection(tenant, cid)
            try:
                keys = self.rings.create(connection_ring(tenant, con),
                                         alg or DEFAULT_SIGNING_ALG,
                                         conditions=[self.connections.exists_check(con)])
            except RingExists:
                raise ConnectionKeysExist(
                    "Keys have already been created for this connection.") from None
            except OwnerGone:
                raise ConnectionNotFound("Connection not found.") from None
            for key in keys:
                self._audit.record(caller, "auth0.connection_key.create", f"{obj}/{key.kid}",
                                   kid=key.kid, algorithm=key.algorithm,
                                   slot="current" if key.current else "next")
            return keys
        return self._audited(caller, "auth0.connection_key.create", obj, run)

    def rotate_connection_keys(self, caller: Caller, tenant: str, cid: str,
                               alg: str | None) -> SigningKey:
        """POST /connections/{id}/keys/rotate: the new next key.

        On a connection without keys it provisions them (current + next) and returns the
        next key, so rotate-only clients (the Terraform provider) work from the start.
        """
        obj = f"auth0/{tenant}/connections/{cid}/keys"

        def run() -> SigningKey:
            self._require(caller, tenant, "create:connections_keys", "update:connections_keys")
            con = self._key_connection(tenant, cid)
            ref = connection_ring(tenant, con)
            alg_name = alg or DEFAULT_SIGNING_ALG
            if not self.rings.exists(ref):
                try:
                    keys = self.rings.create(ref, alg_name,
                                             conditions=[self.connections.exists_check(con)])
                    new, retired = keys[1], []
                except OwnerGone:
                    raise ConnectionNotFound("Connection not found.") from None
                except RingExists:
                    new, retired = self.rings.rotate(ref, alg_name)
            else:
                new, retired = self.rings.rotate(ref, alg_name)
            self._audit.record(caller, "auth0.connection_key.rotate", f"{obj}/{new.kid}",
                               kid=new.kid, algorithm=new.algorithm, slot="next",
                               count=len(retired))
            return new
        return self._audited(caller, "auth0.connection_key.rotate", obj, run)

    def connection_jwks(self, tenant: str, cid: str) -> dict[str, Any]:
        """The connection's public JWKS (public: the keys are public by nature)."""
        if not valid_tenant(tenant):
            raise ConnectionNotFound("Connection not found.")
        con = self._key_connection(tenant, cid)
        return self.rings.jwks(connection_ring(tenant, con))

    # ---- tenant signing keys -----------------------------------------------------------------

    def signing_keys(self, caller: Caller, tenant: str) -> list[SigningKey]:
        """GET /keys/signing (the tenant's first keys are created on first access)."""
        self._require(caller, tenant, "read:signing_keys", action="auth0.signing_key.list",
                      obj=f"auth0/{tenant}/signing")
        return self.rings.keys(self._ensure_tenant(caller, tenant))

    def signing_key(self, caller: Caller, tenant: str, kid: str) -> SigningKey:
        """GET /keys/signing/{kid}."""
        self._require(caller, tenant, "read:signing_keys", action="auth0.signing_key.read",
                      obj=f"auth0/{tenant}/signing/{kid}")
        try:
            return self.rings.key(self._ensure_tenant(caller, tenant), kid)
        except KeyNotFound:
            raise SigningKeyNotFound("Signing key not found.") from None

    def rotate_signing_key(self, caller: Caller, tenant: str) -> SigningKey:
        """POST /keys/signing/rotate: next becomes current, a new next is returned."""
        obj = f"auth0/{tenant}/signing"

        def run() -> SigningKey:
            self._require(caller, tenant, "create:signing_keys", "update:signing_keys")
            ref = self._ensure_tenant(caller, tenant)
            new, _ = self.rings.rotate(ref, TENANT_SIGNING_ALG)
            self._audit.record(caller, "auth0.signing_key.rotate", f"{obj}/{new.kid}",
                               kid=new.kid, algorithm=new.algorithm, slot="next")
            return new
        return self._audited(caller, "auth0.signing_key.rotate", obj, run)

    def revoke_signing_key(self, caller: Caller, tenant: str, kid: str) -> SigningKey:
        """PUT /keys/signing/{kid}/revoke: only a previous key; it never comes back."""
        obj = _obj(f"auth0/{tenant}/signing/{kid}")

        def run() -> SigningKey:
            self._require(caller, tenant, "update:signing_keys")
            ref = self._ensure_tenant(caller, tenant)
            try:
                key = self.rings.revoke(ref, kid)
            except KeyNotFound:
                raise SigningKeyNotFound("Signing key not found.") from None
            self._audit.record(caller, "auth0.signing_key.revoke", obj, kid=key.kid,
                               algorithm=key.algorithm, slot="revoked")
            return key
        return self._audited(caller, "auth0.signing_key.revoke", obj, run)

    def tenant_jwks(self, tenant: str) -> dict[str, Any]:
        """The tenant's public JWKS. Only the default tenant's keys are created by this
        (anonymous) call: an arbitrary tenant name must not make the service mint keys."""
        if not valid_tenant(tenant):
            raise TenantNotFound("Tenant not found.")
        ref = tenant_ring(tenant)
        if tenant == default_tenant():
            self._ensure_tenant(None, tenant)
        elif not self.rings.exists(ref):
            raise TenantNotFound("Tenant not found.")
        return self.rings.jwks(ref)

    def tenant_signer(self, tenant: str) -> Signer:
        """The tenant's current key for signing tokens (what the issuer would use)."""
        return self.rings.signer(self._ensure_tenant(None, tenant))
