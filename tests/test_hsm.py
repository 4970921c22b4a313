"""The HSM layer against a real SoftHSM token (the one conftest creates for the run)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from chalicelib import errors
from chalicelib.hsm import Hsm, SignScheme, WrappedKey, ecdsa_raw_to_der, get_hsm
from chalicelib.hsm.bootstrap import ensure_keys
from chalicelib.hsm.session import (
    HSM_LOCK,
    TokenSession,
    UnwrappedCache,
    load_lib,
    token_session,
)

CTX = "storedsafe/179/my-key/3"
OTHER_CTX = "storedsafe/180/my-key/3"

_HASH = {"SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}


def forget_unwrapped(settings) -> None:
    """Close the session: cached session objects go, the next use unwraps the blob again."""
    token_session(settings).reset()


def verify(key: WrappedKey, data: bytes, sig: bytes, scheme: SignScheme) -> None:
    """Verify a signature made by Hsm.sign with cryptography (explicit parameters)."""
    public = serialization.load_der_public_key(key.public_der)
    h = _HASH[scheme.value.rsplit("_", 1)[1]]()
    if scheme.name.startswith("ECDSA"):
        public.verify(ecdsa_raw_to_der(sig), data, ec.ECDSA(h))
    elif scheme.name.startswith("RSA_PSS"):
        public.verify(sig, data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    else:
        public.verify(sig, data, padding.PKCS1v15(), h)


RSA_SCHEMES = [s for s in SignScheme if s.name.startswith("RSA")]
EC_SCHEMES = [s for s in SignScheme if s.name.startswith("ECDSA")]


@pytest.fixture(scope="module")
def rsa_keys(hsm) -> dict[int, WrappedKey]:
    """One generated RSA key per size (4096 only once: it is the slow one)."""
    return {bits: hsm.generate_rsa(bits, CTX) for bits in (1024, 2048, 3072, 4096)}


@pytest.fixture(scope="module")
def ec_keys(hsm) -> dict[str, WrappedKey]:
    return {curve: hsm.generate_ec(curve, CTX) for curve in ("P-256", "P-384")}


@pytest.fixture
def direct_session(settings, hsm) -> Iterator[pkcs11.Session]:
    """A plain PKCS#11 session beside the service's (it shares the application's login)."""
    hsm.ping()  # the service session is open and logged in
    with HSM_LOCK:
        token = load_lib(settings.pkcs11_module).get_token(token_label=settings.token_label)
        session = token.open(rw=True)  # no PIN: no login of its own, so no logout on close
        try:
            yield session
        finally:
            session.close()


# ---- bootstrap and health -------------------------------------------------------------


def test_ensure_keys_is_idempotent(settings):
    assert ensure_keys(settings) == []
    assert ensure_keys(settings) == []


def test_ping(hsm):
    hsm.ping()


@pytest.mark.parametrize("change", [
    {"token_label": "no-such-token"},
    {"pkcs11_module": "/nonexistent/libpkcs11.so"},
    {"kek_version": 99},
])
def test_ping_reports_unavailable(settings, change):
    with pytest.raises(errors.Unavailable):
        Hsm(dataclasses.replace(settings, **change)).ping()


def test_kek_and_bind_key_never_leave_the_hsm(settings, direct_session):
    kek = direct_session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES,
                                 label=f"{settings.kek_label_prefix}-v{settings.kek_version}")
    bind = direct_session.get_key(object_class=ObjectClass.SECRET_KEY,
                                  key_type=KeyType.GENERIC_SECRET,
                                  label=f"{settings.bind_key_label_prefix}-v{settings.kek_version}")
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        kek[Attribute.VALUE]
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        bind[Attribute.VALUE]
    expected_kek = {
        Attribute.TOKEN: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
        Attribute.NEVER_EXTRACTABLE: True, Attribute.WRAP: True, Attribute.UNWRAP: True,
        Attribute.ENCRYPT: False, Attribute.DECRYPT: False, Attribute.VALUE_LEN: 32,
    }
    assert {a: kek[a] for a in expected_kek} == expected_kek
    expected_bind = {
        Attribute.TOKEN: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True, Attribute.VERIFY: True, Attribute.VALUE_LEN: 32,
    }
    assert {a: bind[a] for a in expected_bind} == expected_bind
    wrapper = direct_session.generate_key(
        KeyType.AES, 256, store=False,
        template={Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.EXTRACTABLE: False})
    for key in (kek, bind):
        with pytest.raises(pkcs11.exceptions.KeyUnextractable):
            wrapper.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)


