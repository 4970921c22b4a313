"""StoredSafe bad input, tokens and vault isolation: a FAIL envelope with a 4xx, never a 500,
and no state changed. Both stores (live_server)."""

from __future__ import annotations

import base64

from chalicelib.config import Settings
from chalicelib.core.tokens import Scope
from tests.storedsafe_support import SS, assert_fail, assert_success, b64, new_vault


def _state(ss: SS) -> list[dict]:
    r = ss.list()
    assert_success(r, 200)
    return r.json["KEYS"]


def _flip(ciphertext: str, index: int) -> str:
    prefix, data = ciphertext.rsplit(":", 1)
    raw = bytearray(base64.b64decode(data))
    raw[index] ^= 0x01
    return f"{prefix}:{b64(bytes(raw))}"


def test_bad_ciphertexts_and_plaintexts(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k"), 201)
    assert_success(ss.create("other"), 201)
    ct = ss.ok_encrypt("k", b"A" * 100)
    other_key_ct = ss.ok_encrypt("other", b"A" * 100)
    other_vault = SS(live_server)  # same key name, another vault
    assert_success(other_vault.create("k"), 201)
    other_vault_ct = other_vault.ok_encrypt("k", b"A" * 100)
    before = _state(ss)
    limit = Settings.from_env().max_plaintext_bytes
    prefix, data = ct.rsplit(":", 1)
    raw = base64.b64decode(data)

    cases = [
        # (call, expected status, words in the error)
        (lambda: ss.encrypt("k", "not base64!!"), 400, "base64"),
        (lambda: ss.encrypt("k", "QUJD="), 400, "base64"),  # excess padding
        (lambda: ss.encrypt("k", "QUI"), 400, "base64"),  # missing padding
        (lambda: ss.encrypt("k", "QUJ="), 400, "base64"),  # non-zero padding bits
        (lambda: ss.encrypt("k", "QU JD"), 400, "base64"),
        (lambda: ss.encrypt("k", b64(b"x" * (limit + 1))), 400, "larger"),
        (lambda: ss.encrypt("k", None), 400, "plaintext"),
        (lambda: ss.call("POST", f"/{ss.vault}/encrypt/k", {}), 400, "plaintext"),
        (lambda: ss.encrypt("k", b"x", key_version="latest"), 400, "key_version"),
        (lambda: ss.encrypt("k", b"x", key_version=True), 400, "key_version"),
        (lambda: ss.decrypt("k", "garbage"), 400, "storedsafe:v"),
        (lambda: ss.decrypt("k", "vault:v1:" + data), 400, "storedsafe:v"),
        (lambda: ss.decrypt("k", "storedsafe:v0:" + data), 400, "storedsafe:v"),
        (lambda: ss.decrypt("k", "storedsafe:vx:" + data), 400, "storedsafe:v"),
        (lambda: ss.decrypt("k", prefix + ":" + data + "!"), 400, "storedsafe:v"),
        (lambda: ss.decrypt("k", prefix + ":" + data[:-2]), 400, "base64"),
        (lambda: ss.decrypt("k", f"{prefix}:{b64(raw[:20])}"), 400, "truncated"),
        (lambda: ss.decrypt("k", f"{prefix}:{b64(raw[:-1])}"), 400, "verification"),
        (lambda: ss.decrypt("k", _flip(ct, 0)), 400, "verification"),  # nonce
        (lambda: ss.decrypt("k", _flip(ct, 20)), 400, "verification"),  # body
        (lambda: ss.decrypt("k", _flip(ct, len(raw) - 1)), 400, "verification"),  # tag
        (lambda: ss.decrypt("k", other_key_ct), 400, "verification"),
        (lambda: ss.decrypt("k", other_vault_ct), 400, "verification"),
        (lambda: ss.decrypt("k", ct.replace("storedsafe:v1:", "storedsafe:v7:")), 404,
         "version 7"),
        (lambda: ss.rewrap("k", _flip(ct, 30)), 400, "verification"),
        (lambda: ss.rewrap("k", other_vault_ct), 400, "verification"),
        (lambda: ss.rewrap("k", ct, to_version=0), 400, "to_version"),
        (lambda: ss.decrypt("k", 12345), 400, "ciphertext"),
        (lambda: ss.create("new", type="rsa-2048"), 400, "type"),
        (lambda: ss.create("new", allow_export="maybe"), 400, "allow_export"),
        (lambda: ss.create("bad%20name"), 400, "name"),
        (lambda: ss.create("new", info="i" * 2000), 400, "info"),
        (lambda: ss.call("POST", f"/{ss.vault}/keys/new", raw=b"{not json"), 400, "JSON"),
        (lambda: ss.call("POST", f"/{ss.vault}/keys/new", raw=b"[1,2]"), 400, "object"),
        (lambda: ss.call("GET", "/17x/keys"), 400, "vaultid"),
        (lambda: ss.call("GET", f"/{ss.vault}/keys/.hidden"), 400, "name"),
        (lambda: ss.decrypt("missing", ct), 404, "not found"),
        (lambda: ss.rotate("missing"), 404, "not found"),
        (lambda: ss.read("missing"), 404, "not found"),
        (lambda: ss.delete("missing"), 404, "not found"),
        (lambda: ss.export("missing"), 404, "not found"),
    ]
    for call, status, words in cases:
        r = call()
        body = assert_fail(r, status, token=ss.token)
        assert words.lower() in " ".join(body["ERRORS"]).lower(), (words, r.text)
    # an unsupported API version
    r = ss.c.get(f"/api/2.0/transparent/{ss.vault}/keys", headers={"X-Http-Token": ss.token})
    assert_fail(r, 404)
    # nothing changed: same keys, same versions; the good ciphertext still decrypts
    assert _state(ss) == before
    assert ss.ok_decrypt("k", ct) == b"A" * 100


def test_missing_and_wrong_tokens_are_401_with_no_token_returned(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k"), 201)
    ct = ss.ok_encrypt("k", b"x")
    before = _state(ss)
    calls = [
        lambda **kw: ss.call("GET", f"/{ss.vault}/keys", **kw),
        lambda **kw: ss.call("POST", f"/{ss.vault}/keys/new", {}, **kw),
        lambda **kw: ss.call("POST", f"/{ss.vault}/keys/k/rotate", **kw),
        lambda **kw: ss.call("POST", f"/{ss.vault}/encrypt/k", {"plaintext": "eA=="}, **kw),
        lambda **kw: ss.call("POST", f"/{ss.vault}/decrypt/k", {"ciphertext": ct}, **kw),
        lambda **kw: ss.call("DELETE", f"/{ss.vault}/keys/k", **kw),
        lambda **kw: ss.call("GET", f"/backup/{ss.vault}/k", **kw),
    ]
    revoked_raw, record = live_server.services.tokens.create(
        "gone", [Scope.parse(f"storedsafe:{ss.vault}:read,write,admin")])
    live_server.services.tokens.revoke(record["token_id"])
    for call in calls:
        for token in ("", "kf_" + "A" * 43, "not-a-token", revoked_raw):
            r = call(token=token)
            body = assert_fail(r, 401, token="")
            if token:
                assert token not in r.text
            assert body["ERRORCODES"] == {"4010": body["ERRORS"][0]}
        r = call(token="kf_wrong", legacy=True)
        assert_fail(r, 401, token="")
    assert _state(ss) == before


def test_read_token_on_write_and_admin_endpoints_is_403(live_server):
    vault = new_vault()
    admin = SS(live_server, vault)
    reader = SS(live_server, vault, "read")
    writer = SS(live_server, vault, "write")  # Write implies Read
    assert_success(admin.create("k"), 201)
    ct = admin.ok_encrypt("k", b"x")
    backup = admin.backup("k").json["KEYS"]["backup"]
    before = _state(admin)
    for r in (reader.create("new"), reader.rotate("k"), reader.delete("k"),
              reader.datakey("plaintext", "k"), reader.restore("new", backup),
              reader.config("k", allow_delete=False), reader.export("k"), reader.backup("k"),
              writer.export("k"), writer.backup("k"), writer.config("k", allow_delete=False),
              # the permission answer comes before body validation
              reader.call("POST", f"/{vault}/keys/new", {"type": "nonsense"})):
        body = assert_fail(r, 403, token=r.json["CALLINFO"]["token"])
        assert body["ERRORCODES"].keys() == {"4030"}
        assert "permission" in body["ERRORS"][0]
    assert _state(admin) == before
    # what Read may do, it may
    assert reader.ok_decrypt("k", ct) == b"x"
    assert_success(reader.datakey("wrapped", "k"), 200)
    assert writer.ok_decrypt("k", ct) == b"x"


def test_methods_and_routes_outside_the_family_are_4xx(live_server):
    ss = SS(live_server)
    assert 400 <= ss.call("PUT", f"/{ss.vault}/keys/k", {}).status < 500
    assert 400 <= ss.call("GET", f"/{ss.vault}/encrypt/k").status < 500
    assert 400 <= ss.call("GET", f"/{ss.vault}/nothing/here").status < 500


def test_refusals_of_the_dialect_after_authorization_are_audited(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k"), 201)
    assert_fail(ss.call("POST", f"/{ss.vault}/encrypt/k", {"plaintext": "!!notbase64"}), 400)
    assert_fail(ss.call("POST", f"/{ss.vault}/datakey/bogus/k", {}), 400)
    audit = live_server.services.audit
    obj = f"storedsafe/{ss.vault}/k"
    for action in ("storedsafe.encrypt", "storedsafe.datakey"):
        [rec] = audit.find(action=action, obj=obj)
        assert rec["outcome"] == "failure" and rec["details"] == {"reason": "invalid_input"}
