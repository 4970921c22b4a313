"""Auth0's error envelope: {"statusCode", "error", "message", "errorCode"}."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from chalice import Response

from chalicelib.dialects.http import InternalError, json_response
from chalicelib.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidInput,
    KeyfrontError,
    NotFound,
    Unauthenticated,
    Unavailable,
)


class BodyInvalid(InvalidInput):
    """The request body failed validation."""

    code = "invalid_body"


class QueryInvalid(InvalidInput):
    """The query string failed validation."""

    code = "invalid_query_string"


def scope_message(needed: tuple[str, ...]) -> str:
    """Auth0's 403 text; rotate needs two scopes at once, hence "all of" there."""
    return f"Insufficient scope; expected {'any' if len(needed) <= 1 else 'all'} of: " \
        + ",".join(needed)


def body(status: int, message: str, error_code: str | None) -> dict[str, Any]:
    """The Auth0 error body."""
    out: dict[str, Any] = {"statusCode": status, "error": HTTPStatus(status).phrase,
                           "message": message}
    if error_code:
        out["errorCode"] = error_code
    return out


def render(exc: KeyfrontError, request: object, rid: str) -> Response:
    """Map a KeyfrontError to Auth0's status and body (never internals)."""
    if isinstance(exc, IntegrityError | InternalError):
        # a stored blob that fails its binding is tampering or a bug, not the client's fault
        err = exc if isinstance(exc, InternalError) else InternalError(rid)
        return json_response(500, body(500, err.message, "internal_error"),
                             {"X-Request-Id": rid})
    if isinstance(exc, Unavailable):
        return json_response(503, body(503, "The service is temporarily unavailable.",
                                       "service_unavailable"), {"X-Request-Id": rid})
    if isinstance(exc, Unauthenticated):
        return json_response(401, body(401, exc.message, None),
                             {"WWW-Authenticate": 'Bearer realm="keyfront"'})
    if isinstance(exc, Forbidden):
        message = scope_message(exc.needed) if exc.needed else exc.message
        return json_response(403, body(403, message, "insufficient_scope"))
    if isinstance(exc, InvalidInput) and type(exc) is InvalidInput:
        return json_response(400, body(400, exc.message, "invalid_body"))
    status = exc.status if 400 <= exc.status < 500 else 500
    if status == 500:
        return render(InternalError(rid), request, rid)
    code = exc.code
    if type(exc) is NotFound:
        code = "inexistent_resource"
    elif type(exc) in (Conflict,) or code in ("condition_failed", "transaction_cancelled"):
        code = "conflict"
    return json_response(status, body(status, exc.message, code))