# ---- generated keys: wrap, unwrap, use -------------------------------------------------


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_generated_aes_round_trips_through_wrap(hsm, settings, bits):
    key = hsm.generate_aes(bits, CTX)
    assert (key.kind, key.size, key.curve, key.exportable) == ("aes", bits, None, False)
    assert key.kek_label == f"{settings.kek_label_prefix}-v1"
    assert key.mechanism == "AES_KEY_WRAP_PAD" and key.public_der is None
    stored = WrappedKey.from_dict(key.to_dict())
    ct = hsm.encrypt_gcm(key, CTX, b"secret text", b"aad")
    forget_unwrapped(settings)  # from here on the key comes from the blob
    assert hsm.decrypt_gcm(stored, CTX, ct, b"aad") == b"secret text"
    ct2 = hsm.encrypt_gcm(stored, CTX, b"", b"")
    assert len(ct2) == 12 + 16 and hsm.decrypt_gcm(key, CTX, ct2, b"") == b""


@pytest.mark.parametrize("bits", [1024, 2048, 3072, 4096])
def test_generated_rsa_signs_every_scheme_after_unwrap(hsm, settings, rsa_keys, bits):
    key = rsa_keys[bits]
    assert (key.kind, key.size, key.curve) == ("rsa", bits, None)
    public = serialization.load_der_public_key(key.public_der)
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == bits
    assert public.public_numbers().e == 65537
    forget_unwrapped(settings)
    for scheme in RSA_SCHEMES:
        if bits == 1024 and scheme is SignScheme.RSA_PSS_SHA512:
            continue  # too small: covered by test_pss_sha512_needs_a_bigger_key
        sig = hsm.sign(key, CTX, b"message", scheme)
        assert len(sig) == bits // 8
        verify(key, b"message", sig, scheme)


def test_pss_is_randomised_and_pkcs1_deterministic(hsm, rsa_keys):
    key = rsa_keys[2048]
    pss = [hsm.sign(key, CTX, b"m", SignScheme.RSA_PSS_SHA256) for _ in range(2)]
    pkcs1 = [hsm.sign(key, CTX, b"m", SignScheme.RSA_PKCS1_SHA256) for _ in range(2)]
    assert pss[0] != pss[1] and pkcs1[0] == pkcs1[1]


def test_pss_sha512_needs_a_bigger_key(hsm, rsa_keys):
    with pytest.raises(errors.InvalidInput):
        hsm.sign(rsa_keys[1024], CTX, b"m", SignScheme.RSA_PSS_SHA512)


@pytest.mark.parametrize("curve,bits", [("P-256", 256), ("P-384", 384)])
def test_generated_ec_signs_every_scheme_after_unwrap(hsm, settings, ec_keys, curve, bits):
    key = ec_keys[curve]
    assert (key.kind, key.size, key.curve) == ("ec", bits, curve)
    public = serialization.load_der_public_key(key.public_der)
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.key_size == bits
    forget_unwrapped(settings)
    for scheme in EC_SCHEMES:
        sig = hsm.sign(key, CTX, b"message", scheme)
        assert len(sig) == 2 * (bits // 8)  # raw r||s, JWS form
        verify(key, b"message", sig, scheme)
        with pytest.raises(Exception):  # noqa: B017 - any verification failure
            verify(key, b"messagE", sig, scheme)


def test_scheme_must_match_the_key(hsm, rsa_keys, ec_keys):
    with pytest.raises(errors.InvalidInput):
        hsm.sign(rsa_keys[2048], CTX, b"m", SignScheme.ECDSA_SHA256)
    with pytest.raises(errors.InvalidInput):
        hsm.sign(ec_keys["P-256"], CTX, b"m", SignScheme.RSA_PKCS1_SHA256)
    with pytest.raises(errors.InvalidInput):
        hsm.encrypt_gcm(rsa_keys[2048], CTX, b"m", b"")


@pytest.mark.parametrize("call", [
    lambda h: h.generate_aes(64, CTX),
    lambda h: h.generate_aes(512, CTX),
    lambda h: h.generate_aes(True, CTX),
    lambda h: h.generate_rsa(1000, CTX),
    lambda h: h.generate_rsa(8192, CTX),
    lambda h: h.generate_ec("P-521", CTX),
    lambda h: h.generate_ec("secp256k1", CTX),
    lambda h: h.generate_aes(256, ""),
    lambda h: h.import_secret(b"", CTX),
    lambda h: h.import_secret(b"x" * 1025, CTX),
    lambda h: h.random_bytes(-1),
    lambda h: h.random_bytes(64 * 1024 + 1),
    lambda h: h.encrypt_gcm(h.generate_aes(128, CTX), CTX, "text", b""),
    lambda h: h.sign(h.generate_ec("P-256", CTX), CTX, "text", SignScheme.ECDSA_SHA256),
], ids=["aes64", "aes512", "aes-bool", "rsa1000", "rsa8192", "p521", "k256", "no-context",
        "empty-secret", "huge-secret", "random-neg", "random-huge", "str-plaintext", "str-data"])
def test_wrong_sizes_are_invalid_input(hsm, call):
    with pytest.raises(errors.InvalidInput):
        call(hsm)


# ---- binding: context and tampering ---------------------------------------------------


def test_blob_under_another_context_fails(hsm, rsa_keys):
    key = hsm.generate_aes(256, CTX)
    ct = hsm.encrypt_gcm(key, CTX, b"x", b"")  # used (and cached) in its own record first
    moved = dataclasses.replace(key, context=OTHER_CTX)  # copied into another record
    for k in (key, moved):
        with pytest.raises(errors.IntegrityError, match="does not belong"):
            hsm.decrypt_gcm(k, OTHER_CTX, ct, b"")
        with pytest.raises(errors.IntegrityError):
            hsm.encrypt_gcm(k, OTHER_CTX, b"x", b"")
    with pytest.raises(errors.IntegrityError):
        hsm.sign(dataclasses.replace(rsa_keys[2048], context=OTHER_CTX), OTHER_CTX, b"m",
                 SignScheme.RSA_PKCS1_SHA256)
    with pytest.raises(errors.IntegrityError):
        hsm.private_key(rsa_keys[2048], OTHER_CTX)


def _flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]


