"""The AI-VAULT master-key file and PSK format, opened by an independent implementation
(`cryptography`'s own scrypt and RFC 5649 unwrap, written here, not keyfront's code), checked
against the key the HSM holds; and `keyfront aivault open-mk`."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from chalicelib import cli
from chalicelib.core.access import check
from chalicelib.core.audit import AuditLog
from chalicelib.core.limits import GenerationRate
from chalicelib.core.material import WRAP_SCRYPT_N, WRAP_SCRYPT_P, WRAP_SCRYPT_R
from chalicelib.core.services import Services
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.dialects.aivault.routes import master_keys
from chalicelib.hsm import WrappedKey

PASSWORD = "Ünïcode-and-ASCII-password-0123456789-xyz"  # NFC already


def independent_open(text: str, password: str) -> bytes:
    """The format as the README documents it, implemented from scratch:
    kf-kwp1$scrypt$n=N,r=R,p=P$<salt b64>$<RFC 5649 wrap b64>, key = scrypt(NFC UTF-8)."""
    prefix, kdf, params, salt, wrapped = text.split("$")
    assert (prefix, kdf) == ("kf-kwp1", "scrypt")
    p = {k: int(v) for k, v in (kv.split("=") for kv in params.split(","))}
    key = Scrypt(salt=base64.b64decode(salt), length=32, n=p["n"], r=p["r"],
                 p=p["p"]).derive(password.encode("utf-8"))
    return aes_key_unwrap_with_padding(key, base64.b64decode(wrapped))


@pytest.fixture(scope="module")
def made(settings, hsm, tmp_path_factory):
    """A master key and its PSK made in-process with the default (OWASP) scrypt cost, the
    domain, and the store where their HSM-wrapped copies live."""
    from chalicelib.store.sqlite_store import SqliteStore

    default = dataclasses.replace(settings, password_wrap_scrypt=(WRAP_SCRYPT_N, WRAP_SCRYPT_R,
                                                                  WRAP_SCRYPT_P))
    store = SqliteStore(str(tmp_path_factory.mktemp("aivault-file") / "store.sqlite3"))
    dom = master_keys(Services(default, store, hsm, TokenService(store), AuditLog(store),
                               GenerationRate(store, default)))
    caller = Caller(Principal(uuid.uuid4().hex, "file-test",
                              (Scope.parse("aivault:9:read,manage"),), 2**40), "rid")
    mk, mk_text = dom.create_key(check(caller, dom.kind, "9", dom.action("key.create")),
                                 name="mk", usage="u", remarks="", password=PASSWORD)
    psk, psk_text = dom.create_secret(check(caller, dom.kind, "9", dom.action("secret.create")),
                                      name="psk", key="mk", remarks="", password=PASSWORD)
    return dom, store, {"keys": (mk, mk_text), "secrets": (psk, psk_text)}


@pytest.mark.parametrize("what", ["keys", "secrets"])
def test_an_independent_implementation_opens_what_the_hsm_holds(made, hsm, what):
    dom, store, objects = made
    obj, text = objects[what]
    assert f"$n={WRAP_SCRYPT_N},r={WRAP_SCRYPT_R},p={WRAP_SCRYPT_P}$" in text
    opened = independent_open(text, PASSWORD)
    assert len(opened) == 32
    # the same key as the HSM's: encrypt with the HSM-held copy, decrypt with the opened bytes
    prefix = "key#" if what == "keys" else "secret#"
    wrapped = WrappedKey.from_dict(store.get(dom.pk("9"), prefix + obj.name)["wrapped"])
    context = dom.context("9", what, obj.id)
    sealed = hsm.encrypt_gcm(wrapped, context, b"checked by the HSM", b"aad")
    assert AESGCM(opened).decrypt(sealed[:12], sealed[12:], b"aad") == b"checked by the HSM"
    # a wrong password, or an edited text, does not open
    with pytest.raises(InvalidUnwrap):
        independent_open(text, PASSWORD + "x")
    # what the store keeps is not the file: no password-wrapped text, no clear key
    record = json.dumps(store.get(dom.pk("9"), prefix + obj.name), default=repr)
    assert text not in record and opened.hex() not in record


def test_files_made_over_http_open_too(sqlite_server):
    token = sqlite_server.mint("aivault:11:read,manage")
    c = sqlite_server.client()
    h = {"Authorization": f"Bearer {token}", "DomainID": "11"}
    r = c.post("/AIVAULT/v1/createMK", {"MKName": "http", "MKUsage": "u",
                                        "Password": PASSWORD}, headers=h)
    assert r.status == 200, r.text
    assert len(independent_open(r.json["CipherMasterKey"], PASSWORD)) == 32
    r = c.post("/AIVAULT/v1/createPSK", {"PSKName": "p", "MKName": "http",
                                         "Password": PASSWORD}, headers=h)
    assert len(independent_open(r.json["data"]["PSK"], PASSWORD)) == 32


# ---- keyfront aivault open-mk ----------------------------------------------------------------

def _open(monkeypatch, capsys, path, out, password=PASSWORD, *extra: str):
    monkeypatch.setattr("getpass.getpass", lambda prompt="": password)
    rc = cli.main(["aivault", "open-mk", str(path), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_open_mk_writes_the_key_0600_and_never_overwrites(made, tmp_path, monkeypatch, capsys):
    _, _, objects = made
    text = objects["keys"][1]
    mk_json = tmp_path / "MK.json"
    mk_json.write_text(json.dumps({"Version": "V1", "CipherMasterKey": text}))
    out = tmp_path / "mk.key"
    rc, said, err = _open(monkeypatch, capsys, mk_json, out)
    assert rc == 0 and not err and "256-bit" in said
    assert out.read_bytes() == independent_open(text, PASSWORD)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    rc, _, err = _open(monkeypatch, capsys, mk_json, out)
    assert rc == 1 and "refusing to overwrite" in err and err.count("\n") == 1
    assert out.read_bytes() == independent_open(text, PASSWORD)
    # a PSK, from the createPSK answer as saved, in hex
    psk_text = objects["secrets"][1]
    answer = tmp_path / "psk.json"
    answer.write_text(json.dumps({"status": "00000000", "msg": "ok", "data": {"PSK": psk_text}}))
    rc, _, _ = _open(monkeypatch, capsys, answer, tmp_path / "psk.hex", PASSWORD,
                     "--encoding", "hex")
    assert rc == 0
    assert (tmp_path / "psk.hex").read_text().strip() == independent_open(psk_text,
                                                                          PASSWORD).hex()


def test_open_mk_fails_with_one_line(made, tmp_path, monkeypatch, capsys):
    _, _, objects = made
    text = objects["keys"][1]
    good = tmp_path / "MK.json"
    good.write_text(json.dumps({"Version": "V1", "CipherMasterKey": text}))
    edited = tmp_path / "edited.json"
    parts = text.split("$")
    parts[4] = base64.b64encode(bytes(len(base64.b64decode(parts[4])))).decode()
    edited.write_text("$".join(parts))
    cases = [
        (good, "wrong-password-0123456789-0123456789-abc", "wrong password"),
        (edited, PASSWORD, "wrong password"),
        (tmp_path / "missing.json", PASSWORD, "cannot read"),
    ]
    for name, content in (("garbage.json", "not a key"), ("other.json", '{"x": 1}'),
                          ("costly.json", text.replace("n=32768", "n=1048576"))):
        (tmp_path / name).write_text(content)
        cases.append((tmp_path / name, PASSWORD, "not a keyfront"
                      if name != "other.json" else "cannot read"))
    for path, password, expected in cases:
        out = tmp_path / f"out-{path.stem}"
        rc, said, err = _open(monkeypatch, capsys, path, out, password)
        assert rc == 1 and expected in err and err.count("\n") == 1, (path, err)
        assert not out.exists() and not said


# ---- the pieces: the HSM's wrap-out and the text's bounds ------------------------------------

def test_the_hsm_wraps_out_only_exportable_secret_keys_bound_to_their_context(hsm):
    from chalicelib.errors import BindingError, Forbidden, InvalidInput

    key = hsm.generate_aes(256, "wrap-test/1", exportable=True)
    outer = os.urandom(32)
    assert len(aes_key_unwrap_with_padding(outer, hsm.wrap_secret_under(key, "wrap-test/1",
                                                                       outer))) == 32
    with pytest.raises(BindingError):
        hsm.wrap_secret_under(key, "wrap-test/2", outer)  # a blob used in another context
    with pytest.raises(Forbidden):
        hsm.wrap_secret_under(hsm.generate_aes(256, "wrap-test/3"), "wrap-test/3", outer)
    with pytest.raises(InvalidInput):
        hsm.wrap_secret_under(key, "wrap-test/1", b"short")
    with pytest.raises(InvalidInput):
        hsm.wrap_secret_under(hsm.generate_rsa(1024, "wrap-test/4"), "wrap-test/4", outer)


def test_texts_out_of_bounds_are_refused_before_any_derivation(hsm):
    from chalicelib.core.material import unwrap_under_password, wrap_under_password
    from chalicelib.errors import InvalidInput

    key = hsm.generate_aes(256, "wrap-test/5", exportable=True)
    # a cost below what a reader accepts is the service's misconfiguration, not bad input
    with pytest.raises(ValueError, match="configured password-wrap scrypt cost"):
        wrap_under_password(hsm, key, "wrap-test/5", PASSWORD, scrypt=(2**10, 8, 1))
    good = "kf-kwp1$scrypt$n=16384,r=8,p=1$" + base64.b64encode(bytes(16)).decode() + "$" \
        + base64.b64encode(bytes(40)).decode()
    for bad in ("", "kf-kwp1", good.replace("kf-kwp1", "kf-kwp2"),
                good.replace("n=16384", "n=16385"), good.replace("n=16384", "n=4194304"),
                good.replace("r=8", "r=8,x=1"), good.replace("p=1", "p=one"),
                good[:-4] + "!!!!", good + "$more", "x" * 5000, None):
        with pytest.raises(InvalidInput):
            unwrap_under_password(bad, PASSWORD)  # type: ignore[arg-type]
