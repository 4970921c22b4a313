"""The admin function: JSON events in, JSON out. Deployed as the `admin` Lambda function
(`aws lambda invoke`) and called locally by the `keyfront` console script.

Events:
  {"action": "create-token", "principal": "...", "scopes": [{"kind","ring","perms"}],
   "ttl_seconds": 2592000}                       -> {"ok": true, "token": "...", "record": {...}}
  {"action": "list-tokens"}                      -> {"ok": true, "tokens": [...]}
  {"action": "revoke-token", "token_id": "..."}  -> {"ok": true, "record": {...}}
  {"action": "health"}                           -> {"ok": bool, "checks": {...}}
  {"action": "create-environment", "project": "...", "name": "production",
   "type": "PRODUCTION"|"SANDBOX"|"TEST", "description"?, "access_url"?}
                                                 -> {"ok": true, "environment": {...}}
  {"action": "list-environments", "project": "..."} -> {"ok": true, "environments": [...]}
  {"action": "delete-environment", "project": "...", "name": "..."} -> {"ok": true}
  {"action": "maintenance", "only"?: "step"}    -> {"ok": bool, "steps": {...}}
  {"action": "set-rotation", "kind": "...", "ring": "...", "id": "...",
   "period_seconds": 2592000 | "30d" (0: off)}  -> {"ok": true, "rotation": {...}}
  {"action": "get-rotation", "kind", "ring", "id"} -> {"ok": true, "rotation": {...}}
  {"action": "list-rotations", "kind"?: "..."}  -> {"ok": true, "rotations": [...]}
  (scheduled rotation: storedsafe keys by name, auth0 rings by "signing" or a connection id;
  the other kinds' keys do not rotate, which these events answer as an error)
  {"action": "list-deleted", "kind"?, "ring"?}  -> {"ok": true, "deleted": [{kind, ring, id,
                                                    name, deleted_at, deleted_by, purge_after,
                                                    due, purging}]}  (never material)
  {"action": "restore-deleted", "kind", "ring", "id"} -> {"ok": true, "restored": {...}}
  {"action": "purge-deleted", "all_due": true}  -> {"ok": true, "purged": n, "waiting": m,
                                                    "failed": [...]}
  {"action": "purge-deleted", "kind", "ring", "id"} (that one now, due or not)
  (deleted keys of every dialect, while their deletion window runs; a restore is refused with
  error "conflict" and a message naming what stands in the way)
  (environments of the Apinizer dialect's projects; an environment with keys deployed to it
  is not deleted)
  {"action": "key-usage", "kind": "...", "ring": "...", "id"?: "..."}
                                                 -> {"ok": true, "usage": [{...}]}
  (the last use of a key, or of every key of the ring with a recorded use; `id` is the key's
  vendor identifier: StoredSafe name, MiaRec key id, AI-VAULT master-key name or "psk/NAME",
  Apinizer key name, Auth0 signing-key kid)
  {"action": "delete-key", "kind": "...", "ring": "...", "id": "...", "force": bool}
                                                 -> {"ok": true}
  (the vendor's own delete of that key under the admin principal; `force` overrides the
  delete guard, KEYFRONT_DELETE_GUARD_SECONDS)
  {"action": "rewrap", "to_version": N, "max_items": 1000}
                                                 -> {"ok": true, "done": bool, "status": {...}}
  (one bounded run of the KEK roll to version N, the configured one; invoke again until done)
  {"action": "rewrap-check", "to_version": N}    -> {"ok": true, "done": bool, "blobs": {...},
                                                     "other_kek": n, "places": [...], ...}
  {"action": "destroy-kek", "version": M, "force": false}
                                                 -> {"ok": true, "destroyed": [labels],
                                                     "retired": true, "destroy_after": t}
  (first call: retires KEK M, nothing destroyed; then, from destroy_after on (or with
  force), a full check and the destroy; refused while a stored blob names KEK M, and for
  the configured version)
Errors: {"ok": false, "error": code, "message": text}. Deployed, such a result fails the
invocation (see `invoke`), so `aws lambda invoke` reports a FunctionError.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from typing import Any

from chalicelib.core.access import Grant, check
from chalicelib.core.deleted import Adapter, Bin
from chalicelib.core.kinds import (
    KINDS,
    MASTER_KEYS,
    PROJECT_KEYS,
    SIGNING,
    TENANT_KEYS,
    TRANSIT,
)
from chalicelib.core.services import Services, get_services
from chalicelib.core.tokens import Caller, Principal, Scope
from chalicelib.errors import InvalidInput, InvalidState, KeyfrontError, NotFound

ADMIN_PRINCIPAL = "admin-function"
# environment names: what a path segment and the ring "<project>/<environment>" carry safely
ENVIRONMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TEXT = 1024
# items one `rewrap` event reads at most: a bounded run well within the function's timeout
DEFAULT_REWRAP_ITEMS = 1000


def _text(event: dict[str, Any], field: str, *, required: bool = True) -> str | None:
    value = event.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise InvalidInput(f"{field} must be a non-empty string of at most {MAX_TEXT} "
                           "characters", field=field)
    return value


def _environments(event: dict[str, Any], svc: Services, action: str) -> dict[str, Any]:
    """The environment events (create, list, delete) of the project-keys domain."""
    from chalicelib.dialects.apinizer.models import ENVIRONMENT_TYPES, check_project
    from chalicelib.dialects.apinizer.routes import project_keys

    domain = svc.domain(project_keys)
    # the routes' own check: a project the API could never address is refused here too
    project = check_project(event.get("project"))
    if action == "list-environments":
        return {"ok": True, "environments": [dataclasses.asdict(e)
                                             for e in domain.all_environments(project)]}
    name = str(_text(event, "name"))
    # created environments all match this, so a delete of another name finds nothing anyway
    if not ENVIRONMENT_NAME.fullmatch(name):
        raise InvalidInput("an environment name is 1 to 64 letters, digits, '.', '_' or '-'",
                           field="name")
    if action == "delete-environment":
        domain.delete_environment(project, name, principal=ADMIN_PRINCIPAL)
        return {"ok": True}
    env_type = event.get("type")
    if env_type not in ENVIRONMENT_TYPES:
        raise InvalidInput(f"type is one of {', '.join(ENVIRONMENT_TYPES)}", field="type")
    env = domain.create_environment(
        project, name, str(env_type), principal=ADMIN_PRINCIPAL,
        description=_text(event, "description", required=False),
        access_url=_text(event, "access_url", required=False))
    return {"ok": True, "environment": dataclasses.asdict(env)}


def _admin_grant(kind: str, ring: str, action: str, rid: str, *, force: bool = False) \
        -> Grant:
    """The admin function's grant for `action` on (kind, ring): every permission of the
    kind on that ring, under ADMIN_PRINCIPAL (what audit records name)."""
    k = KINDS[kind]
    principal = Principal(token_id="", name=ADMIN_PRINCIPAL,
                          scopes=(Scope(kind, ring, k.permissions),), expires_at=0)
    grant = check(Caller(principal, rid), k, ring, f"{kind}.{action}")
    return dataclasses.replace(grant, force=force)


def _domains(svc: Services) -> dict[str, Any]:
    """The keys' domain of every ring kind: the ones the dialects use, built through the
    container as the dialects build them."""
    from chalicelib.dialects.aivault.routes import master_keys
    from chalicelib.dialects.apinizer.routes import project_keys
    from chalicelib.dialects.auth0.routes import signing_rings
    from chalicelib.dialects.miarec.routes import tenant_keys
    from chalicelib.dialects.storedsafe.routes import transit_keys

    return {TRANSIT: svc.domain(transit_keys), SIGNING: svc.domain(signing_rings),
            TENANT_KEYS: svc.domain(tenant_keys), MASTER_KEYS: svc.domain(master_keys),
            PROJECT_KEYS: svc.domain(project_keys)}


def deletion_adapters(svc: Services) -> dict[str, Adapter]:
    """The deleted-key adapter of every ring kind (its keys' domain)."""
    return _domains(svc)


def _key_id(domain: Any, kind: str, ring: str, ident: str, rid: str) -> str:
    """The id a key's use is recorded under, from its vendor identifier (the key as it is
    now: a deleted key's use is never shown for a new key of the same name)."""
    if kind == "storedsafe":
        return str(domain.read_key(_admin_grant(kind, ring, "key.read", rid), ident).objectid)
    if kind in ("miarec", "apinizer"):
        return str(domain.get(_admin_grant(kind, ring, "key.read", rid), ident).id)
    if kind == "aivault":
        secret = ident.startswith("psk/")
        name = ident.removeprefix("psk/")
        found = domain.secrets(_admin_grant(kind, ring, "secret.list", rid),
                               name_contains=name) if secret else \
            domain.keys(_admin_grant(kind, ring, "key.list", rid), name_contains=name)
        for item in found:
            if item.name == name:
                return str(item.id)
        raise NotFound("no such key", reason="key_not_found")
    return ident  # auth0: signing keys are named by their kid


def _key_usage(event: dict[str, Any], svc: Services, rid: str) -> dict[str, Any]:
    """The key-usage event."""
    kind, ring = str(_kind(event, required=True)), str(_text(event, "ring"))
    ident = _text(event, "id", required=False)
    domain = _domains(svc)[kind]
    if ident is None:
        return {"ok": True, "usage": [u.to_dict() for u in domain.usage.ring(kind, ring)]}
    use = domain.usage.last(kind, ring, _key_id(domain, kind, ring, ident, rid))
    return {"ok": True, "usage": [] if use is None else [use.to_dict()]}


def _delete_key(event: dict[str, Any], svc: Services, rid: str) -> dict[str, Any]:
    """The delete-key event: the domain's own delete, under the admin principal."""
    kind = str(_kind(event, required=True))
    ring, ident = str(_text(event, "ring")), str(_text(event, "id"))
    force = event.get("force", False)
    if not isinstance(force, bool):
        raise InvalidInput("force must be true or false", field="force")
    domain = _domains(svc)[kind]
    if kind == "storedsafe":
        domain.delete(_admin_grant(kind, ring, "key.delete", rid, force=force), ident)
    elif kind in ("miarec", "apinizer"):
        domain.delete(_admin_grant(kind, ring, "key.delete", rid, force=force), ident)
    elif kind == "aivault" and ident.startswith("psk/"):
        domain.delete_secret(_admin_grant(kind, ring, "secret.delete", rid, force=force),
                             ident.removeprefix("psk/"))
    elif kind == "aivault":
        domain.delete_key(_admin_grant(kind, ring, "key.delete", rid, force=force), ident)
    else:
        raise InvalidInput("auth0 signing keys are revoked, not deleted", field="kind")
    return {"ok": True}



def _kek(event: dict[str, Any], svc: Services, action: str) -> dict[str, Any]:
    """The KEK roll events: one bounded run, a check, the destruction of an old KEK."""
    from chalicelib.core.kek_roll import KekRoll

    roll = KekRoll(svc.store, svc.hsm, svc.audit, svc.settings)
    if action == "destroy-kek":
        return {"ok": True, **roll.destroy(event.get("version"), principal=ADMIN_PRINCIPAL,
                                           force=event.get("force", False))}
    if action == "rewrap-check":
        return {"ok": True, **roll.check(event.get("to_version"))}
    status = roll.run(event.get("to_version"),
                      max_items=event.get("max_items", DEFAULT_REWRAP_ITEMS),
                      principal=ADMIN_PRINCIPAL)
    return {"ok": True, "done": status.done, "status": status.as_dict()}


def deleted_bin(svc: Services) -> Bin:
    """The deleted-key entries, for the operator's list, restore and purge."""
    return Bin.for_settings(svc.store, svc.audit, svc.settings)


def _kind(event: dict[str, Any], *, required: bool) -> str | None:
    kind = _text(event, "kind", required=required)
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"kind is one of {', '.join(sorted(KINDS))}", field="kind")
    return kind


