"""The Auth0 Management API dialect end to end: `keyfront serve` over HTTP, on both stores."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import SignatureAlgorithmOID
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, KeySet

from chalicelib import admin
from chalicelib.core.rotating import KEY_SK_PREFIX
from tests.auth0_support import connection_ring, domain, ring_state, tenant_ring

ALL_SCOPES = ("read:connections,create:connections,delete:connections,"
              "read:connections_keys,create:connections_keys,update:connections_keys,"
              "read:signing_keys,create:signing_keys,update:signing_keys")
ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384"]
SIG_OID = {
    "RS256": SignatureAlgorithmOID.RSA_WITH_SHA256, "RS384": SignatureAlgorithmOID.RSA_WITH_SHA384,
    "RS512": SignatureAlgorithmOID.RSA_WITH_SHA512, "PS256": SignatureAlgorithmOID.RSASSA_PSS,
    "PS384": SignatureAlgorithmOID.RSASSA_PSS, "ES256": SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    "ES384": SignatureAlgorithmOID.ECDSA_WITH_SHA384,
}
CONNECTION_KEY_FIELDS = {"kid", "cert", "pkcs", "fingerprint", "thumbprint", "current", "next",
                         "previous", "algorithm", "key_use", "subject_dn"}


class Api:
    """A keep-alive client with one bearer token."""

    def __init__(self, srv: Any, tenant: str, perms: str = ALL_SCOPES, *,
                 token: str | None = None) -> None:
        self.srv = srv
        self.tenant = tenant
        self.token = token if token is not None else srv.mint(f"auth0:{tenant}:{perms}")
        self.c = srv.client()

    def _h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str):
        return self.c.get(path, headers=self._h())

    def post(self, path: str, body: Any = None, raw: bytes | None = None):
        if raw is not None:
            return self.c.request("POST", path, raw=raw,
                                  headers={**self._h(), "Content-Type": "application/json"})
        return self.c.post(path, json_body=body if body is not None else {}, headers=self._h())

    def put(self, path: str, body: Any = None):
        return self.c.put(path, json_body=body if body is not None else {}, headers=self._h())

    def delete(self, path: str):
        return self.c.delete(path, headers=self._h())

    def connection(self, strategy: str = "oidc", name: str | None = None, **extra: Any) -> dict:
        r = self.post("/api/v2/connections", {"name": name or f"c-{uuid.uuid4().hex[:10]}",
                                              "strategy": strategy, **extra})
        assert r.status == 201, r.text
        return r.json


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _verify_signature(public_key: Any, cert: x509.Certificate) -> None:
    """Verify the certificate's signature with a given public key (raises if invalid)."""
    params = cert.signature_algorithm_parameters
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, params,
                          cert.signature_hash_algorithm)
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, params)


