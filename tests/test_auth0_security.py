"""Auth0 dialect security review: blob binding by location, input that must be a 400, audit."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest

from chalicelib.core.audit import AuditLog
from chalicelib.core.limits import GenerationRate
from chalicelib.core.rotating import KEY_SK_PREFIX
from chalicelib.core.services import Services
from chalicelib.core.signing import SigningRings
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.errors import InvalidInput, MisplacedRecord, NotFound
from tests.auth0_support import collect, connection_ring, domain, grant, tenant_ring
from tests.test_auth0_api import Api


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _strict_json(raw: bytes) -> Any:
    """Parse as a strict client would: NaN/Infinity and lone surrogates are errors."""
    def no_constants(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    text = raw.decode("utf-8")  # strict: a lone surrogate cannot be in valid UTF-8
    data = json.loads(text, parse_constant=no_constants)
    json.dumps(data, ensure_ascii=False).encode("utf-8")  # no lone surrogate escapes either
    return data


def _copy_item(store: Any, item: dict[str, Any], pk: str, sk: str | None = None,
               **changes: Any) -> None:
    """Write a raw store item unchanged (except for `changes`) to another place."""
    moved = {k: v for k, v in item.items() if k != "version"}
    moved.update(pk=pk, sk=sk or item["sk"], **changes)
    store.put_if_absent(moved)


# ---- 1. blobs are bound to where they are found, not to what the record says ---------------

def test_a_connection_copied_to_another_tenant_is_not_readable_there(live_server):
    store = live_server.services.store
    acme, beta = Api(live_server, _tenant()), Api(live_server, _tenant())
    secret = f"s3cret-{uuid.uuid4().hex}"
    con = acme.connection("okta", options={"client_id": "abc", "client_secret": secret})
    cid = con["id"]
    raw = store.get(f"auth0#{acme.tenant}#connections", f"con#{cid}")
    beta_pk = f"auth0#{beta.tenant}#connections"

    # the item copied unchanged into beta's partition: misplaced (it names acme), so never
    # used there: a generic 500 when addressed, left out of the list, audited as a failure
    _copy_item(store, raw, beta_pk)
    r = beta.get(f"/api/v2/connections/{cid}")
    assert r.status == 500 and r.json["errorCode"] == "internal_error", r.text
    assert secret not in r.text and acme.tenant not in r.text and cid not in r.text
    r = beta.get("/api/v2/connections")
    assert r.status == 200 and r.json == []
    keys = f"/api/v2/connections/{cid}/keys"
    for r in (beta.get(keys), beta.post(keys), beta.post(keys + "/rotate")):
        assert r.status == 500 and secret not in r.text
    assert beta.delete(f"/api/v2/connections/{cid}").status == 500
    audited = [a for a in live_server.services.audit.find()
               if a["object"].startswith(f"auth0/{beta.tenant}/") and a["outcome"] == "failure"]
    assert {a["action"] for a in audited} >= {"auth0.connection.read", "auth0.connection.list",
                                               "auth0.connection.delete"}
    assert all(a["details"]["reason"] == "internal_error" for a in audited)

    # the copy edited to claim beta as its tenant: the HSM binding refuses the sealed options
    # (a tampered store: a generic 500, never the secret; left out of the list)
    store.delete_if(beta_pk, f"con#{cid}")
    _copy_item(store, raw, beta_pk, tenant=beta.tenant)
    r = beta.get(f"/api/v2/connections/{cid}")
    assert r.status == 500 and secret not in r.text, r.text
    assert r.json["errorCode"] == "internal_error" and "blob" not in r.text
    r = beta.get("/api/v2/connections")
    assert r.status == 200 and r.json == [] and secret not in r.text

    # the owner is unaffected
    r = acme.get(f"/api/v2/connections/{cid}")
    assert r.status == 200 and r.json["options"]["client_secret"] == secret
    assert [c["id"] for c in acme.get("/api/v2/connections").json] == [cid]


def test_a_connection_item_under_another_id_is_not_readable(sqlite_server):
    store = sqlite_server.services.store
    api = Api(sqlite_server, _tenant())
    secret = f"s3cret-{uuid.uuid4().hex}"
    con = api.connection("oidc", options={"client_secret": secret})
    pk = f"auth0#{api.tenant}#connections"
    raw = store.get(pk, f"con#{con['id']}")
    other = "con_" + "Z" * 16
    _copy_item(store, raw, pk, sk=f"con#{other}")
    r = api.get(f"/api/v2/connections/{other}")
    assert r.status == 500 and secret not in r.text
    # the id claim edited too: the sealed options were bound to the original id
    store.delete_if(pk, f"con#{other}")
    _copy_item(store, raw, pk, sk=f"con#{other}", id=other)
    r = api.get(f"/api/v2/connections/{other}")
    assert r.status == 500 and secret not in r.text
    assert api.get(f"/api/v2/connections/{con['id']}").json["options"]["client_secret"] == secret


@pytest.fixture
def auth0(settings, hsm, store) -> SigningRings:
    return domain(Services(settings, store, hsm, TokenService(store), AuditLog(store),
                           GenerationRate(store, settings)))


def _caller(*scopes: str) -> Caller:
    principal = Principal("tid", "sec-test", tuple(Scope.parse(s) for s in scopes), 2**40)
    return Caller(principal, "rid-sec")


def _sign_with_current(auth0: SigningRings, ref: Any) -> bytes:
    signer = auth0.rings.signer(ref)
    return auth0.rings._hsm.sign(signer.wrapped, signer.context, b"data", signer.scheme)


def test_a_key_item_moved_inside_its_ring_cannot_sign(auth0, store):
    tenant = _tenant()
    caller = _caller(f"auth0:{tenant}:read:signing_keys")
    current, nxt = auth0.signing_keys(grant(auth0, caller, tenant, "signing_key.list"))[:2]
    ref = tenant_ring(tenant)
    a = store.get(ref.pk, KEY_SK_PREFIX + current.kid)
    b = store.get(ref.pk, KEY_SK_PREFIX + nxt.kid)
    # the whole next-key item (its kid field included) replaces the current key's item
    store.update_if_version({k: v for k, v in b.items() if k != "version"} | {"sk": a["sk"]},
                            a["version"])
    with pytest.raises(MisplacedRecord):
        _sign_with_current(auth0, ref)
    # the moved item is not shown as (or in place of) the current key
    seen: list[Exception] = []
    keys = auth0.rings.keys(ref, collect(seen))
    assert [(k.kid, k.current, k.next) for k in keys] == [(nxt.kid, False, True)]
    assert len(seen) == 1 and isinstance(seen[0], MisplacedRecord)
    with pytest.raises(MisplacedRecord):
        auth0.rings.key(ref, current.kid)


def test_a_signing_ring_copied_to_another_tenant_cannot_sign(auth0, store):
    acme, beta = _tenant(), _tenant()
    auth0.signing_keys(grant(auth0, _caller(f"auth0:{acme}:read:signing_keys"), acme,
                             "signing_key.list"))
    src, dst = tenant_ring(acme), tenant_ring(beta)
    _sign_with_current(auth0, src)  # the owner signs
    for item in store.query(src.pk).items:
        _copy_item(store, item, dst.pk)
    with pytest.raises(MisplacedRecord):
        _sign_with_current(auth0, dst)
    # nor shown or published there as the other tenant's keys: reported and left out
    seen: list[Exception] = []
    assert auth0.rings.keys(dst, collect(seen)) == [] and len(seen) == 2
    assert auth0.ring_jwks(beta) == {"keys": []}
    # even with the blob's context edited to the new place: the HSM binding check refuses it
    item = store.get(dst.pk, KEY_SK_PREFIX + store.get(dst.pk, "ring")["current"])
    edited = {**item, "wrapped": {**item["wrapped"],
                                  "context": dst.key_context(item["kid"])}}
    store.update_if_version({k: v for k, v in edited.items() if k != "version"},
                            item["version"])
    with pytest.raises(MisplacedRecord):
        _sign_with_current(auth0, dst)
    assert auth0.ring_jwks(beta) == {"keys": []}


def test_connection_keys_copied_to_another_connection_cannot_sign(auth0, store):
    tenant = _tenant()
    caller = _caller(f"auth0:{tenant}:create:connections,create:connections_keys")
    create = grant(auth0, caller, tenant, "connection.create")
    a = auth0.create_connection(create, {"name": "con-a", "strategy": "oidc"})
    b = auth0.create_connection(create, {"name": "con-b", "strategy": "oidc"})
    auth0.create_connection_keys(grant(auth0, caller, tenant, "connection_key.create"),
                                 a["id"], "ES256")
    ra = connection_ring(tenant, auth0.connections.get(tenant, a["id"]))
    rb = connection_ring(tenant, auth0.connections.get(tenant, b["id"]))
    _sign_with_current(auth0, ra)
    for item in store.query(ra.pk).items:
        _copy_item(store, item, rb.pk)
    with pytest.raises(MisplacedRecord):
        _sign_with_current(auth0, rb)
    assert auth0.connection_jwks(tenant, b["id"]) == {"keys": []}


def test_core_reads_check_the_record_location(auth0, store):
    tenant, other = _tenant(), _tenant()
    caller = _caller(f"auth0:{tenant}:create:connections")
    con = auth0.create_connection(grant(auth0, caller, tenant, "connection.create"),
                                  {"name": "n1", "strategy": "okta",
                                   "options": {"client_secret": "zz"}})
    raw = store.get(f"auth0#{tenant}#connections", f"con#{con['id']}")
    _copy_item(store, raw, f"auth0#{other}#connections")
    with pytest.raises(MisplacedRecord):
        auth0.connections.get(other, con["id"])
    with pytest.raises(NotFound):
        auth0.connections.get(other, "con_" + "Q" * 16)
    seen: list[Exception] = []
    assert auth0.connections.list(other, collect(seen)) == [] and len(seen) == 1


# ---- 2. bad input is a 400 in Auth0's envelope, never a 500 or invalid JSON ----------------

_BAD_BODIES: list[tuple[str, Any, str]] = [
    ("empty metadata key", {"metadata": {"": "x"}},
     "'Invalid property name: String should have at least 1 character' on property metadata."),
    ("long metadata key", {"metadata": {"k" * 256: "x"}},
     "'Invalid property name: String should have at most 255 characters' on property "
     "metadata."),
    ("lone surrogate metadata key", {"metadata": {"\ud800": "x"}},
     "'Property name is not valid Unicode' on property metadata."),
    ("lone surrogate metadata value", {"metadata": {"k": "a\udfffb"}},
     "'String is not valid Unicode' on property metadata.k."),
    ("eleven metadata keys", {"metadata": {f"k{i}": "v" for i in range(11)}}, "metadata"),
    ("long metadata value", {"metadata": {"k": "v" * 256}}, "metadata.k"),
    ("non-string metadata value", {"metadata": {"k": 1}},
     "'Invalid type: integer' on property metadata.k."),
    ("lone surrogate option value", {"options": {"client_secret": "\ud83d"}},
     "'String is not valid Unicode' on property options.client_secret."),
    ("lone surrogate option key", {"options": {"\udc00": 1}},
     "'Property name is not valid Unicode' on property options."),
    ("nested lone surrogate option", {"options": {"a": [{"b": ["ok", "\ud800"]}]}},
     "on property options.a.0.b.1."),
    ("lone surrogate display_name", {"display_name": "\ud800"}, "on property display_name."),
    ("lone surrogate realm", {"realms": ["\ud800"]}, "on property realms.0."),
    ("lone surrogate enabled client", {"enabled_clients": ["\ud800"]},
     "on property enabled_clients.0."),
    ("lone surrogate name", {"name": "\ud800"}, "on property name."),
    ("too deep options", {"options": json.loads('{"a":' * 40 + "1" + "}" * 40)},
     "'Nesting is deeper than 32 levels' on property options.a.a"),
]


@pytest.mark.parametrize("label, extra, fragment", _BAD_BODIES, ids=[b[0] for b in _BAD_BODIES])
def test_bad_connection_fields_are_400(sqlite_server, label, extra, fragment):
    api = Api(sqlite_server, _tenant())
    body = {"name": "c1", "strategy": "oidc", **extra}
    r = api.post("/api/v2/connections", body)
    assert r.status == 400, (label, r.status, r.text)
    got = _strict_json(r.body)
    assert got["statusCode"] == 400 and got["error"] == "Bad Request"
    assert got["errorCode"] == "invalid_body"
    assert got["message"].startswith("Payload validation error: ")
    assert fragment in got["message"], got["message"]
    assert api.get("/api/v2/connections").json == []


def test_bodies_nested_beyond_the_parser_are_400(sqlite_server):
    api = Api(sqlite_server, _tenant())
    for depth in (40, 990, 5000, 100_000):
        raw = b'{"name": "c1", "strategy": "oidc", "options": ' + b'{"a":' * depth + b"1" \
            + b"}" * depth + b"}"
        r = api.post("/api/v2/connections", raw=raw)
        assert r.status == 400, (depth, r.text)
        assert _strict_json(r.body)["errorCode"] == "invalid_body"
        raw = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
        r = api.post("/api/v2/keys/signing/rotate", raw=raw)
        assert r.status == 400 and _strict_json(r.body)["errorCode"] == "invalid_body"
    assert api.get("/api/v2/connections").json == []


def test_odd_connection_ids_in_the_path_are_404(sqlite_server):
    api = Api(sqlite_server, _tenant())
    for cid in ("con_%ED%A0%80", "%ED%A0%80", "con_%00", "con_" + "a" * 2000, "con_a%2Fb",
                "con_%F0%9F%98%80"):
        for r in (api.get(f"/api/v2/connections/{cid}"),
                  api.get(f"/api/v2/connections/{cid}/keys"),
                  api.delete(f"/api/v2/connections/{cid}"),
                  api.post(f"/api/v2/connections/{cid}/keys/rotate")):
            assert r.status == 404, (cid, r.status, r.text)
            assert _strict_json(r.body)["errorCode"] == "inexistent_connection"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_in_options_are_400(sqlite_server, literal):
    api = Api(sqlite_server, _tenant())
    for options in (f'{{"x": {literal}}}', f'{{"a": {{"b": [1, {literal}]}}}}'):
        raw = f'{{"name": "c1", "strategy": "oidc", "options": {options}}}'.encode()
        r = api.post("/api/v2/connections", raw=raw)
        assert r.status == 400, r.text
        got = _strict_json(r.body)
        assert got["errorCode"] == "invalid_body" and "options" in got["message"]
    # anywhere in the body, not only in options
    raw = f'{{"name": "c1", "strategy": "oidc", "show_as_button": {literal}}}'.encode()
    r = api.post("/api/v2/connections", raw=raw)
    assert r.status == 400 and _strict_json(r.body)["errorCode"] == "invalid_body"
    r = api.post("/api/v2/keys/signing/rotate", raw=f'{{"x": {literal}}}'.encode())
    assert r.status == 400 and _strict_json(r.body)["errorCode"] == "invalid_body"
    assert api.get("/api/v2/connections").json == []


def test_valid_unicode_numbers_and_metadata_limits_round_trip(sqlite_server):
    api = Api(sqlite_server, _tenant())
    metadata = {f"k{i}": "v" for i in range(9)} | {"ключ-😀" + "k" * 248: "😀" * 255}
    options = {"emoji": "😀 \u00e9 \u4e2d", "big": 10**30, "small": -1.5e-300, "f": 1e308,
               "nested": {"a": [1.5, None, True, "x"]}, "": "empty keys are fine in options"}
    con = api.connection("oidc", metadata=metadata, options=options, display_name="Ünïcode 😀")
    r = api.get(f"/api/v2/connections/{con['id']}")
    assert r.status == 200
    got = _strict_json(r.body)
    assert got["metadata"] == metadata and got["options"] == options
    assert got["display_name"] == "Ünïcode 😀"
    assert all(math.isfinite(v) for v in (got["options"]["small"], got["options"]["f"]))


def test_core_rejects_what_the_store_or_json_cannot_hold(auth0):
    tenant = _tenant()
    caller = _caller(f"auth0:{tenant}:create:connections")
    bad = [{"metadata": {"": "x"}}, {"metadata": {"\ud800": "x"}},
           {"options": {"x": float("nan")}}, {"options": {"x": float("inf")}},
           {"options": {"x": "\udfff"}}, {"display_name": "\ud800"},
           {"realms": [{"": 1}]}]  # (what metadata may hold beyond that: the dialect's)
    create = grant(auth0, caller, tenant, "connection.create")
    for extra in bad:
        with pytest.raises(InvalidInput):
            auth0.create_connection(create, {"name": "n", "strategy": "oidc", **extra})
    assert auth0.connections.list(tenant, collect([])) == []


# ---- 3. every use of the sealed options, and every refusal, is audited ---------------------

def _records(srv: Any, action: str, prefix: str) -> list[dict[str, Any]]:
    return [a for a in srv.services.audit.find(action=action)
            if a["object"].startswith(prefix)]


def test_reading_connections_is_audited_without_secrets(live_server):
    api = Api(live_server, _tenant())
    secret = f"s3cret-{uuid.uuid4().hex}"
    con = api.connection("okta", options={"client_secret": secret}, metadata={"m": "v"})
    api.connection("oidc", options={"client_secret": secret + "2"})
    prefix = f"auth0/{api.tenant}/"

    assert api.get(f"/api/v2/connections/{con['id']}").status == 200
    [read] = _records(live_server, "auth0.connection.read", prefix)
    assert read["object"] == f"auth0/{api.tenant}/connections/{con['id']}"
    assert read["outcome"] == "success" and read["principal"] == "tester"
    assert read["request_id"] and read["token_id"]
    assert read["details"] == {"name": con["name"], "strategy": "okta"}

    # one record per list call, however many connections it opened
    for query in ("", "?strategy=okta", "?per_page=1&page=1&include_totals=true"):
        assert api.get(f"/api/v2/connections{query}").status == 200
    lists = _records(live_server, "auth0.connection.list", prefix)
    assert len(lists) == 3
    assert {a["object"] for a in lists} == {f"auth0/{api.tenant}/connections"}
    assert sorted(a["details"]["count"] for a in lists) == [1, 2, 2]
    assert all(a["outcome"] == "success" for a in lists)

    # a miss is audited as a failure
    assert api.get("/api/v2/connections/con_0000000000000000").status == 404
    [miss] = _records(live_server, "auth0.connection.read",
                      f"auth0/{api.tenant}/connections/con_0000000000000000")
    # the core's neutral reason (the vendor's code is the dialect's, in the response)
    assert miss["outcome"] == "failure" and miss["details"] == {"reason": "not_found"}

    everything = json.dumps([a for a in live_server.services.audit.find()
                             if a["object"].startswith(prefix)], default=repr)
    assert secret not in everything and "client_secret" not in everything
    assert "options" not in everything


def test_a_token_bound_to_two_tenants_is_refused_and_audited(sqlite_server):
    """(Every other 403 and its denied record: the conformance suite, for every route.)"""
    srv = sqlite_server
    tenant = _tenant()
    cid = Api(srv, tenant).connection("oidc")["id"]
    principal = f"two-{uuid.uuid4().hex[:8]}"
    two = Api(srv, tenant, token=srv.mint(f"auth0:{tenant}:read:connections",
                                          f"auth0:{_tenant()}:read:connections",
                                          principal=principal))
    r = two.get(f"/api/v2/connections/{cid}")
    assert r.status == 403 and r.json["errorCode"] == "insufficient_scope"
    assert r.json["message"] == "The token is bound to more than one tenant."
    [denied] = [a for a in srv.services.audit.find() if a["principal"] == principal]
    assert denied["outcome"] == "denied" and denied["action"] == "auth0.connection.read"
    assert denied["details"] == {"reason": "forbidden"} and denied["request_id"]
