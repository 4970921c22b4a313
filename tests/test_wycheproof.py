"""Wycheproof test vectors run through the HSM layer (the throw-away SoftHSM token).

The vectors are vendored, unmodified, in tests/vectors/ (origin, commit and licence in the
README there). Every case of every vendored file is run, with one exception: AES-GCM groups
whose IV is not 96 bits or whose tag is not 128 bits are left out, because the layer's
ciphertext format is nonce(12) || ct || tag(16) and cannot express them.

- AES-GCM: each key is imported with import_secret; iv || ct || tag goes to decrypt_gcm.
  "valid" must give back msg (and encrypt_gcm then decrypt_gcm must round-trip msg under the
  same key and aad); "invalid" must raise IntegrityError or InvalidInput, nothing else.
- ECDSA P-256/SHA-256 and P-384/SHA-384, DER and IEEE P1363 (raw r||s) signatures, and
  RSA-PSS 2048 with SHA-256 (salt 32) and SHA-384 (salt 48), MGF1 with the same hash: each
  case goes to Hsm.verify. "valid" must give True, "invalid" exactly False.

"acceptable" cases may go either way. Each file's cases run in one test function; failures
are collected and reported together, and the number of cases run is checked against the file.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chalicelib import errors
from chalicelib.hsm import Hsm, SignScheme, ecdsa_raw_to_der

VECTORS = Path(__file__).resolve().parent / "vectors"

# file -> (scheme, ECDSA signature encoding, Wycheproof group type, curve)
ECDSA_FILES: dict[str, tuple[SignScheme, str, str, str]] = {
    "ecdsa_secp256r1_sha256_test.json": (SignScheme.ECDSA_SHA256, "der", "EcdsaVerify",
                                         "secp256r1"),
    "ecdsa_secp256r1_sha256_p1363_test.json": (SignScheme.ECDSA_SHA256, "raw",
                                               "EcdsaP1363Verify", "secp256r1"),
    "ecdsa_secp384r1_sha384_test.json": (SignScheme.ECDSA_SHA384, "der", "EcdsaVerify",
                                         "secp384r1"),
    "ecdsa_secp384r1_sha384_p1363_test.json": (SignScheme.ECDSA_SHA384, "raw",
                                               "EcdsaP1363Verify", "secp384r1"),
}

# file -> scheme; the layer's PSS is salt = hash length, MGF1 with the same hash
PSS_FILES: dict[str, SignScheme] = {
    "rsa_pss_2048_sha256_mgf1_32_test.json": SignScheme.RSA_PSS_SHA256,
    "rsa_pss_2048_sha384_mgf1_48_test.json": SignScheme.RSA_PSS_SHA384,
}

_SHA = {"SHA-256": (SignScheme.ECDSA_SHA256, SignScheme.RSA_PSS_SHA256, 32),
        "SHA-384": (SignScheme.ECDSA_SHA384, SignScheme.RSA_PSS_SHA384, 48)}


@cache
def load(name: str) -> dict[str, Any]:
    """A vendored Wycheproof file, parsed."""
    with open(VECTORS / name, encoding="utf-8") as f:
        return json.load(f)


def cases(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(group, test case) for every case of a Wycheproof file."""
    for group in doc["testGroups"]:
        for case in group["tests"]:
            yield group, case


def describe(case: dict[str, Any], outcome: object) -> str:
    """One line naming a case that did not give the expected result."""
    return (f"tcId {case['tcId']} ({case['result']}, {','.join(case['flags'])}, "
            f"{case['comment']!r}): got {outcome!r}")


def expected(result: str, accepted: bool) -> bool:
    """Does `accepted` agree with a Wycheproof result? "acceptable" agrees with both."""
    if result == "acceptable":
        return True
    assert result in ("valid", "invalid"), result
    return accepted == (result == "valid")


# ---- AES-GCM ----------------------------------------------------------------------------