def _check_key(key: dict, alg: str, jwks_doc: dict, subject_cn: str) -> x509.Certificate:
    """Everything the issue asks of one key object, against the published JWKS."""
    assert len(key["kid"]) <= 255 and re.fullmatch(r"[A-Za-z0-9]+", key["kid"])
    assert key["algorithm"] == alg and key["key_use"] == "signing"
    assert key["cert"].startswith("-----BEGIN CERTIFICATE-----\r\n")
    assert len(key["cert"]) <= 4096 and len(key["pkcs"]) <= 4096
    cert = x509.load_pem_x509_certificate(key["cert"].encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    sha1 = hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
    assert key["thumbprint"] == sha1 and len(key["thumbprint"]) <= 255
    assert key["fingerprint"] == ":".join(sha1[i:i + 2] for i in range(0, 40, 2))
    assert pkcs7.load_pem_pkcs7_certificates(key["pkcs"].encode()) == [cert]
    assert key["subject_dn"] == f"CN={subject_cn}" == cert.subject.rfc4514_string()
    assert len(key["subject_dn"]) <= 132
    assert cert.signature_algorithm_oid == SIG_OID[alg]
    pub = cert.public_key()
    if alg.startswith("ES"):
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert pub.curve.name == {"ES256": "secp256r1", "ES384": "secp384r1"}[alg]
    else:
        assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
    # the published key (JWKS) verifies the certificate's signature
    [jwk] = [k for k in jwks_doc["keys"] if k["kid"] == key["kid"]]
    assert jwk["alg"] == alg and jwk["use"] == "sig"
    assert base64.b64decode(jwk["x5c"][0]) == der
    assert jwk["x5t"] == _b64url(hashlib.sha1(der, usedforsecurity=False).digest())
    published = JWKRegistry.import_key(jwk).public_key
    _verify_signature(published, cert)
    return cert


def _sign_jwt(srv: Any, signer: Any, claims: dict) -> str:
    """A compact JWS signed in the HSM (through the HSM layer) with the given signer."""
    header = {"alg": signer.algorithm, "kid": signer.kid, "typ": "JWT"}
    signing_input = ".".join(_b64url(json.dumps(p, separators=(",", ":")).encode())
                             for p in (header, claims))
    sig = srv.services.hsm.sign(signer.wrapped, signer.context, signing_input.encode(),
                                signer.scheme)
    return f"{signing_input}.{_b64url(sig)}"


def _audit(srv: Any, action: str) -> list[dict]:
    return srv.services.audit.find(action=action)


# ---- connections -----------------------------------------------------------------------------

def test_connection_create_get_list_delete(live_server):
    api = Api(live_server, _tenant())
    secret = f"s3cret-{uuid.uuid4().hex}"
    name = f"okta-{uuid.uuid4().hex[:8]}"
    con = api.connection("okta", name=name, options={"client_id": "abc", "client_secret": secret,
                                                     "scale": 1.5, "nested": {"a": [1, None]}},
                         display_name="Okta Workforce", metadata={"team": "id"})
    assert re.fullmatch(r"con_[A-Za-z0-9]{16}", con["id"])
    assert con["name"] == name and con["strategy"] == "okta"
    assert con["options"]["client_secret"] == secret and con["options"]["scale"] == 1.5
    assert con["realms"] == [name] and con["enabled_clients"] == []
    assert con["is_domain_connection"] is False and con["metadata"] == {"team": "id"}

    r = api.get(f"/api/v2/connections/{con['id']}")
    assert r.status == 200 and r.json == con
    r = api.get(f"/api/v2/connections/{con['id']}?fields=id,name")
    assert r.json == {"id": con["id"], "name": name}

    other = api.connection("google-oauth2")
    r = api.get("/api/v2/connections")
    assert r.status == 200 and {c["id"] for c in r.json} == {con["id"], other["id"]}
    r = api.get("/api/v2/connections?strategy=okta")
    assert [c["id"] for c in r.json] == [con["id"]]
    r = api.get("/api/v2/connections?per_page=1&page=0&include_totals=true")
    assert r.json["total"] == 2 and r.json["limit"] == 1 and len(r.json["connections"]) == 1
    r = api.get("/api/v2/connections?bogus=1")
    assert r.status == 400 and r.json["errorCode"] == "invalid_query_string"

    # a duplicate name in the same tenant: Auth0's 409
    r = api.post("/api/v2/connections", {"name": name, "strategy": "oidc"})
    assert r.status == 409 and r.json["statusCode"] == 409 and r.json["error"] == "Conflict"

    # the options (with the client secret) are sealed in the store, not stored as given
    raw = live_server.services.store.get(f"auth0#{api.tenant}#connections", f"con#{con['id']}")
    assert secret.encode() not in json.dumps(raw, default=repr).encode()
    assert "options" not in raw and raw["options_key"]["kind"] == "aes"

    r = api.delete(f"/api/v2/connections/{con['id']}")
    assert r.status == 202
    r = api.get(f"/api/v2/connections/{con['id']}")
    assert r.status == 404 and r.json == {"statusCode": 404, "error": "Not Found",
                                          "message": "Connection not found.",
                                          "errorCode": "inexistent_connection"}
    assert api.delete(f"/api/v2/connections/{con['id']}").status == 404
    # the name is free again
    api.connection("okta", name=name)
    actions = {(a["action"], a["object"]) for a in _audit(live_server, "auth0.connection.delete")}
    assert ("auth0.connection.delete", f"auth0/{api.tenant}/connections/{con['id']}") in actions


@pytest.mark.parametrize("body, fragment", [
    ({"name": "x1", "strategy": "not-a-strategy"}, "No enum match"),
    ({"name": "x1", "strategy": "oidc", "colour": "red"}, "Additional properties not allowed"),
    ({"name": "-bad-", "strategy": "oidc"}, "name"),
    ({"strategy": "oidc"}, "Missing required property: name"),
    ({"name": "x1", "strategy": "oidc", "options": "str"}, "Invalid type"),
    ({"name": "x" * 129, "strategy": "oidc"}, "name"),
])
def test_connection_body_errors(sqlite_server, body, fragment):
    api = Api(sqlite_server, _tenant())
    r = api.post("/api/v2/connections", body)
    assert r.status == 400, r.text
    assert r.json["statusCode"] == 400 and r.json["error"] == "Bad Request"
    assert r.json["errorCode"] == "invalid_body" and fragment in r.json["message"]
    assert r.json["message"].startswith("Payload validation error: ")


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "text/plain; charset=UTF-8"])
def test_any_content_type_is_read_as_json(sqlite_server, ctype):
    # what `curl -d` sends: the body is JSON whatever the header says, never Chalice's 415
    api = Api(sqlite_server, _tenant())
    h = {"Authorization": f"Bearer {api.token}", "Content-Type": ctype}
    r = api.c.request("POST", "/api/v2/connections", headers=h,
                      raw=json.dumps({"name": "curl-made", "strategy": "oidc"}).encode())
    assert r.status == 201, r.text
    assert r.json["name"] == "curl-made" and r.json["strategy"] == "oidc"
    cid = r.json["id"]
    r = api.c.request("POST", f"/api/v2/connections/{cid}/keys", headers=h,
                      raw=json.dumps({"signing_alg": "ES256"}).encode())
    assert r.status == 201 and [k["algorithm"] for k in r.json] == ["ES256", "ES256"], r.text
    r = api.c.request("POST", "/api/v2/keys/signing/rotate", headers=h, raw=b"{}")
    assert r.status == 201 and set(r.json) == {"cert", "kid"}, r.text
    # a body that is not JSON gets Auth0's 400, not the framework's 415
    for path, method in (("/api/v2/connections", "POST"),
                         (f"/api/v2/connections/{cid}/keys/rotate", "POST"),
                         ("/api/v2/keys/signing/rotate", "POST"),
                         (f"/api/v2/keys/signing/{r.json['kid']}/revoke", "PUT")):
        bad = api.c.request(method, path, headers=h, raw=b"name=x&strategy=oidc")
        assert bad.status == 400, (path, bad.text)
        assert bad.json == {"statusCode": 400, "error": "Bad Request",
                            "message": "request body is not valid JSON",
                            "errorCode": "invalid_body"}, bad.text


