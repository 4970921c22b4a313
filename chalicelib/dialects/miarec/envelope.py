"""MiaRec's error envelope: {"error", "description"[, "details"]} and its statuses.

Validation errors are 400 {"error": "InvalidRecord", "description": "Record Validation
errors", "details": {field: message}} (the vendor prints `details` as invalid JSON; an object
is what a client can read). The core's neutral reasons map to MiaRec's words here.
"""

from __future__ import annotations

from typing import Any

from chalice import Response

from chalicelib.dialects.http import InternalError, json_response
from chalicelib.errors import (
    BindingError,
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidInput,
    InvalidState,
    KeyfrontError,
    LimitExceeded,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
)

REALM = 'Basic realm="keyfront"'
INVALID_RECORD = ("InvalidRecord", "Record Validation errors")

# neutral reason -> (status, error, description)
REASONS: dict[str, tuple[int, str, str]] = {
    "already_granted": (409, "InvalidState", "Such user is authorized already"),
    "grant_not_found": (404, "NotFound", "Such user is not authorized"),
    "key_not_found": (404, "NotFound", "Record not found"),
    "no_private_key": (400, "InvalidState",
                       "The encrypt key has no private key: it can only encrypt"),
    "not_granted": (403, "AccessDenied", "Access is denied"),
    "cap_reached": (400, "InvalidState", "Too many encrypt keys for this tenant"),
    "busy": (409, "Conflict", "The encrypt keys are being changed concurrently; retry"),
    "rate_limited": (429, "TooManyRequests", "Too many key generations; try again later"),
}
# neutral reasons of the core whose field the vendor names differently
FIELDS = {"decrypt_failed": "ciphertext", "hash_not_supported": "hash"}


def body(error: str, description: str, details: dict[str, str] | None = None) \
        -> dict[str, Any]:
    """The MiaRec error body."""
    out: dict[str, Any] = {"error": error, "description": description}
    if details is not None:
        out["details"] = details
    return out


def invalid(details: dict[str, str]) -> Response:
    """400 InvalidRecord with per-field messages."""
    return json_response(400, body(*INVALID_RECORD, details))


def render(exc: KeyfrontError, request: object, rid: str) -> Response:
    """Map a KeyfrontError to MiaRec's status and body (never internals)."""
    if isinstance(exc, BindingError | InternalError) or exc.status >= 500 \
            and not isinstance(exc, Unavailable):
        # a stored blob or record that is not what its place says: logged and audited,
        # never described to the client
        return json_response(500, body("InternalError", f"Internal error (request id {rid})"),
                             {"X-Request-Id": rid})
    if isinstance(exc, Unavailable):
        return json_response(503, body("ServiceUnavailable",
                                       "The service is temporarily unavailable"))
    if isinstance(exc, Unauthenticated):
        return json_response(401, body("Unauthorized", "Authentication is required"),
                             {"WWW-Authenticate": REALM})
    known = REASONS.get(exc.reason)
    if isinstance(exc, Forbidden):
        return json_response(403, body("AccessDenied", "Access is denied"))
    if isinstance(exc, TooManyRequests):
        status, error, text = REASONS["rate_limited"]
        return json_response(status, body(error, text),
                             {"Retry-After": str(exc.params.get("retry_after", 1))})
    if isinstance(exc, InvalidInput):
        details = dict(exc.fields) or {FIELDS.get(exc.reason, exc.field or "body"): exc.message}
        return invalid({FIELDS.get(exc.reason, k): v for k, v in details.items()})
    if isinstance(exc, IntegrityError):
        return invalid({FIELDS.get(exc.reason, "body"): exc.message})
    if known is not None:
        status, error, text = known
        return json_response(status, body(error, text))
    if isinstance(exc, NotFound):
        return json_response(404, body("NotFound", "Record not found"))
    if isinstance(exc, Conflict):
        return json_response(409, body("Conflict", exc.message))
    if isinstance(exc, InvalidState | LimitExceeded):
        return json_response(400, body("InvalidState", exc.message))
    return json_response(400, body("BadRequest", exc.message))
