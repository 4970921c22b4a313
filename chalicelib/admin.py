"""The admin function: JSON events in, JSON out. Deployed as the `admin` Lambda function
(`aws lambda invoke`) and called locally by the `keyfront` console script.

Events:
  {"action": "create-token", "principal": "...", "scopes": [{"kind","ring","perms"}],
   "ttl_seconds": 2592000}                       -> {"ok": true, "token": "...", "record": {...}}
  {"action": "list-tokens"}                      -> {"ok": true, "tokens": [...]}
  {"action": "revoke-token", "token_id": "..."}  -> {"ok": true, "record": {...}}
  {"action": "health"}                           -> {"ok": bool, "checks": {...}}
Errors: {"ok": false, "error": code, "message": text}. Deployed, such a result fails the
invocation (see `invoke`), so `aws lambda invoke` reports a FunctionError.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from chalicelib.core.services import Services, get_services
from chalicelib.core.tokens import Scope
from chalicelib.errors import InvalidInput, KeyfrontError

ADMIN_PRINCIPAL = "admin-function"


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
        raise InvalidInput("action must be create-token, list-tokens, revoke-token or health",
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
