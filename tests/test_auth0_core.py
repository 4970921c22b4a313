"""The Auth0 core in-process, on the real HSM token and both stores."""

from __future__ import annotations

import json

import pytest
from cryptography import x509

from chalicelib.core.audit import AuditLog
from chalicelib.core.limits import GenerationRate
from chalicelib.core.rotating import KEY_SK_PREFIX
from chalicelib.core.services import Services
from chalicelib.core.signing import SigningRings, token_ring
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.errors import Forbidden, IntegrityError, MisplacedRecord
from chalicelib.formats.x509cert import load_pem
from chalicelib.hsm import SignScheme, WrappedKey
from tests.auth0_support import domain, grant, ring_state_of, tenant_ring


@pytest.fixture
def auth0(settings, hsm, store) -> SigningRings:
    return domain(Services(settings, store, hsm, TokenService(store), AuditLog(store),
                           GenerationRate(store, settings)))


def tenant_of(principal: Principal) -> str:
    return token_ring(principal, "auth0", "default")


def _caller(*scopes: str) -> Caller:
    principal = Principal("tid", "core-test", tuple(Scope.parse(s) for s in scopes), 2**40)
    return Caller(principal, "rid-1")


ALL = ("auth0:t1:read:signing_keys,create:signing_keys,update:signing_keys,"
       "read:connections,create:connections,delete:connections,"
       "read:connections_keys,create:connections_keys,update:connections_keys")


def test_tenant_of_a_token():
    assert tenant_of(_caller("auth0:t1:read:signing_keys").principal) == "t1"
    assert tenant_of(_caller("auth0:*:read:signing_keys").principal) == "default"
    assert tenant_of(_caller("storedsafe:1:read").principal) == "default"
    with pytest.raises(Forbidden):
        tenant_of(_caller("auth0:a:read:signing_keys", "auth0:b:read:signing_keys").principal)
    with pytest.raises(Forbidden):
        tenant_of(_caller("auth0:bad#tenant:read:signing_keys").principal)


def test_ring_records_hold_only_wrapped_material_and_public_parts(auth0, store):
    caller = _caller(ALL)
    keys = auth0.signing_keys(grant(auth0, caller, "t1", "signing_key.list"))
    assert [(k.current, k.next) for k in keys] == [(True, False), (False, True)]
    ring_state_of(store, auth0, tenant_ring("t1"))
    for key in keys:
        item = store.get(tenant_ring("t1").pk, KEY_SK_PREFIX + key.kid)
        assert item["wrapped"]["context"] == f"auth0/t1/signing/{key.kid}"
        assert item["wrapped"]["kind"] == "rsa" and item["wrapped"]["size"] == 2048
        assert "PRIVATE" not in json.dumps({k: v for k, v in item.items()
                                            if isinstance(v, str)})
        cert = load_pem(item["cert"])
        assert cert.public_key().public_bytes(
            *_spki()) == bytes(item["wrapped"]["public_der"])


def _spki():
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def test_a_blob_moved_to_another_key_record_cannot_sign(auth0, store):
    caller = _caller(ALL)
    current, nxt = auth0.signing_keys(grant(auth0, caller, "t1", "signing_key.list"))[:2]
    pk = tenant_ring("t1").pk
    a = store.get(pk, KEY_SK_PREFIX + current.kid)
    b = store.get(pk, KEY_SK_PREFIX + nxt.kid)
    # swap: the current key's record now carries the next key's wrapped blob
    store.update_if_version({**a, "wrapped": b["wrapped"]}, a["version"])
    with pytest.raises(MisplacedRecord):  # refused before the HSM is asked to sign
        auth0.signer("t1")
    # and the blob itself, presented under the current key's context, fails in the HSM
    with pytest.raises(IntegrityError):
        auth0.rings._hsm.sign(WrappedKey.from_dict(b["wrapped"]),
                              tenant_ring("t1").key_context(current.kid), b"data",
                              SignScheme.RSA_PKCS1_SHA256)


def test_certificates_are_signed_by_the_key_they_certify(auth0):
    keys = auth0.signing_keys(grant(auth0, _caller(ALL), "t1", "signing_key.list"))
    for key in keys:
        cert = x509.load_pem_x509_certificate(key.cert.encode())
        cert.verify_directly_issued_by(cert)
        assert key.subject_dn == "CN=t1"


def test_long_connection_names_fit_the_certificate_and_subject_dn(auth0):
    caller = _caller(ALL)
    name = "n" + "-x" * 63 + "z"  # 128 characters, Auth0's maximum
    assert len(name) == 128
    con = auth0.create_connection(grant(auth0, caller, "t1", "connection.create"),
                                  {"name": name, "strategy": "okta"})
    keys = auth0.create_connection_keys(grant(auth0, caller, "t1", "connection_key.create"),
                                        con["id"], "ES256")
    for key in keys:
        assert key.subject_dn == "CN=" + name[:64] and len(key.subject_dn) <= 132
        assert len(key.cert) <= 4096 and len(key.pkcs7) <= 4096


def test_error_envelope_never_discloses_internals():
    from chalicelib.dialects.auth0.envelope import render
    from chalicelib.dialects.http import InternalError
    from chalicelib.errors import Conflict, StoreTransactionCancelled, Unavailable

    for exc in (IntegrityError("blob of key abc does not belong"), InternalError("rid-9")):
        r = render(exc, None, "rid-9")
        body = json.loads(r.body)
        assert r.status_code == 500 and body["statusCode"] == 500
        assert body["error"] == "Internal Server Error" and "rid-9" in body["message"]
        assert "blob" not in r.body
    r = render(Unavailable("store at 10.0.0.7 refused"), None, "rid")
    assert r.status_code == 503 and "10.0.0.7" not in r.body
    r = render(StoreTransactionCancelled(["ConditionalCheckFailed"]), None, "rid")
    assert r.status_code == 409 and json.loads(r.body)["errorCode"] == "conflict"
    r = render(Conflict("busy"), None, "rid")
    assert json.loads(r.body) == {"statusCode": 409, "error": "Conflict", "message": "busy",
                                  "errorCode": "conflict"}


def test_expensive_generation_is_rate_limited_per_token(settings, hsm, store):
    import dataclasses

    from chalicelib.dialects.auth0.envelope import render
    from chalicelib.errors import TooManyRequests

    slow = dataclasses.replace(settings, generation_rate=12)  # RSA-2048 pairs cost 4 each
    dom = domain(Services(slow, store, hsm, TokenService(store), AuditLog(store),
                          GenerationRate(store, slow, clock=lambda: 1_800_000_000.0)))
    caller = _caller(ALL)
    dom.signing_keys(grant(dom, caller, "t1", "signing_key.list"))  # two key pairs: 8
    dom.rotate_signing_key(grant(dom, caller, "t1", "signing_key.rotate"))  # the third: 12
    with pytest.raises(TooManyRequests) as e:
        dom.rotate_signing_key(grant(dom, caller, "t1", "signing_key.rotate"))
    r = render(e.value, None, "rid")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert json.loads(r.body) == {
        "statusCode": 429, "error": "Too Many Requests", "errorCode": "too_many_requests",
        "message": "Global rate limit exceeded: too many key generations; try again later."}
    denied = [a for a in dom._audit.find(action="auth0.signing_key.rotate")
              if a["outcome"] == "failure"]
    assert [a["details"] for a in denied] == [{"reason": "rate_limited"}]
