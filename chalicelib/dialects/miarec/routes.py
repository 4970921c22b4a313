"""MiaRec REST API v2 routes (prefix /api/v2): encryption keys per tenant, user grants.

  POST   /api/v2/encrypt_keys.json                                     manage   201
  GET    /api/v2/encrypt_keys.json                                     read     200 (paged)
  GET    /api/v2/encrypt_keys/<id>.json                                read     200
  PUT    /api/v2/encrypt_keys/<id>.json                                manage   200
  DELETE /api/v2/encrypt_keys/<id>.json                                manage   200
  POST   /api/v2/encrypt_keys/<id>/authorized_users.json               grant    201 | 409
  GET    /api/v2/encrypt_keys/<id>/authorized_users.json               read     200 (paged)
  DELETE /api/v2/encrypt_keys/<id>/authorized_users/<user_id>.json     grant    200
  POST   /api/v2/encrypt_keys/<id>/decrypt.json    (beyond the vendor)  read + grant
  POST   /api/v2/encrypt_keys/<id>/export.json     (beyond the vendor)  manage + grant

A tenant is a key ring of the core's tenant keys (core.tenant_keys); the permissions each
route needs are the core's table (core.kinds). Credentials: HTTP Basic, as MiaRec clients send
them (the password is a keyfront token; the user name must be the token's principal, the
MiaRec user id), or a Bearer token. The tenant is `tenant_id` (body on create, query
elsewhere), else the one tenant the token names. Order of answers: 401, 403, 404 (a path
segment without ".json"), 400 (body, query), then the operation's own. API Gateway captures
whole segments only, so "<id>.json" is one segment and the suffix is stripped here. Every
route accepts any Content-Type: a body is read as JSON whatever the header says.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlencode

from chalice import Blueprint, Response

from chalicelib.core.access import KINDS, TENANT_KEYS, Grant, authorize, ring_of
from chalicelib.core.services import Services, get_services
from chalicelib.core.tenant_keys import GRANTED, RING, TenantKey, TenantKeys
from chalicelib.core.tokens import ALL_RINGS, Caller, Principal
from chalicelib.dialects.http import (
    ANY_CONTENT_TYPE,
    guarded,
    header,
    json_object,
    json_response,
    remember_grant,
    request_id,
)
from chalicelib.dialects.miarec.envelope import render
from chalicelib.dialects.miarec.models import (
    CreateBody,
    DecryptBody,
    ExportBody,
    ListQuery,
    UpdateBody,
    UserBody,
    is_uuid,
    parse_body,
    parse_query,
)
from chalicelib.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from chalicelib.formats.ciphertext import b64decode_strict

bp = Blueprint(__name__)
PREFIX = "/api/v2/encrypt_keys"
KIND = KINDS[TENANT_KEYS]
SUFFIX = ".json"
PROTECTION = {"user": GRANTED, "app": RING}  # MiaRec protection_mode -> the core's use
MODES = {v: k for k, v in PROTECTION.items()}


def tenant_keys(services: Services) -> TenantKeys:
    """This dialect's domain over the process's services."""
    return TenantKeys(KIND, services.store, services.hsm, services.audit, services.rate,
                      services.settings)


def _domain() -> TenantKeys:
    return get_services().domain(tenant_keys)


def _credentials() -> tuple[str, str | None]:
    """(token, the user name a Basic header claims, or None for Bearer); 401 otherwise."""
    auth = header(bp.current_request, "Authorization")
    if not auth:
        raise Unauthenticated("authentication is required")
    scheme, _, value = auth.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value, None
    if scheme.lower() == "basic" and value:
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode("utf-8") \
                .partition(":")
        except (binascii.Error, ValueError):
            raise Unauthenticated("malformed Basic credentials") from None
        if sep and user and password:
            return password, user
    raise Unauthenticated("unsupported or malformed credentials")


def _principal() -> Principal:
    """The authenticated token's principal: with Basic, the user name must be it."""
    token, user = _credentials()
    principal = get_services().tokens.authenticate(token)
    if user is not None and user != principal.name:
        # the caller is who the token says, never who the request claims to be
        raise Unauthenticated("the user name is not the token's user")
    if not _canonical_uuid(principal.name):
        # grants name users by their canonical id: a token of anyone else could be granted
        # keys that no URL can ever revoke
        raise Forbidden("the token is not a MiaRec user's (its principal is not a user id)",
                        reason="not_a_user")
    return principal


def _canonical_uuid(value: object) -> bool:
    return isinstance(value, str) and is_uuid(value) and value == value.lower()


