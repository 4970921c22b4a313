"""StoredSafe transparent encryption end to end over HTTP, on both stores (live_server)."""

from __future__ import annotations

import base64
import json
import re

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chalicelib import admin as admin_function
from chalicelib.core.transit import version_aad
from tests.storedsafe_support import SS, assert_fail, assert_success, b64, new_vault

CT_RE = re.compile(r"storedsafe:v([1-9][0-9]*):([A-Za-z0-9+/]+={0,2})\Z")
KIB = bytes(range(256)) * 4


# ---- keys: create, read, list, envelope ------------------------------------------------------

def test_create_read_list_and_the_envelope(live_server):
    ss = SS(live_server)
    r = ss.create("my-new-key", type="aes256-gcm96", allow_export=False, info="for tests")
    ci = assert_success(r, 201)
    assert ci["token"] == ss.token  # valid for the next call: tokens are not rotated
    assert ci["name"] == "my-new-key" and ci["key_version"] == "1"
    assert ci["objectid"].isdigit()
    # DATA echoes the request (route params + body fields), never the token; HEADERS too
    assert r.json["DATA"] == {"vaultid": ss.vault, "name": "my-new-key", "type": "aes256-gcm96",
                              "allow_export": False, "info": "for tests"}
    assert not any(k.lower() == "x-http-token" for k in r.json["HEADERS"])
    assert ss.token not in r.text.replace(f'"token":"{ss.token}"', "")

    meta = ss.key("my-new-key")
    assert meta == {"name": "my-new-key", "key_version": "1", "type": "aes256-gcm96",
                    "allow_backup": True, "allow_export": False, "allow_delete": True,
                    "supports_signing": False, "info": "for tests",
                    "min_decryption_version": "1", "objectid": ci["objectid"],
                    "auto_rotate_period": "0",  # beyond the vendor, as Vault's read
                    "last_used": None, "last_used_for": None}  # keyfront's: never used yet
    r = ss.read("my-new-key")
    assert r.json["CALLINFO"]["version"] == "1" and r.json["CALLINFO"]["objectid"] == ci["objectid"]

    assert_success(ss.create("another"), 201)
    assert ss.key("another")["type"] == "aes128-gcm96"  # the vendor's default
    r = ss.list()
    assert_success(r, 200)
    assert [k["name"] for k in r.json["KEYS"]] == ["another", "my-new-key"]
    assert r.json["DATA"] == {"vaultid": ss.vault}


def test_creating_an_existing_key_is_409_and_changes_nothing(live_server):
    ss = SS(live_server)
    first = assert_success(ss.create("k"), 201)
    body = assert_fail(ss.create("k", type="aes256-gcm96"), 409, token=ss.token)
    assert "already exists" in body["ERRORS"][0]
    assert ss.key("k")["type"] == "aes128-gcm96" and ss.key("k")["objectid"] == first["objectid"]


def test_legacy_body_token_and_header_precedence(live_server):
    ss = SS(live_server)
    r = ss.call("POST", f"/{ss.vault}/keys/k", {}, legacy=True)
    ci = assert_success(r, 201)
    assert ci["token"] == ss.token and "token" not in r.json["DATA"]
    # the header wins over the body: a valid header with a junk body token works...
    r = ss.call("GET", f"/{ss.vault}/keys/k", {"token": "junk"})
    assert_success(r, 200)
    # ...and an invalid header is not rescued by a valid body token
    r = ss.call("GET", f"/{ss.vault}/keys/k", {"token": ss.token},
                headers={"X-Http-Token": "kf_nope"}, token="")
    assert_fail(r, 401, token="")


# ---- encrypt / decrypt / versions / rewrap ---------------------------------------------------