def _purged(summary: dict[str, Any]) -> dict[str, Any]:
    """A purge's result: not ok while an entry failed (run it again: it resumes)."""
    if summary["failed"]:
        return {"ok": False, "error": "purge_failed", **summary,
                "message": f"{len(summary['failed'])} deleted keys were not purged (see the "
                           "logs); run the purge again"}
    return {"ok": True, **summary}


def _deleted(event: dict[str, Any], svc: Services, action: str) -> dict[str, Any]:
    """The deleted-key events (list, restore, purge)."""
    bin_ = deleted_bin(svc)
    now = time.time()
    if action == "list-deleted":
        kind = _kind(event, required=False)
        ring = _text(event, "ring", required=False)
        if ring is not None and kind is None:
            raise InvalidInput("a ring is listed within a kind", field="kind")
        return {"ok": True, "deleted": [d.summary(now) for d in bin_.entries(kind, ring)]}
    if action == "purge-deleted" and event.get("all_due") is True:
        return _purged(bin_.purge(deletion_adapters(svc), principal=ADMIN_PRINCIPAL))
    kind = str(_kind(event, required=True))
    ring, oid = str(_text(event, "ring")), str(_text(event, "id"))
    if action == "purge-deleted":
        return _purged(bin_.purge(deletion_adapters(svc), principal=ADMIN_PRINCIPAL,
                                  kind=kind, ring=ring, oid=oid))
    restored = bin_.restore(kind, ring, oid, deletion_adapters(svc)[kind],
                            principal=ADMIN_PRINCIPAL)
    return {"ok": True, "restored": restored.summary(now)}