def test_aes_gcm(hsm: Hsm) -> None:
    """aes_gcm_test.json (96-bit IV, 128-bit tag) through import_secret and decrypt_gcm."""
    doc = load("aes_gcm_test.json")
    run: Counter[tuple[int, str]] = Counter()
    failures: list[str] = []
    for group, case in cases(doc):
        if group["ivSize"] != 96 or group["tagSize"] != 128:
            continue  # not expressible as nonce(12) || ct || tag(16)
        context = f"test/wycheproof/aes/{case['tcId']}"
        key = hsm.import_secret(bytes.fromhex(case["key"]), context)
        assert key.size == group["keySize"]
        msg, aad = bytes.fromhex(case["msg"]), bytes.fromhex(case["aad"])
        data = bytes.fromhex(case["iv"] + case["ct"] + case["tag"])
        outcome: object
        try:
            outcome = hsm.decrypt_gcm(key, context, data, aad)
        except errors.BindingError as exc:  # the key blob itself: never expected here
            outcome = exc
        except (errors.IntegrityError, errors.InvalidInput) as exc:
            outcome = type(exc).__name__
        except Exception as exc:  # anything else is a failure; collect it with the rest
            outcome = exc
        run[group["keySize"], case["result"]] += 1
        if case["result"] == "valid":
            ok = outcome == msg
        elif case["result"] == "invalid":
            ok = outcome in ("IntegrityError", "InvalidInput")
        else:
            ok = outcome == msg or outcome in ("IntegrityError", "InvalidInput")
        if not ok:
            failures.append(describe(case, outcome))
            continue
        if case["result"] == "valid":
            # the layer picks its own nonce, so the ciphertext differs; the plaintext must not
            sealed = hsm.encrypt_gcm(key, context, msg, aad)
            assert len(sealed) == 12 + len(msg) + 16
            if hsm.decrypt_gcm(key, context, sealed, aad) != msg:
                failures.append(describe(case, "encrypt/decrypt round trip differs"))
    assert not failures, "\n".join(failures)
    for bits in (128, 192, 256):
        assert run[bits, "valid"] > 0 and run[bits, "invalid"] > 0, (bits, run)


# ---- signatures -------------------------------------------------------------------------


def _verify_all(hsm: Hsm, name: str, scheme: SignScheme, encoding: str,
                check_group: Any) -> Counter[str]:
    """Run every case of a verification file through Hsm.verify; results by outcome."""
    doc = load(name)
    run: Counter[str] = Counter()
    failures: list[str] = []
    for group, case in cases(doc):
        check_group(group)
        public_der = bytes.fromhex(group["publicKeyDer"])
        outcome: object
        try:
            outcome = hsm.verify(public_der, bytes.fromhex(case["msg"]),
                                 bytes.fromhex(case["sig"]), scheme, ecdsa_encoding=encoding)
        except Exception as exc:  # invalid signatures are False, not an exception
            outcome = exc
        run[case["result"]] += 1
        if not isinstance(outcome, bool) or not expected(case["result"], outcome):
            failures.append(describe(case, outcome))
    assert not failures, f"{name}:\n" + "\n".join(failures)
    assert sum(run.values()) == doc["numberOfTests"] > 0, run
    assert run["valid"] > 0 and run["invalid"] > 0, run
    return run


@pytest.mark.parametrize("name", sorted(ECDSA_FILES))
def test_ecdsa(hsm: Hsm, name: str) -> None:
    """ECDSA verification vectors (DER and P1363) through Hsm.verify."""
    scheme, encoding, group_type, curve = ECDSA_FILES[name]

    def check_group(group: dict[str, Any]) -> None:
        assert group["type"] == group_type
        assert group["publicKey"]["curve"] == curve
        assert _SHA[group["sha"]][0] == scheme

    _verify_all(hsm, name, scheme, encoding, check_group)


@pytest.mark.parametrize("name", sorted(PSS_FILES))
def test_rsa_pss(hsm: Hsm, name: str) -> None:
    """RSA-PSS verification vectors through Hsm.verify (parameters fixed by the scheme)."""
    scheme = PSS_FILES[name]

    def check_group(group: dict[str, Any]) -> None:
        # the scheme implies MGF1 with the message hash and salt = hash length
        assert group["type"] == "RsassaPssVerify"
        _, pss_scheme, hash_len = _SHA[group["sha"]]
        assert pss_scheme == scheme
        assert (group["mgf"], group["mgfSha"], group["sLen"]) == ("MGF1", group["sha"],
                                                                   hash_len)

    _verify_all(hsm, name, scheme, "der", check_group)


# ---- Hsm.verify beyond the vectors --------------------------------------------------------


def test_verify_accepts_what_sign_makes(hsm: Hsm) -> None:
    """Signatures from Hsm.sign verify (raw and DER for ECDSA) and fail once tampered."""
    context = "test/wycheproof/sign-verify"
    keys = {
        "ec": hsm.import_private_key(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), context),
        "rsa": hsm.import_private_key(
            rsa.generate_private_key(65537, 2048).private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), context),
    }
    checked = 0
    for scheme in SignScheme:
        key = keys["ec" if scheme.name.startswith("ECDSA") else "rsa"]
        assert key.public_der is not None
        sig = hsm.sign(key, context, b"message", scheme)
        forms = [(sig, "raw"), (ecdsa_raw_to_der(sig), "der")] if key.kind == "ec" \
            else [(sig, "der")]
        for form, encoding in forms:
            assert hsm.verify(key.public_der, b"message", form, scheme,
                              ecdsa_encoding=encoding) is True
            assert hsm.verify(key.public_der, b"messagE", form, scheme,
                              ecdsa_encoding=encoding) is False
            checked += 1
    assert checked == 9 + 3