@pytest.mark.parametrize("change", [
    lambda k: {"blob": _flip(k.blob, len(k.blob) // 2)},
    lambda k: {"tag": _flip(k.tag, 5)},
    lambda k: {"tag": k.tag[:-1]},
    lambda k: {"tag": b""},
    lambda k: {"size": 128},
    lambda k: {"curve": "P-256"},
    lambda k: {"mechanism": "AES_KEY_WRAP"},
    lambda k: {"kek_label": k.kek_label + "0"},
    lambda k: {"kek_label": "someone-else-v1"},
    lambda k: {"kek_label": k.kek_label.replace("-v1", "-v7")},
    lambda k: {"public_der": b"\x30\x00"},
], ids=["blob", "tag", "tag-short", "tag-empty", "size", "curve", "mechanism", "kek-label",
        "kek-prefix", "kek-version", "public-der"])
def test_tampered_fields_fail(hsm, change):
    key = hsm.generate_aes(256, CTX)
    ct = hsm.encrypt_gcm(key, CTX, b"x", b"")
    bad = dataclasses.replace(key, **change(key))
    # a blob naming a KEK version the token does not hold (destroyed, or never here) cannot
    # be checked nor used: the service's failure to use it (Unavailable), never a use
    missing = bad.kek_label != key.kek_label and bad.kek_label.startswith(
        hsm.settings.kek_label_prefix + "-v")
    with pytest.raises(errors.Unavailable if missing else errors.IntegrityError):
        hsm.decrypt_gcm(bad, CTX, ct, b"")


def test_tampered_kind_and_exportable_fail(hsm, ec_keys):
    key = hsm.generate_aes(256, CTX)
    with pytest.raises(errors.IntegrityError):
        hsm.export_secret(dataclasses.replace(key, exportable=True), CTX)
    exportable = hsm.generate_aes(128, CTX, exportable=True)
    with pytest.raises(errors.IntegrityError):
        hsm.export_secret(dataclasses.replace(exportable, kind="secret"), CTX)
    ec_key = ec_keys["P-256"]
    other = serialization.load_der_public_key(ec_keys["P-384"].public_der)
    swapped = dataclasses.replace(ec_key, public_der=other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(errors.IntegrityError):
        hsm.sign(swapped, CTX, b"m", SignScheme.ECDSA_SHA256)


def test_rebind_moves_a_blob_to_a_new_record(hsm, ec_keys):
    key = ec_keys["P-384"]
    moved = hsm.rebind(key, CTX, OTHER_CTX)
    assert moved.blob == key.blob and moved.context == OTHER_CTX and moved.tag != key.tag
    verify(moved, b"m", hsm.sign(moved, OTHER_CTX, b"m", SignScheme.ECDSA_SHA384),
           SignScheme.ECDSA_SHA384)
    with pytest.raises(errors.IntegrityError):
        hsm.sign(moved, CTX, b"m", SignScheme.ECDSA_SHA384)
    with pytest.raises(errors.IntegrityError):
        hsm.rebind(key, OTHER_CTX, "elsewhere")
    with pytest.raises(errors.IntegrityError):
        hsm.rebind(dataclasses.replace(key, tag=_flip(key.tag)), CTX, OTHER_CTX)


# ---- AES-GCM --------------------------------------------------------------------------


def test_gcm_is_standard_and_nonces_are_fresh(hsm):
    raw = os.urandom(32)
    key = hsm.import_secret(raw, CTX)
    assert (key.kind, key.size) == ("aes", 256)
    cts = [hsm.encrypt_gcm(key, CTX, b"same", b"aad") for _ in range(3)]
    assert len({c[:12] for c in cts}) == 3
    for ct in cts:  # nonce || ciphertext || tag, readable by any AES-GCM implementation
        assert AESGCM(raw).decrypt(ct[:12], ct[12:], b"aad") == b"same"
    n = os.urandom(12)
    assert hsm.decrypt_gcm(key, CTX, n + AESGCM(raw).encrypt(n, b"theirs", b"a"), b"a") == \
        b"theirs"


def test_gcm_rejects_wrong_aad_truncation_and_flipped_bits(hsm):
    key = hsm.generate_aes(256, CTX)
    ct = hsm.encrypt_gcm(key, CTX, b"attack at dawn", b"record-1")
    bad_inputs = [
        (ct, b"record-2"),
        (ct, b""),
        (ct[:-1], b"record-1"),
        (ct[:27], b"record-1"),
        (ct[:5], b"record-1"),
        (b"", b"record-1"),
        (_flip(ct, 0), b"record-1"),  # nonce
        (_flip(ct, 14), b"record-1"),  # ciphertext
        (_flip(ct, len(ct) - 1), b"record-1"),  # tag
        (ct + b"\x00", b"record-1"),
    ]
    for data, aad in bad_inputs:
        with pytest.raises(errors.IntegrityError):
            hsm.decrypt_gcm(key, CTX, data, aad)
    other = hsm.generate_aes(256, CTX)
    with pytest.raises(errors.IntegrityError):
        hsm.decrypt_gcm(other, CTX, ct, b"record-1")
    assert hsm.decrypt_gcm(key, CTX, ct, b"record-1") == b"attack at dawn"


def test_large_plaintext(hsm, settings):
    key = hsm.generate_aes(128, CTX)
    data = os.urandom(settings.max_plaintext_bytes)
    assert hsm.decrypt_gcm(key, CTX, hsm.encrypt_gcm(key, CTX, data, b""), b"") == data


# ---- import ---------------------------------------------------------------------------


def _encodings(private) -> list[tuple[bytes, bytes | None]]:
    enc, fmt = serialization.Encoding, serialization.PrivateFormat
    none = serialization.NoEncryption()
    out = [(private.private_bytes(e, f, none), None)
           for e in (enc.PEM, enc.DER) for f in (fmt.PKCS8, fmt.TraditionalOpenSSL)]
    out.append((private.private_bytes(enc.PEM, fmt.PKCS8,
                                      serialization.BestAvailableEncryption(b"pw")), b"pw"))
    return out


@pytest.mark.parametrize("make,scheme", [
    (lambda: rsa.generate_private_key(65537, 2048), SignScheme.RSA_PSS_SHA256),
    (lambda: ec.generate_private_key(ec.SECP256R1()), SignScheme.ECDSA_SHA256),
    (lambda: ec.generate_private_key(ec.SECP384R1()), SignScheme.ECDSA_SHA384),
], ids=["rsa2048", "p256", "p384"])
def test_imported_private_keys_sign(hsm, settings, make, scheme):
    private = make()
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    for data, password in _encodings(private):
        key = hsm.import_private_key(data, CTX, password=password)
        assert key.public_der == spki and key.exportable is False
        assert hsm.public_key_pem(key) == private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        verify(key, b"imported", hsm.sign(key, CTX, b"imported", scheme), scheme)
    forget_unwrapped(settings)
    verify(key, b"again", hsm.sign(key, CTX, b"again", scheme), scheme)


def test_bad_private_key_input_is_invalid(hsm):
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"right"))
    unsupported = [
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP521R1()),
        ec.generate_private_key(ec.SECP256K1()),
    ]
    bad = [(b"", None), (b"not a key", None), (b"-----BEGIN PRIVATE KEY-----\nAAAA\n", None),
           (rsa_pem, b"wrong"), (rsa_pem, None), (rsa_pem[:200], b"right")]
    bad += [(k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()), None) for k in unsupported]
    for data, password in bad:
        with pytest.raises(errors.InvalidInput):
            hsm.import_private_key(data, CTX, password=password)


