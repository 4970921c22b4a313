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

A tenant is a signing ring (core.signing); the scopes each route needs are the core's table
(core.kinds). Order of answers: 401 (token), 403 (tenant/scope), 400 (query/body), then the
operation's own. Every route accepts any Content-Type: a body is read as JSON whatever the
header says, so a bad body gets Auth0's 400, and no route answers the framework's 415.
"""

from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib.core.access import KINDS, SIGNING, Grant
from chalicelib.core.rotating import RingKey
from chalicelib.core.services import Services, get_services
from chalicelib.core.signing import SigningRings
from chalicelib.core.tokens import Caller
from chalicelib.dialects.auth0.envelope import render
from chalicelib.dialects.auth0.models import (
    KEY_STRATEGIES,
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
    ANY_CONTENT_TYPE,
    StrictJsonError,
    guarded,
    header,
    json_object,
    json_response,
    remember_grant,
    request_id,
)
from chalicelib.errors import Unauthenticated
from chalicelib.formats.algorithms import DEFAULT_SIGNING_ALG

bp = Blueprint(__name__)


def signing_rings(services: Services) -> SigningRings:
    """This dialect's domain over the process's services."""
    return SigningRings(KINDS[SIGNING], services.store, services.hsm, services.audit,
                        services.rate, services.settings, KEY_STRATEGIES)


def _domain() -> SigningRings:
    return get_services().domain(signing_rings)


def _grant(verb: str, *parts: str) -> Grant:
    """Authenticate the bearer token and authorize `verb` on the token's tenant."""
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
    grant = _domain().authorize(Caller(principal, request_id(request)), verb, *parts)
    return remember_grant(request, grant)


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


def _connection(con: dict[str, Any]) -> dict[str, Any]:
    """A connection as Auth0 returns it."""
    out: dict[str, Any] = {
        "id": con["id"], "name": con["name"], "display_name": con.get("display_name"),
        "options": con.get("options") or {}, "strategy": con["strategy"],
        "realms": con.get("realms") or [con["name"]],
        "enabled_clients": con.get("enabled_clients") or [],
        "is_domain_connection": bool(con.get("is_domain_connection", False)),
        "show_as_button": con.get("show_as_button"), "metadata": con.get("metadata"),
    }
    return {k: v for k, v in out.items() if v is not None}


def _connection_key(key: RingKey) -> dict[str, Any]:
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


def _signing_key(key: RingKey) -> dict[str, Any]:
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
    grant = _grant("connection.create", "connections")
    body = parse_body(ConnectionCreate, _body())
    con = _domain().create_connection(grant, body.model_dump(exclude_none=True))
    return json_response(201, _connection(con))