# ---- connection keys -------------------------------------------------------------------------

def test_connection_keys_for_every_algorithm(live_server):
    """Create (ES384) then rotate through every other algorithm; each key fully checked."""
    api = Api(live_server, _tenant())
    con = api.connection("oidc")
    cid = con["id"]
    jwks_path = f"/tenants/{api.tenant}/connections/{cid}/.well-known/jwks.json"
    assert api.get(f"/api/v2/connections/{cid}/keys").json == []

    r = api.post(f"/api/v2/connections/{cid}/keys", {"signing_alg": "ES384"})
    assert r.status == 201, r.text
    created = r.json
    assert isinstance(created, list) and len(created) == 2
    assert [(k["current"], k["next"], k["previous"]) for k in created] == \
        [(True, False, False), (False, True, False)]
    assert "current_since" in created[0] and "current_since" not in created[1]
    assert set(created[0]) == CONNECTION_KEY_FIELDS | {"current_since"}
    assert len({k["kid"] for k in created}) == 2
    jwks_doc = live_server.client().get(jwks_path).json
    for key in created:
        _check_key(key, "ES384", jwks_doc, con["name"])

    seen = {k["kid"] for k in created}
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "ES256"]:
        r = api.post(f"/api/v2/connections/{cid}/keys/rotate", {"signing_alg": alg})
        assert r.status == 201, r.text
        key = r.json
        assert isinstance(key, dict) and key["next"] is True and key["current"] is False
        assert key["kid"] not in seen
        seen.add(key["kid"])
        jwks_doc = live_server.client().get(jwks_path).json
        assert len(jwks_doc["keys"]) == 3  # current, next, one previous
        _check_key(key, alg, jwks_doc, con["name"])

    # a JWT signed in the HSM with the connection's current key (ES384 raw r||s) verifies
    record = domain(live_server.services).connections.get(api.tenant, cid)
    signer = domain(live_server.services).rings.signer(connection_ring(api.tenant, record))
    assert signer.algorithm == "PS384"  # keys moved ES384, ES384, RS256, ..., PS384 into current
    token = _sign_jwt(live_server, signer, {"sub": "client", "aud": "https://idp"})
    claims = jwt.decode(token, KeySet.import_key_set(jwks_doc), algorithms=["PS384"]).claims
    assert claims["sub"] == "client"


