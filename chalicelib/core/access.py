"""Access: one `authorize` that decides what a request may do, from the ring kind's table
(kinds.py), and audits a denial.

Dialects name the action (and, where one route does two things, its variant); the table
decides what it needs. A `Grant` is the proof that the check was made: domain operations take
a grant instead of a caller, so no operation can run unchecked and none checks twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from chalicelib import logs
from chalicelib.core.audit import AuditLog
from chalicelib.core.kinds import KINDS, PROJECT_KEYS, SIGNING, TENANT_KEYS, TRANSIT, RingKind
from chalicelib.core.tokens import ALL_RINGS, Caller, Principal
from chalicelib.errors import Forbidden

__all__ = ["KINDS", "PROJECT_KEYS", "SIGNING", "TENANT_KEYS", "TRANSIT", "Grant", "RingKind",
           "authorize", "check", "held", "ring_of"]


@dataclass(frozen=True)
class Grant:
    """A caller authorized for one action on one ring: what domain operations take."""

    caller: Caller
    kind: RingKind
    ring: str
    action: str
    variant: str | None
    held: frozenset[str]  # effective permissions on the ring (implications applied)
    obj: str = ""  # the audit object the request is about
    # set only by the admin function: a delete goes ahead although the key was used within
    # the delete guard's window (core/usage.py)
    force: bool = False

    def holds(self, *perms: str) -> bool:
        """Does the caller also hold these (e.g. write, to create a key on first encrypt)?"""
        return all(p in self.held for p in perms)

    def require(self, action: str) -> None:
        """Assert that this grant is for `action` (a programming error otherwise)."""
        if self.action != action:
            raise AssertionError(f"a grant for {self.action} used for {action}")


def ring_of(principal: Principal, kind: str, default_ring: str,
            asked: str | None = None) -> str:
    """The ring a request works on: the one it names, else the one ring its token names for
    `kind`, else (an all-rings token) the default ring. Forbidden (ambiguous_ring) for a token
    naming several rings when the request names none. Whether the token may act on the ring
    is `authorize`'s to decide."""
    if asked is not None:
        return asked
    rings = {s.ring for s in principal.scopes if s.kind == kind} - {ALL_RINGS}
    if len(rings) > 1:
        raise Forbidden("the token is bound to more than one ring", reason="ambiguous_ring")
    return next(iter(rings)) if rings else default_ring


def held(caller: Caller, kind: RingKind, ring: str) -> frozenset[str]:
    """The caller's effective permissions on (kind, ring)."""
    return kind.effective(caller.principal.perms(kind.name, ring))


def check(caller: Caller, kind: RingKind, ring: str, action: str,
          variant: str | None = None, obj: str = "") -> Grant:
    """The grant, or Forbidden naming the permissions needed. One answer whether or not the
    ring or the object exists (no existence oracle). Not audited: see `authorize`."""
    perms = held(caller, kind, ring)
    needed = kind.needed(action, variant)
    if not all(p in perms for p in needed):
        raise Forbidden("insufficient permission", needed=needed, reason="permission_missing")
    return Grant(caller, kind, ring, action, variant, perms, obj)


def authorize(audit: AuditLog, caller: Caller, kind: RingKind, ring: str, action: str,
              obj: str, variant: str | None = None) -> Grant:
    """`check`, with a refusal audited as "denied" (reason permission_missing) under `action`
    and `obj`. The one place a request's permission is decided; from here on the request's
    log lines name the caller's principal."""
    logs.set_principal(caller.principal.name)
    try:
        return check(caller, kind, ring, action, variant, obj)
    except Forbidden as exc:
        audit.refused(caller, action, obj, exc)
        raise
