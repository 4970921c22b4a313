"""The key-spec table against the real SoftHSM token: every spec generates what it says."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa

from chalicelib.core import keyspecs
from chalicelib.core.keyspecs import SPECS, KeySpec, spec, spec_of_public_key, spec_of_wrapped
from chalicelib.errors import InvalidInput
from chalicelib.hsm import SignScheme, WrappedKey, ecdsa_raw_to_der

CTX = "ring/keyspecs/key-1/1"
GENERATED = [s.name for s in SPECS.values() if s.family in ("aes", "rsa", "ec")]


@pytest.fixture(scope="module")
def generated(hsm) -> dict[str, WrappedKey]:
    """One key per generable spec (RSA keygen is slow in SoftHSM: once per size)."""
    return {name: keyspecs.generate(hsm, name, CTX) for name in GENERATED}


def test_table_is_consistent():
    assert set(SPECS) == {"AES_128", "AES_192", "AES_256", "RSA_1024", "RSA_2048", "RSA_3072",
                          "RSA_4096", "EC_P256", "EC_P384", "SECRET", "PUBLIC_RSA",
                          "PUBLIC_EC"}
    for name, s in SPECS.items():
        assert s.name == name and s.family in keyspecs.FAMILIES
        assert s.has_private == (s.family != "public")
        assert (s.public_family is not None) == (s.family == "public")
        assert (s.curve is not None) == (s.family == "ec")
        assert s.can_export == (s.family in ("aes", "secret"))
        # only RSA both signs and (OAEP) decrypts in the HSM
        assert not (s.can_encrypt and s.can_sign) or s.family == "rsa"
    assert spec("AES_256").can_encrypt and spec("RSA_2048").can_sign and spec("EC_P384").can_sign
    assert spec("RSA_2048").can_encrypt and not spec("EC_P256").can_encrypt
    assert not spec("PUBLIC_EC").can_sign and not spec("SECRET").can_encrypt


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec("AES_128").bits = 256  # type: ignore[misc]
    with pytest.raises(TypeError):
        SPECS["X"] = spec("AES_128")  # type: ignore[index]


@pytest.mark.parametrize("name", ["", "aes_256", "AES_512", "RSA_8192", "EC_P521", None, 256])
def test_unknown_spec_is_invalid_input(name):
    with pytest.raises(InvalidInput) as exc:
        spec(name, field="keyType")  # type: ignore[arg-type]
    assert exc.value.field == "keyType"


def test_a_spec_passes_through():
    s = spec("EC_P256")
    assert spec(s) is s


@pytest.mark.parametrize("name", GENERATED)
def test_every_spec_generates_what_it_says(hsm, generated, name):
    s, key = spec(name), generated[name]
    assert spec_of_wrapped(key) == s
    assert key.context == CTX and key.exportable is False
    if s.family == "aes":
        assert key.kind == "aes" and key.size == s.bits and key.public_der is None
        ct = hsm.encrypt_gcm(key, CTX, b"payload", b"aad")
        assert hsm.decrypt_gcm(key, CTX, ct, b"aad") == b"payload"
        return
    public = serialization.load_der_public_key(key.public_der)
    assert spec_of_public_key(public, has_private=True) == s
    assert spec_of_public_key(public) == spec("PUBLIC_" + s.family.upper())
    # the public part belongs to the private key in the HSM: its signature verifies
    if s.family == "rsa":
        assert public.key_size == s.bits
        sig = hsm.sign(key, CTX, b"message", SignScheme.RSA_PKCS1_SHA256)
        public.verify(sig, b"message", padding.PKCS1v15(), hashes.SHA256())
    else:
        assert key.curve == s.curve
        sig = hsm.sign(key, CTX, b"message", SignScheme.ECDSA_SHA256)
        public.verify(ecdsa_raw_to_der(sig), b"message", ec.ECDSA(hashes.SHA256()))


def test_exportable_aes_key(hsm):
    key = keyspecs.generate(hsm, spec("AES_128"), CTX, exportable=True)
    assert key.exportable is True and len(hsm.export_secret(key, CTX)) == 16


@pytest.mark.parametrize("name", ["RSA_1024", "EC_P256", "SECRET", "PUBLIC_RSA"])
def test_only_aes_keys_generate_exportable(hsm, name):
    with pytest.raises(InvalidInput) as exc:
        keyspecs.generate(hsm, name, CTX, exportable=True)
    assert exc.value.field == "exportable"


@pytest.mark.parametrize("name", ["SECRET", "PUBLIC_RSA", "PUBLIC_EC"])
def test_imported_only_specs_do_not_generate(hsm, name):
    with pytest.raises(InvalidInput, match="imported, not generated"):
        keyspecs.generate(hsm, name, CTX)


def test_generate_needs_a_context(hsm):
    with pytest.raises(InvalidInput):
        keyspecs.generate(hsm, "AES_256", "")


def _rsa_public(bits: int) -> rsa.RSAPublicKey:
    # any odd modulus of the size will do for a public key: no primes needed
    n = (1 << (bits - 1)) | 0xF1
    return rsa.RSAPublicNumbers(65537, n).public_key()


@pytest.mark.parametrize("bits", [1024, 1536, 2048, 4096])
def test_public_rsa_sizes_in_range(bits):
    assert spec_of_public_key(_rsa_public(bits)) == spec("PUBLIC_RSA")


@pytest.mark.parametrize("bits", [512, 1023, 4097, 8192])
def test_public_rsa_sizes_out_of_range(bits):
    with pytest.raises(InvalidInput, match="1024 to 4096") as exc:
        spec_of_public_key(_rsa_public(bits), field="pub")
    assert exc.value.field == "pub"


def test_key_pairs_must_have_a_table_size():
    with pytest.raises(InvalidInput, match="1024, 2048, 3072 or 4096"):
        spec_of_public_key(_rsa_public(1536), has_private=True)


@pytest.mark.parametrize("curve", [ec.SECP521R1, ec.SECP256K1, ec.SECP224R1])
def test_other_curves_are_refused(curve):
    public = ec.generate_private_key(curve()).public_key()
    for has_private in (False, True):
        with pytest.raises(InvalidInput, match="P-256 or P-384"):
            spec_of_public_key(public, has_private=has_private)


@pytest.mark.parametrize("make", [
    lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
    lambda: dsa.generate_private_key(1024).public_key(),  # noqa: S505
    lambda: b"not a key",
    lambda: None,
])
def test_other_key_types_are_refused(make):
    with pytest.raises(InvalidInput, match="only RSA and EC"):
        spec_of_public_key(make())


@pytest.mark.parametrize("change", [
    {"kind": "aes", "size": 64},
    {"kind": "rsa", "size": 1536},
    {"kind": "ec", "curve": "P-521"},
    {"kind": "ec", "curve": None},
    {"kind": "dsa"},
])
def test_wrapped_keys_outside_the_table(generated, change):
    with pytest.raises(InvalidInput):
        spec_of_wrapped(dataclasses.replace(generated["AES_256"], **change))
    with pytest.raises(InvalidInput):
        spec_of_wrapped("not a key")  # type: ignore[arg-type]


def test_a_raw_secret_reads_back_as_secret(hsm):
    assert spec_of_wrapped(hsm.import_secret(b"x" * 20, CTX)) == spec("SECRET")
    # the HSM layer holds 16/24/32 bytes as AES
    assert spec_of_wrapped(hsm.import_secret(b"x" * 32, CTX)) == spec("AES_256")


def test_keyspec_is_a_plain_value():
    assert KeySpec("X", "aes", bits=128) == KeySpec("X", "aes", bits=128)
    assert spec("RSA_2048").asymmetric and spec("PUBLIC_EC").asymmetric
    assert not spec("AES_256").asymmetric and not spec("SECRET").asymmetric
