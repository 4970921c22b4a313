"""Key material in and out, against the real SoftHSM token: import, sealed fields, export."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import unicodedata
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa

from chalicelib.core import keyspecs, material
from chalicelib.core.connections import Connections
from chalicelib.errors import BindingError, IntegrityError, InvalidInput, InvalidState
from chalicelib.hsm import SignScheme, WrappedKey, ecdsa_raw_to_der

CTX = "ring/material/key-1/1"
OTHER_CTX = "ring/material/key-2/1"
PASSWORD = "correct horse battery staple"

Enc = serialization.Encoding
PrivFmt = serialization.PrivateFormat
PubFmt = serialization.PublicFormat

# 512 bits: below what cryptography generates, so a fixed key
RSA_512_PEM = b"""-----BEGIN PRIVATE KEY-----
MIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8AgEAAkEApZ2d04wEZh6QboaK
xh9F267qdTHbecn5NfT9NLvq5nirqNJj8aWfPqJOrPQVnKkBcvBLO77YrpEic53n
kxP7sQIDAQABAkEAnDhYFqNdxuIPxWH95zK6l6WgHVohN/lvrRjh+2tDAY/O8F03
7yKVjTFkRllD+O68YphQvqNn+utl0iXqORgKwQIhANnlQCo3RMnUUI/Gr8tvqzqN
R4LYLeRejB3HJpGSJqN5AiEAwpPm719rpsy0Tn1j/zqZqfyPmnSvXCupwu1PFjwF
E/kCIGn4baFaadECuf+CsMJu18bNKQdAnekf9mMRFPfdLX95AiEAwGR/5tZB2nb0
HdvsITSvNh5NW9refdOKkvwUxBZqqvkCIQCI3yIluPt+xzhhmymZoE/Wyp3RQtwt
qTnrByuiYhzxVQ==
-----END PRIVATE KEY-----
"""


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """Software test keys, made once: cryptography is fast, SoftHSM keygen is not needed."""
    return {
        "RSA_2048": rsa.generate_private_key(65537, 2048),
        "RSA_1024": rsa.generate_private_key(65537, 1024),  # noqa: S505
        "EC_P256": ec.generate_private_key(ec.SECP256R1()),
        "EC_P384": ec.generate_private_key(ec.SECP384R1()),
    }


def _spki(public) -> bytes:
    return public.public_bytes(Enc.DER, PubFmt.SubjectPublicKeyInfo)


def _pem_body(pem: bytes) -> bytes:
    return b"\n".join(line for line in pem.splitlines() if not line.startswith(b"-----"))


def _verify_hsm_signature(hsm, wrapped: WrappedKey, public, context: str = CTX) -> None:
    """A signature made in the HSM with the wrapped key verifies with the original key."""
    if isinstance(public, rsa.RSAPublicKey):
        sig = hsm.sign(wrapped, context, b"signed data", SignScheme.RSA_PSS_SHA256)
        public.verify(sig, b"signed data",
                      padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                      hashes.SHA256())
    else:
        sig = hsm.sign(wrapped, context, b"signed data", SignScheme.ECDSA_SHA384)
        public.verify(ecdsa_raw_to_der(sig), b"signed data", ec.ECDSA(hashes.SHA384()))


# ---- public keys ---------------------------------------------------------------------------

PUBLIC_ENCODINGS = {
    "spki-pem": lambda p: p.public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo),
    "spki-pem-text": lambda p: p.public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo).decode(),
    "spki-pem-crlf": lambda p: p.public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo)
    .replace(b"\n", b"\r\n"),
    "spki-der": lambda p: p.public_bytes(Enc.DER, PubFmt.SubjectPublicKeyInfo),
    "bare-body": lambda p: _pem_body(p.public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo)),
    "bare-one-line": lambda p: base64.b64encode(_spki(p)).decode(),
    "pkcs1-pem": lambda p: p.public_bytes(Enc.PEM, PubFmt.PKCS1),
    "pkcs1-der": lambda p: p.public_bytes(Enc.DER, PubFmt.PKCS1),
    "pkcs1-bare-body": lambda p: _pem_body(p.public_bytes(Enc.PEM, PubFmt.PKCS1)),
}


@pytest.mark.parametrize("name, encoding", [
    (name, encoding) for name in ("RSA_2048", "EC_P256", "EC_P384") for encoding in
    PUBLIC_ENCODINGS if name.startswith("RSA") or not encoding.startswith("pkcs1")  # RSA only
])
def test_public_keys_import(keys, name, encoding):
    public = keys[name].public_key()
    got = material.import_public_key(PUBLIC_ENCODINGS[encoding](public))
    assert got.wrapped is None and not got.spec.has_private
    assert got.spec.name == ("PUBLIC_RSA" if name.startswith("RSA") else "PUBLIC_EC")
    assert got.public_pem == public.public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo).decode()
    assert got.fingerprint == hashlib.sha256(_spki(public)).hexdigest()


# ---- private keys --------------------------------------------------------------------------

def _enc(password: bytes | None):
    if password is None:
        return serialization.NoEncryption()
    return serialization.BestAvailableEncryption(password)


PRIVATE_ENCODINGS = {
    "pkcs8-pem": (Enc.PEM, PrivFmt.PKCS8, False),
    "pkcs8-der": (Enc.DER, PrivFmt.PKCS8, False),
    "traditional-pem": (Enc.PEM, PrivFmt.TraditionalOpenSSL, False),
    "traditional-der": (Enc.DER, PrivFmt.TraditionalOpenSSL, False),
    "encrypted-pkcs8-pem": (Enc.PEM, PrivFmt.PKCS8, True),
    "encrypted-pkcs8-der": (Enc.DER, PrivFmt.PKCS8, True),
    "encrypted-traditional-pem": (Enc.PEM, PrivFmt.TraditionalOpenSSL, True),
}


def _private_bytes(private, encoding: str, password: str = PASSWORD) -> tuple[bytes, str | None]:
    enc, fmt, encrypted = PRIVATE_ENCODINGS[encoding]
    pw = password if encrypted else None
    return private.private_bytes(enc, fmt, _enc(pw.encode() if pw else None)), pw


@pytest.mark.parametrize("name", ["RSA_2048", "EC_P256", "EC_P384"])
@pytest.mark.parametrize("encoding", PRIVATE_ENCODINGS)
def test_private_keys_import_and_sign(hsm, keys, name, encoding):
    private = keys[name]
    data, pw = _private_bytes(private, encoding)
    got = material.import_private_key(hsm, data, CTX, password=pw)
    assert got.spec == keyspecs.spec(name)
    assert got.wrapped is not None and got.wrapped.context == CTX
    assert got.wrapped.public_der == _spki(private.public_key())
    assert got.public_pem == private.public_key().public_bytes(
        Enc.PEM, PubFmt.SubjectPublicKeyInfo).decode()
    assert got.fingerprint == hashlib.sha256(_spki(private.public_key())).hexdigest()
    assert keyspecs.spec_of_wrapped(got.wrapped) == got.spec
    _verify_hsm_signature(hsm, got.wrapped, private.public_key())
    with pytest.raises(BindingError):  # bound to the context it was imported for
        _verify_hsm_signature(hsm, got.wrapped, private.public_key(), OTHER_CTX)


def test_private_key_as_text_with_bytes_password_and_matching_public_key(hsm, keys):
    private = keys["RSA_1024"]
    data, _ = _private_bytes(private, "encrypted-pkcs8-pem")
    public_pkcs1 = private.public_key().public_bytes(Enc.PEM, PubFmt.PKCS1)
    got = material.import_private_key(hsm, data.decode(), CTX, password=PASSWORD.encode(),
                                      public_key=public_pkcs1)
    assert got.spec.name == "RSA_1024"
    _verify_hsm_signature(hsm, got.wrapped, private.public_key())


def test_an_empty_password_is_no_password(hsm, keys):
    data, _ = _private_bytes(keys["EC_P256"], "pkcs8-pem")
    assert material.import_private_key(hsm, data, CTX, password="").spec.name == "EC_P256"


@pytest.mark.parametrize("pair", [("RSA_2048", "RSA_1024"), ("EC_P256", "EC_P384"),
                                  ("EC_P256", "RSA_2048")])
def test_private_key_must_match_public_key(hsm, keys, pair):
    data, _ = _private_bytes(keys[pair[0]], "pkcs8-pem")
    other = keys[pair[1]].public_key().public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo)
    with pytest.raises(InvalidInput, match="does not match the public key") as exc:
        material.import_private_key(hsm, data, CTX, public_key=other, field="privateKey")
    assert exc.value.field == "privateKey"


# ---- what import refuses -------------------------------------------------------------------

def _case_private(make_private, password=None, encoding="pkcs8-pem"):
    def run(hsm, keys):
        private = make_private(keys)
        enc, fmt, _ = PRIVATE_ENCODINGS[encoding]
        data = private.private_bytes(enc, fmt, serialization.NoEncryption())
        return material.import_private_key(hsm, data, CTX, password=password, field="k",
                                           password_field="pw", public_key_field="pub")
    return run


def _encrypted(encoding, password):
    def run(hsm, keys):
        data, _ = _private_bytes(keys["RSA_1024"], encoding)
        return material.import_private_key(hsm, data, CTX, password=password, field="k",
                                           password_field="pw", public_key_field="pub")
    return run


def _raw_private(data, password=None):
    def run(hsm, keys):
        return material.import_private_key(hsm, data, CTX, password=password, field="k",
                                           password_field="pw", public_key_field="pub")
    return run


def _raw_public(data):
    def run(hsm, keys):
        return material.import_public_key(data, field="pub")
    return run


def _public_of(make):
    def run(hsm, keys):
        public = make(keys)
        return material.import_public_key(
            public.public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo), field="pub")
    return run


_GARBAGE_PEM = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
_BIG_RSA = rsa.RSAPublicNumbers(65537, (1 << 4199) | 0xF1).public_key()

# (case, expected field, words of the message)
REFUSED = {
    "wrong password pkcs8": (_encrypted("encrypted-pkcs8-pem", "not it"), "pw", "wrong password"),
    "wrong password pkcs8 der": (_encrypted("encrypted-pkcs8-der", "x"), "pw", "wrong password"),
    "wrong password traditional": (_encrypted("encrypted-traditional-pem", "nope"), "pw",
                                   "wrong password"),
    "missing password": (_encrypted("encrypted-pkcs8-pem", None), "pw", "password is required"),
    "missing password traditional": (_encrypted("encrypted-traditional-pem", None), "pw",
                                      "password is required"),
    "password for a clear key": (_case_private(lambda k: k["EC_P256"], password="pw"), "pw",
                                 "not encrypted"),
    "password not text": (_case_private(lambda k: k["EC_P256"], password=12), "pw",
                          "password must be text"),
    "password too long": (_case_private(lambda k: k["EC_P256"], password="p" * 1025), "pw",
                          "at most"),
    "dsa private": (_case_private(lambda k: dsa.generate_private_key(1024)), "k",  # noqa: S505
                    "only RSA and EC"),
    "ed25519 private": (_case_private(lambda k: ed25519.Ed25519PrivateKey.generate()), "k",
                        "only RSA and EC"),
    "p521 private": (_case_private(lambda k: ec.generate_private_key(ec.SECP521R1())), "k",
                     "P-256 or P-384"),
    "secp256k1 private": (_case_private(lambda k: ec.generate_private_key(ec.SECP256K1()),
                                        encoding="traditional-pem"), "k", "P-256 or P-384"),
    "rsa 512 private": (_raw_private(RSA_512_PEM), "k", "1024, 2048, 3072 or 4096"),
    "rsa 1536 private": (
        _case_private(lambda k: rsa.generate_private_key(65537, 1536)), "k",  # noqa: S505
        "1024, 2048, 3072 or 4096"),
    "garbage pem private": (_raw_private(_GARBAGE_PEM), "k", "cannot be parsed"),
    "garbage der private": (_raw_private(b"\x30\x03\x02\x01\x00"), "k", "cannot be parsed"),
    "garbage der private with password": (_raw_private(b"\x30\x03\x02\x01\x00", "pw"), "k",
                                          "cannot be parsed"),
    "text private": (_raw_private("hello world"), "k", "cannot be parsed"),
    "non-ascii private": (_raw_private("-----BEGIN PRIVATE KEY-----\u00e9"), "k",
                          "cannot be parsed"),
    "empty private": (_raw_private(b""), "k", "required"),
    "blank private": (_raw_private("  \n "), "k", "required"),
    "private not text": (_raw_private(1234), "k", "must be text or bytes"),
    "private too long": (_raw_private(b"A" * (64 * 1024 + 1)), "k", "64 KiB"),
    "public given as private": (
        lambda hsm, keys: material.import_private_key(
            hsm, keys["EC_P256"].public_key().public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo),
            CTX, field="k"), "k", "cannot be parsed"),
    "bad public beside a private": (
        lambda hsm, keys: material.import_private_key(
            hsm, keys["EC_P256"].private_bytes(Enc.PEM, PrivFmt.PKCS8,
                                               serialization.NoEncryption()),
            CTX, public_key=b"garbage", public_key_field="pub"), "pub", "cannot be parsed"),
    "ed25519 public": (_public_of(lambda k: ed25519.Ed25519PrivateKey.generate().public_key()),
                       "pub", "only RSA and EC"),
    "dsa public": (_public_of(lambda k: dsa.generate_private_key(1024).public_key()),  # noqa: S505
                   "pub",
                   "only RSA and EC"),
    "p521 public": (_public_of(lambda k: ec.generate_private_key(ec.SECP521R1()).public_key()),
                    "pub", "P-256 or P-384"),
    "rsa 4200 public": (_public_of(lambda k: _BIG_RSA), "pub", "1024 to 4096"),
    "rsa 512 public": (_public_of(lambda k: serialization.load_pem_private_key(
        RSA_512_PEM, None).public_key()), "pub", "1024 to 4096"),
    "private given as public": (_raw_public(RSA_512_PEM), "pub", "cannot be parsed"),
    "garbage public": (_raw_public(b"\x00\xff\x10garbage"), "pub", "cannot be parsed"),
    "bad base64 public": (_raw_public("MIIB$$$"), "pub", "cannot be parsed"),
    "base64 of garbage public": (_raw_public(base64.b64encode(b"garbage")), "pub",
                                 "cannot be parsed"),
    "certificate public": (_raw_public(b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                       b"-----END CERTIFICATE-----\n"), "pub", "cannot be parsed"),
    "empty public": (_raw_public(""), "pub", "required"),
    "public not text": (_raw_public(None), "pub", "must be text or bytes"),
    "public too long": (_raw_public("A" * (64 * 1024 + 1)), "pub", "64 KiB"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_import_refusals_are_invalid_input(hsm, keys, case):
    run, field, words = REFUSED[case]
    with pytest.raises(InvalidInput) as exc:
        run(hsm, keys)
    assert exc.value.field == field
    assert words in exc.value.message
    # never key material or the password in a message, nor a chained raw exception
    for secret in ("not it", "nope", PASSWORD, "MII", "AAAA", "garbage"):
        assert secret not in exc.value.message
    assert exc.value.__cause__ is None


def test_no_context_no_import(hsm, keys):
    data, _ = _private_bytes(keys["EC_P256"], "pkcs8-pem")
    with pytest.raises(InvalidInput) as exc:
        material.import_private_key(hsm, data, "")
    assert exc.value.field == "context"


# ---- raw secrets ---------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 16, 20, 32, 512])
def test_secrets_import(hsm, length):
    raw = bytes(range(256)) * 2
    got = material.import_secret(hsm, raw[:length], CTX, exportable=True)
    assert got.spec.name == "SECRET" and got.public_pem is None and got.fingerprint is None
    assert hsm.export_secret(got.wrapped, CTX) == raw[:length]


def test_aes_secret_import_encrypts(hsm):
    got = material.import_secret(hsm, b"k" * 24, CTX, key_spec="AES_192")
    assert got.spec.name == "AES_192" and got.wrapped.exportable is False
    assert hsm.decrypt_gcm(got.wrapped, CTX, hsm.encrypt_gcm(got.wrapped, CTX, b"x")) == b"x"


@pytest.mark.parametrize("raw, key_spec, field", [
    (b"", "SECRET", "key"),
    (b"x" * 513, "SECRET", "key"),
    (b"x" * 31, "AES_256", "key"),
    (b"x" * 32, "RSA_2048", "spec"),
    (b"x" * 32, "PUBLIC_EC", "spec"),
    ("text", "SECRET", "key"),
    (b"x" * 32, "NOPE", "spec"),
])
def test_secret_refusals(hsm, raw, key_spec, field):
    with pytest.raises(InvalidInput) as exc:
        material.import_secret(hsm, raw, CTX, key_spec=key_spec)
    assert exc.value.field == field


def test_describe_a_generated_key(hsm):
    key = keyspecs.generate(hsm, "EC_P256", CTX)
    got = material.describe(key)
    public = serialization.load_der_public_key(key.public_der)
    assert got.spec.name == "EC_P256" and got.wrapped is key
    assert got.fingerprint == hashlib.sha256(key.public_der).hexdigest()
    assert serialization.load_pem_public_key(got.public_pem.encode()) == public
    aes = material.describe(keyspecs.generate(hsm, "AES_128", CTX))
    assert aes.spec.name == "AES_128" and aes.public_pem is None


# ---- sealed fields -------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)), b"\x00" * 70_000])
def test_seal_open_round_trip(hsm, data):
    sealed = material.seal(hsm, CTX, data)
    assert material.open(hsm, CTX, sealed) == data
    assert len(sealed["ct"]) == 12 + len(data) + 16


def test_sealed_shape(hsm):
    sealed = material.seal(hsm, CTX, b"data")
    assert set(sealed) == {"key", "ct"} and isinstance(sealed["ct"], bytes)
    assert set(sealed["key"]) == {f.name for f in dataclasses.fields(WrappedKey)}
    key = WrappedKey.from_dict(sealed["key"])
    assert (key.kind, key.size, key.context, key.exportable) == ("aes", 256, CTX, False)
    # a fresh key per record
    assert material.seal(hsm, CTX, b"data")["key"]["blob"] != sealed["key"]["blob"]


def test_sealed_field_copied_to_another_record_fails(hsm):
    sealed = material.seal(hsm, CTX, b"secret field")
    with pytest.raises(IntegrityError):
        material.open(hsm, OTHER_CTX, sealed)
    # re-binding the key alone is not enough: the context is the AAD of the data too
    moved = {**sealed, "key": hsm.rebind(WrappedKey.from_dict(sealed["key"]), CTX,
                                         OTHER_CTX).to_dict()}
    with pytest.raises(IntegrityError):
        material.open(hsm, OTHER_CTX, moved)


@pytest.mark.parametrize("position", [0, 11, 12, 20, -1])
def test_edited_ciphertext_fails(hsm, position):
    sealed = material.seal(hsm, CTX, b"secret field")
    ct = bytearray(sealed["ct"])
    ct[position] ^= 0x01
    with pytest.raises(IntegrityError):
        material.open(hsm, CTX, {**sealed, "ct": bytes(ct)})


@pytest.mark.parametrize("break_it", [
    lambda s: {"ct": s["ct"]},
    lambda s: {"key": s["key"]},
    lambda s: {**s, "ct": None},
    lambda s: {**s, "ct": 40},
    lambda s: {**s, "ct": "text"},
    lambda s: {**s, "ct": s["ct"][:20]},
    lambda s: {**s, "key": "not a dict"},
    lambda s: {**s, "key": {k: v for k, v in s["key"].items() if k != "tag"}},
    lambda s: {**s, "key": {**s["key"], "kind": "rsa"}},
    lambda s: {**s, "key": {**s["key"], "size": 128}},
    lambda s: None,
])
def test_malformed_sealed_data_is_an_integrity_error(hsm, break_it):
    sealed = material.seal(hsm, CTX, b"secret field")
    with pytest.raises(IntegrityError):
        material.open(hsm, CTX, break_it(sealed))


JSON_VALUES = [{}, {"b": 1, "a": [1, 2.5, None, True]}, [], "text", 0, {"u": "\u00e9\U0001f600"},
               {"client_secret": "s" * 1000, "nested": {"x": {"y": [{"z": -1}]}}}]


@pytest.mark.parametrize("value", JSON_VALUES)
def test_seal_json_round_trip(hsm, value):
    assert material.open_json(hsm, CTX, material.seal_json(hsm, CTX, value)) == value


def test_seal_json_is_canonical(hsm):
    sealed = material.seal_json(hsm, CTX, {"b": 1, "a": {"d": 2, "c": 3}})
    assert material.open(hsm, CTX, sealed) == b'{"a":{"c":3,"d":2},"b":1}'


@pytest.mark.parametrize("value, words", [
    ({"a": float("nan")}, "options.a: Number must be finite"),
    ({"a": [float("inf")]}, "options.a.0: Number must be finite"),
    ({"a": "\ud800"}, "options.a: String is not valid Unicode"),
    ({"a": {1, 2}}, "options must be JSON"),
    ({"a": b"bytes"}, "options must be JSON"),
    ({"a": "x" * 100}, "at most 64 bytes of JSON"),
])
def test_seal_json_refusals(hsm, value, words):
    with pytest.raises(InvalidInput) as exc:
        material.seal_json(hsm, CTX, value, max_bytes=64, field="options")
    assert exc.value.field == "options" and words in exc.value.message


def test_open_json_of_non_json_is_an_integrity_error(hsm):
    with pytest.raises(IntegrityError):
        material.open_json(hsm, CTX, material.seal(hsm, CTX, b"\xff not json"))


def test_seal_needs_bytes(hsm):
    with pytest.raises(InvalidInput):
        material.seal(hsm, CTX, "text")  # type: ignore[arg-type]


# The stored shape connections.py writes today (options_key / options_ct): the same data must
# open either way, so that it can switch to seal_json/open_json without touching stored data.

def test_seal_matches_the_stored_connection_options_shape(hsm):
    # what connections.py does, spelled out with the HSM primitives
    options = {"client_secret": "s3cret", "scope": ["openid"]}
    data = json.dumps(options, separators=(",", ":"), sort_keys=True,
                      allow_nan=False).encode()
    key = hsm.generate_aes(256, CTX)
    stored = {"options_key": key.to_dict(),
              "options_ct": hsm.encrypt_gcm(key, CTX, data, CTX.encode())}
    sealed = {"key": stored["options_key"], "ct": stored["options_ct"]}
    assert material.open_json(hsm, CTX, sealed) == options
    ours = material.seal_json(hsm, CTX, options)
    assert set(ours["key"]) == set(stored["options_key"])
    assert type(ours["ct"]) is type(stored["options_ct"])
    ours_key = WrappedKey.from_dict(ours["key"])
    assert json.loads(hsm.decrypt_gcm(ours_key, CTX, ours["ct"], CTX.encode())) == options


def test_connections_keep_their_stored_shape_and_context(hsm):
    """Connections seal options with seal_json in the shape and context they always had, so
    options stored before they did still open."""
    connections = Connections("p", "kind", store=None, hsm=hsm, attempts=1)  # type: ignore[arg-type]
    owner, cid, options = "t1", "con_abc", {"client_secret": "x", "n": 1}
    context = f"kind/{owner}/connections/{cid}/options"  # the context of stored options
    stored = connections._seal_options(owner, cid, options)
    assert material.open_json(hsm, context, {"key": stored["options_key"],
                                             "ct": stored["options_ct"]}) == options
    # what was stored before (AES-GCM in the HSM, AAD = the context) opens through them
    key = hsm.generate_aes(256, context)
    data = json.dumps(options, separators=(",", ":"), sort_keys=True).encode()
    record = {"id": cid, "options_key": key.to_dict(),
              "options_ct": hsm.encrypt_gcm(key, context, data, context.encode())}
    assert connections.options(owner, cid, record) == options


# ---- export under a password ---------------------------------------------------------------

@pytest.fixture(scope="module")
def exportable(hsm) -> WrappedKey:
    return keyspecs.generate(hsm, "AES_256", CTX, exportable=True)


@pytest.fixture(scope="module")
def document(hsm, exportable) -> bytes:
    return material.export_under_password(hsm, exportable, CTX, PASSWORD)


def test_export_document_is_self_describing(document):
    doc = json.loads(document)
    assert doc["format"] == "sealed-key-material" and doc["version"] == 1
    assert doc["kdf"]["name"] == "scrypt"
    assert (doc["kdf"]["n"], doc["kdf"]["r"], doc["kdf"]["p"]) == (2**15, 8, 1)
    assert len(base64.b64decode(doc["kdf"]["salt"])) == 16
    assert doc["cipher"] == "AES-256-GCM" and len(base64.b64decode(doc["nonce"])) == 12
    assert document.isascii() and PASSWORD.encode() not in document


def test_export_round_trips_into_another_record(hsm, exportable, document):
    got = material.import_under_password(hsm, document, PASSWORD, OTHER_CTX, exportable=False)
    assert got.spec.name == "AES_256" and got.wrapped.context == OTHER_CTX
    assert got.wrapped.exportable is False
    # the same key: what the original encrypts, the re-imported one decrypts
    ct = hsm.encrypt_gcm(exportable, CTX, b"payload", b"aad")
    assert hsm.decrypt_gcm(got.wrapped, OTHER_CTX, ct, b"aad") == b"payload"
    again = material.import_under_password(hsm, document.decode(), PASSWORD.encode(), CTX,
                                           exportable=True)
    assert hsm.export_secret(again.wrapped, CTX) == hsm.export_secret(exportable, CTX)


@pytest.mark.parametrize("length", [1, 20, 512])
def test_export_of_raw_secrets(hsm, length):
    raw = bytes(range(length % 256)) + b"\x5a" * (length - length % 256)
    key = material.import_secret(hsm, raw, CTX, exportable=True).wrapped
    doc = material.export_under_password(hsm, key, CTX, "pw")
    got = material.import_under_password(hsm, doc, "pw", OTHER_CTX, exportable=True)
    assert got.spec.name == "SECRET" and hsm.export_secret(got.wrapped, OTHER_CTX) == raw


def test_text_passwords_are_normalised(hsm, exportable):
    doc = material.export_under_password(hsm, exportable, CTX, unicodedata.normalize(
        "NFD", "p\u00e4ssw\u00f6rd"))
    got = material.import_under_password(hsm, doc, "p\u00e4ssw\u00f6rd", CTX, exportable=False)
    assert got.spec.name == "AES_256"


def test_wrong_password_fails(hsm, document):
    with pytest.raises(IntegrityError, match="wrong password"):
        material.import_under_password(hsm, document, PASSWORD + "!", CTX, exportable=False)


def _edit(document: bytes, change) -> bytes:
    doc = json.loads(document)
    change(doc)
    return json.dumps(doc).encode()


def _flip_b64(text: str, index: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("change", [
    lambda d: d.update(ct=_flip_b64(d["ct"], 0)),
    lambda d: d.update(ct=_flip_b64(d["ct"], -1)),
    lambda d: d.update(nonce=_flip_b64(d["nonce"], 3)),
    lambda d: d["kdf"].update(salt=_flip_b64(d["kdf"]["salt"], 0)),
    lambda d: d["kdf"].update(n=2**14),
    lambda d: d["kdf"].update(r=4),
])
def test_edited_document_fails(hsm, document, change):
    with pytest.raises(IntegrityError):
        material.import_under_password(hsm, _edit(document, change), PASSWORD, CTX,
                                       exportable=False)


def test_a_flipped_byte_anywhere_fails(hsm, document):
    # positions across the whole document: a clear 400 each time, never a raw exception
    # (a sample: each edit that still parses costs a key derivation)
    for i in range(0, len(document), 23):
        edited = bytearray(document)
        edited[i] ^= 0x01
        with pytest.raises((IntegrityError, InvalidInput)):
            material.import_under_password(hsm, bytes(edited), PASSWORD, CTX, exportable=False)


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(version=True), "version"),
    (lambda d: d.update(format="other"), "not a key export document"),
    (lambda d: d.update(cipher="AES-128-GCM"), "not a key export document"),
    (lambda d: d.update(extra=1), "not a key export document"),
    (lambda d: d.pop("ct"), "not a key export document"),
    (lambda d: d.update(ct="!!"), "not a key export document"),
    (lambda d: d.update(ct=""), "not a key export document"),
    (lambda d: d.update(nonce=base64.b64encode(b"x" * 8).decode()), "not a key export"),
    (lambda d: d["kdf"].update(name="pbkdf2"), "not a key export document"),
    (lambda d: d["kdf"].update(n="32768"), "not a key export document"),
    (lambda d: d["kdf"].update(n=2**20), "out of range"),
    (lambda d: d["kdf"].update(n=2**15 + 1), "out of range"),
    (lambda d: d["kdf"].update(r=64), "out of range"),
    (lambda d: d["kdf"].update(p=16), "out of range"),
    (lambda d: d["kdf"].update(salt=base64.b64encode(b"x" * 4).decode()), "not a key export"),
])
def test_malformed_document_is_invalid_input(hsm, document, change, words):
    with pytest.raises(InvalidInput, match=words) as exc:
        material.import_under_password(hsm, _edit(document, change), PASSWORD, CTX,
                                       exportable=False, field="file")
    assert exc.value.field == "file"


@pytest.mark.parametrize("document", [b"", b"not json", b"[]", b'{"format": NaN}',
                                      b"\xff\xfe", "\u00e9", b"{" * 70_000, None])
def test_garbage_documents_are_invalid_input(hsm, document):
    with pytest.raises(InvalidInput) as exc:
        material.import_under_password(hsm, document, PASSWORD, CTX, exportable=False)
    assert exc.value.field == "document"


def test_authentic_but_foreign_content_is_invalid_input(hsm):
    # a document made with the right password by another program: the tag holds, the
    # content is not a key we can import
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    salt, nonce = b"s" * 16, b"n" * 12
    header = {"format": "sealed-key-material", "version": 1, "cipher": "AES-256-GCM",
              "kdf": {"name": "scrypt", "n": 2**14, "r": 8, "p": 1,
                      "salt": base64.b64encode(salt).decode()},
              "nonce": base64.b64encode(nonce).decode()}
    key = Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(b"pw")
    aad = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    inner = json.dumps({"spec": "RSA_2048", "kind": "rsa", "size": 2048,
                        "material": base64.b64encode(b"x" * 256).decode()}).encode()
    doc = json.dumps({**header, "ct": base64.b64encode(
        AESGCM(key).encrypt(nonce, inner, aad)).decode()})
    with pytest.raises(InvalidInput, match="not a key"):
        material.import_under_password(hsm, doc, "pw", CTX, exportable=False)


@pytest.mark.parametrize("password", [None, "", b""])
def test_export_needs_a_password(hsm, exportable, document, password):
    with pytest.raises(InvalidInput, match="password is required") as exc:
        material.export_under_password(hsm, exportable, CTX, password)  # type: ignore[arg-type]
    assert exc.value.field == "password"
    with pytest.raises(InvalidInput, match="password is required"):
        material.import_under_password(hsm, document, password, CTX,  # type: ignore[arg-type]
                                       exportable=False)


def test_private_keys_are_not_exported(hsm, keys):
    data, _ = _private_bytes(keys["EC_P256"], "pkcs8-pem")
    wrapped = material.import_private_key(hsm, data, CTX).wrapped
    with pytest.raises(InvalidState, match="only secret keys"):
        material.export_under_password(hsm, wrapped, CTX, PASSWORD)


def test_non_exportable_secrets_are_not_exported(hsm):
    key = keyspecs.generate(hsm, "AES_256", CTX)
    with pytest.raises(InvalidState, match="not exportable"):
        material.export_under_password(hsm, key, CTX, PASSWORD)
    # the flag is covered by the HSM's binding tag: flipping it does not help
    forged = dataclasses.replace(key, exportable=True)
    with pytest.raises(BindingError):
        material.export_under_password(hsm, forged, CTX, PASSWORD)


def test_export_checks_the_context(hsm, exportable):
    with pytest.raises(BindingError):
        material.export_under_password(hsm, exportable, OTHER_CTX, PASSWORD)
