"""Auth0 Management API v2 routes (prefix /api/v2) and the public JWKS documents.

  POST   /api/v2/connections                         create:connections         201
  GET    /api/v2/connections                         read:connections           200
  GET    /api/v2/connections/{id}                    read:connections           200
  DELETE /api/v2/connections/{id}                    delete:connections         202
  GET    /api/v2/connections/{id}/keys               read:connections_keys      200
  POST   /api/v2/connections/{id}/keys               create:connections_keys    201 | 409
  POST   /api/v2/connections/{id}/keys/rotate        create+update:connections_keys 201
  GET    /api/v2/keys/signing                        read:signing_keys          200
  GET    /api/v2/keys/signing/{kid}                  read:signing_keys          200
  POST   /api/v2/keys/signing/rotate                 create+update:signing_keys 201
  PUT    /api/v2/keys/signing/{kid}/revoke           update:signing_keys        200
  GET    /.well-known/jwks.json                      public (default tenant)
  GET    /tenants/{tenant}/.well-known/jwks.json     public
  GET    /connections/{id}/.well-known/jwks.json     public (default tenant)
  GET    /tenants/{tenant}/connections/{id}/.well-known/jwks.json   public
"""

from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib.core.auth0 import Auth0, default_tenant
from chalicelib.core.services import get_services
from chalicelib.core.signing_keys import SigningKey
from chalicelib.core.tokens import Caller
from chalicelib.dialects.auth0.envelope import render
from chalicelib.dialects.auth0.models import (
    ConnectionCreate,
    ConnectionQuery,
    EmptyBody,
    FieldsQuery,
    KeysBody,
    parse_body,
    parse_query,
    payload_problem,
)
from chalicelib.dialects.http import (
    StrictJsonError,
    guarded,
    header,
    json_object,
    json_response,
    request_id,
)
from chalicelib.errors import Unauthenticated

bp = Blueprint(__name__)
# Routes with a body accept any Content-Type (`curl -d` sends form-urlencoded): the body is
# parsed as JSON regardless, so bad bodies get Auth0's 400, never the framework's 415.
ANY_CONTENT_TYPE = ["*/*"]
def _auth0() -> Auth0:
    """The Auth0 domain over the process's services."""
    return get_services().domain(Auth0)


def _caller(action: str) -> tuple[Caller, str]:
    """Authenticate the bearer token; (caller, tenant). A token that cannot work on one tenant
    is refused (403), and that is audited as `action` denied."""
    request = bp.current_request
    auth = header(request, "Authorization")
    if not auth:
        raise Unauthenticated("Missing authentication")
    scheme, _, token = auth.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Bad HTTP authentication header format")
    try:
        principal = get_services().tokens.authenticate(token.strip())
    except Unauthenticated:
        raise Unauthenticated("Invalid token") from None
    caller = Caller(principal, request_id(request))
    return caller, _auth0().caller_tenant(caller, action)


def _body() -> dict[str, Any]:
    """The strict JSON body ({} when empty), with Auth0's wording when it is not strict."""
    try:
        return json_object(bp.current_request)
    except StrictJsonError as exc:
        raise payload_problem(exc.where, exc.what) from None


def _query() -> dict[str, Any]:
    params = bp.current_request.query_params
    if not params:
        return {}
    out: dict[str, Any] = {k: params[k] for k in params}
    if "strategy" in out:
        out["strategy"] = params.getlist("strategy")
    return out


def _select(obj: dict[str, Any], fields: str | None, include: bool | None) -> dict[str, Any]:
    """Auth0's fields/include_fields response filter."""
    if not fields:
        return obj
    names = {f.strip() for f in fields.split(",") if f.strip()}
    keep = include is not False
    return {k: v for k, v in obj.items() if (k in names) == keep}


def _connection_key(key: SigningKey) -> dict[str, Any]:
    """A connection key as Auth0 returns it (`pkcs`, algorithm, key_use, subject_dn)."""
    out: dict[str, Any] = {
        "kid": key.kid, "cert": key.cert, "pkcs": key.pkcs7, "fingerprint": key.fingerprint,
        "thumbprint": key.thumbprint, "current": key.current, "next": key.next,
        "previous": key.previous, "algorithm": key.algorithm, "key_use": "signing",
        "subject_dn": key.subject_dn,
    }
    if key.current_since:
        out["current_since"] = key.current_since
    return out


def _signing_key(key: SigningKey) -> dict[str, Any]:
    """A tenant signing key as Auth0 returns it (`pkcs7`, current_until, revoked...)."""
    out: dict[str, Any] = {
        "kid": key.kid, "cert": key.cert, "pkcs7": key.pkcs7, "fingerprint": key.fingerprint,
        "thumbprint": key.thumbprint, "current": key.current, "next": key.next,
        "previous": key.previous, "revoked": key.revoked,
    }
    for name in ("current_since", "current_until", "revoked_at"):
        value = getattr(key, name)
        if value:
            out[name] = value
    return out


# ---- connections -----------------------------------------------------------------------------

