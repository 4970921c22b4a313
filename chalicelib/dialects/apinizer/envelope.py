"""Apinizer's envelopes, both generations of the vendor's docs served as one superset.

Success: {"status": "SUCCESS", "success": true, "resultList": [...], "resultCount": n} and,
for writes, "deploymentResult". Failure: {"status": "FAILURE", "resultMessage": m, "error":
code, "error_description": m}. Not found and no permission are 400 (the vendor uses no
403/404 here); 401 has the vendor's three texts. The token endpoint answers OAuth errors
({"error", "error_description"}, the same superset). The core's neutral reasons map to the
vendor's words here.
"""

from __future__ import annotations

from typing import Any

from chalice import Response

from chalicelib.dialects.http import InternalError, json_response
from chalicelib.errors import (
    BindingError,
    Conflict,
    Forbidden,
    InvalidInput,
    KeyfrontError,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
)

EMPTY_KEY = "Empty Key! Client must be authenticated to access this resource."
NOT_VALID = "Token is not valid!"
EXPIRED = "Token was expired!"
NO_PERMISSION = "You do not have the permission this operation needs in the project!"
ALGORITHM_REQUIRED = "algorithm is required for SECRET_KEY! Supported values: AES, DES, " \
    "DESede, RSA"
BAD_REQUEST = "bad_request"


def failure(status: int, error: str, message: str,
            headers: dict[str, str] | None = None) -> Response:
    """A failure in both generations' fields."""
    return json_response(status, {"status": "FAILURE", "resultMessage": message,
                                  "error": error, "error_description": message}, headers)


def success(results: list[Any], **extra: Any) -> Response:
    """A success in both generations' fields (`extra`: deploymentResult and the like)."""
    return json_response(200, {"status": "SUCCESS", "success": True, "resultList": results,
                               "resultCount": len(results), **extra})


def _name(exc: KeyfrontError) -> str:
    return str(exc.params.get("name", ""))


def message(exc: KeyfrontError) -> str:
    """The vendor's text for an expected error."""
    reason = exc.reason
    if reason == "key_not_found":
        return f"Key (name: {_name(exc)}) is not found! Try create operation."
    if reason == "key_exists":
        return f"Key (name: {_name(exc)}) is already exist! Try update operation if want " \
            "to change its value."
    if reason == "environment_not_found":
        return f"Environment (name: {_name(exc)}) is not found!"
    if reason == "algorithm_required":
        return ALGORITHM_REQUIRED
    if reason == "cap_reached":
        return f"The project holds the most keys it may ({exc.params.get('limit')})!"
    if reason == "busy":
        return "The key is being changed concurrently! Try again."
    if isinstance(exc, InvalidInput) and exc.field and exc.field.startswith("content:"):
        env = exc.field.removeprefix("content:")
        return f"cryptoKeyInfoEnvironmentList (environmentName: {env}).content: {exc.message}"
    if isinstance(exc, InvalidInput) and exc.field and exc.field != "body" \
            and not exc.message.startswith(exc.field):
        return f"{exc.field}: {exc.message}"
    return exc.message


def render(exc: KeyfrontError, request: object, rid: str) -> Response:
    """Map a KeyfrontError to the vendor's status and envelope (never internals)."""
    if isinstance(exc, BindingError | InternalError) or exc.status >= 500 \
            and not isinstance(exc, Unavailable):
        return failure(500, "server_error", f"Internal error (request id {rid})",
                       {"X-Request-Id": rid})
    if isinstance(exc, Unavailable):
        return failure(503, "temporarily_unavailable", "The service is temporarily unavailable")
    if isinstance(exc, Unauthenticated):
        text = {"no_credentials": EMPTY_KEY, "token_expired": EXPIRED}.get(exc.reason,
                                                                          NOT_VALID)
        return failure(401, "unauthorized", text)
    if isinstance(exc, Forbidden):
        return failure(400, BAD_REQUEST, NO_PERMISSION)
    if isinstance(exc, TooManyRequests):
        # keyfront's own limit (the vendor documents none): OAuth's and HTTP's word for it
        return failure(429, "too_many_requests", "Too many private keys opened; try again "
                       "later", {"Retry-After": str(exc.params.get("retry_after", 1))})
    if isinstance(exc, NotFound | Conflict | InvalidInput) or exc.status < 500:
        return failure(400, BAD_REQUEST, message(exc))
    return failure(400, BAD_REQUEST, exc.message)


def oauth_error(status: int, error: str, description: str) -> Response:
    """An OAuth 2.0 token-endpoint error (RFC 6749 5.2), with the failure fields too."""
    return json_response(status, {"error": error, "error_description": description,
                                  "status": "FAILURE", "resultMessage": description},
                         {"Pragma": "no-cache"})


def render_oauth(exc: KeyfrontError, request: object, rid: str) -> Response:
    """Map a KeyfrontError of the token endpoint to OAuth's errors."""
    if exc.status >= 500:
        return render(exc, request, rid)
    if isinstance(exc, Unauthenticated):
        return oauth_error(401, "unauthorized_client",
                           EXPIRED if exc.reason == "token_expired" else NOT_VALID)
    if exc.reason == "unsupported_grant_type":
        return oauth_error(400, "unsupported_grant_type", exc.message)
    if exc.reason == "scope_not_held":
        return oauth_error(400, "invalid_scope", exc.message)
    return oauth_error(400, "invalid_request", exc.message)
