"""Shared helpers of the Auth0 tests (no tests here): the domain and its rings' places."""

from __future__ import annotations

from typing import Any

from chalicelib.core.rotating import RING_SK, RingKey, RingRef, check_ring
from chalicelib.core.signing import SigningRings
from chalicelib.dialects.auth0.routes import signing_rings


def domain(services: Any) -> SigningRings:
    """The Auth0 dialect's domain over `services` (the one its routes use)."""
    return services.domain(signing_rings)


def tenant_ring(tenant: str) -> RingRef:
    """Where a tenant's signing keys live (the store layout the dialect keeps)."""
    return RingRef(pk=f"auth0#{tenant}#signing", context=f"auth0/{tenant}/signing",
                   common_name=tenant)


def connection_ring(tenant: str, record: dict[str, Any]) -> RingRef:
    """Where a connection's keys live."""
    return RingRef(pk=f"auth0#{tenant}#conkeys#{record['id']}",
                   context=f"auth0/{tenant}/connections/{record['id']}/keys",
                   common_name=record["name"], keep_previous=1)


def ring_state(services: Any, ref: RingRef) -> tuple[dict[str, Any], list[RingKey]]:
    """The ring's head item and its keys, after checking the slot invariants."""
    return ring_state_of(services.store, domain(services), ref)


def ring_state_of(store: Any, dom: SigningRings, ref: RingRef) \
        -> tuple[dict[str, Any], list[RingKey]]:
    """ring_state for a domain and store of a test's own."""
    head = store.get(ref.pk, RING_SK)
    assert head is not None
    keys = dom.rings.keys(ref, fail_on_misplaced)
    check_ring(head, keys)
    return head, keys


def grant(dom: SigningRings, caller: Any, tenant: str, verb: str) -> Any:
    """The caller's grant for `verb` on `tenant` (as the routes get it, without audit)."""
    from chalicelib.core.access import check

    return check(caller, dom.kind, tenant, dom.action(verb))


def fail_on_misplaced(exc: Exception) -> None:
    """An on_misplaced callback for reads that must not meet a misplaced record."""
    raise AssertionError(f"misplaced record: {exc}")


def collect(into: list[Exception]) -> Any:
    """An on_misplaced callback that collects what it is told."""
    return into.append
