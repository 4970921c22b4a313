"""AI-VAULT routes (prefix /AIVAULT/v1): master keys and pre-shared keys per domain.

  POST   /createMK             manage   the master-key file itself, as an attachment
  GET    /queryMK              read     data [...] or null
  DELETE /deleteMK/{MKName}    manage   31000005 while a PSK is bound
  POST   /createPSK            manage   data {"PSK": password-wrapped}, once
  GET    /queryPSK             read     data [...] or null
  DELETE /deletePSK/{PSKName}  manage
  GET    /version, /version/, /health, /certStatus   public

A domain is a key ring of the core's master keys (core.master_keys); the permissions each
route needs are the core's table (core.kinds). Credentials: `Authorization: Bearer` (keyfront
plays the customer's gateway); the domain is the `DomainID` header. Order of answers: 401,
31000021 (DomainID), 31000002 (permission), 00002000 (parameters), then the operation's own.
Every route accepts any Content-Type: a body is read as JSON whatever the header says.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from chalice import Blueprint, Response

from chalicelib.core.access import KINDS, Grant, authorize
from chalicelib.core.kinds import MASTER_KEYS
from chalicelib.core.master_keys import MasterKey, MasterKeys, SharedSecret
from chalicelib.core.services import Services, get_services
from chalicelib.core.tokens import Caller
from chalicelib.dialects.aivault.envelope import ok, render
from chalicelib.dialects.aivault.models import (
    CreateMK,
    CreatePSK,
    QueryMK,
    QueryPSK,
    check_name,
    check_password,
    parse,
)
from chalicelib.dialects.http import (
    ANY_CONTENT_TYPE,
    guarded,
    header,
    json_object,
    json_response,
    remember_grant,
    request_id,
)
from chalicelib.errors import InvalidInput, Unauthenticated

bp = Blueprint(__name__)
PREFIX = "/AIVAULT/v1"
KIND = KINDS[MASTER_KEYS]
DOMAINS = (1, 500)
MAX_BODY_BYTES = 16 * 1024
FILE_VERSION = "V1"
# Huawei's UI splits this header on ";" and "=", and treats an answer without it as a failure
FILE_HEADERS = {"Content-Disposition": "attachment; filename=MK.json"}
SORT_BY = {"CreateTime": "created", "MKName": "name", "PSKName": "name"}


def master_keys(services: Services) -> MasterKeys:
    """This dialect's domain over the process's services."""
    s = services.settings
    return MasterKeys(KIND, services.store, services.hsm, services.audit, services.rate, s,
                      max_keys=s.aivault_max_mk, max_secrets=s.aivault_max_psk)


def _domain() -> MasterKeys:
    return get_services().domain(master_keys)


def _token() -> str:
    auth = header(bp.current_request, "Authorization") or ""
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("authentication is required")
    return value.strip()


def _domain_id() -> str:
    """The DomainID header as a ring id ("7"); InvalidInput (header_error) otherwise."""
    raw = header(bp.current_request, "DomainID")
    value = raw.strip() if isinstance(raw, str) else ""
    if not (value.isascii() and value.isdecimal() and len(value) <= 3
            and DOMAINS[0] <= int(value) <= DOMAINS[1]):
        raise InvalidInput("DomainID must be an integer from 1 to 500", field="DomainID",
                           reason="header_error")
    return str(int(value))


def _grant(verb: str, *parts: str) -> tuple[Grant, MasterKeys]:
    """Authenticate, read the domain, authorize `verb` there (refusals audited)."""
    services, domain = get_services(), _domain()
    principal = services.tokens.authenticate(_token())
    caller = Caller(principal, request_id(bp.current_request))
    action = domain.action(verb)
    try:
        ring = _domain_id()
    except InvalidInput as exc:
        services.audit.refused(caller, action, KIND.name, exc)
        raise
    grant = authorize(services.audit, caller, KIND, ring, action, domain.obj(ring, *parts))
    return remember_grant(bp.current_request, grant), domain


def _body() -> dict[str, Any]:
    return json_object(bp.current_request, MAX_BODY_BYTES)


def _query() -> dict[str, str]:
    params = bp.current_request.query_params or {}
    return {k: params[k] for k in params}


def _time(iso: str) -> str:
    """The core's "2026-12-02T11:03:34.123Z" as "2026-12-02 11:03:34" (UTC)."""
    return f"{iso[:10]} {iso[11:19]}"