@pytest.mark.parametrize("length", [16, 24, 32])
def test_imported_aes_secret_encrypts(hsm, settings, length):
    raw = os.urandom(length)
    key = hsm.import_secret(raw, CTX)
    assert (key.kind, key.size, key.exportable) == ("aes", length * 8, False)
    assert raw not in key.blob
    forget_unwrapped(settings)
    ct = hsm.encrypt_gcm(key, CTX, b"payload", b"")
    assert AESGCM(raw).decrypt(ct[:12], ct[12:], b"") == b"payload"


# ---- export ---------------------------------------------------------------------------


def test_export_refused_unless_exportable(hsm, rsa_keys):
    with pytest.raises(errors.Forbidden):
        hsm.export_secret(hsm.generate_aes(256, CTX), CTX)
    with pytest.raises(errors.Forbidden):
        hsm.export_secret(hsm.import_secret(os.urandom(32), CTX), CTX)
    with pytest.raises(errors.InvalidInput):
        hsm.export_secret(rsa_keys[1024], CTX)


@pytest.mark.parametrize("length", [16, 20, 32, 33, 64, 1])
def test_exportable_secret_comes_back_unchanged(hsm, settings, length):
    raw = os.urandom(length)
    key = hsm.import_secret(raw, CTX, exportable=True)
    assert key.kind == ("aes" if length in (16, 24, 32) else "secret")
    assert key.size == length * 8
    assert hsm.export_secret(key, CTX) == raw
    forget_unwrapped(settings)
    assert hsm.export_secret(key, CTX) == raw  # SoftHSM's zero padding is cut by the size
    with pytest.raises(errors.IntegrityError):
        hsm.export_secret(key, OTHER_CTX)