def _rotation(event: dict[str, Any], svc: Services, action: str) -> dict[str, Any]:
    """The scheduled-rotation events (set, get, list) over the domains whose keys rotate."""
    from chalicelib import maintenance
    from chalicelib.core import rotation

    domains = maintenance.rotation_domains(svc)
    kind = _kind(event, required=action != "list-rotations")
    if kind is not None and kind not in domains:
        raise InvalidState(f"rotation does not apply to {kind} keys: scheduled rotation "
                           f"covers {' and '.join(sorted(domains))} keys only",
                           reason="rotation_not_applicable")
    if action == "list-rotations":
        return {"ok": True, "rotations": [_rotation_view(e)
                                          for e in rotation.Schedule(svc.store).entries()
                                          if kind is None or e.kind == kind]}
    ring, target = str(_text(event, "ring")), str(_text(event, "id"))
    domain = domains[str(kind)]
    if action == "get-rotation":
        entry = domain.rotation(ring, target)
    else:
        period = rotation.parse_period(event.get("period_seconds"), "period_seconds")
        entry = domain.set_rotation(ring, target, period, principal=ADMIN_PRINCIPAL)
    view = _rotation_view(entry) if entry is not None else {
        "kind": kind, "ring": ring, "id": target, "period_seconds": 0, "next_due": None,
        "last_rotated": None}
    return {"ok": True, "rotation": view}


