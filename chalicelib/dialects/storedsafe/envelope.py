"""StoredSafe's response envelope: CALLINFO, DATA, HEADERS, PARAMS (+ ERRORCODES/ERRORS).

DATA echoes the request (route parameters and the endpoint's known body fields) minus secrets:
the token, plaintext and key material never come back. HEADERS echoes only the request headers
of an allow-list of harmless ones (the vendor's example shows Accept, Content-Length,
Content-Type, Host and User-Agent beside its token): a credential in any other header
(Cookie, X-Amz-Security-Token, ...) is never echoed, whatever its name.
CALLINFO.token is the token to use on the next call: the caller's own token once it has been
authenticated (tokens are not rotated), "" when the call failed before that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chalice import Response
from chalice.app import Request

from chalicelib.dialects.http import json_response
from chalicelib.errors import InvalidInput, KeyfrontError

HANDLER = "EncryptionHandler"
CONTENT_TYPE = "application/json; charset=UTF-8"
STATE_ATTR = "_storedsafe_call"  # where a view leaves its CallState for the error renderer

# Body fields never echoed in DATA, whatever the endpoint.
SECRET_FIELDS = frozenset({"token", "plaintext", "backup", "key", "keys", "password"})
# The only request headers echoed in HEADERS (lower-case names; echoed as sent).
ECHOED_HEADERS = frozenset({"accept", "accept-encoding", "accept-language", "content-length",
                            "content-type", "host", "user-agent"})

# Vendor-style numeric error codes, by KeyfrontError.code (ERRORCODES {code: text}).
ERROR_CODES: dict[str, str] = {
    "invalid_input": "4000",
    "integrity": "4001",
    "invalid_state": "4002",
    "limit_exceeded": "4003",
    "rate_limited": "4290",
    "unauthenticated": "4010",
    "forbidden": "4030",
    "not_found": "4040",
    "conflict": "4090",
    "condition_failed": "4090",
    "transaction_cancelled": "4090",
    "internal_error": "5000",
    "unavailable": "5030",
}


# The vendor's wording of the core's neutral reasons ({vault} is the call's vault id); any
# other reason is shown in the core's own neutral message.
MESSAGES: dict[str, str] = {
    "key_not_found": "key {name} not found in vault {vault}",
    "key_exists": "key {name} already exists in vault {vault}",
    "backup_foreign_ring": "the backup was taken from another vault: a backup restores only "
                           "into the vault it was taken from",
}


def message(exc: KeyfrontError, state: CallState) -> str:
    """The text of an error in this vendor's words."""
    template = MESSAGES.get(exc.reason)
    if template is None:
        return exc.message
    return template.format(**{**{k: str(v) for k, v in exc.params.items()},
                              "vault": state.params.get("vaultid", "")})


@dataclass
class CallState:
    """What the envelope needs to know about the call, success or failure."""

    params: dict[str, str]  # route parameters echoed in DATA (vaultid, name, ...)
    echo: tuple[str, ...] = ()  # body fields this endpoint echoes in DATA
    body: dict[str, Any] = field(default_factory=dict)
    token: str = ""  # set once the token authenticated


def _headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in (request.headers or {}).items()
            if k.lower() in ECHOED_HEADERS}


def _data(state: CallState) -> dict[str, Any]:
    data: dict[str, Any] = {k: state.body[k] for k in state.echo
                            if k in state.body and k not in SECRET_FIELDS}
    data.update(state.params)
    return data


def _envelope(request: Request, state: CallState, status: str,
              callinfo: dict[str, Any], errors: list[tuple[str, str]]) -> dict[str, Any]:
    codes: dict[str, str] = {}
    for code, text in errors:
        codes.setdefault(code, text)
    body: dict[str, Any] = {
        "CALLINFO": {"errorcodes": len(codes), "errors": len(errors), "general": [],
                     "handler": HANDLER, "status": status, "token": state.token, **callinfo},
        "DATA": _data(state),
        "HEADERS": _headers(request),
        "PARAMS": [],
    }
    if errors:
        body["ERRORCODES"] = codes
        body["ERRORS"] = [text for _, text in errors]
    return body


def success(request: Request, state: CallState, status: int, callinfo: dict[str, Any],
            general: list[str] | None = None, **top: Any) -> Response:
    """A SUCCESS envelope; `top` adds top-level members such as KEYS."""
    body = _envelope(request, state, "SUCCESS", callinfo, [])
    body["CALLINFO"]["general"] = list(general or [])
    body.update(top)
    return json_response(status, body, {"Content-Type": CONTENT_TYPE})


def failure(exc: KeyfrontError, request: Request, state: CallState | None) -> Response:
    """A FAIL envelope with the error's status; one ERRORS entry per offending field."""
    state = state or CallState(params={})
    code = ERROR_CODES.get(exc.code, "5000" if exc.status >= 500 else "4000")
    if isinstance(exc, InvalidInput) and len(exc.fields) > 1:
        errors = [(code, f"{name}: {text}") for name, text in exc.fields.items()]
    else:
        errors = [(code, message(exc, state))]
    return json_response(exc.status, _envelope(request, state, "FAIL", {}, errors),
                         {"Content-Type": CONTENT_TYPE})
