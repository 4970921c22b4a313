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
    TooManyRequests,
    Unauthenticated,
    Unavailable,
)


class BodyInvalid(InvalidInput):
    """The request body failed validation."""

    code = "invalid_body"


class QueryInvalid(InvalidInput):
    """The query string failed validation."""

    code = "invalid_query_string"


# The core's neutral reasons in Auth0's words: (message, errorCode).
REASONS: dict[str, tuple[str, str]] = {
    "connection_not_found": ("Connection not found.", "inexistent_connection"),
    "name_taken": ("A connection with the same name already exists", "connection_conflict"),
    "keys_not_supported": ("Connection keys are only supported for the okta and oidc "
                           "strategies.", "invalid_strategy"),
    "ring_exists": ("Keys have already been created for this connection.",
                    "connection_keys_exist"),
    "key_not_found": ("Signing key not found.", "inexistent_signing_key"),
    "ring_not_found": ("Tenant not found.", "inexistent_tenant"),
    "key_not_revocable": ("Only a previously used signing key can be revoked.",
                          "key_not_revocable"),
    "key_revoked": ("The signing key has already been revoked.", "key_revoked"),
    "busy": ("The keys are being changed concurrently; retry.", "conflict"),
    "ambiguous_ring": ("The token is bound to more than one tenant.", "insufficient_scope"),
    "invalid_ring": ("The token's tenant is not a valid tenant id.", "insufficient_scope"),
    "rate_limited": ("Global rate limit exceeded: too many key generations; try again later.",
                     "too_many_requests"),
}


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
    words = REASONS.get(exc.reason)
    if isinstance(exc, Forbidden):
        message = scope_message(exc.needed) if exc.needed else \
            (words[0] if words else exc.message)
        return json_response(403, body(403, message, "insufficient_scope"))
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.params.get("retry_after", 1))}
        return json_response(429, body(429, REASONS["rate_limited"][0], "too_many_requests"),
                             headers)
    if isinstance(exc, InvalidInput) and type(exc) is InvalidInput:
        return json_response(400, body(400, exc.message, "invalid_body"))
    status = exc.status if 400 <= exc.status < 500 else 500
    if status == 500:
        return render(InternalError(rid), request, rid)
    if words:
        return json_response(status, body(status, words[0], words[1]))
    code = exc.code
    if isinstance(exc, NotFound):
        code = "inexistent_resource"
    elif isinstance(exc, Conflict):
        code = "conflict"
    return json_response(status, body(status, exc.message, code))