def test_verify_ecdsa_der_is_strict(hsm: Hsm) -> None:
    """Re-encodings of a valid DER signature (BER lengths, padding, trailing data) fail."""
    context = "test/wycheproof/strict-der"
    key = hsm.generate_ec("P-256", context)
    assert key.public_der is not None
    raw = hsm.sign(key, context, b"m", SignScheme.ECDSA_SHA256)
    der = ecdsa_raw_to_der(raw)
    assert hsm.verify(key.public_der, b"m", der, SignScheme.ECDSA_SHA256) is True
    r, s = raw[:32].lstrip(b"\0"), raw[32:].lstrip(b"\0")

    def integer(content: bytes) -> bytes:
        return b"\x02" + bytes([len(content)]) + content

    def minimal(v: bytes) -> bytes:
        return b"\0" + v if v[0] & 0x80 else v

    body = integer(minimal(r)) + integer(minimal(s))
    assert b"\x30" + bytes([len(body)]) + body == der
    bad = {
        "long-form length": b"\x30\x81" + bytes([len(body)]) + body,
        "indefinite length": b"\x30\x80" + body + b"\0\0",
        "trailing byte": der + b"\0",
        "padded r": b"\x30" + bytes([len(body) + 1]) + integer(b"\0" + minimal(r))
        + integer(minimal(s)),
        "third integer": b"\x30" + bytes([len(body) + 3]) + body + b"\x02\x01\x01",
        "raw as DER": raw,
    }
    for what, sig in bad.items():
        assert hsm.verify(key.public_der, b"m", sig, SignScheme.ECDSA_SHA256) is False, what
    # P1363: exactly 2 * 32 bytes
    assert hsm.verify(key.public_der, b"m", raw, SignScheme.ECDSA_SHA256,
                      ecdsa_encoding="raw") is True
    for sig in (raw[:-1], raw + b"\0", b"\0" + raw, der):
        assert hsm.verify(key.public_der, b"m", sig, SignScheme.ECDSA_SHA256,
                          ecdsa_encoding="raw") is False


def test_verify_rejects_unusable_keys_and_arguments(hsm: Hsm) -> None:
    """Bad public keys, key/scheme mismatches and bad arguments are InvalidInput."""
    def spki(private: Any) -> bytes:
        return private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    p256 = spki(ec.generate_private_key(ec.SECP256R1()))
    # small on purpose: RSA-1024 is too small for PSS with SHA-512 and salt 64
    rsa_der = spki(rsa.generate_private_key(65537, 1024))  # noqa: S505
    calls = [
        (b"\x30\x00", SignScheme.ECDSA_SHA256, {}),  # not a SubjectPublicKeyInfo
        (p256 + b"\0", SignScheme.ECDSA_SHA256, {}),  # trailing data
        (p256, SignScheme.RSA_PSS_SHA256, {}),  # EC key, RSA scheme
        (rsa_der, SignScheme.ECDSA_SHA256, {}),  # RSA key, ECDSA scheme
        (rsa_der, SignScheme.RSA_PSS_SHA512, {}),  # too small for PSS-SHA512
        (spki(ec.generate_private_key(ec.SECP521R1())), SignScheme.ECDSA_SHA512, {}),
        (spki(ed25519.Ed25519PrivateKey.generate()), SignScheme.ECDSA_SHA256, {}),
        (p256, "ECDSA_SHA256", {}),  # not a SignScheme
        (p256, SignScheme.ECDSA_SHA256, {"ecdsa_encoding": "ber"}),
    ]
    for public_der, scheme, kwargs in calls:
        with pytest.raises(errors.InvalidInput):
            hsm.verify(public_der, b"m", b"\x30\x00", scheme, **kwargs)
    with pytest.raises(errors.InvalidInput):
        hsm.verify(p256, "m", b"\x30\x00", SignScheme.ECDSA_SHA256)  # type: ignore[arg-type]
    # a hash the curve does not match is still ECDSA (the digest is truncated), not an error
    assert hsm.verify(p256, b"m", b"\x30\x06\x02\x01\x01\x02\x01\x01",
                      SignScheme.ECDSA_SHA384) is False