def _grant(verb: str, tenant: object, *parts: str,
           principal: Principal | None = None) -> tuple[Grant, TenantKeys]:
    """Authenticate (unless `principal` is given), find the tenant, authorize `verb` there
    (refusals audited)."""
    principal = principal or _principal()
    if tenant is not None and not is_uuid(tenant):
        raise InvalidInput("tenant_id: Should be UUID", fields={"tenant_id": "Should be UUID"})
    services, domain = get_services(), _domain()
    caller = Caller(principal, request_id(bp.current_request))
    action = domain.action(verb)
    asked = tenant.lower() if isinstance(tenant, str) else None
    try:
        ring = ring_of(principal, KIND.name, domain.default_ring, asked)
        if not _canonical_uuid(ring):
            if asked is None and any(s.kind == KIND.name and s.ring == ALL_RINGS
                                     for s in principal.scopes):
                raise InvalidInput("tenant_id: is required",
                                   fields={"tenant_id": "is required"})
            raise Forbidden("the token's tenant is not a tenant id", reason="invalid_ring")
    except (Forbidden, InvalidInput) as exc:
        services.audit.refused(caller, action, KIND.name, exc)
        raise
    grant = authorize(services.audit, caller, KIND, ring, action, domain.obj(ring, *parts))
    return remember_grant(bp.current_request, grant), domain


def _id(segment: str) -> str:
    """The id of a "<id>.json" segment; 404 for a segment without the suffix or one that
    holds no UUID (the same answer as for an id that exists nowhere)."""
    if not segment.endswith(SUFFIX):
        raise NotFound("not found", reason="key_not_found")
    return _uuid_id(segment[:-len(SUFFIX)])


def _uuid_id(value: str) -> str:
    """A key or user id from the path: a UUID (lower case), else 404."""
    if not is_uuid(value):
        raise NotFound("not found", reason="key_not_found")
    return value.lower()


def _query() -> dict[str, str]:
    params = bp.current_request.query_params or {}
    return {k: params[k] for k in params}


def _tenant_query() -> str | None:
    return _query().get("tenant_id")


def _body() -> dict[str, Any]:
    return json_object(bp.current_request)


def _time(iso: str) -> str:
    """The core's "...T..:..:..(.mmm)Z" as MiaRec shows times: "2014-06-10T13:45:51+0000"."""
    return iso[:19] + "+0000"


def _key(key: TenantKey) -> dict[str, Any]:
    """An encrypt key as this API shows it: never a private key."""
    return {
        "id": key.id, "name": key.name, "tenant_id": key.ring,
        "protection_mode": MODES[key.private_use], "is_active": key.active,
        "key_length": key.bits, "has_private_key": key.has_private,
        "public_key": key.public_pem, "created_at": _time(key.created_at),
        "updated_at": _time(key.updated_at),
    }


def _location(*parts: str) -> dict[str, str]:
    return {"Location": "/".join((PREFIX, *parts)) + SUFFIX}