@bp.route("/api/v2/connections", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def create_connection() -> Response:
    """Create a connection (name, strategy, options, ...)."""
    caller, tenant = _caller("auth0.connection.create")
    body = parse_body(ConnectionCreate, _body())
    view = _auth0().create_connection(caller, tenant, body.model_dump(exclude_none=True))
    return json_response(201, view)


@bp.route("/api/v2/connections", methods=["GET"])
@guarded(bp, render)
def list_connections() -> Response:
    """List connections; per_page/page/include_totals/strategy/name/fields as Auth0."""
    caller, tenant = _caller("auth0.connection.list")
    q = parse_query(ConnectionQuery, _query())
    items = _auth0().list_connections(caller, tenant, strategies=q.strategy, name=q.name)
    items = [_select(c, q.fields, q.include_fields) for c in items]
    if q.page is None and q.per_page is None and not q.include_totals:
        return json_response(200, items)
    per_page = q.per_page if q.per_page is not None else 50
    start = (q.page or 0) * per_page
    page = items[start:start + per_page]
    if q.include_totals:
        return json_response(200, {"total": len(items), "start": start, "limit": per_page,
                                   "connections": page})
    return json_response(200, page)


@bp.route("/api/v2/connections/{cid}", methods=["GET"])
@guarded(bp, render)
def get_connection(cid: str) -> Response:
    """One connection."""
    caller, tenant = _caller("auth0.connection.read")
    q = parse_query(FieldsQuery, _query())
    view = _auth0().get_connection(caller, tenant, cid)
    return json_response(200, _select(view, q.fields, q.include_fields))


@bp.route("/api/v2/connections/{cid}", methods=["DELETE"])
@guarded(bp, render)
def delete_connection(cid: str) -> Response:
    """Delete a connection and its keys: 202, empty body (Auth0: "being deleted")."""
    caller, tenant = _caller("auth0.connection.delete")
    _auth0().delete_connection(caller, tenant, cid)
    return Response(body="", status_code=202, headers={"Cache-Control": "no-store"})


# ---- connection keys -------------------------------------------------------------------------

@bp.route("/api/v2/connections/{cid}/keys", methods=["GET"])
@guarded(bp, render)
def get_connection_keys(cid: str) -> Response:
    """The connection's keys (okta/oidc only)."""
    caller, tenant = _caller("auth0.connection_key.list")
    keys = _auth0().connection_keys(caller, tenant, cid)
    return json_response(200, [_connection_key(k) for k in keys])


@bp.route("/api/v2/connections/{cid}/keys", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def create_connection_keys(cid: str) -> Response:
    """Provision the connection's current and next keys: 201, an array."""
    caller, tenant = _caller("auth0.connection_key.create")
    body = parse_body(KeysBody, _body())
    keys = _auth0().create_connection_keys(caller, tenant, cid, body.signing_alg)
    return json_response(201, [_connection_key(k) for k in keys])


@bp.route("/api/v2/connections/{cid}/keys/rotate", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def rotate_connection_keys(cid: str) -> Response:
    """Rotate the connection's keys: 201, the new next key."""
    caller, tenant = _caller("auth0.connection_key.rotate")
    body = parse_body(KeysBody, _body())
    key = _auth0().rotate_connection_keys(caller, tenant, cid, body.signing_alg)
    return json_response(201, _connection_key(key))


# ---- tenant signing keys ---------------------------------------------------------------------

@bp.route("/api/v2/keys/signing", methods=["GET"])
@guarded(bp, render)
def list_signing_keys() -> Response:
    """Every tenant signing key, revoked ones included."""
    caller, tenant = _caller("auth0.signing_key.list")
    return json_response(200, [_signing_key(k) for k in _auth0().signing_keys(caller, tenant)])


@bp.route("/api/v2/keys/signing/rotate", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def rotate_signing_key() -> Response:
    """Rotate the tenant signing key: 201 {cert, kid} of the new next key."""
    caller, tenant = _caller("auth0.signing_key.rotate")
    parse_body(EmptyBody, _body())
    key = _auth0().rotate_signing_key(caller, tenant)
    return json_response(201, {"cert": key.cert, "kid": key.kid})


@bp.route("/api/v2/keys/signing/{kid}", methods=["GET"])
@guarded(bp, render)
def get_signing_key(kid: str) -> Response:
    """One tenant signing key."""
    caller, tenant = _caller("auth0.signing_key.read")
    return json_response(200, _signing_key(_auth0().signing_key(caller, tenant, kid)))


@bp.route("/api/v2/keys/signing/{kid}/revoke", methods=["PUT"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def revoke_signing_key(kid: str) -> Response:
    """Revoke a previous signing key: 200 {cert, kid}."""
    caller, tenant = _caller("auth0.signing_key.revoke")
    parse_body(EmptyBody, _body())
    key = _auth0().revoke_signing_key(caller, tenant, kid)
    return json_response(200, {"cert": key.cert, "kid": key.kid})


# ---- public JWKS -----------------------------------------------------------------------------

@bp.route("/.well-known/jwks.json", methods=["GET"])
@guarded(bp, render)
def default_tenant_jwks() -> Response:
    """The default tenant's JWKS: current, next and unrevoked previous keys."""
    return json_response(200, _auth0().tenant_jwks(default_tenant()))


@bp.route("/tenants/{tenant}/.well-known/jwks.json", methods=["GET"])
@guarded(bp, render)
def tenant_jwks(tenant: str) -> Response:
    """A tenant's JWKS (404 for a tenant without keys)."""
    return json_response(200, _auth0().tenant_jwks(tenant))


@bp.route("/connections/{cid}/.well-known/jwks.json", methods=["GET"])
@guarded(bp, render)
def default_connection_jwks(cid: str) -> Response:
    """A default-tenant connection's JWKS."""
    return json_response(200, _auth0().connection_jwks(default_tenant(), cid))


@bp.route("/tenants/{tenant}/connections/{cid}/.well-known/jwks.json", methods=["GET"])
@guarded(bp, render)
def connection_jwks(tenant: str, cid: str) -> Response:
    """A connection's JWKS: current, next and previous connection keys."""
    return json_response(200, _auth0().connection_jwks(tenant, cid))