def test_exported_generated_key_decrypts_hsm_ciphertext(hsm):
    key = hsm.generate_aes(256, CTX, exportable=True)
    ct = hsm.encrypt_gcm(key, CTX, b"portable", b"x")
    raw = hsm.export_secret(key, CTX)
    assert len(raw) == 32
    assert AESGCM(raw).decrypt(ct[:12], ct[12:], b"x") == b"portable"


# ---- cryptography builders through hsm.private_key() ----------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


PSS_DIGEST = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
PSS_MAX = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=padding.PSS.MAX_LENGTH)


@pytest.fixture(params=["rsa-pkcs1", "rsa-pss", "rsa-pss-max", "ec-p256", "ec-p384"])
def signer(request, hsm, rsa_keys, ec_keys):
    """(HSM private key, extra builder kwargs, hash) for each signature family."""
    kind = request.param
    if kind.startswith("rsa"):
        priv = hsm.private_key(rsa_keys[2048], CTX)
        extra = {"rsa-pss": {"rsa_padding": PSS_DIGEST},
                 "rsa-pss-max": {"rsa_padding": PSS_MAX}}.get(kind, {})
    else:
        priv = hsm.private_key(ec_keys["P-256" if kind == "ec-p256" else "P-384"], CTX)
        extra = {}
    return priv, extra, hashes.SHA384() if kind == "rsa-pss-max" else hashes.SHA256()


def _self_signed(priv, extra, h) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(_name("hsm test")).issuer_name(_name("hsm test"))
            .public_key(priv.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(priv, h, **extra))


def test_self_signed_certificate_verifies(signer):
    priv, extra, h = signer
    cert = _self_signed(priv, extra, h)
    cert.verify_directly_issued_by(cert)
    params = cert.signature_algorithm_parameters
    if isinstance(priv, rsa.RSAPrivateKey):
        assert isinstance(params, padding.PSS if extra else padding.PKCS1v15)
        cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, params, h)
    else:
        cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, params)


def test_csr_verifies(signer):
    priv, extra, h = signer
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name("csr")).sign(priv, h, **extra)
    assert csr.is_signature_valid
    assert csr.public_key() == priv.public_key()


def test_pkcs7_certs_only_and_signed_data(signer, tmp_path: Path):
    priv, extra, h = signer
    cert = _self_signed(priv, extra, h)
    der = pkcs7.serialize_certificates([cert], serialization.Encoding.DER)
    (loaded,) = pkcs7.load_der_pkcs7_certificates(der)
    assert loaded == cert
    loaded.verify_directly_issued_by(cert)
    signed = (pkcs7.PKCS7SignatureBuilder().set_data(b"content")
              .add_signer(cert, priv, h, **extra)
              .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
    if shutil.which("openssl") is None:
        return  # the certs-only part above stands alone
    (tmp_path / "sig.p7").write_bytes(signed)
    (tmp_path / "content").write_bytes(b"content")
    (tmp_path / "tampered").write_bytes(b"Content")
    cmd = ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "sig.p7"),
           "-binary", "-noverify", "-out", os.devnull, "-content"]
    assert subprocess.run([*cmd, str(tmp_path / "content")], capture_output=True).returncode == 0
    assert subprocess.run([*cmd, str(tmp_path / "tampered")], capture_output=True).returncode != 0


def test_private_key_object_keeps_the_material_inside(hsm, rsa_keys, ec_keys):
    for key in (rsa_keys[2048], ec_keys["P-256"]):
        priv = hsm.private_key(key, CTX)
        with pytest.raises(errors.Forbidden):
            priv.private_numbers()
        with pytest.raises(errors.Forbidden):
            priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    with pytest.raises(errors.InvalidInput):
        hsm.private_key(hsm.generate_aes(128, CTX), CTX)


def test_private_key_prehashed_and_salt_lengths(hsm, rsa_keys, ec_keys):
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"data")
    d = digest.finalize()
    rsa_priv = hsm.private_key(rsa_keys[2048], CTX)
    pub = rsa_priv.public_key()
    pub.verify(rsa_priv.sign(d, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())), b"data",
               padding.PKCS1v15(), hashes.SHA256())
    for salt, check in ((padding.PSS.MAX_LENGTH, padding.PSS.MAX_LENGTH), (20, 20), (0, 0)):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt)
        sig = rsa_priv.sign(d, pss, utils.Prehashed(hashes.SHA256()))
        pub.verify(sig, b"data", padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                             salt_length=check), hashes.SHA256())
    ec_priv = hsm.private_key(ec_keys["P-256"], CTX)
    ec_priv.public_key().verify(ec_priv.sign(d, ec.ECDSA(utils.Prehashed(hashes.SHA256()))),
                                b"data", ec.ECDSA(hashes.SHA256()))
    assert ec_priv.curve.name == "secp256r1" and ec_priv.key_size == 256


