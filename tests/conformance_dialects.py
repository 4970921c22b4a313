"""The dialect table of the conformance suite (tests/test_conformance.py): one entry per dialect.

Each entry says, in the vendor's own terms, what the suite needs to run the same security tests
against every dialect: its routes (method, path template, a valid body), how its tokens are
scoped and sent, how to create an object in a key ring, where that object's record lives in the
store, and how to recognise the vendor's error envelope. Adding a dialect is adding one entry
to DIALECTS; the tests themselves never name a vendor.

Path templates use two placeholders: `{ring}` (the key ring: vault, tenant, domain, project)
and `{id}` (the object in it). A dialect whose ring is not in the path (Auth0 takes it from the
token) leaves `{ring}` out; its `auth_headers` still receives the ring addressed (a dialect that
names the ring in a header, like AI-VAULT's DomainID, puts it there).
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from tests.client import Client, Resp


class Server(Protocol):
    """What the table needs of a live server (tests.conftest.LiveServer)."""

    def client(self) -> Client:
        """A fresh keep-alive client to the server."""
        ...


@dataclass(frozen=True)
class Route:
    """One route of a dialect.

    method, path: the HTTP method and path template (`{ring}`, `{id}` placeholders).
    action:       the audit action a call of this route records (denials included); "" for
                  public routes.
    weak:         the permissions of a token scoped to the right ring that still lacks what this
                  route needs ("" = no permission of this dialect's kind on the ring at all).
    body:         a valid JSON body for the route (None: called without a body).
    takes_body:   the route reads a JSON body (default: body is not None). StoredSafe reads one
                  on every route (the legacy `token` field), GET and DELETE included.
    public:       needs no token (JWKS documents).
    lists:        the ring's list endpoint: 200 with the ring's objects (see Dialect.list_ids).
    creates:      makes a new object at `{id}` instead of using the one there (create,
                  restore): left out where the suite addresses an existing object.
    """

    method: str
    path: str
    action: str = ""
    weak: str = ""
    body: Any = None
    takes_body: bool | None = None
    public: bool = False
    lists: bool = False
    creates: bool = False

    @property
    def reads_body(self) -> bool:
        """Does the route read a JSON request body?"""
        return self.body is not None if self.takes_body is None else self.takes_body

    @property
    def is_object(self) -> bool:
        """Does the route address one object (`{id}` in its path)?"""
        return "{id}" in self.path

    @property
    def ring_bound(self) -> bool:
        """Is the ring it acts on the one the suite addresses (from the token or the path)?

        A public route without `{ring}` acts on a fixed (default) ring instead.
        """
        return not self.public or "{ring}" in self.path

    def url(self, ring: str, oid: str) -> str:
        """The path with the placeholders filled (values are used as given: pre-encoded)."""
        return self.path.replace("{ring}", ring).replace("{id}", oid)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Dialect:
    """One vendor API, as the conformance suite sees it.

    name:           test id.
    kind:           the key-ring kind of its token scopes (KIND in KIND:RING:PERMS).
    full_perms:     every permission of that kind, comma-separated.
    no_perms_scope: a scope naming the ring that grants none of this kind's permissions
                    (scopes cannot be empty), for routes whose `weak` is "".
    routes:         every route, public ones included.
    new_ring:       a fresh ring id no other test uses.
    missing_id:     an object id of the right form that exists nowhere.
    auth_headers:   the headers that carry `token` (None: no credential) for a call on `ring`.
    create:         create an object in `ring` with a full-permission `token`; its id.
    record:         (pk, sk) of the object's record in the store, for (ring, id).
    list_ids:       the object ids of a successful list response.
    error_status:   the status stated by the vendor's error envelope, None if `resp` is not one.
    error_text:     the human-readable parts of an error envelope (what may disclose things);
                    not the request echo some vendors add.
    is_success:     `resp` is the vendor's success answer (not the framework's).
    always_json:    every answer has a JSON body (empty bodies of 202/204 aside).
    forbidden_status: the (envelope) status of a missing permission (Apinizer: 400).
    foreign_statuses: the statuses another ring's token may get: the vendor's forbidden or
                    not-found answer.
    """

    name: str
    kind: str
    full_perms: str
    no_perms_scope: Callable[[str], str]
    routes: tuple[Route, ...]
    new_ring: Callable[[], str]
    missing_id: Callable[[], str]
    auth_headers: Callable[[str | None, str], dict[str, str]]
    create: Callable[[Server, str, str], str]
    record: Callable[[str, str], tuple[str, str]]
    list_ids: Callable[[Resp], list[str]]
    error_status: Callable[[Resp], int | None]
    error_text: Callable[[Resp], str]
    is_success: Callable[[Resp], bool]
    always_json: bool = True
    forbidden_status: int = 403
    foreign_statuses: frozenset[int] = frozenset({403, 404})

    def scope(self, ring: str, perms: str) -> str:
        """A token scope "KIND:RING:PERMS" (perms "" = no permission of this kind)."""
        return f"{self.kind}:{ring}:{perms}" if perms else self.no_perms_scope(ring)

    def call(self, client: Client, route: Route, ring: str, oid: str, token: str | None, *,
             raw: bytes | None = None, content_type: str | None = "application/json",
             headers: dict[str, str] | None = None) -> Resp:
        """Call `route` on (ring, oid) with `token`: the route's own body unless `raw` is
        given; Content-Type `content_type` whenever a body is sent (None: no such header)."""
        h = self.auth_headers(token, ring)
        body = raw
        if body is None and route.body is not None:
            body = json.dumps(route.body).encode()
        if content_type is not None and body is not None:
            h["Content-Type"] = content_type
        h.update(headers or {})
        return client.request(route.method, route.url(ring, oid), headers=h, raw=body)

    def __str__(self) -> str:
        return self.name


def _json(resp: Resp) -> Any:
    """The body as JSON, None if it is not JSON."""
    try:
        return json.loads(resp.body)
    except ValueError:
        return None


# ---- StoredSafe transparent encryption -----------------------------------------------------

_SS = "/api/1.0/transparent"
_SS_ENVELOPE = {"CALLINFO", "DATA", "HEADERS", "PARAMS"}
_WELL_FORMED_CT = "storedsafe:v1:" + base64.b64encode(bytes(40)).decode()


def _ss_new_vault() -> str:
    """A fresh vault id (15 decimal digits)."""
    return str(10**14 + uuid.uuid4().int % (9 * 10**14))  # 15 digits, collision-free enough


def _ss_missing() -> str:
    """A key name of the form the suite uses, held by no vault."""
    return f"k-{secrets.token_hex(6)}"


def _ss_headers(token: str | None, ring: str) -> dict[str, str]:
    """StoredSafe takes the token in X-Http-Token (the vault is in the path)."""
    return {} if token is None else {"X-Http-Token": token}


def _ss_create(server: Server, ring: str, token: str) -> str:
    """Create a key in the vault; its name is the object id."""
    name = _ss_missing()
    r = server.client().request("POST", f"{_SS}/{ring}/keys/{name}", headers={
        "X-Http-Token": token, "Content-Type": "application/json"}, raw=b"{}")
    assert r.status == 201, r.text
    return name


def _ss_envelope(resp: Resp) -> dict[str, Any] | None:
    """The StoredSafe envelope (CALLINFO, DATA, HEADERS, PARAMS), None if resp is not one."""
    body = _json(resp)
    if isinstance(body, dict) and _SS_ENVELOPE <= set(body) \
            and isinstance(body["CALLINFO"], dict) \
            and body["CALLINFO"].get("handler") == "EncryptionHandler":
        return body
    return None


def _ss_error_status(resp: Resp) -> int | None:
    """The status of a FAIL envelope with ERRORS and numeric ERRORCODES."""
    body = _ss_envelope(resp)
    if body is None or body["CALLINFO"].get("status") != "FAIL":
        return None
    errors, codes = body.get("ERRORS"), body.get("ERRORCODES")
    if not (isinstance(errors, list) and errors and isinstance(codes, dict) and codes
            and all(isinstance(k, str) and k.isdigit() for k in codes)):
        return None
    return resp.status


def _ss_error_text(resp: Resp) -> str:
    """ERRORS and ERRORCODES texts (DATA and HEADERS echo the request: not included)."""
    body = _ss_envelope(resp) or {}
    return " ".join([*map(str, body.get("ERRORS") or []),
                     *map(str, (body.get("ERRORCODES") or {}).values())])


def _ss_success(resp: Resp) -> bool:
    """A 2xx SUCCESS envelope."""
    body = _ss_envelope(resp)
    return body is not None and 200 <= resp.status < 300 \
        and body["CALLINFO"].get("status") == "SUCCESS"


def _ss_list_ids(resp: Resp) -> list[str]:
    """The key names of a list answer (KEYS)."""
    return [k["name"] for k in resp.json["KEYS"]]


STOREDSAFE = Dialect(
    name="storedsafe",
    kind="storedsafe",
    full_perms="read,write,admin",
    # a scope on the same ring id, of another kind: no vault permission at all
    no_perms_scope=lambda ring: f"auth0:{ring}:read:connections",
    routes=(
        Route("POST", _SS + "/{ring}/keys/{id}", "storedsafe.key.create", "read", {},
              creates=True),
        Route("GET", _SS + "/{ring}/keys", "storedsafe.key.list", "", takes_body=True,
              lists=True),
        Route("GET", _SS + "/{ring}/keys/{id}", "storedsafe.key.read", "", takes_body=True),
        Route("POST", _SS + "/{ring}/keys/{id}/rotate", "storedsafe.key.rotate", "read", {}),
        Route("POST", _SS + "/{ring}/keys/{id}/config", "storedsafe.key.config", "read,write",
              {"allow_delete": True}),
        Route("POST", _SS + "/{ring}/encrypt/{id}", "storedsafe.encrypt", "",
              {"plaintext": "aGk="}),
        Route("POST", _SS + "/{ring}/decrypt/{id}", "storedsafe.decrypt", "",
              {"ciphertext": _WELL_FORMED_CT}),
        Route("POST", _SS + "/rewrap/{ring}/{id}", "storedsafe.rewrap", "",
              {"ciphertext": _WELL_FORMED_CT}),
        Route("POST", _SS + "/{ring}/datakey/plaintext/{id}", "storedsafe.datakey", "read",
              {"bits": 128}),
        Route("POST", _SS + "/{ring}/datakey/wrapped/{id}", "storedsafe.datakey", "",
              {"bits": 128}),
        Route("GET", _SS + "/export/{ring}/{id}", "storedsafe.key.export", "read,write",
              takes_body=True),
        Route("GET", _SS + "/export/{ring}/{id}/1", "storedsafe.key.export", "read,write",
              takes_body=True),
        Route("GET", _SS + "/backup/{ring}/{id}", "storedsafe.key.backup", "read,write",
              takes_body=True),
        Route("POST", _SS + "/restore/{ring}/{id}", "storedsafe.key.restore", "read",
              {"backup": "AAAA"}, creates=True),
        Route("DELETE", _SS + "/{ring}/keys/{id}", "storedsafe.key.delete", "read",
              takes_body=True),
    ),
    new_ring=_ss_new_vault,
    missing_id=_ss_missing,
    auth_headers=_ss_headers,
    create=_ss_create,
    record=lambda ring, oid: (f"ss#{ring}", f"key#{oid}"),
    list_ids=_ss_list_ids,
    error_status=_ss_error_status,
    error_text=_ss_error_text,
    is_success=_ss_success,
)


# ---- Auth0 Management API v2 ---------------------------------------------------------------

_A0 = "/api/v2"
_A0_PERMS = ("read:connections", "create:connections", "delete:connections",
             "read:connections_keys", "create:connections_keys", "update:connections_keys",
             "read:signing_keys", "create:signing_keys", "update:signing_keys")
_A0_ERROR_KEYS = {"statusCode", "error", "message"}
_A0_NO_KID = "kidDoesNotExist0"  # a signing-key id no tenant has


def _a0_without(*needed: str) -> str:
    """Every Auth0 scope except `needed` (a token of the right tenant, lacking them)."""
    return ",".join(p for p in _A0_PERMS if p not in needed)


def _a0_missing() -> str:
    """A connection id of Auth0's form ("con_" + 16 alphanumerics) held by no tenant."""
    return "con_" + secrets.token_hex(8)


