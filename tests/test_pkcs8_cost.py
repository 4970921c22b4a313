"""The key-derivation cost of an encrypted PKCS#8 key, read from its header (vectors made with
openssl and cryptography)."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from chalicelib.formats.pkcs8 import MAX_ITERATIONS, kdf_cost_problem

KEY = ec.generate_private_key(ec.SECP256R1())
CLEAR = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())


def _openssl(*args: str) -> bytes:
    return subprocess.run(["openssl", "pkcs8", "-topk8", "-passout", "pass:pw", *args],
                          input=CLEAR, check=True, capture_output=True).stdout


@pytest.mark.parametrize("args,too_costly", [
    (("-v2", "aes-256-cbc", "-iter", "2048"), False),
    (("-v2", "aes-256-cbc", "-iter", str(MAX_ITERATIONS)), False),
    (("-v2", "aes-256-cbc", "-iter", str(MAX_ITERATIONS + 1)), True),
    (("-scrypt", "-scrypt_N", "16384", "-scrypt_r", "8", "-scrypt_p", "1"), False),
    (("-scrypt", "-scrypt_N", "16384", "-scrypt_r", "8", "-scrypt_p", "8"), True),
    (("-v1", "PBE-SHA1-3DES", "-iter", "2048"), False),
])
def test_the_cost_is_read_from_the_header(args, too_costly):
    pem = _openssl(*args)
    assert (kdf_cost_problem(pem) is not None) == too_costly
    der = serialization.load_pem_private_key(pem, b"pw").private_bytes(  # the same as DER
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"))
    assert kdf_cost_problem(der) is None  # cryptography's own choice is modest


def test_anything_else_is_left_to_the_key_loader():
    for data in (CLEAR, b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"garbage",
                 b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n!!\n-----END ENCRYPTED PRIVATE KEY-----",
                 b"\x30" + b"\x30\x80" * 50):
        assert kdf_cost_problem(data) is None