# ---- process-wide state: sessions, threads, fork, cache -------------------------------


def test_get_hsm_is_one_instance_per_settings(settings, hsm):
    assert get_hsm(settings) is hsm
    assert get_hsm(dataclasses.replace(settings)) is hsm  # equal settings, same instance


def test_session_error_reopens_and_retries(hsm, settings):
    key = hsm.generate_aes(256, CTX)
    ct = hsm.encrypt_gcm(key, CTX, b"before", b"")
    # close the session behind the manager's back: the next call hits SessionHandleInvalid
    token_session(settings).run(lambda state: state.session.close())
    assert hsm.decrypt_gcm(key, CTX, ct, b"") == b"before"
    hsm.ping()


def test_threads_share_the_hsm(hsm):
    hot = hsm.generate_aes(256, CTX)
    hot_ec = hsm.generate_ec("P-256", CTX)
    failures: list[BaseException] = []
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for j in range(4):
                ctx = f"threads/{i}/{j}"
                aes = hsm.generate_aes(128, ctx)
                ct = hsm.encrypt_gcm(aes, ctx, f"{i}/{j}".encode(), ctx.encode())
                assert hsm.decrypt_gcm(aes, ctx, ct, ctx.encode()) == f"{i}/{j}".encode()
                ec_key = hsm.generate_ec("P-256", ctx)
                verify(ec_key, b"t", hsm.sign(ec_key, ctx, b"t", SignScheme.ECDSA_SHA256),
                       SignScheme.ECDSA_SHA256)
                ct = hsm.encrypt_gcm(hot, CTX, b"hot", b"")
                assert hsm.decrypt_gcm(hot, CTX, ct, b"") == b"hot"
                verify(hot_ec, b"h", hsm.sign(hot_ec, CTX, b"h", SignScheme.ECDSA_SHA256),
                       SignScheme.ECDSA_SHA256)
                assert len(hsm.random_bytes(16)) == 16
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_the_hsm(hsm, settings):
    key = hsm.generate_aes(256, CTX)
    ct = hsm.encrypt_gcm(key, CTX, b"from parent", b"")
    pid = os.fork()
    if pid == 0:  # child: must never return into pytest
        code = 1
        try:
            assert hsm.decrypt_gcm(key, CTX, ct, b"") == b"from parent"
            child_key = hsm.generate_ec("P-256", CTX)
            verify(child_key, b"c", hsm.sign(child_key, CTX, b"c", SignScheme.ECDSA_SHA256),
                   SignScheme.ECDSA_SHA256)
            hsm.ping()
            # the child re-initialised the module and opened a session of its own
            assert token_session(settings).run(lambda s: s.pid) == os.getpid()
            code = 0
        except BaseException as exc:  # noqa: BLE001
            print(f"child failed: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert hsm.decrypt_gcm(key, CTX, ct, b"") == b"from parent"  # parent session unharmed


def test_unwrapped_cache_is_bounded_and_destroys_evicted_objects():
    destroyed: list[str] = []

    class Obj:
        def __init__(self, name: str) -> None:
            self.name = name

        def destroy(self) -> None:
            destroyed.append(self.name)

    cache = UnwrappedCache(maxsize=2)
    cache.put(b"a", Obj("a"))
    cache.put(b"b", Obj("b"))
    assert cache.get(b"a").name == "a"  # a is now the most recently used
    cache.put(b"c", Obj("c"))
    assert destroyed == ["b"] and cache.get(b"b") is None and len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and destroyed == ["b"]


def test_hot_key_is_unwrapped_once(hsm, settings):
    key = hsm.generate_aes(256, CTX)
    forget_unwrapped(settings)
    for _ in range(3):
        hsm.encrypt_gcm(key, CTX, b"x", b"")
    state = token_session(settings).run(lambda s: s)
    assert len(state.cache) == 1


# ---- configuration: KEK versions, wrap mechanism, PIN ---------------------------------


def test_second_kek_version_still_unwraps_old_blobs(hsm, settings):
    v1_key = hsm.generate_aes(256, CTX)
    v1_ct = hsm.encrypt_gcm(v1_key, CTX, b"old", b"")
    v1_ec = hsm.generate_ec("P-256", CTX)
    v2_settings = dataclasses.replace(settings, kek_version=2)
    assert ensure_keys(v2_settings) in (
        [f"{settings.kek_label_prefix}-v2", f"{settings.bind_key_label_prefix}-v2"], [])
    assert ensure_keys(v2_settings) == []
    hsm2 = get_hsm(v2_settings)
    hsm2.ping()
    forget_unwrapped(settings)
    assert hsm2.decrypt_gcm(v1_key, CTX, v1_ct, b"") == b"old"
    verify(v1_ec, b"m", hsm2.sign(v1_ec, CTX, b"m", SignScheme.ECDSA_SHA256),
           SignScheme.ECDSA_SHA256)
    v2_key = hsm2.generate_aes(256, CTX)
    assert v2_key.kek_label == f"{settings.kek_label_prefix}-v2"
    assert hsm.decrypt_gcm(v2_key, CTX, hsm2.encrypt_gcm(v2_key, CTX, b"new", b""), b"") == b"new"
    # relabelling a v2 blob as v1 (or the reverse) breaks its tag
    for k in (v2_key, v1_key):
        other = "-v1" if k.kek_label.endswith("-v2") else "-v2"
        relabelled = dataclasses.replace(k, kek_label=k.kek_label[:-3] + other)
        with pytest.raises(errors.IntegrityError):
            hsm2.encrypt_gcm(relabelled, CTX, b"x", b"")


def test_wrap_mechanism_is_configuration(hsm, settings):
    plain_wrap = get_hsm(dataclasses.replace(settings, wrap_mechanism="AES_KEY_WRAP"))
    key = plain_wrap.generate_aes(256, CTX)
    assert key.mechanism == "AES_KEY_WRAP" and len(key.blob) == 40  # RFC 3394: 32 + 8
    forget_unwrapped(settings)
    ct = hsm.encrypt_gcm(key, CTX, b"x", b"")  # the blob's mechanism is used, not the setting
    assert plain_wrap.decrypt_gcm(key, CTX, ct, b"") == b"x"
    with pytest.raises(errors.Unavailable):
        Hsm(dataclasses.replace(settings, wrap_mechanism="NO_SUCH_MECHANISM"))


def test_pin_is_read_from_the_secret_when_configured(monkeypatch):
    calls: list[tuple[str, str]] = []
    fake = types.ModuleType("chalicelib.store.secrets")

    def read_secret(arn: str, region: str) -> str:
        calls.append((arn, region))
        return "pin-from-secret"

    fake.read_secret = read_secret  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "chalicelib.store.secrets", fake)
    ts = TokenSession("/unused.so", "t", None, "arn:aws:secretsmanager:eu-north-1:1:secret:p",
                      "eu-north-1")
    assert ts._resolve_pin() == "pin-from-secret"
    assert calls == [("arn:aws:secretsmanager:eu-north-1:1:secret:p", "eu-north-1")]
    with pytest.raises(errors.Unavailable):
        TokenSession("/unused.so", "t", None, None, "eu-north-1")._resolve_pin()


