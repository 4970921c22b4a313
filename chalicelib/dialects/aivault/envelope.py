"""AI-VAULT's envelope: {"status": "<8 digits>", "msg", "data"}, HTTP 200 for business
outcomes, 401 for the gateway's login failure; the core's neutral reasons map to the vendor's
codes here."""

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
    KeyfrontError,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
)

OK = "00000000"
LOGIN = "00000003"
PARAMETER_ERROR = "00002000"
RECORD_NOT_FOUND = "00003001"
UNKNOWN = "13000000"
INTERNAL = "31000001"
PERMISSION = "31000002"
HEADER_ERROR = "31000021"
BUSY = "31000022"

# neutral reason -> (status, msg)
REASONS: dict[str, tuple[str, str]] = {
    "key_cap_reached": ("31000003", "the number of master keys reached the upper limit"),
    "key_already_bound": ("31000004", "the master key is already bound to a PSK"),
    "key_bound": ("31000005", "the master key is bound to a PSK and cannot be deleted"),
    # keyfront's delete guard: the vendor's code for a key that cannot be deleted now
    "key_in_use": ("31000005", "the key was used recently and cannot be deleted"),
    "key_name_taken": ("31000008", "the master key name already exists"),
    "secret_name_taken": ("31000009", "the PSK name already exists"),
    "secret_cap_reached": ("31000010", "the number of PSKs reached the upper limit"),
    "key_not_found": ("31000011", "the master key does not exist"),
    "secret_not_found": (RECORD_NOT_FOUND, "the PSK does not exist"),
    "header_error": (HEADER_ERROR, "header error: DomainID must be an integer from 1 to 500"),
    "busy": (BUSY, "system busy, try again later"),
    "rate_limited": (BUSY, "system busy, try again later"),
}


def body(status: str, msg: str, data: Any = None) -> dict[str, Any]:
    """The vendor's envelope."""
    return {"status": status, "msg": msg, "data": data}


def ok(data: Any = None) -> Response:
    """A success: HTTP 200, status 00000000."""
    return json_response(200, body(OK, "ok", data))


def render(exc: KeyfrontError, request: object, rid: str) -> Response:
    """Map a KeyfrontError to the vendor's status code (never internals)."""
    if isinstance(exc, BindingError | InternalError) or exc.status >= 500 \
            and not isinstance(exc, Unavailable):
        # a stored record or blob that is not what its place says: logged and audited,
        # never described (the request id, for the logs, is in a header: domain ids are
        # small numbers, which a hex id would seem to contain)
        return json_response(500, body(INTERNAL, "internal error"), {"X-Request-Id": rid})
    if isinstance(exc, Unavailable):
        return json_response(503, body(UNKNOWN, "service unavailable"))
    if isinstance(exc, Unauthenticated):
        return json_response(401, body(LOGIN, "login"))
    if isinstance(exc, Forbidden):
        return json_response(200, body(PERMISSION, "permission error"))
    known = REASONS.get(exc.reason)
    if known is not None:
        return json_response(200, body(*known))
    if isinstance(exc, TooManyRequests):
        return json_response(200, body(*REASONS["rate_limited"]))
    if isinstance(exc, InvalidInput):
        return json_response(200, body(PARAMETER_ERROR, f"parameter error: {exc.message}"))
    if isinstance(exc, IntegrityError):
        return json_response(200, body(PARAMETER_ERROR, "parameter error"))
    if isinstance(exc, NotFound):
        return json_response(200, body(RECORD_NOT_FOUND, "record not found"))
    if isinstance(exc, Conflict):
        return json_response(200, body(BUSY, "system busy, try again later"))
    return json_response(200, body(UNKNOWN, exc.message))