def _next_url(path: str, q: ListQuery, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    params = {"limit": str(q.limit), "cursor": cursor}
    if q.tenant_id is not None:
        params["tenant_id"] = q.tenant_id
    return f"{path}?{urlencode(params)}"


def _cursor_problem(exc: InvalidInput) -> InvalidInput:
    """The store's "invalid pagination cursor" names no field: it is the cursor."""
    return exc if exc.fields else InvalidInput(exc.message, field="cursor")


# ---- keys ------------------------------------------------------------------------------------

@bp.route(PREFIX + ".json", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def create_key() -> Response:
    """Generate or import an encrypt key: 201 with Location and the key."""
    principal = _principal()  # 401 before the body is read
    raw = _body()
    wrapped = raw.get("encrypt_key")
    tenant = wrapped.get("tenant_id") if isinstance(wrapped, dict) else None
    grant, domain = _grant("key.create", tenant if isinstance(tenant, str) else None,
                           principal=principal)
    new = parse_body(CreateBody, raw).encrypt_key
    bits = new.key_length if new.key_length is not None else new.key_lenght
    if new.add_type == "generate":
        extra = [f for f in ("public_key", "private_key", "private_key_password")
                 if getattr(new, f) is not None]
        if extra:
            raise InvalidInput(f"{extra[0]}: only for add_type import",
                               fields={f: "Only for add_type import" for f in extra})
        key = domain.create(grant, name=new.name, private_use=PROTECTION[new.protection_mode],
                            activate=new.is_active, bits=bits)
    else:
        if bits is not None:
            raise InvalidInput("key_length: only for add_type generate",
                               fields={"key_length": "Only for add_type generate"})
        if new.public_key is None:
            raise InvalidInput("public_key: Is required", fields={"public_key": "Is required"})
        if new.private_key is None and new.private_key_password is not None:
            raise InvalidInput("private_key_password: only with private_key",
                               fields={"private_key_password": "Only with private_key"})
        key = domain.create(grant, name=new.name, private_use=PROTECTION[new.protection_mode],
                            activate=new.is_active, public_key=new.public_key,
                            private_key=new.private_key, password=new.private_key_password)
    return json_response(201, {"encrypt_key": _key(key)}, _location(key.id))


@bp.route(PREFIX + ".json", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def list_keys() -> Response:
    """The tenant's keys, a page at a time: {"encrypt_keys", "total", "next_url"}."""
    grant, domain = _grant("key.list", _tenant_query())
    q = parse_query(_query())
    try:
        page = domain.list(grant, limit=q.limit, cursor=q.cursor)
    except InvalidInput as exc:
        raise _cursor_problem(exc) from None
    return json_response(200, {"encrypt_keys": [_key(k) for k in page.items],
                               "total": page.total,
                               "next_url": _next_url(PREFIX + SUFFIX, q, page.cursor)})


@bp.route(PREFIX + "/{segment}", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def get_key(segment: str) -> Response:
    """One key."""
    grant, domain = _grant("key.read", _tenant_query(), segment)
    return json_response(200, {"encrypt_key": _key(domain.get(grant, _id(segment)))})


@bp.route(PREFIX + "/{segment}", methods=["PUT"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def update_key(segment: str) -> Response:
    """Rename and/or (de)activate a key; any other field is a 400."""
    grant, domain = _grant("key.update", _tenant_query(), segment)
    kid = _id(segment)
    change = parse_body(UpdateBody, _body()).encrypt_key
    key = domain.update(grant, kid, name=change.name, active=change.is_active)
    return json_response(200, {"encrypt_key": _key(key)})


@bp.route(PREFIX + "/{segment}", methods=["DELETE"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def delete_key(segment: str) -> Response:
    """Delete a key: 200."""
    grant, domain = _grant("key.delete", _tenant_query(), segment)
    domain.delete(grant, _id(segment))
    return json_response(200, {})


# ---- authorized users ------------------------------------------------------------------------

@bp.route(PREFIX + "/{kid}/authorized_users.json", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def grant_user(kid: str) -> Response:
    """Grant a user the key: 201 with Location; 409 if the user is authorized already."""
    grant, domain = _grant("grant.create", _tenant_query(), kid, "users")
    kid = _uuid_id(kid)
    user = parse_body(UserBody, _body()).user.user_id
    domain.grant_user(grant, kid, user)
    return json_response(201, {"user": {"user_id": user}},
                         _location(kid, "authorized_users", user))


@bp.route(PREFIX + "/{kid}/authorized_users.json", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def list_users(kid: str) -> Response:
    """The users granted the key: {"next_url", "total", "users": [{"user_id"}]}."""
    grant, domain = _grant("grant.list", _tenant_query(), kid, "users")
    kid = _uuid_id(kid)
    q = parse_query(_query())
    try:
        page = domain.users(grant, kid, limit=q.limit, cursor=q.cursor)
    except InvalidInput as exc:
        raise _cursor_problem(exc) from None
    return json_response(200, {
        "next_url": _next_url(f"{PREFIX}/{kid}/authorized_users{SUFFIX}", q, page.cursor),
        "total": page.total, "users": [{"user_id": u} for u in page.items]})


@bp.route(PREFIX + "/{kid}/authorized_users/{segment}", methods=["DELETE"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def revoke_user(kid: str, segment: str) -> Response:
    """Revoke a user's grant: 200."""
    grant, domain = _grant("grant.delete", _tenant_query(), kid, "users", segment)
    kid, user = _uuid_id(kid), _id(segment)
    domain.revoke_user(grant, kid, user)
    return json_response(200, {})


# ---- private-key use (beyond the vendor) ----------------------------------------------------

@bp.route(PREFIX + "/{kid}/decrypt.json", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def decrypt(kid: str) -> Response:
    """Decrypt a wrapped session key (RSA-OAEP, SHA-256 or SHA-1) inside the HSM."""
    grant, domain = _grant("key.decrypt", _tenant_query(), kid)
    kid = _uuid_id(kid)
    b = parse_body(DecryptBody, _body())
    try:
        ciphertext = b64decode_strict(b.ciphertext)
    except (binascii.Error, ValueError):
        raise InvalidInput("ciphertext: Should be base64",
                           fields={"ciphertext": "Should be base64"}) from None
    plaintext = domain.decrypt(grant, kid, ciphertext, b.hash)
    return json_response(200, {"plaintext": base64.b64encode(plaintext).decode("ascii")})


@bp.route(PREFIX + "/{kid}/export.json", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def export(kid: str) -> Response:
    """The private key as password-encrypted PKCS#8 PEM (manage permission and a grant)."""
    grant, domain = _grant("key.export", _tenant_query(), kid)
    kid = _uuid_id(kid)
    b = parse_body(ExportBody, _body())
    pem = domain.export(grant, kid, b.password)
    return json_response(200, {"private_key": pem.decode("ascii"), "format": "pkcs8"})