def _a0_headers(token: str | None, ring: str) -> dict[str, str]:
    """Auth0 takes a bearer token; the tenant comes from the token, not the request."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _a0_create(server: Server, ring: str, token: str) -> str:
    """Create an oidc connection (a strategy with connection keys); its id."""
    r = server.client().request(
        "POST", f"{_A0}/connections",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        raw=json.dumps({"name": f"c-{secrets.token_hex(6)}", "strategy": "oidc"}).encode())
    assert r.status == 201, r.text
    return str(r.json["id"])


def _a0_error_status(resp: Resp) -> int | None:
    """The statusCode of an Auth0 error body {statusCode, error, message[, errorCode]}."""
    body = _json(resp)
    if not (isinstance(body, dict) and _A0_ERROR_KEYS <= set(body)
            and set(body) <= _A0_ERROR_KEYS | {"errorCode"}):
        return None
    status = body["statusCode"]
    if status != resp.status or not isinstance(body["message"], str):
        return None
    try:
        if body["error"] != HTTPStatus(status).phrase:
            return None
    except ValueError:
        return None
    return int(status)


def _a0_error_text(resp: Resp) -> str:
    """error, message and errorCode of an Auth0 error body."""
    body = _json(resp)
    if not isinstance(body, dict):
        return ""
    return " ".join(str(body.get(k, "")) for k in ("error", "message", "errorCode"))


def _a0_success(resp: Resp) -> bool:
    """A 2xx JSON answer (or the empty body of a 202/204) that is not an error body."""
    if not 200 <= resp.status < 300:
        return False
    if not resp.body:
        return resp.status in (202, 204)
    return _json(resp) is not None and _a0_error_status(resp) is None


AUTH0 = Dialect(
    name="auth0",
    kind="auth0",
    full_perms=",".join(_A0_PERMS),
    # never used: every Auth0 route's `weak` names the scopes it keeps
    no_perms_scope=lambda ring: "storedsafe:1:read",
    routes=(
        Route("POST", _A0 + "/connections", "auth0.connection.create",
              _a0_without("create:connections"), {"name": "conformance", "strategy": "oidc"}),
        Route("GET", _A0 + "/connections", "auth0.connection.list",
              _a0_without("read:connections"), lists=True),
        Route("GET", _A0 + "/connections/{id}", "auth0.connection.read",
              _a0_without("read:connections")),
        Route("GET", _A0 + "/connections/{id}/keys", "auth0.connection_key.list",
              _a0_without("read:connections_keys")),
        Route("POST", _A0 + "/connections/{id}/keys", "auth0.connection_key.create",
              _a0_without("create:connections_keys"), {"signing_alg": "ES256"}),
        Route("POST", _A0 + "/connections/{id}/keys/rotate", "auth0.connection_key.rotate",
              _a0_without("update:connections_keys"), {"signing_alg": "ES256"}),
        Route("GET", _A0 + "/keys/signing", "auth0.signing_key.list",
              _a0_without("read:signing_keys")),
        Route("GET", _A0 + f"/keys/signing/{_A0_NO_KID}", "auth0.signing_key.read",
              _a0_without("read:signing_keys")),
        Route("POST", _A0 + "/keys/signing/rotate", "auth0.signing_key.rotate",
              _a0_without("create:signing_keys"), {}),
        Route("PUT", _A0 + f"/keys/signing/{_A0_NO_KID}/revoke", "auth0.signing_key.revoke",
              _a0_without("update:signing_keys"), {}),
        Route("DELETE", _A0 + "/connections/{id}", "auth0.connection.delete",
              _a0_without("delete:connections")),
        Route("GET", "/.well-known/jwks.json", public=True),
        Route("GET", "/tenants/{ring}/.well-known/jwks.json", public=True),
        Route("GET", "/connections/{id}/.well-known/jwks.json", public=True),
        Route("GET", "/tenants/{ring}/connections/{id}/.well-known/jwks.json", public=True),
    ),
    new_ring=lambda: f"t{uuid.uuid4().hex[:12]}",
    missing_id=_a0_missing,
    auth_headers=_a0_headers,
    create=_a0_create,
    record=lambda ring, oid: (f"auth0#{ring}#connections", f"con#{oid}"),
    list_ids=lambda resp: [c["id"] for c in resp.json],
    error_status=_a0_error_status,
    error_text=_a0_error_text,
    is_success=_a0_success,
    always_json=True,
)


# ---- MiaRec REST API v2 --------------------------------------------------------------------

_MR = "/api/v2/encrypt_keys"
_MR_ERROR_KEYS = {"error", "description"}
_MR_USER = "3f0c2a9e-6d1b-4c2f-9a7e-1b2c3d4e5f60"  # a user id of the form MiaRec uses


def _mr_headers(token: str | None, ring: str) -> dict[str, str]:
    """MiaRec clients send HTTP Basic with the user id; Bearer works too and needs no user
    name (the suite's tokens have principals of its own)."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _mr_create(server: Server, ring: str, token: str) -> str:
    """Generate an RSA-1024 key (the fastest) in the tenant; its id."""
    r = server.client().request(
        "POST", f"{_MR}.json",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        raw=json.dumps({"encrypt_key": {"name": "conformance", "key_length": 1024,
                                        "add_type": "generate"}}).encode())
    assert r.status == 201, r.text
    return str(r.json["encrypt_key"]["id"])


def _mr_error_status(resp: Resp) -> int | None:
    """The status of a MiaRec error body {"error", "description"[, "details"]}."""
    body = _json(resp)
    if not (isinstance(body, dict) and _MR_ERROR_KEYS <= set(body)
            and set(body) <= _MR_ERROR_KEYS | {"details"}
            and isinstance(body["error"], str) and isinstance(body["description"], str)):
        return None
    return resp.status if resp.status >= 400 else None


def _mr_error_text(resp: Resp) -> str:
    """error, description and details of a MiaRec error body."""
    body = _json(resp)
    if not isinstance(body, dict):
        return ""
    return " ".join(str(body.get(k, "")) for k in ("error", "description", "details"))


def _mr_success(resp: Resp) -> bool:
    """A 2xx JSON object answer that is not an error body."""
    return 200 <= resp.status < 300 and isinstance(_json(resp), dict) \
        and _mr_error_status(resp) is None


MIAREC = Dialect(
    name="miarec",
    kind="miarec",
    full_perms="read,manage,grant",
    no_perms_scope=lambda ring: "storedsafe:1:read",
    routes=(
        Route("POST", _MR + ".json", "miarec.key.create", "read,grant",
              {"encrypt_key": {"name": "conformance", "key_length": 1024}}),
        Route("GET", _MR + ".json", "miarec.key.list", "manage,grant", lists=True),
        Route("GET", _MR + "/{id}.json", "miarec.key.read", "manage,grant"),
        Route("PUT", _MR + "/{id}.json", "miarec.key.update", "read,grant",
              {"encrypt_key": {"name": "renamed", "is_active": True}}),
        Route("POST", _MR + "/{id}/authorized_users.json", "miarec.grant.create",
              "read,manage", {"user": {"user_id": _MR_USER}}),
        Route("GET", _MR + "/{id}/authorized_users.json", "miarec.grant.list",
              "manage,grant"),
        Route("DELETE", _MR + "/{id}/authorized_users/" + _MR_USER + ".json",
              "miarec.grant.delete", "read,manage"),
        Route("POST", _MR + "/{id}/decrypt.json", "miarec.key.decrypt", "manage,grant",
              {"ciphertext": base64.b64encode(bytes(128)).decode(), "hash": "sha1"}),
        Route("POST", _MR + "/{id}/export.json", "miarec.key.export", "read,grant",
              {"password": "conformance export"}),
        Route("DELETE", _MR + "/{id}.json", "miarec.key.delete", "read,grant"),
    ),
    new_ring=lambda: str(uuid.uuid4()),
    missing_id=lambda: str(uuid.uuid4()),
    auth_headers=_mr_headers,
    create=_mr_create,
    record=lambda ring, oid: (f"miarec#{ring}#keys", f"key#{oid}"),
    list_ids=lambda resp: [k["id"] for k in resp.json["encrypt_keys"]],
    error_status=_mr_error_status,
    error_text=_mr_error_text,
    is_success=_mr_success,
    always_json=True,
)


# ---- Apinizer API Ops ------------------------------------------------------------------------

_AP = "/apiops"
_AP_FAILURE = {"status", "resultMessage", "error", "error_description"}


def _ap_headers(token: str | None, ring: str) -> dict[str, str]:
    """Apinizer takes a bearer personal token (the project is in the path)."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _ap_create(server: Server, ring: str, token: str) -> str:
    """Create a secret key deployed nowhere (no environment needed); its name is its id."""
    name = f"k-{secrets.token_hex(6)}"
    r = server.client().request(
        "POST", f"{_AP}/projects/{ring}/keys/",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        raw=json.dumps({"name": name, "keyType": "SECRET_KEY", "algorithm": "AES",
                        "cryptoKeyInfoEnvironmentList": []}).encode())
    assert r.status == 200, r.text
    return name


def _ap_error_status(resp: Resp) -> int | None:
    """The status of a failure envelope (both generations' fields; OAuth errors too)."""
    body = _json(resp)
    if not (isinstance(body, dict) and set(body) == _AP_FAILURE
            and body["status"] == "FAILURE" and isinstance(body["error"], str)
            and isinstance(body["resultMessage"], str)
            and body["resultMessage"] == body["error_description"]):
        return None
    return resp.status if resp.status >= 400 else None


def _ap_error_text(resp: Resp) -> str:
    body = _json(resp)
    return " ".join(str(body.get(k, "")) for k in ("error", "resultMessage")) \
        if isinstance(body, dict) else ""


def _ap_success(resp: Resp) -> bool:
    body = _json(resp)
    return resp.status == 200 and isinstance(body, dict) and body.get("status") == "SUCCESS" \
        and body.get("success") is True and isinstance(body.get("resultList"), list)


APINIZER = Dialect(
    name="apinizer",
    kind="apinizer",
    full_perms="read,manage,deploy,consume",
    # consume is the environment tokens' permission: on a project ring it reads nothing
    no_perms_scope=lambda ring: f"apinizer:{ring}:consume",
    routes=(
        Route("POST", _AP + "/projects/{ring}/keys/", "apinizer.key.create", "read,deploy",
              {"name": "conformance-new", "keyType": "SECRET_KEY", "algorithm": "AES",
               "cryptoKeyInfoEnvironmentList": []}, creates=True),
        Route("GET", _AP + "/projects/{ring}/keys/", "apinizer.key.list", "consume",
              lists=True),
        Route("GET", _AP + "/projects/{ring}/keys/{id}/", "apinizer.key.read", "consume"),
        Route("PUT", _AP + "/projects/{ring}/keys/{id}/?jwkUpdateAction=UPDATE",
              "apinizer.key.update", "read,manage", {"description": "changed"}),
        Route("GET", _AP + "/projects/{ring}/environments/", "apinizer.environment.list",
              "consume"),
        Route("GET", _AP + "/environments/{ring}", "apinizer.environment.list", "consume"),
        Route("GET", _AP + "/environments/", "apinizer.environment.list", "consume"),
        Route("POST", _AP + "/auth/token/", public=True, takes_body=True),
        Route("DELETE", _AP + "/projects/{ring}/keys/{id}/?jwkDeleteAction=DELETE",
              "apinizer.key.delete", "read,manage"),
    ),
    new_ring=lambda: f"p-{uuid.uuid4().hex[:12]}",
    missing_id=lambda: f"k-{secrets.token_hex(6)}",
    auth_headers=_ap_headers,
    create=_ap_create,
    # the name's claim: what a request addresses (a copied key record is covered by the
    # dialect's own tests)
    record=lambda ring, oid: (f"apz#{ring}#keys", f"name#{oid}"),
    list_ids=lambda resp: [k["name"] for k in resp.json["resultList"]],
    error_status=_ap_error_status,
    error_text=_ap_error_text,
    is_success=_ap_success,
    always_json=True,
    forbidden_status=400,
    foreign_statuses=frozenset({400}),
)


# ---- Huawei AI-VAULT -------------------------------------------------------------------------

_AV = "/AIVAULT/v1"
_AV_PASSWORD = "Conformance-Password-0123456789-abcdefghij"
_AV_ENVELOPE = {"status", "msg", "data"}
_av_domains = itertools.count(1)  # 1..500: a counter, so no two tests share a domain
# the vendor's 8-digit codes as the HTTP statuses the suite reasons in
_AV_STATUSES = {"00002000": 400, "31000021": 400, "31000002": 403, "31000011": 404,
                "00003001": 404, "31000022": 429}


def _av_headers(token: str | None, ring: str) -> dict[str, str]:
    """Bearer token and the domain in the vendor's DomainID header."""
    h = {"DomainID": ring}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    return h


def _av_create(server: Server, ring: str, token: str) -> str:
    """Create a master key in the domain; its name (the id the API addresses it by)."""
    name = f"conformance-{secrets.token_hex(6)}"
    r = server.client().request(
        "POST", f"{_AV}/createMK", headers={**_av_headers(token, ring),
                                            "Content-Type": "application/json"},
        raw=json.dumps({"MKName": name, "MKUsage": "conformance",
                        "Password": _AV_PASSWORD}).encode())
    assert r.status == 200 and "CipherMasterKey" in (r.json or {}), r.text
    return name


def _av_error_status(resp: Resp) -> int | None:
    """The HTTP-like status of an AI-VAULT error envelope (business errors are HTTP 200 with
    an 8-digit code; login 401; internal 500)."""
    body = _json(resp)
    if not (isinstance(body, dict) and set(body) == _AV_ENVELOPE
            and isinstance(body["status"], str) and isinstance(body["msg"], str)):
        return None
    if body["status"] == "00000000":
        return None
    if resp.status != 200:
        return resp.status
    return _AV_STATUSES.get(body["status"], 409)


def _av_success(resp: Resp) -> bool:
    """status 00000000, or createMK's file {"Version", "CipherMasterKey"}."""
    body = _json(resp)
    return resp.status == 200 and isinstance(body, dict) and (
        set(body) == {"Version", "CipherMasterKey"}
        or set(body) == _AV_ENVELOPE and body["status"] == "00000000")


AIVAULT = Dialect(
    name="aivault",
    kind="aivault",
    full_perms="read,manage",
    no_perms_scope=lambda ring: "storedsafe:1:read",
    routes=(
        Route("POST", _AV + "/createMK", "aivault.key.create", "read",
              {"MKName": "conformance-new", "MKUsage": "conformance",
               "Password": _AV_PASSWORD}, creates=True),
        Route("GET", _AV + "/queryMK", "aivault.key.list", "manage", lists=True),
        Route("POST", _AV + "/createPSK", "aivault.secret.create", "read",
              {"PSKName": "conformance", "MKName": "conformance-none",
               "Password": _AV_PASSWORD}),
        Route("GET", _AV + "/queryPSK", "aivault.secret.list", "manage"),
        Route("DELETE", _AV + "/deletePSK/conformance", "aivault.secret.delete", "read"),
        Route("DELETE", _AV + "/deleteMK/{id}", "aivault.key.delete", "read"),
        Route("GET", _AV + "/version", public=True),
        Route("GET", _AV + "/health", public=True),
        Route("GET", _AV + "/certStatus", public=True),
    ),
    new_ring=lambda: str(next(_av_domains)),
    missing_id=lambda: f"missing-{secrets.token_hex(6)}",
    auth_headers=_av_headers,
    create=_av_create,
    record=lambda ring, oid: (f"aivault#{ring}", f"key#{oid}"),
    list_ids=lambda resp: [k["MKName"] for k in (resp.json["data"] or [])],
    error_status=_av_error_status,
    error_text=lambda resp: str((_json(resp) or {}).get("msg", "")),
    is_success=_av_success,
    always_json=True,
)


DIALECTS: tuple[Dialect, ...] = (STOREDSAFE, AUTH0, MIAREC, APINIZER, AIVAULT)
"""Every dialect the conformance suite runs against."""