# ---- small helpers --------------------------------------------------------------------


def test_random_bytes(hsm):
    a, b = hsm.random_bytes(32), hsm.random_bytes(32)
    assert len(a) == len(b) == 32 and a != b
    assert hsm.random_bytes(0) == b""


def test_ecdsa_raw_to_der():
    assert ecdsa_raw_to_der(b"\x00" * 31 + b"\x01" + b"\x00" * 31 + b"\x02") == \
        utils.encode_dss_signature(1, 2)
    with pytest.raises(errors.InvalidInput):
        ecdsa_raw_to_der(b"\x01\x02\x03")


def test_public_key_pem(hsm, rsa_keys):
    pem = hsm.public_key_pem(rsa_keys[2048])
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert serialization.load_pem_public_key(pem) == \
        serialization.load_der_public_key(rsa_keys[2048].public_der)
    with pytest.raises(errors.InvalidInput):
        hsm.public_key_pem(hsm.generate_aes(128, CTX))


# ---- RSA-OAEP decryption and the password-protected PKCS#8 export ---------------------------

# OAEP's hash, not a signature's: SHA-1 is what SoftHSM and older recorders do
SHA1 = hashes.SHA1()  # noqa: S303


def _oaep(h: hashes.HashAlgorithm) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


@pytest.mark.parametrize("bits", [1024, 2048, 4096])
def test_oaep_sha1_decrypts_what_cryptography_encrypted(hsm, settings, rsa_keys, bits):
    key = rsa_keys[bits]
    public = serialization.load_der_public_key(key.public_der)
    session_key = os.urandom(32)
    ct = public.encrypt(session_key, _oaep(SHA1))
    assert hsm.decrypt_rsa_oaep(key, CTX, ct, "sha1") == session_key
    forget_unwrapped(settings)  # and after the blob is unwrapped again
    assert hsm.decrypt_rsa_oaep(key, CTX, ct, "sha1") == session_key