def test_connection_key_slots_and_errors(live_server):
    api = Api(live_server, _tenant())
    cid = api.connection("okta")["id"]
    created = api.post(f"/api/v2/connections/{cid}/keys").json
    assert {k["algorithm"] for k in created} == {"RS256"}  # the default
    cur, nxt = created[0]["kid"], created[1]["kid"]

    r = api.post(f"/api/v2/connections/{cid}/keys", {"signing_alg": "ES256"})
    assert r.status == 409 and r.json["message"] == \
        "Keys have already been created for this connection."
    assert r.json["statusCode"] == 409 and r.json["error"] == "Conflict"

    new = api.post(f"/api/v2/connections/{cid}/keys/rotate").json
    keys = {k["kid"]: k for k in api.get(f"/api/v2/connections/{cid}/keys").json}
    assert keys[nxt]["current"] and keys[new["kid"]]["next"] and keys[cur]["previous"]
    assert list(keys) == [nxt, new["kid"], cur]
    newer = api.post(f"/api/v2/connections/{cid}/keys/rotate", {"signing_alg": "ES256"}).json
    keys = {k["kid"]: k for k in api.get(f"/api/v2/connections/{cid}/keys").json}
    assert list(keys) == [new["kid"], newer["kid"], nxt]  # the oldest previous is retired
    assert keys[newer["kid"]]["algorithm"] == "ES256"

    # errors: bad enum, unknown property, unknown connection, strategies without keys
    r = api.post(f"/api/v2/connections/{cid}/keys/rotate", {"signing_alg": "HS256"})
    assert r.status == 400 and r.json["errorCode"] == "invalid_body"
    assert r.json["message"] == \
        "Payload validation error: 'No enum match for: \"HS256\"' on property signing_alg."
    r = api.post(f"/api/v2/connections/{cid}/keys", {"signing_alg": "RS256", "x": 1})
    assert r.status == 400 and "Additional properties not allowed: x" in r.json["message"]
    for path in ("/api/v2/connections/con_0000000000000000/keys",
                 "/api/v2/connections/nonsense/keys"):
        r = api.get(path)
        assert r.status == 404 and r.json["message"] == "Connection not found."
        assert r.json["errorCode"] == "inexistent_connection"
        assert api.post(path).status == 404 and api.post(path + "/rotate").status == 404
    for strategy in ("auth0", "google-oauth2", "samlp"):
        other = api.connection(strategy)["id"]
        for r in (api.get(f"/api/v2/connections/{other}/keys"),
                  api.post(f"/api/v2/connections/{other}/keys"),
                  api.post(f"/api/v2/connections/{other}/keys/rotate")):
            assert r.status == 400 and r.json["error"] == "Bad Request", r.text
            assert r.json["errorCode"] == "invalid_strategy"

    # deleting the connection hides its keys at once; its purge (after the deletion window,
    # here at once by the admin function) deletes them
    assert api.delete(f"/api/v2/connections/{cid}").status == 202
    pk = f"auth0#{api.tenant}#conkeys#{cid}"
    assert api.get(f"/tenants/{api.tenant}/connections/{cid}/.well-known/jwks.json").status \
        == 404
    assert api.get(f"/api/v2/connections/{cid}/keys").status == 404
    assert live_server.services.store.query(pk).items
    done = admin.handle({"action": "purge-deleted", "kind": "auth0", "ring": api.tenant,
                         "id": cid}, live_server.services)
    assert done["ok"] and done["purged"] == 1, done
    assert live_server.services.store.query(pk).items == []

    acts = {a["object"] for a in _audit(live_server, "auth0.connection_key.create")}
    assert {f"auth0/{api.tenant}/connections/{cid}/keys/{k}" for k in (cur, nxt)} <= acts
    rot = [a for a in _audit(live_server, "auth0.connection_key.rotate")
           if a["object"].startswith(f"auth0/{api.tenant}/") and a["outcome"] == "success"]
    assert {a["details"]["kid"] for a in rot} == {new["kid"], newer["kid"]}