def _rotation_view(entry: Any) -> dict[str, Any]:
    from chalicelib.core.clock import iso_millis

    view = dict(entry.view())
    for field in ("next_due", "last_rotated"):
        if view[field] is not None:
            view[field] = iso_millis(view[field])
    return view


def handle(event: Any, services: Services | None = None) -> dict[str, Any]:
    """Run one admin event; never raises for bad input (the error is in the result)."""
    try:
        if not isinstance(event, dict):
            raise InvalidInput("the event must be a JSON object")
        svc = services or get_services()
        action = event.get("action")
        rid = str(event.get("request_id") or uuid.uuid4().hex)
        if action == "create-token":
            scopes = event.get("scopes")
            if not isinstance(scopes, list):
                raise InvalidInput("scopes must be a list", field="scopes")
            ttl = event.get("ttl_seconds", 30 * 24 * 3600)
            raw, record = svc.tokens.create(event.get("principal", ""),
                                            [Scope.from_dict(s) for s in scopes], ttl)
            svc.audit.record(None, "token.create", f"token/{record['token_id']}",
                             principal=ADMIN_PRINCIPAL, request_id=rid)
            return {"ok": True, "token": raw, "record": record}
        if action == "list-tokens":
            return {"ok": True, "tokens": svc.tokens.list()}
        if action == "revoke-token":
            record = svc.tokens.revoke(event.get("token_id", ""))
            svc.audit.record(None, "token.revoke", f"token/{record['token_id']}",
                             principal=ADMIN_PRINCIPAL, request_id=rid)
            return {"ok": True, "record": record}
        if action == "health":
            checks = svc.health()
            return {"ok": all(v == "ok" for v in checks.values()), "checks": checks}
        if action in ("create-environment", "list-environments", "delete-environment"):
            return _environments(event, svc, action)
        if action == "maintenance":
            from chalicelib import maintenance

            return maintenance.run(svc, only=_text(event, "only", required=False))
        if action == "key-usage":
            return _key_usage(event, svc, rid)
        if action == "delete-key":
            return _delete_key(event, svc, rid)
        if action in ("rewrap", "rewrap-check", "destroy-kek"):
            return _kek(event, svc, action)
        if action in ("list-deleted", "restore-deleted", "purge-deleted"):
            return _deleted(event, svc, action)
        if action in ("set-rotation", "get-rotation", "list-rotations"):
            return _rotation(event, svc, action)
        raise InvalidInput("action must be create-token, list-tokens, revoke-token, health, "
                           "create-environment, list-environments, delete-environment, "
                           "maintenance, key-usage, delete-key, rewrap, rewrap-check, "
                           "destroy-kek, list-deleted, restore-deleted, purge-deleted, "
                           "set-rotation, get-rotation or list-rotations",
                           field="action")
    except KeyfrontError as exc:
        return {"ok": False, "error": exc.code, "message": exc.message}


class AdminEventFailed(Exception):
    """Raised by the Lambda entry point for a result with `ok: false`: the invocation then
    fails visibly (`FunctionError: Unhandled`, the result as `errorMessage`) instead of
    returning a 200 that a script would have to inspect."""


def invoke(event: Any, services: Services | None = None, context: Any = None) -> dict[str, Any]:
    """The admin Lambda function: `handle`, raising AdminEventFailed when it did not succeed
    (a refused event, or a health check that found a component down). Its log lines carry
    the invocation's request id (`context` is Lambda's)."""
    from chalicelib import logs

    logs.invocation(context)
    result = handle(event, services)
    if not result.get("ok"):
        raise AdminEventFailed(json.dumps(result, sort_keys=True))
    return result