@bp.route("/api/v2/connections", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def list_connections() -> Response:
    """List connections; per_page/page/include_totals/strategy/name/fields as Auth0."""
    grant = _grant("connection.list", "connections")
    q = parse_query(ConnectionQuery, _query())
    items = _domain().list_connections(grant, types=q.strategy, name=q.name)
    items = [_select(_connection(c), q.fields, q.include_fields) for c in items]
    if q.page is None and q.per_page is None and not q.include_totals:
        return json_response(200, items)
    per_page = q.per_page if q.per_page is not None else 50
    start = (q.page or 0) * per_page
    page = items[start:start + per_page]
    if q.include_totals:
        return json_response(200, {"total": len(items), "start": start, "limit": per_page,
                                   "connections": page})
    return json_response(200, page)


@bp.route("/api/v2/connections/{cid}", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def get_connection(cid: str) -> Response:
    """One connection."""
    grant = _grant("connection.read", "connections", cid)
    q = parse_query(FieldsQuery, _query())
    con = _domain().get_connection(grant, cid)
    return json_response(200, _select(_connection(con), q.fields, q.include_fields))


@bp.route("/api/v2/connections/{cid}", methods=["DELETE"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def delete_connection(cid: str) -> Response:
    """Delete a connection and its keys: 202, empty body (Auth0: "being deleted")."""
    grant = _grant("connection.delete", "connections", cid)
    _domain().delete_connection(grant, cid)
    return Response(body="", status_code=202, headers={"Cache-Control": "no-store"})


# ---- connection keys -------------------------------------------------------------------------

@bp.route("/api/v2/connections/{cid}/keys", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def get_connection_keys(cid: str) -> Response:
    """The connection's keys (okta/oidc only)."""
    grant = _grant("connection_key.list", "connections", cid, "keys")
    keys = _domain().connection_keys(grant, cid)
    return json_response(200, [_connection_key(k) for k in keys])


@bp.route("/api/v2/connections/{cid}/keys", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def create_connection_keys(cid: str) -> Response:
    """Provision the connection's current and next keys: 201, an array."""
    grant = _grant("connection_key.create", "connections", cid, "keys")
    body = parse_body(KeysBody, _body())
    keys = _domain().create_connection_keys(grant, cid, body.signing_alg or DEFAULT_SIGNING_ALG)
    return json_response(201, [_connection_key(k) for k in keys])


@bp.route("/api/v2/connections/{cid}/keys/rotate", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def rotate_connection_keys(cid: str) -> Response:
    """Rotate the connection's keys: 201, the new next key."""
    grant = _grant("connection_key.rotate", "connections", cid, "keys")
    body = parse_body(KeysBody, _body())
    key = _domain().rotate_connection_keys(grant, cid, body.signing_alg or DEFAULT_SIGNING_ALG)
    return json_response(201, _connection_key(key))


# ---- tenant signing keys ---------------------------------------------------------------------

@bp.route("/api/v2/keys/signing", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def list_signing_keys() -> Response:
    """Every tenant signing key, revoked ones included."""
    grant = _grant("signing_key.list", "signing")
    return json_response(200, [_signing_key(k) for k in _domain().signing_keys(grant)])


@bp.route("/api/v2/keys/signing/rotate", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def rotate_signing_key() -> Response:
    """Rotate the tenant signing key: 201 {cert, kid} of the new next key."""
    grant = _grant("signing_key.rotate", "signing")
    parse_body(EmptyBody, _body())
    key = _domain().rotate_signing_key(grant)
    return json_response(201, {"cert": key.cert, "kid": key.kid})


@bp.route("/api/v2/keys/signing/{kid}", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def get_signing_key(kid: str) -> Response:
    """One tenant signing key."""
    grant = _grant("signing_key.read", "signing", kid)
    return json_response(200, _signing_key(_domain().signing_key(grant, kid)))


@bp.route("/api/v2/keys/signing/{kid}/revoke", methods=["PUT"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def revoke_signing_key(kid: str) -> Response:
    """Revoke a previous signing key: 200 {cert, kid}."""
    grant = _grant("signing_key.revoke", "signing", kid)
    parse_body(EmptyBody, _body())
    key = _domain().revoke_signing_key(grant, kid)
    return json_response(200, {"cert": key.cert, "kid": key.kid})


# ---- public JWKS -----------------------------------------------------------------------------

@bp.route("/.well-known/jwks.json", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def default_tenant_jwks() -> Response:
    """The default tenant's JWKS: current, next and unrevoked previous keys."""
    domain = _domain()
    return json_response(200, domain.ring_jwks(domain.default_ring))


@bp.route("/tenants/{tenant}/.well-known/jwks.json", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def tenant_jwks(tenant: str) -> Response:
    """A tenant's JWKS (404 for a tenant without keys)."""
    return json_response(200, _domain().ring_jwks(tenant))


@bp.route("/connections/{cid}/.well-known/jwks.json", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def default_connection_jwks(cid: str) -> Response:
    """A default-tenant connection's JWKS."""
    domain = _domain()
    return json_response(200, domain.connection_jwks(domain.default_ring, cid))


@bp.route("/tenants/{tenant}/connections/{cid}/.well-known/jwks.json", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def connection_jwks(tenant: str, cid: str) -> Response:
    """A connection's JWKS: current, next and previous connection keys."""
    return json_response(200, _domain().connection_jwks(tenant, cid))