def test_rotate_provisions_keys_on_a_connection_without_keys(sqlite_server):
    api = Api(sqlite_server, _tenant())
    cid = api.connection("oidc")["id"]
    r = api.post(f"/api/v2/connections/{cid}/keys/rotate", {"signing_alg": "ES256"})
    assert r.status == 201 and r.json["next"] is True
    keys = api.get(f"/api/v2/connections/{cid}/keys").json
    assert [(k["current"], k["next"]) for k in keys] == [(True, False), (False, True)]
    assert keys[1]["kid"] == r.json["kid"]


# ---- authentication, scopes, tenants ---------------------------------------------------------

def test_authentication_and_scope_errors(sqlite_server):
    tenant = _tenant()
    owner = Api(sqlite_server, tenant)
    cid = owner.connection("oidc")["id"]
    anon = sqlite_server.client()
    for method, path in (("GET", "/api/v2/keys/signing"), ("POST", "/api/v2/connections"),
                         ("GET", f"/api/v2/connections/{cid}/keys")):
        r = anon.request(method, path)
        assert r.status == 401 and r.json == {"statusCode": 401, "error": "Unauthorized",
                                              "message": "Missing authentication"}
    r = anon.get("/api/v2/keys/signing", headers={"Authorization": "Bearer kf_not-a-token"})
    assert r.status == 401 and r.json["message"] == "Invalid token"
    r = anon.get("/api/v2/keys/signing", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status == 401

    reader = Api(sqlite_server, tenant, "read:connections_keys")
    assert reader.get(f"/api/v2/connections/{cid}/keys").status == 200
    r = reader.post(f"/api/v2/connections/{cid}/keys")
    assert r.status == 403 and r.json == {
        "statusCode": 403, "error": "Forbidden",
        "message": "Insufficient scope; expected any of: create:connections_keys",
        "errorCode": "insufficient_scope"}
    creator = Api(sqlite_server, tenant, "create:connections_keys")
    r = creator.post(f"/api/v2/connections/{cid}/keys/rotate")
    assert r.status == 403 and "update:connections_keys" in r.json["message"]
    for path, method in (("/api/v2/keys/signing", "GET"), ("/api/v2/keys/signing/rotate", "POST"),
                         ("/api/v2/keys/signing/abc/revoke", "PUT"),
                         ("/api/v2/connections", "GET"), (f"/api/v2/connections/{cid}", "DELETE")):
        r = reader.c.request(method, path, headers=reader._h())
        assert r.status == 403 and r.json["errorCode"] == "insufficient_scope", path

    # a token of another tenant does not see this tenant's connection (404), and without the
    # scope it is refused first (403); a non-auth0 token is refused too
    stranger = Api(sqlite_server, _tenant())
    r = stranger.get(f"/api/v2/connections/{cid}")
    assert r.status == 404 and r.json["message"] == "Connection not found."
    assert stranger.get(f"/api/v2/connections/{cid}/keys").status == 404
    assert stranger.post(f"/api/v2/connections/{cid}/keys").status == 404
    assert stranger.delete(f"/api/v2/connections/{cid}").status == 404
    weak = Api(sqlite_server, _tenant(), "read:signing_keys")
    assert weak.get(f"/api/v2/connections/{cid}/keys").status == 403
    vault = Api(sqlite_server, tenant, token=sqlite_server.mint("storedsafe:179:read"))
    assert vault.get("/api/v2/keys/signing").status == 403
    assert owner.get(f"/api/v2/connections/{cid}").status == 200  # still there

    denied = [a for a in _audit(sqlite_server, "auth0.connection_key.create")
              if a["outcome"] == "denied" and a["object"].startswith(f"auth0/{tenant}/")]
    assert denied and denied[0]["details"] == {"reason": "forbidden"}


# ---- tenant signing keys ---------------------------------------------------------------------

def test_signing_keys_three_rotations_and_a_revoke(live_server):
    srv = live_server
    api = Api(srv, _tenant())
    jwks_path = f"/tenants/{api.tenant}/.well-known/jwks.json"
    public = srv.client()
    assert public.get(jwks_path).status == 404  # no keys until the tenant is used

    keys = api.get("/api/v2/keys/signing").json
    assert [(k["current"], k["next"], k["previous"], k["revoked"]) for k in keys] == \
        [(True, False, False, False), (False, True, False, False)]
    k1, k2 = keys[0]["kid"], keys[1]["kid"]
    assert keys[0]["current_since"].endswith("Z") and "current_since" not in keys[1]
    assert set(keys[0]) == {"kid", "cert", "pkcs7", "fingerprint", "thumbprint", "current",
                            "next", "previous", "revoked", "current_since"}
    jwks_doc = public.get(jwks_path).json
    assert [k["kid"] for k in jwks_doc["keys"]] == [k1, k2]
    for key in keys:
        _check_key({**key, "pkcs": key["pkcs7"], "algorithm": "RS256", "key_use": "signing",
                    "subject_dn": f"CN={api.tenant}"}, "RS256", jwks_doc, api.tenant)
    assert api.get(f"/api/v2/keys/signing/{k1}").json == keys[0]

    # a JWT signed through the HSM layer with the current key verifies against the JWKS
    signer = domain(srv.services).signer(api.tenant)
    assert (signer.kid, signer.algorithm) == (k1, "RS256")
    token1 = _sign_jwt(srv, signer, {"iss": f"https://{api.tenant}/", "sub": "user-1"})
    assert jwt.decode(token1, KeySet.import_key_set(jwks_doc)).claims["sub"] == "user-1"

    kids = [k1, k2]
    for _ in range(3):
        r = api.post("/api/v2/keys/signing/rotate")
        assert r.status == 201 and set(r.json) == {"cert", "kid"}
        kids.append(r.json["kid"])
        state = {k["kid"]: k for k in api.get("/api/v2/keys/signing").json}
        assert state[kids[-2]]["current"] and state[kids[-1]]["next"]
        assert state[kids[-3]]["previous"] and "current_until" in state[kids[-3]]
        assert state[kids[-1]]["cert"] == r.json["cert"]
    # after three rotations: k4 current, k5 next, k3 k2 k1 previous (newest first)
    listed = api.get("/api/v2/keys/signing").json
    assert [k["kid"] for k in listed] == [kids[3], kids[4], kids[2], kids[1], kids[0]]
    assert [k["previous"] for k in listed] == [False, False, True, True, True]
    jwks_doc = public.get(jwks_path).json
    assert [k["kid"] for k in jwks_doc["keys"]] == [kids[3], kids[4], kids[2], kids[1], kids[0]]
    # the old token still verifies: its key is a previous key, published until revoked
    assert jwt.decode(token1, KeySet.import_key_set(jwks_doc)).claims["sub"] == "user-1"
    token4 = _sign_jwt(srv, domain(srv.services).signer(api.tenant), {"sub": "user-4"})
    assert jwt.decode(token4, KeySet.import_key_set(jwks_doc)).claims["sub"] == "user-4"

    # revoke: only a previous key
    for kid in (kids[3], kids[4]):
        r = api.put(f"/api/v2/keys/signing/{kid}/revoke")
        assert r.status == 400 and r.json["errorCode"] == "key_not_revocable"
    r = api.put("/api/v2/keys/signing/nope/revoke")
    assert r.status == 404 and r.json["message"] == "Signing key not found."
    assert api.get("/api/v2/keys/signing/nope").status == 404
    r = api.put(f"/api/v2/keys/signing/{k1}/revoke", {"extra": True})
    assert r.status == 400 and r.json["errorCode"] == "invalid_body"
    r = api.put(f"/api/v2/keys/signing/{k1}/revoke")
    assert r.status == 200 and r.json == {"cert": listed[4]["cert"], "kid": k1}
    revoked = api.get(f"/api/v2/keys/signing/{k1}").json
    assert revoked["revoked"] is True and revoked["previous"] is False
    assert revoked["revoked_at"].endswith("Z")
    assert api.put(f"/api/v2/keys/signing/{k1}/revoke").status == 400  # already revoked
    jwks_doc = public.get(jwks_path).json
    assert k1 not in {k["kid"] for k in jwks_doc["keys"]} and len(jwks_doc["keys"]) == 4
    with pytest.raises((JoseError, ValueError)):
        jwt.decode(token1, KeySet.import_key_set(jwks_doc))
    # the revoked key's private key is gone from the store; it never comes back
    item = srv.services.store.get(tenant_ring(api.tenant).pk, KEY_SK_PREFIX + k1)
    assert item["wrapped"] is None and item["cert"]
    api.post("/api/v2/keys/signing/rotate")
    after = {k["kid"]: k for k in api.get("/api/v2/keys/signing").json}
    assert after[k1]["revoked"] and not (after[k1]["current"] or after[k1]["next"]
                                         or after[k1]["previous"])
    ring_state(srv.services, tenant_ring(api.tenant))

    # audit: rotations and the revocation, with no key material
    rotations = [a for a in _audit(srv, "auth0.signing_key.rotate")
                 if a["object"].startswith(f"auth0/{api.tenant}/") and a["outcome"] == "success"]
    assert len(rotations) == 4
    revokes = [a for a in _audit(srv, "auth0.signing_key.revoke")
               if a["object"] == f"auth0/{api.tenant}/signing/{k1}"]
    assert [a["outcome"] for a in revokes].count("success") == 1
    for a in rotations + revokes:
        text = json.dumps(a, default=repr)
        assert "BEGIN" not in text and "wrapped" not in text and "blob" not in text
        assert set(a["details"]) <= {"kid", "algorithm", "slot", "reason", "count"}


def test_racing_rotations_leave_one_current_and_one_next(live_server):
    srv = live_server
    tenant = _tenant()
    first = Api(srv, tenant).get("/api/v2/keys/signing").json
    before = [k["kid"] for k in first]
    apis = [Api(srv, tenant) for _ in range(4)]
    barrier = threading.Barrier(len(apis))
    results: list[Any] = [None] * len(apis)

    def rotate(i: int) -> None:
        barrier.wait()
        results[i] = apis[i].post("/api/v2/keys/signing/rotate")

    threads = [threading.Thread(target=rotate, args=(i,)) for i in range(len(apis))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == [201] * 4, [r.text for r in results]
    new = [r.json["kid"] for r in results]
    assert len(set(new)) == 4
    head, keys = ring_state(srv.services, tenant_ring(tenant))
    kids = {k.kid for k in keys}
    assert kids == set(before) | set(new)
    assert head["current"] in new and head["next"] in new and not any(k.revoked for k in keys)
    previous = [k.kid for k in keys if k.previous]
    assert set(previous) == kids - {head["current"], head["next"]}
    assert previous[-2:] == before[::-1]  # the original keys became previous first
    listed = apis[0].get("/api/v2/keys/signing").json
    assert sum(k["current"] for k in listed) == 1 and sum(k["next"] for k in listed) == 1


def test_racing_first_access_creates_the_tenant_keys_once(live_server):
    tenant = _tenant()
    apis = [Api(live_server, tenant) for _ in range(3)]
    barrier = threading.Barrier(len(apis))
    results: list[Any] = [None] * len(apis)

    def first_look(i: int) -> None:
        barrier.wait()
        results[i] = apis[i].get("/api/v2/keys/signing")

    threads = [threading.Thread(target=first_look, args=(i,)) for i in range(len(apis))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == [200] * 3
    assert len({tuple(k["kid"] for k in r.json) for r in results}) == 1
    assert len(live_server.services.store.query(tenant_ring(tenant).pk, "key#").items) == 2


def test_default_tenant_and_public_jwks(sqlite_server):
    admin = Api(sqlite_server, "*")
    keys = admin.get("/api/v2/keys/signing").json
    public = sqlite_server.client()
    default = public.get("/.well-known/jwks.json")
    assert default.status == 200
    assert [k["kid"] for k in default.json["keys"]] == \
        [k["kid"] for k in keys if not k["revoked"]]
    assert public.get("/tenants/default/.well-known/jwks.json").json == default.json
    assert public.get("/tenants/no-such-tenant/.well-known/jwks.json").status == 404
    assert public.get("/tenants/bad%23tenant/.well-known/jwks.json").status == 404
    con = admin.connection("okta")
    admin.post(f"/api/v2/connections/{con['id']}/keys", {"signing_alg": "ES256"})
    r = public.get(f"/connections/{con['id']}/.well-known/jwks.json")
    assert r.status == 200 and len(r.json["keys"]) == 2
    assert {k["crv"] for k in r.json["keys"]} == {"P-256"}
    assert public.get("/connections/con_0000000000000000/.well-known/jwks.json").status == 404


def test_storedsafe_routes_still_match_beside_auth0_routes(sqlite_server):
    # /api/v2/... static routes must not swallow the /api/{version}/transparent/... family
    r = sqlite_server.client().get("/api/v2/transparent/179/keys")
    assert not (isinstance(r.json, dict) and "statusCode" in r.json), r.text


def test_odd_kids_are_404_and_validation_failures_are_audited(live_server):
    api = Api(live_server, _tenant())
    long_kid = "A" * 1100  # longer than a store key may be: never a kid of ours
    for r in (api.get(f"/api/v2/keys/signing/{long_kid}"),
              api.put(f"/api/v2/keys/signing/{long_kid}/revoke")):
        assert r.status == 404 and r.json["errorCode"] == "inexistent_signing_key", r.text
    # a body the dialect refuses after authorization is audited as the action's failure
    r = api.post("/api/v2/connections", {"name": "bad-one", "strategy": "nope"})
    assert r.status == 400 and r.json["errorCode"] == "invalid_body"
    recs = [a for a in live_server.services.audit.find(action="auth0.connection.create")
            if a["object"] == f"auth0/{api.tenant}/connections"]
    assert [(a["outcome"], a["details"]) for a in recs] == \
        [("failure", {"reason": "invalid_input"})]
