"""StoredSafe security review findings: backups stay in their vault, records are used only where
they are found, tampered store data is a logged generic 500 (never a misleading 400), failures
are always audited, headers are echoed from an allow-list, and any request content type is read
as JSON. Both stores (live_server)."""

from __future__ import annotations

import base64
import json
from typing import Any

from chalicelib.formats.key_backup import backup_context, backup_digest
from chalicelib.hsm import WrappedKey
from tests.storedsafe_support import API, SS, assert_fail, assert_success, b64, new_vault

# Words of the HSM's or the core's integrity messages: none may reach a client on a 500.
INTERNAL_WORDS = ("belong", "integrity", "verification", "blob", "binding", "tamper", "record",
                  "origin", "context", "kek")


def _enc(doc: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


def _names(ss: SS) -> list[str]:
    r = ss.list()
    assert_success(r, 200)
    return [k["name"] for k in r.json["KEYS"]]


def _assert_internal(r: Any, ss: SS) -> dict[str, Any]:
    """The generic 500 FAIL envelope: one 5000 error naming only the request id."""
    body = assert_fail(r, 500, token=ss.token)
    assert body["ERRORCODES"].keys() == {"5000"}
    assert len(body["ERRORS"]) == 1 and body["ERRORS"][0].startswith("internal error")
    said = " ".join([*body["ERRORS"], *body["ERRORCODES"].values()]).lower()
    for word in INTERNAL_WORDS:
        assert word not in said, (word, said)
    return body


def _audited(live_server: Any, action: str, obj: str, outcome: str = "failure") -> dict:
    recs = [r for r in live_server.services.audit.find(action=action, obj=obj)
            if r["outcome"] == outcome]
    assert recs, (action, obj, outcome)
    return recs[-1]


def _logged(live_server: Any, *words: str) -> None:
    tail = live_server.log_tail(20000)
    assert any(all(w in line for w in words) for line in tail.splitlines()), (words, tail)


# ---- 1. a backup restores only into the vault it was taken from -------------------------------

def test_a_backup_restores_only_into_the_vault_it_was_taken_from(live_server):
    a, b = new_vault(), new_vault()
    owner = SS(live_server, a)
    assert_success(owner.create("k1", info="vault a"), 201)
    ct = owner.ok_encrypt("k1", b"vault a secret")
    backup = owner.backup("k1").json["KEYS"]["backup"]
    stranger = SS(live_server, b)  # Admin on vault b only
    both = SS(live_server, b, token=live_server.mint(f"storedsafe:{a}:read,write,admin",
                                                     f"storedsafe:{b}:read,write,admin"))
    # refused whatever the token may do in vault b: a backup is not moved between vaults
    for client in (stranger, both):
        body = assert_fail(client.restore("copy", backup), 400, token=client.token)
        assert body["ERRORCODES"].keys() == {"4000"}
        assert "another vault" in body["ERRORS"][0] and a not in body["ERRORS"][0]
        assert _names(client) == []
        assert_fail(client.read("copy"), 404)
        assert_fail(client.decrypt("copy", ct), 404)
    rec = _audited(live_server, "storedsafe.key.restore", f"storedsafe/{b}/copy")
    assert rec["details"]["reason"] == "invalid_input"
    doc = json.loads(base64.b64decode(backup))
    assert doc["v"] == 3 and doc["key"]["vault"] == a  # the source vault travels, bound

    # editing the vault (and origin) to the target breaks the backup's binding
    moved = json.loads(json.dumps(doc))
    moved["key"]["vault"] = b
    moved["key"]["origin"] = moved["key"]["origin"].replace(f"{a}/", f"{b}/", 1)
    body = assert_fail(stranger.restore("copy", _enc(moved)), 400, token=stranger.token)
    assert "integrity" in body["ERRORS"][0]
    # a vault that disagrees with the origin is not a backup we made
    split = json.loads(json.dumps(doc))
    split["key"]["vault"] = b
    assert_fail(stranger.restore("copy", _enc(split)), 400, token=stranger.token)
    assert _names(stranger) == []

    # the same vault under another name still works, and opens the original's ciphertext
    r = owner.restore("copy", backup)
    assert assert_success(r, 200)["name"] == "copy"
    assert owner.ok_decrypt("copy", ct) == b"vault a secret"
    rw = assert_success(owner.rewrap("copy", ct), 200)["ciphertext"]
    assert owner.ok_decrypt("k1", rw) == b"vault a secret"  # the same material and origin
    # a backup of the restored copy restores in vault a again, and not in vault b
    again = owner.backup("copy").json["KEYS"]["backup"]
    assert_success(owner.restore("copy2", again), 200)
    assert owner.ok_decrypt("copy2", ct) == b"vault a secret"
    assert_fail(both.restore("copy2", again), 400)
    assert _names(owner) == ["copy", "copy2", "k1"] and _names(stranger) == []


def test_an_old_format_backup_restores_only_into_its_origin_vault(live_server):
    a, b = new_vault(), new_vault()
    owner = SS(live_server, a)
    other = SS(live_server, b)
    assert_success(owner.create("k"), 201)
    assert_success(owner.rotate("k"), 201)
    ct = owner.ok_encrypt("k", b"old format")
    doc = json.loads(base64.b64decode(owner.backup("k").json["KEYS"]["backup"]))
    # what this service wrote before the source vault was bound: v1, no "vault" (the origin's
    # vault is covered by the digest all the same)
    hsm = live_server.services.hsm
    meta_v1 = {k: v for k, v in doc["key"].items()
               if k not in ("vault", "min_available_version")}
    old, new = backup_digest("storedsafe", doc["key"]), backup_digest("storedsafe", meta_v1)
    assert old != new
    for entry in doc["versions"]:
        n, w = entry["key_version"], entry["wrapped"]
        wrapped = WrappedKey.from_dict({**w, **{k: base64.b64decode(w[k])
                                                for k in ("blob", "tag")}})
        moved = hsm.rebind(wrapped, backup_context("storedsafe", old, n),
                           backup_context("storedsafe", new, n))
        entry["wrapped"] = {**w, "context": moved.context, "tag": b64(moved.tag)}
    v1 = _enc({**doc, "v": 1, "key": meta_v1})
    assert_fail(other.restore("k", v1), 400, token=other.token)
    assert _names(other) == []
    assert_success(owner.restore("from-v1", v1), 200)
    assert owner.ok_decrypt("from-v1", ct) == b"old format"


# ---- 2. a key record is used only where it is found -------------------------------------------

def _copy_key_record(store: Any, src_vault: str, src: str, dst: str,
                     dst_vault: str | None = None, **changes: Any) -> dict[str, Any]:
    item = store.get(f"ss#{src_vault}", f"key#{src}")
    copy = {k: v for k, v in item.items() if k != "version"}
    copy.update(pk=f"ss#{dst_vault or src_vault}", sk=f"key#{dst}", **changes)
    store.put_if_absent(copy)
    return item


def test_a_key_record_copied_to_another_name_is_refused(live_server):
    vault = new_vault()
    ss = SS(live_server, vault)
    assert_success(ss.create("k1"), 201)
    ct = ss.ok_encrypt("k1", b"k1 secret")
    store = live_server.services.store
    item = _copy_key_record(store, vault, "k1", "moved")

    for r in (ss.decrypt("moved", ct), ss.read("moved"), ss.encrypt("moved", b"x"),
              ss.rewrap("moved", ct), ss.datakey("wrapped", "moved"), ss.export("moved"),
              ss.backup("moved"), ss.rotate("moved")):
        _assert_internal(r, ss)
        assert b64(b"k1 secret") not in r.text
    _logged(live_server, f"storedsafe/{vault}/moved", "stored record")
    rec = _audited(live_server, "storedsafe.decrypt", f"storedsafe/{vault}/moved")
    assert rec["details"]["reason"] == "internal_error"
    # the listing leaves out what is not where it says it is
    assert _names(ss) == ["k1"]

    # with the version records copied along, the blobs' binding still refuses them
    for v in store.query(f"ss#{vault}#k1#{item['objectid']}", "v#").items:
        store.put_if_absent({**{k: x for k, x in v.items() if k != "version"},
                             "pk": f"ss#{vault}#moved#{item['objectid']}"})
    _assert_internal(ss.decrypt("moved", ct), ss)
    # a record whose own name field was edited to its new place, but origin left: refused too
    _copy_key_record(store, vault, "k1", "renamed", name="renamed")
    assert_success(ss.read("renamed"), 200)  # a renamed record reads as what it is...
    body = assert_fail(ss.decrypt("renamed", ct), 404, token=ss.token)  # ...with no versions
    assert b64(b"k1 secret") not in json.dumps(body)
    # the original is untouched
    assert ss.ok_decrypt("k1", ct) == b"k1 secret"


def test_a_record_whose_origin_points_into_another_vault_is_refused(live_server):
    # What a cross-vault restore left before the fix: a record in vault b, blobs bound to it,
    # with the origin (the AAD) of a key in vault a.
    a, b = new_vault(), new_vault()
    owner, other = SS(live_server, a), SS(live_server, b)
    assert_success(owner.create("k1"), 201)
    ct = owner.ok_encrypt("k1", b"vault a secret")
    store, hsm = live_server.services.store, live_server.services.hsm
    item = store.get(f"ss#{a}", "key#k1")
    oid = "123456789012"
    for v in store.query(f"ss#{a}#k1#{item['objectid']}", "v#").items:
        n = v["key_version"]
        wrapped = WrappedKey.from_dict(v["wrapped"])
        moved = hsm.rebind(wrapped, wrapped.context, f"storedsafe/{b}/stolen/{oid}/{n}")
        store.put_if_absent({"pk": f"ss#{b}#stolen#{oid}", "sk": v["sk"], "key_version": n,
                             "created_at": v["created_at"], "wrapped": moved.to_dict()})
    _copy_key_record(store, a, "k1", "stolen", b, name="stolen", objectid=oid)
    assert store.get(f"ss#{b}", "key#stolen")["origin"].startswith(f"{a}/")

    for r in (other.decrypt("stolen", ct), other.export("stolen"), other.read("stolen"),
              other.encrypt("stolen", b"x")):
        _assert_internal(r, other)
        assert b64(b"vault a secret") not in r.text
    assert _names(other) == []
    assert owner.ok_decrypt("k1", ct) == b"vault a secret"


# ---- 3. no 500 from a deep backup; failures always audited ------------------------------------

def test_a_deeply_nested_backup_is_400(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k"), 201)
    deep = [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"format":"keyfront-storedsafe-backup","v":2,"key":' + b"[" * 100_000
        + b"]" * 100_000 + b',"versions":[]}',
        b'{"format":"keyfront-storedsafe-backup","v":2,"key":{},"versions":'
        + b"{\"a\":" * 50_000 + b"1" + b"}" * 50_000 + b"}",
    ]
    for raw in deep:
        body = assert_fail(ss.restore("copy", base64.b64encode(raw).decode()), 400,
                           token=ss.token)
        assert "backup" in body["ERRORS"][0]
    assert _names(ss) == ["k"]
    rec = _audited(live_server, "storedsafe.key.restore", f"storedsafe/{ss.vault}/copy")
    assert rec["details"]["reason"] == "invalid_input"


def test_failures_with_unstorable_details_are_still_audited(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k"), 201)
    obj = f"storedsafe/{ss.vault}/k"
    for bits in (10**40, -(10**40), 10**38):
        body = assert_fail(ss.datakey("plaintext", "k", bits=bits), 400, token=ss.token)
        assert "bits" in body["ERRORS"][0]
    recs = [r for r in live_server.services.audit.find(action="storedsafe.datakey", obj=obj)
            if r["outcome"] == "failure"]
    assert len(recs) == 3
    for rec in recs:
        assert rec["details"]["reason"] == "invalid_input"
        assert rec["request_id"] and rec["token_id"]


# ---- 4. a tampered stored blob is our fault: a logged, generic 500 ----------------------------

def test_a_tampered_stored_blob_is_a_generic_500_not_a_ciphertext_error(live_server):
    ss = SS(live_server)
    # v1 is written, never read from the store yet
    assert_success(ss.create("k", allow_export=True), 201)
    assert_success(ss.rotate("k"), 201)  # v2 too
    objectid = ss.key("k")["objectid"]
    store = live_server.services.store
    v1, v2 = store.query(f"ss#{ss.vault}#k#{objectid}", "v#").items
    tag = bytearray(v1["wrapped"]["tag"])
    tag[0] ^= 1
    store.update_if_version({**v1, "wrapped": {**v1["wrapped"], "tag": bytes(tag)}},
                            v1["version"])
    store.update_if_version({**v2, "wrapped": {**v2["wrapped"], "kind": "rsa"}}, v2["version"])
    well_formed = "storedsafe:v1:" + b64(bytes(40))
    for r in (ss.decrypt("k", well_formed), ss.rewrap("k", well_formed),
              ss.encrypt("k", b"x", key_version=1), ss.export("k", 1), ss.backup("k"),
              ss.encrypt("k", b"x"), ss.decrypt("k", "storedsafe:v2:" + b64(bytes(40)))):
        _assert_internal(r, ss)
    _logged(live_server, f"storedsafe/{ss.vault}/k", "stored record")
    rec = _audited(live_server, "storedsafe.decrypt", f"storedsafe/{ss.vault}/k")
    assert rec["details"]["reason"] == "internal_error"

    # the client's own bad ciphertext on an intact key is still its 400
    assert_success(ss.create("good"), 201)
    ct = ss.ok_encrypt("good", b"fine")
    flipped = bytearray(base64.b64decode(ct.split(":", 2)[2]))
    flipped[-1] ^= 1
    body = assert_fail(ss.decrypt("good", "storedsafe:v1:" + b64(bytes(flipped))), 400,
                       token=ss.token)
    assert "verification" in body["ERRORS"][0]
    assert_fail(ss.decrypt("good", well_formed), 400)


def test_a_tampered_backup_is_still_the_clients_400(live_server):
    # a backup comes from the client: its binding failure stays a 400, not a 500
    ss = SS(live_server)
    assert_success(ss.create("k"), 201)
    doc = json.loads(base64.b64decode(ss.backup("k").json["KEYS"]["backup"]))
    wrapped = doc["versions"][0]["wrapped"]
    tag = bytearray(base64.b64decode(wrapped["tag"]))
    tag[0] ^= 1
    wrapped["tag"] = b64(bytes(tag))
    body = assert_fail(ss.restore("copy", _enc(doc)), 400, token=ss.token)
    assert "integrity" in body["ERRORS"][0]
    assert _names(ss) == ["k"]


# ---- 5. HEADERS: an allow-list -----------------------------------------------------------------

def test_headers_echo_only_harmless_headers(live_server):
    ss = SS(live_server)
    secrets = {
        "X-Amz-Security-Token": "amz-session-token-value", "Cookie": "session=cookie-value",
        "Authorization": "Bearer bearer-value", "Proxy-Authorization": "Basic proxy-value",
        "X-Api-Key": "api-key-value", "X-Session-Id": "session-id-value",
        "X-Client-Secret": "client-secret-value", "X-Auth-Hint": "auth-hint-value",
        "X-Custom-Key": "custom-key-value", "X-Csrf-Token": "csrf-value",
        "X-Anything-Else": "something-else-value",
    }
    harmless = {"Accept": "*/*", "User-Agent": "curl/7.64.1", "Accept-Encoding": "identity"}
    for r, status in ((ss.create("k", info="x"), 201),
                      (ss.call("GET", f"/{ss.vault}/keys/missing",
                               headers={**secrets, **harmless}), 404),
                      (ss.call("POST", f"/{ss.vault}/keys/k2", {},
                               headers={**secrets, **harmless}), 201)):
        assert r.status == status, r.text
        headers = r.json["HEADERS"]
        lower = {k.lower() for k in headers}
        assert lower <= {"accept", "accept-encoding", "accept-language", "content-length",
                         "content-type", "host", "user-agent"}, headers
        assert "host" in lower
        for value in [*secrets.values(), ss.token]:
            assert value not in json.dumps(headers)
    # what the vendor's example echoes (bar its token) is still echoed, values as sent
    echoed = {k.lower(): v for k, v in headers.items()}
    assert echoed["user-agent"] == "curl/7.64.1" and echoed["accept"] == "*/*"
    assert echoed["content-type"] == "application/json" and echoed["content-length"] == "2"
    assert echoed["host"] == f"127.0.0.1:{live_server.port}"
    assert not any(v in r.text for v in secrets.values())


# ---- 6. any content type: the body is JSON whatever the header says ----------------------------

def test_any_content_type_is_read_as_json(live_server):
    ss = SS(live_server)
    for i, ctype in enumerate(("text/plain", "application/x-www-form-urlencoded",
                               "text/plain; charset=UTF-8", "application/octet-stream")):
        h = {"Content-Type": ctype, "X-Http-Token": ss.token}
        name = f"k{i}"
        r = ss.c.request("POST", f"{API}/{ss.vault}/keys/{name}",
                         raw=json.dumps({"info": ctype}).encode(), headers=h)
        assert assert_success(r, 201)["name"] == name
        assert ss.key(name)["info"] == ctype
        r = ss.c.request("POST", f"{API}/{ss.vault}/encrypt/{name}",
                         raw=json.dumps({"plaintext": b64(b"curl -d")}).encode(), headers=h)
        ct = assert_success(r, 200)["ciphertext"]
        r = ss.c.request("POST", f"{API}/{ss.vault}/decrypt/{name}",
                         raw=json.dumps({"ciphertext": ct}).encode(), headers=h)
        assert base64.b64decode(assert_success(r, 200)["plaintext"]) == b"curl -d"
        # a body that is not JSON: the vendor's 400 envelope, not the framework's 415
        r = ss.c.request("POST", f"{API}/{ss.vault}/encrypt/{name}",
                         raw=b"plaintext=Y3VybA%3D%3D", headers=h)
        body = assert_fail(r, 400, token=ss.token)
        assert "JSON" in body["ERRORS"][0]
    # the legacy body token, as `curl -d '{"token": ...}'` sends it
    r = ss.c.request("POST", f"{API}/{ss.vault}/keys/legacy",
                     raw=json.dumps({"token": ss.token}).encode(),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert assert_success(r, 201)["token"] == ss.token
    r = ss.c.request("GET", f"{API}/{ss.vault}/keys",
                     raw=json.dumps({"token": ss.token}).encode(),
                     headers={"Content-Type": "text/plain"})
    assert assert_success(r, 200)["token"] == ss.token
    r = ss.c.request("POST", f"{API}/{ss.vault}/keys/nope", raw=b"token=abc",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_fail(r, 400, token="")
    assert "JSON" in r.json["ERRORS"][0]


def test_binding_error_is_an_integrity_error():
    # the HSM's blob-binding failures are a subclass: existing `except IntegrityError` still
    # catches them, while the StoredSafe core tells them from a client's GCM tag failure
    from chalicelib.errors import BindingError, IntegrityError

    assert issubclass(BindingError, IntegrityError)
    assert BindingError.status == IntegrityError.status and BindingError.code == "integrity"


def _strict(r: Any) -> dict[str, Any]:
    """Parse as a strict client would: no NaN/Infinity, no lone surrogate."""
    def no_constants(name: str) -> Any:
        raise AssertionError(f"non-strict JSON constant {name} in the response")

    text = r.body.decode("utf-8")
    data = json.loads(text, parse_constant=no_constants)
    json.dumps(data, ensure_ascii=False).encode("utf-8")
    return data


def test_bodies_that_are_not_strict_json_are_400_and_never_echoed(live_server):
    """NaN, 1e400 and lone surrogates pass json.loads: they must not reach the store or DATA."""
    ss = SS(live_server)
    bodies = [b'{"info": "\\ud800"}', b'{"type": "aes128-gcm96", "allow_delete": NaN}',
              b'{"info": 1e400}', b'{"x\\udfff": 1}', b'{"info": ' + b"[" * 40 + b"]" * 40 + b"}"]
    for raw in bodies:
        r = ss.call("POST", f"/{ss.vault}/keys/k1", raw=raw)
        assert_fail(r, 400, token=ss.token)
        data = _strict(r)
        assert data["DATA"] == {"vaultid": ss.vault, "name": "k1"}, r.text
    r = ss.call("POST", f"/{ss.vault}/encrypt/k2", raw=b'{"plaintext": "aGk=", "x\\ud800": 1}')
    assert_fail(r, 400, token=ss.token)
    _strict(r)
    assert _names(ss) == []