def _listed(items: list[Any]) -> list[Any] | None:
    # Huawei's user manager tests `data is not None`: no objects is null, not []
    return items or None


def _mk(key: MasterKey) -> dict[str, Any]:
    return {"MkID": key.id, "MKName": key.name, "CreateType": "AIVAULT",
            "MKUsage": key.usage, "MKRemarks": key.remarks, "CreatedAt": _time(key.created_at)}


def _psk(secret: SharedSecret) -> dict[str, Any]:
    return {"PSKName": secret.name, "PSKBindMKName": secret.key,
            "PSKCreateTime": _time(secret.created_at), "PSKRemarks": secret.remarks}


# ---- master keys -----------------------------------------------------------------------------

@bp.route(PREFIX + "/createMK", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def create_mk() -> Response:
    """Create a master key: the file {"Version", "CipherMasterKey"} as an attachment."""
    grant, domain = _grant("key.create", "keys")
    b = parse(CreateMK, _body())
    check_password(b.Password, b.MKName)
    _, text = domain.create_key(grant, name=b.MKName, usage=b.MKUsage, remarks=b.MKRemarks,
                                password=b.Password)
    return json_response(200, {"Version": FILE_VERSION, "CipherMasterKey": text},
                         FILE_HEADERS)


@bp.route(PREFIX + "/queryMK", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def query_mk() -> Response:
    """The domain's master keys (MKName filters by substring), sorted."""
    grant, domain = _grant("key.list", "keys")
    q = parse(QueryMK, _query())
    keys = domain.keys(grant, by=SORT_BY[q.SortBy], descending=q.SortMode == "desc",
                       name_contains=q.MKName)
    return ok(_listed([_mk(k) for k in keys]))


@bp.route(PREFIX + "/deleteMK/{name}", methods=["DELETE"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def delete_mk(name: str) -> Response:
    """Delete a master key (31000005 while a PSK is bound to it)."""
    grant, domain = _grant("key.delete", "keys", name)
    domain.delete_key(grant, check_name(name, "MKName"))
    return ok()


# ---- pre-shared keys -------------------------------------------------------------------------

@bp.route(PREFIX + "/createPSK", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def create_psk() -> Response:
    """Create a PSK bound to a master key: data {"PSK": wrapped under the password}."""
    grant, domain = _grant("secret.create", "secrets")
    b = parse(CreatePSK, _body())
    check_password(b.Password, b.PSKName)
    _, text = domain.create_secret(grant, name=b.PSKName, key=b.MKName,
                                   remarks=b.PSKRemarks, password=b.Password)
    return ok({"PSK": text})


@bp.route(PREFIX + "/queryPSK", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def query_psk() -> Response:
    """The domain's PSKs (PSKName by substring, BindMKName exactly), sorted."""
    grant, domain = _grant("secret.list", "secrets")
    q = parse(QueryPSK, _query())
    found = domain.secrets(grant, by=SORT_BY[q.SortBy], descending=q.SortMode == "desc",
                           name_contains=q.PSKName, key=q.BindMKName or None)
    return ok(_listed([_psk(s) for s in found]))


@bp.route(PREFIX + "/deletePSK/{name}", methods=["DELETE"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def delete_psk(name: str) -> Response:
    """Delete a PSK (its master key is unbound)."""
    grant, domain = _grant("secret.delete", "secrets", name)
    domain.delete_secret(grant, check_name(name, "PSKName"))
    return ok()


# ---- service (public: what a gateway's probe calls) -----------------------------------------

def _version() -> str:
    try:
        return metadata.version("keyfront")
    except metadata.PackageNotFoundError:
        return "unknown"


# Chalice rejects a route ending in "/": the local server (like API Gateway) strips one
# trailing slash, so "/version/" reaches this route too.
@bp.route(PREFIX + "/version", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def version() -> Response:
    """keyfront's version."""
    return ok({"version": _version()})


@bp.route(PREFIX + "/health", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def health() -> Response:
    """"probe successfully" when the HSM and the store answer; 503 otherwise."""
    checks = get_services().health()
    if all(v == "ok" for v in checks.values()):
        return ok("probe successfully")
    return json_response(503, {"status": "13000000", "msg": "probe failed", "data": None})


@bp.route(PREFIX + "/certStatus", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def cert_status() -> Response:
    """keyfront holds no TLS certificate of its own (API Gateway, or plain HTTP locally,
    terminates the connection): an empty list, never invented dates."""
    return ok([])
