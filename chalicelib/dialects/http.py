"""What every dialect shares: request ids, body parsing into pydantic models, error guard.

Dialects stay thin: they parse, authenticate, call the core and shape the vendor's envelope.
"""

from __future__ import annotations

import functools
import json
import logging
import traceback
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from chalice import Response
from chalice.app import Request
from pydantic import BaseModel, ValidationError

from chalicelib.core.access import Grant
from chalicelib.core.audit import was_audited
from chalicelib.core.services import get_services
from chalicelib.errors import InvalidInput, KeyfrontError
from chalicelib.formats.strict_json import json_problem

log = logging.getLogger("keyfront.http")
M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 1024 * 1024
# json.dumps(body, separators=(",", ":")) builds this encoder on every call; it holds no
# per-call state, so one instance serves every thread with the same output.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


# Chalice matches every request Content-Type against a route's list: with "*/*" it never
# answers its own 415, and each dialect answers a wrong type in its vendor's envelope
ANY_CONTENT_TYPE = ["*/*"]

def request_id(request: Request | None) -> str:
    """API Gateway's request id, or a fresh one (chalice local has none)."""
    ctx = getattr(request, "context", None) or {}
    rid = ctx.get("requestId") if isinstance(ctx, dict) else None
    if not rid:
        rid = uuid.uuid4().hex
        if isinstance(ctx, dict):
            ctx["requestId"] = rid
    return str(rid)


def header(request: Request, name: str) -> str | None:
    """A request header, case-insensitively."""
    headers = request.headers or {}
    value = headers.get(name)
    if value is None:
        lname = name.lower()
        for k, v in headers.items():
            if k.lower() == lname:
                return v
    return value


def json_object(request: Request, limit: int | None = None) -> dict[str, Any]:
    """The body as a strict JSON object ({} when empty); InvalidInput otherwise.

    Strict: no NaN/Infinity, no lone surrogates, nesting bounded (formats.strict_json), so
    nothing a dialect echoes back or stores can be unreadable JSON. `limit` (default
    MAX_BODY_BYTES) bounds its size.
    """
    raw = request.raw_body
    if not raw:
        return {}
    if len(raw) > (limit or MAX_BODY_BYTES):
        raise InvalidInput("request body too large", field="body")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a body of 100 000 "[" exhausts the parser's stack
        raise InvalidInput("request body is not valid JSON", field="body") from exc
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object", field="body")
    problem = json_problem(data)
    if problem is not None:
        raise StrictJsonError(*problem)
    return data


class StrictJsonError(InvalidInput):
    """Valid JSON that is not strict JSON (non-finite number, lone surrogate, too deep)."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{what}" + (f" (at {where})" if where else ""), field=where or "body")
        self.where, self.what = where, what


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate data into model; InvalidInput carries one message per offending field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields: dict[str, str] = {}
        for err in exc.errors(include_input=False, include_url=False):
            loc = ".".join(str(p) for p in err["loc"]) or "body"
            fields.setdefault(loc, err["msg"])
        first = next(iter(fields.items()))
        raise InvalidInput(f"{first[0]}: {first[1]}", fields=fields) from None


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response with the content type set."""
    h = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    h.update(headers or {})
    return Response(body=_COMPACT.encode(body), status_code=status, headers=h)


ErrorRenderer = Callable[[KeyfrontError, Request, str], Response]


GRANT_ATTR = "_keyfront_grant"


def remember_grant(request: Request, grant: Grant) -> Grant:
    """Keep the request's grant: a refusal raised after authorization (a bad body, a bad
    parameter) is then audited under the grant's action and object by `guarded`."""
    setattr(request, GRANT_ATTR, grant)
    return grant


def _audit_unrecorded(request: Request, exc: BaseException) -> None:
    grant = getattr(request, GRANT_ATTR, None)
    if grant is not None and not was_audited(exc):
        get_services().audit.refused(grant.caller, grant.action, grant.obj, exc)


def guarded(app_or_bp: Any, render: ErrorRenderer) -> Callable[[Callable[..., Response]],
                                                               Callable[..., Response]]:
    """Wrap a view: KeyfrontError -> render(...); anything else -> logged, a generic 500.

    Every refusal or failure after authorization that the core did not audit (the dialect's
    own validation) is audited here. The 500 body says only "internal error" and the request
    id; the log line is JSON with the exception type and traceback, never request bodies.
    """

    def deco(view: Callable[..., Response]) -> Callable[..., Response]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            request = app_or_bp.current_request
            rid = request_id(request)
            try:
                return view(*args, **kwargs)
            except KeyfrontError as exc:
                _audit_unrecorded(request, exc)
                return render(exc, request, rid)
            except Exception as exc:  # noqa: BLE001 - the last line of defence
                try:
                    _audit_unrecorded(request, exc)
                except Exception:  # noqa: BLE001 - the 500 is the answer, whatever else fails
                    log.exception("audit of an unexpected failure failed")
                log.error(json.dumps({
                    "level": "error", "request_id": rid, "path": request.path,
                    "method": request.method, "error": type(exc).__name__,
                    "trace": traceback.format_exc(limit=20),
                }))
                return render(InternalError(rid), request, rid)

        return wrapper

    return deco


class InternalError(KeyfrontError):
    """An unexpected failure: only the request id is disclosed."""

    status = 500
    code = "internal_error"

    def __init__(self, rid: str) -> None:
        super().__init__(f"internal error (request id {rid})")


__all__ = ["InternalError", "StrictJsonError", "guarded", "header", "json_object",
           "json_response", "parse", "remember_grant", "request_id"]