def test_oaep_sha256_is_refused_by_softhsm_never_done_outside(hsm, rsa_keys, monkeypatch):
    """SoftHSM 2.6.1 does OAEP with SHA-1 only: SHA-256 is a clear InvalidInput, and the
    private key is not read out to decrypt in software instead."""
    key = rsa_keys[2048]
    public = serialization.load_der_public_key(key.public_der)
    ct = public.encrypt(b"k" * 32, _oaep(hashes.SHA256()))

    monkeypatch.setattr(Hsm, "_unwrap", _refuse_extractable(Hsm._unwrap))
    with pytest.raises(errors.InvalidInput) as exc:
        hsm.decrypt_rsa_oaep(key, CTX, ct, "sha256")
    assert exc.value.reason == "hash_not_supported" and exc.value.field == "hash"


def _refuse_extractable(unwrap):
    def guarded(self, state, key, *, sensitive):
        assert sensitive, "the private key was unwrapped non-sensitive"
        return unwrap(self, state, key, sensitive=sensitive)
    return guarded


def test_oaep_bad_input(hsm, rsa_keys, ec_keys):
    key = rsa_keys[2048]
    public = serialization.load_der_public_key(key.public_der)
    ct = public.encrypt(b"k" * 16, _oaep(SHA1))
    with pytest.raises(errors.IntegrityError) as exc:
        hsm.decrypt_rsa_oaep(key, CTX, bytes([ct[0] ^ 1]) + ct[1:], "sha1")
    assert exc.value.reason == "decrypt_failed"
    with pytest.raises(errors.IntegrityError):
        hsm.decrypt_rsa_oaep(key, CTX, ct[:-1], "sha1")  # wrong length
    other = rsa.generate_private_key(65537, 1024).public_key()  # noqa: S505 - a test key
    with pytest.raises(errors.IntegrityError):  # right length, another key's ciphertext
        hsm.decrypt_rsa_oaep(rsa_keys[1024], CTX, other.encrypt(b"x", _oaep(SHA1)),
                             "sha1")
    with pytest.raises(errors.InvalidInput):
        hsm.decrypt_rsa_oaep(key, CTX, ct, "md5")
    with pytest.raises(errors.InvalidInput):
        hsm.decrypt_rsa_oaep(ec_keys["P-256"], CTX, ct, "sha1")
    with pytest.raises(errors.BindingError):
        hsm.decrypt_rsa_oaep(key, OTHER_CTX, ct, "sha1")


@pytest.mark.parametrize("bits", [1024, 2048])
def test_private_key_export_is_encrypted_pkcs8_that_opens_with_the_password(
        hsm, rsa_keys, bits, tmp_path):
    key = rsa_keys[bits]
    pem = hsm.export_private_key_pkcs8(key, CTX, b"s3cret pass")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(pem, b"wrong")
    private = serialization.load_pem_private_key(pem, b"s3cret pass")
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == bits
    assert private.public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo) == key.public_der
    # the exported key decrypts what the HSM key decrypts: it is that key
    ct = private.public_key().encrypt(b"session", _oaep(SHA1))
    assert hsm.decrypt_rsa_oaep(key, CTX, ct, "sha1") == b"session"
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    out = subprocess.run(["openssl", "pkey", "-in", str(path), "-passin", "pass:s3cret pass",
                          "-pubout", "-outform", "DER"], capture_output=True, check=True)
    assert out.stdout == key.public_der


def test_private_key_export_checks_binding_kind_and_password(hsm, rsa_keys, ec_keys,
                                                             settings):
    key = rsa_keys[1024]
    with pytest.raises(errors.BindingError):
        hsm.export_private_key_pkcs8(key, OTHER_CTX, b"pw")
    with pytest.raises(errors.BindingError):
        hsm.export_private_key_pkcs8(dataclasses.replace(key, context=OTHER_CTX), OTHER_CTX,
                                     b"pw")
    with pytest.raises(errors.InvalidInput):
        hsm.export_private_key_pkcs8(key, CTX, b"")
    with pytest.raises(errors.InvalidInput):
        hsm.export_private_key_pkcs8(ec_keys["P-256"], CTX, b"pw")
    # the usable (cached) object is untouched by an export: still sensitive, and the same
    # (extractable only if it is the generating object, which had to be wrapped under the KEK)
    def sensitive(state):
        obj = hsm._usable(state, key, CTX)
        return obj[Attribute.SENSITIVE], obj[Attribute.EXTRACTABLE]

    before = hsm._ts.run(sensitive)
    hsm.export_private_key_pkcs8(key, CTX, b"pw")
    assert hsm._ts.run(sensitive) == before and before[0] is True


def test_check_binding_is_remembered_only_for_the_exact_record(hsm, ec_keys):
    key = ec_keys["P-256"]
    hsm.check_binding(key, CTX)
    hsm.check_binding(key, CTX)  # remembered: no second HSM call, same answer
    for bad in (dataclasses.replace(key, tag=bytes(len(key.tag))),
                dataclasses.replace(key, context=OTHER_CTX)):
        with pytest.raises(errors.BindingError):
            hsm.check_binding(bad, bad.context)
    with pytest.raises(errors.BindingError):
        hsm.check_binding(key, OTHER_CTX)