def test_encrypt_decrypt_round_trip(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k"), 201)
    for plaintext in (KIB, b"", b"\x00", b"sensitive data"):
        r = ss.encrypt("k", plaintext)
        ci = assert_success(r, 200)
        assert ci["key_version"] == "1"
        m = CT_RE.match(ci["ciphertext"])
        assert m and m.group(1) == "1"
        assert len(base64.b64decode(m.group(2))) == 12 + len(plaintext) + 16  # iv||ct||tag
        assert "plaintext" not in r.json["DATA"]
        r = ss.decrypt("k", ci["ciphertext"])
        dci = assert_success(r, 200)
        assert base64.b64decode(dci["plaintext"]) == plaintext and dci["key_version"] == "1"
        assert r.json["DATA"]["ciphertext"] == ci["ciphertext"]
    # a fresh nonce each time: the same plaintext never gives the same ciphertext
    assert ss.ok_encrypt("k", KIB) != ss.ok_encrypt("k", KIB)


def test_versions_rotate_and_rewrap_across_rotations(live_server):
    ss = SS(live_server)
    ci = assert_success(ss.create("k"), 201)
    objectid = ci["objectid"]
    cts = {1: ss.ok_encrypt("k", b"one")}
    for n in (2, 3, 4):
        r = ss.rotate("k")
        rci = assert_success(r, 201)
        assert rci == {**rci, "name": "k", "key_version": str(n), "objectid": objectid}
        assert r.json["DATA"] == {"vaultid": ss.vault, "name": "k"}
        cts[n] = ss.ok_encrypt("k", f"v{n}".encode())
        assert cts[n].startswith(f"storedsafe:v{n}:")
    assert ss.key("k")["key_version"] == "4"
    # every version still decrypts, each picked from the prefix
    assert ss.ok_decrypt("k", cts[1]) == b"one"
    for n in (2, 3, 4):
        r = ss.decrypt("k", cts[n])
        assert assert_success(r, 200)["key_version"] == str(n)
    # encrypting with an explicit older version
    old = ss.ok_encrypt("k", b"old", key_version="2")
    assert old.startswith("storedsafe:v2:") and ss.ok_decrypt("k", old) == b"old"
    assert ss.ok_encrypt("k", b"x", key_version=3).startswith("storedsafe:v3:")
    # rewrap to latest (default): no plaintext in the answer
    r = ss.rewrap("k", cts[1])
    rw = assert_success(r, 200)
    assert rw["key_version"] == "4" and rw["ciphertext"].startswith("storedsafe:v4:")
    assert "plaintext" not in rw and "plaintext" not in r.json["DATA"]
    assert b64(b"one") not in r.text
    assert ss.ok_decrypt("k", rw["ciphertext"]) == b"one"
    # rewrap to a given older version, and back
    down = assert_success(ss.rewrap("k", cts[4], to_version=2), 200)
    assert down["ciphertext"].startswith("storedsafe:v2:") and down["key_version"] == "2"
    assert ss.ok_decrypt("k", down["ciphertext"]) == b"v4"
    # an unknown to_version / key_version is 404, and nothing changed
    assert_fail(ss.rewrap("k", cts[1], to_version=9), 404, token=ss.token)
    assert_fail(ss.encrypt("k", b"x", key_version=5), 404, token=ss.token)
    assert ss.key("k")["key_version"] == "4"


def test_encrypt_with_a_write_token_creates_a_missing_key(live_server):
    vault = new_vault()
    writer = SS(live_server, vault, "read,write")
    reader = SS(live_server, vault, "read")
    # Read only: the missing key is an error, and is not created
    body = assert_fail(reader.encrypt("auto", b"data"), 404, token=reader.token)
    assert "not found" in body["ERRORS"][0]
    assert writer.list().json["KEYS"] == []
    # Write: created (of the requested type), the call succeeds
    r = writer.encrypt("auto", b"data", type="aes256-gcm96")
    ci = assert_success(r, 200)
    assert ci["key_version"] == "1" and ci["general"] == ["key auto created"]
    assert writer.key("auto")["type"] == "aes256-gcm96"
    # now a Read token can use it
    assert reader.ok_decrypt("auto", ci["ciphertext"]) == b"data"
    assert_success(reader.encrypt("auto", b"more"), 200)
    # an unsupported type is refused before anything is created
    assert_fail(writer.encrypt("other", b"x", type="aes256-ofb"), 400)
    assert [k["name"] for k in writer.list().json["KEYS"]] == ["auto"]


# ---- beyond the vendor: min_decryption_version, deletion refused unless allowed ---------------

def test_min_decryption_version_refuses_older_ciphertext(live_server):
    vault = new_vault()
    ss = SS(live_server, vault)
    writer = SS(live_server, vault, "read,write")
    assert_success(ss.create("k"), 201)
    v1 = ss.ok_encrypt("k", b"old secret")
    assert_success(ss.rotate("k"), 201)
    v2 = ss.ok_encrypt("k", b"new secret")
    # only Admin may change it
    assert_fail(writer.config("k", min_decryption_version=2), 403, token=writer.token)
    r = ss.config("k", min_decryption_version=2)
    ci = assert_success(r, 200)
    assert ci["min_decryption_version"] == "2" and ci["key_version"] == "2"
    assert ss.key("k")["min_decryption_version"] == "2"
    body = assert_fail(ss.decrypt("k", v1), 400, token=ss.token)
    assert "min_decryption_version" in body["ERRORS"][0]
    assert_fail(ss.rewrap("k", v1), 400)
    assert_fail(ss.encrypt("k", b"x", key_version=1), 400)
    assert_fail(ss.rewrap("k", v2, to_version=1), 400)
    assert_fail(ss.datakey("wrapped", "k", key_version=1), 400)
    assert ss.ok_decrypt("k", v2) == b"new secret"
    # out of range
    assert_fail(ss.config("k", min_decryption_version=3), 400)
    assert_fail(ss.config("k", min_decryption_version=0), 400)
    assert_fail(ss.config("k"), 400)
    # lowering it again re-enables the old version (nothing was destroyed)
    assert_success(ss.config("k", min_decryption_version=1), 200)
    assert ss.ok_decrypt("k", v1) == b"old secret"


def test_delete_is_refused_unless_allowed(live_server):
    vault = new_vault()
    admin = SS(live_server, vault)
    writer = SS(live_server, vault, "read,write")
    reader = SS(live_server, vault, "read")
    assert_success(admin.create("locked", allow_delete=False), 201)
    ct = admin.ok_encrypt("locked", b"keep me")
    body = assert_fail(writer.delete("locked"), 400, token=writer.token)
    assert "not allowed" in body["ERRORS"][0]
    assert admin.ok_decrypt("locked", ct) == b"keep me"  # still there
    assert_fail(reader.delete("locked"), 403)
    # Admin unlocks it (as Vault's deletion_allowed), then Write deletes it
    assert_success(admin.config("locked", allow_delete=True), 200)
    r = writer.delete("locked")
    ci = assert_success(r, 200)
    assert ci["name"] == "locked" and ci["objectid"].isdigit()
    assert_fail(admin.read("locked"), 404)
    assert_fail(admin.decrypt("locked", ct), 404)
    assert_fail(writer.delete("locked"), 404)
    # a new key under the same name cannot open the old key's data
    assert_success(admin.create("locked"), 201)
    assert admin.key("locked")["objectid"] != ci["objectid"]
    assert_fail(admin.decrypt("locked", ct), 400)
    # the deleted key's version records wait for its deletion window; once it is purged
    # they are gone from the store
    versions = f"ss#{vault}#locked#{ci['objectid']}"
    assert live_server.services.store.query(versions, "v#").items
    done = admin_function.handle({"action": "purge-deleted", "kind": "storedsafe",
                                  "ring": vault, "id": ci["objectid"]}, live_server.services)
    assert done["ok"] and done["purged"] == 1
    assert live_server.services.store.query(versions, "v#").items == []


def test_delete_with_default_allow_delete(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k"), 201)
    assert_success(ss.rotate("k"), 201)
    assert_success(ss.delete("k"), 200)
    assert ss.list().json["KEYS"] == []


# ---- datakey ---------------------------------------------------------------------------------

def test_datakey_wrapped_and_plaintext(live_server):
    vault = new_vault()
    writer = SS(live_server, vault, "read,write")
    reader = SS(live_server, vault, "read")
    assert_success(writer.create("k"), 201)
    # wrapped: Read is enough, no plaintext returned
    r = reader.datakey("wrapped", "k")
    ci = assert_success(r, 200)
    assert "plaintext" not in ci and ci["key_version"] == "1" and ci["objectid"].isdigit()
    assert len(reader.ok_decrypt("k", ci["ciphertext"])) == 32  # default 256 bits
    # plaintext: Write needed
    assert_fail(reader.datakey("plaintext", "k"), 403, token=reader.token)
    for bits in (128, 256, 512):
        r = writer.datakey("plaintext", "k", bits=bits)
        ci = assert_success(r, 200)
        raw = base64.b64decode(ci["plaintext"])
        assert len(raw) == bits // 8
        assert writer.ok_decrypt("k", ci["ciphertext"]) == raw
        assert "plaintext" not in r.json["DATA"] and r.json["DATA"]["bits"] == bits
    assert_fail(writer.datakey("plaintext", "k", bits=384), 400)
    assert_fail(writer.datakey("plaintext", "k", bits="many"), 400)
    assert_fail(writer.datakey("sideways", "k"), 400)
    assert_fail(writer.datakey("wrapped", "missing"), 404)


# ---- export, backup, restore -----------------------------------------------------------------

def test_export_needs_admin_and_allow_export(live_server):
    vault = new_vault()
    admin = SS(live_server, vault)
    writer = SS(live_server, vault, "read,write")
    ci = assert_success(admin.create("k", type="aes256-gcm96", allow_export=True), 201)
    cts = {1: admin.ok_encrypt("k", b"first")}
    assert_success(admin.rotate("k"), 201)
    cts[2] = admin.ok_encrypt("k", b"second")
    assert_fail(writer.export("k"), 403, token=writer.token)
    r = admin.export("k")
    assert_success(r, 200)
    keys = r.json["KEYS"]
    assert keys["name"] == "k" and keys["type"] == "aes256-gcm96" and keys["key_version"] == "2"
    assert sorted(keys["keys"]) == ["1", "2"]
    # the exported material really is the key: open the service's ciphertext locally
    origin = f"{vault}/k/{ci['objectid']}"
    for n, plaintext in ((1, b"first"), (2, b"second")):
        raw = base64.b64decode(keys["keys"][str(n)])
        assert len(raw) == 32
        data = base64.b64decode(cts[n].split(":", 2)[2])
        aad = version_aad("storedsafe", origin, n)
        assert AESGCM(raw).decrypt(data[:12], data[12:], aad) == plaintext
    # one version
    r = admin.export("k", 1)
    assert_success(r, 200)
    assert list(r.json["KEYS"]["keys"]) == ["1"] and r.json["DATA"]["key_version"] == "1"
    assert_fail(admin.export("k", 3), 404)
    assert_fail(admin.call("GET", f"/export/{vault}/k/abc"), 400)
    # a key created without allow_export never exports
    assert_success(admin.create("sealed", allow_export=False), 201)
    body = assert_fail(admin.export("sealed"), 400)
    assert "not allowed" in body["ERRORS"][0]


def test_backup_and_restore(live_server):
    vault, other_vault = new_vault(), new_vault()
    admin = SS(live_server, vault)
    writer = SS(live_server, vault, "read,write")
    assert_success(admin.create("k", info="orig", allow_export=True), 201)
    cts = {1: admin.ok_encrypt("k", b"one")}
    assert_success(admin.rotate("k"), 201)
    cts[2] = admin.ok_encrypt("k", b"two")
    assert_success(admin.config("k", min_decryption_version=2), 200)
    material = admin.export("k", 2).json["KEYS"]["keys"]["2"]

    assert_fail(writer.backup("k"), 403)
    r = admin.backup("k")
    ci = assert_success(r, 200)
    assert ci["version"] == "2" and ci["objectid"].isdigit()
    backup = r.json["KEYS"]["backup"]
    # protected: wrapped blobs only, never the raw key material
    raw_doc = base64.b64decode(backup)
    assert base64.b64decode(material) not in raw_doc and material.encode() not in raw_doc

    # restore under another name (Write is enough): all versions and the policy come back
    r = writer.restore("copy", backup)
    rci = assert_success(r, 200)
    assert rci["name"] == "copy" and rci["key_version"] == "2"
    assert "backup" not in r.json["DATA"]
    meta = writer.key("copy")
    assert meta["info"] == "orig" and meta["min_decryption_version"] == "2"
    assert writer.ok_decrypt("copy", cts[2]) == b"two"  # the original's ciphertext opens
    assert_fail(writer.decrypt("copy", cts[1]), 400)  # still below min_decryption_version
    assert_success(admin.config("copy", min_decryption_version=1), 200)
    assert writer.ok_decrypt("copy", cts[1]) == b"one"
    # never into another vault, whatever that vault's token may do there (key rings are
    # tenants): refused, and nothing is created there
    other = SS(live_server, other_vault)
    body = assert_fail(other.restore("moved", backup), 400, token=other.token)
    assert "another vault" in body["ERRORS"][0]
    assert other.list().json["KEYS"] == []
    assert_fail(other.decrypt("moved", cts[2]), 404)
    # restoring over an existing name is a conflict
    assert_fail(writer.restore("copy", backup), 409)
    assert_fail(writer.restore("k", backup), 409)


def test_restore_refuses_tampered_backups_and_changes_nothing(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k", allow_export=False), 201)
    assert_success(ss.rotate("k"), 201)
    backup = ss.backup("k").json["KEYS"]["backup"]
    doc = json.loads(base64.b64decode(backup))

    def enc(d: dict) -> str:
        return base64.b64encode(json.dumps(d).encode()).decode()

    flipped = json.loads(json.dumps(doc))
    flipped["key"]["allow_export"] = True  # try to make the key exportable
    blob = json.loads(json.dumps(doc))
    raw = bytearray(base64.b64decode(blob["versions"][1]["wrapped"]["blob"]))
    raw[0] ^= 1
    blob["versions"][1]["wrapped"]["blob"] = base64.b64encode(bytes(raw)).decode()
    swapped = json.loads(json.dumps(doc))
    swapped["versions"][0]["wrapped"], swapped["versions"][1]["wrapped"] = \
        swapped["versions"][1]["wrapped"], swapped["versions"][0]["wrapped"]
    origin = json.loads(json.dumps(doc))
    origin["key"]["origin"] = "1/other/1"
    dropped = json.loads(json.dumps(doc))
    dropped["versions"].pop()
    for bad in (enc(flipped), enc(blob), enc(swapped), enc(origin)):
        body = assert_fail(ss.restore("copy", bad), 400, token=ss.token)
        assert "integrity" in body["ERRORS"][0]
    for bad in (enc(dropped), "not base64!", b64(b"{}"), b64(b"[1]"), ""):
        assert_fail(ss.restore("copy", bad), 400)
    assert_fail(ss.call("POST", f"/restore/{ss.vault}/copy", {}), 400)
    assert [k["name"] for k in ss.list().json["KEYS"]] == ["k"]


def test_backup_needs_allow_backup(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k", allow_backup=False), 201)
    assert_fail(ss.backup("k"), 400)
    assert_fail(ss.backup("missing"), 404)


def test_restore_accepts_bodies_beyond_the_general_limit_and_trim(live_server):
    """What backup produces restore must accept: its body limit is the largest backup's."""
    ss = SS(live_server)
    big = b64(b"\x00" * 1024 * 1024)  # 1.33 MiB of base64: more than the general 1 MiB
    body = assert_fail(ss.restore("k", big), 400)
    assert "not a valid key backup" in body["ERRORS"][0]
    # trim (beyond the vendor, as Vault's): Admin, versions below min_decryption_version
    assert_success(ss.create("t"), 201)
    old = ss.ok_encrypt("t", b"old")
    assert_success(ss.rotate("t"), 201)
    writer = SS(live_server, ss.vault, "read,write")
    assert_fail(writer.call("POST", f"/{ss.vault}/keys/t/trim", {}), 403, token=writer.token)
    assert_fail(ss.call("POST", f"/{ss.vault}/keys/t/trim", {"min_available_version": 2}), 400)
    assert_success(ss.config("t", min_decryption_version=2), 200)
    r = ss.call("POST", f"/{ss.vault}/keys/t/trim", {})
    assert assert_success(r, 200)["min_available_version"] == "2"
    assert_fail(ss.decrypt("t", old), 400)
    assert_fail(ss.call("POST", f"/{ss.vault}/keys/missing/trim", {}), 404)


def test_new_keys_are_not_exportable_unless_asked(live_server):
    """allow_export defaults to false, as Vault's exportable: export is a choice at creation
    (a key made by a first encrypt is not exportable either)."""
    ss = SS(live_server)
    assert_success(ss.create("plain"), 201)
    assert ss.key("plain")["allow_export"] is False
    assert "not allowed" in assert_fail(ss.export("plain"), 400)["ERRORS"][0]
    ss.ok_encrypt("made-on-use", b"x")
    assert ss.key("made-on-use")["allow_export"] is False
    assert_success(ss.create("chosen", allow_export=True), 201)
    assert ss.key("chosen")["allow_export"] is True
    assert_success(ss.export("chosen"), 200)
