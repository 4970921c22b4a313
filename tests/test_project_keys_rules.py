"""The project-key rules as pure functions: material checks per type and algorithm, and what a
write deploys (no HSM, no store)."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chalicelib.core.project_keys import (
    MAX_CONTENT_BYTES,
    MAX_ENVIRONMENTS,
    EnvironmentContent,
    algorithm_of,
    deployed,
)
from chalicelib.errors import InvalidInput, NotFound

RSA_KEY = rsa.generate_private_key(65537, 1024)  # noqa: S505 - a test key
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _private(key: object, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt,  # type: ignore[attr-defined]
                             serialization.NoEncryption())


def _public(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(("algorithm", "sizes"), [
    ("aes", (16, 24, 32)), ("des", (8,)), ("des3", (16, 24))])
def test_secret_lengths(algorithm, sizes):
    for n in range(0, 65):
        if n in sizes:
            assert algorithm_of("secret", algorithm, os.urandom(n)) == algorithm
        else:
            with pytest.raises(InvalidInput) as exc:
                algorithm_of("secret", algorithm, os.urandom(n), field="content:prod")
            assert exc.value.field == "content:prod" and str(n) in exc.value.message


def test_a_secret_names_its_algorithm():
    with pytest.raises(InvalidInput) as exc:
        algorithm_of("secret", None, os.urandom(16))
    assert exc.value.reason == "algorithm_required"
    with pytest.raises(InvalidInput):
        algorithm_of("secret", "ec", os.urandom(16))


def test_rsa_secrets_are_rsa_private_keys():
    pem = _private(RSA_KEY, serialization.PrivateFormat.TraditionalOpenSSL)
    assert algorithm_of("secret", "rsa", pem) == "rsa"
    for bad in (_private(EC_KEY, serialization.PrivateFormat.PKCS8), _public(RSA_KEY),
                os.urandom(32)):
        with pytest.raises(InvalidInput):
            algorithm_of("secret", "rsa", bad)


def test_private_and_public_keys_are_what_they_say():
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        assert algorithm_of("private", None, _private(RSA_KEY, fmt)) == "rsa"
        assert algorithm_of("private", None, _private(EC_KEY, fmt)) == "ec"
    assert algorithm_of("public", None, _public(RSA_KEY)) == "rsa"
    assert algorithm_of("public", "ec", _public(EC_KEY)) == "ec"
    for key_type, content in (("private", _public(RSA_KEY)),
                              ("public", _private(RSA_KEY, serialization.PrivateFormat.PKCS8)),
                              ("private", b"x" * 40), ("public", b"")):
        with pytest.raises(InvalidInput):
            algorithm_of(key_type, None, content)
    with pytest.raises(InvalidInput):  # a stated algorithm must agree
        algorithm_of("public", "rsa", _public(EC_KEY))
    encrypted = RSA_KEY.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"password"))
    with pytest.raises(InvalidInput):  # no password is taken: encrypted keys are refused
        algorithm_of("private", None, encrypted)
    with pytest.raises(InvalidInput):
        algorithm_of("private", None, b"x" * (MAX_CONTENT_BYTES + 1))
    with pytest.raises(InvalidInput):
        algorithm_of("symmetric", None, b"x")


def test_deployed():
    current = [{"name": "prod", "alias": "a", "sealed": {}}, {"name": "test", "alias": None}]
    known = {"prod", "test", "qa"}
    # omitted: kept, with their aliases
    assert deployed(current, None, known, needs_content=False) == [
        EnvironmentContent("prod", "a"), EnvironmentContent("test", None)]
    with pytest.raises(InvalidInput):  # a changed type needs new material everywhere
        deployed(current, None, known, needs_content=True)
    assert deployed([], None, known, needs_content=True) == []
    # given: replaces; material kept where the key has it, required elsewhere
    given = [EnvironmentContent("prod"), EnvironmentContent("qa", content=b"k")]
    assert deployed(current, given, known, needs_content=False) == given
    with pytest.raises(InvalidInput):
        deployed(current, [EnvironmentContent("qa")], known, needs_content=False)
    with pytest.raises(InvalidInput):
        deployed(current, [EnvironmentContent("prod")], known, needs_content=True)
    with pytest.raises(NotFound) as exc:
        deployed(current, [EnvironmentContent("nowhere", content=b"k")], known,
                 needs_content=False)
    assert exc.value.reason == "environment_not_found" and exc.value.params["name"] == "nowhere"
    with pytest.raises(InvalidInput):
        deployed([], [EnvironmentContent("qa", content=b"k")] * 2, known, needs_content=False)
    many = [EnvironmentContent(f"e{i}", content=b"k") for i in range(MAX_ENVIRONMENTS + 1)]
    with pytest.raises(InvalidInput):
        deployed([], many, {e.environment for e in many}, needs_content=False)
    assert deployed([], many[:-1], {e.environment for e in many}, needs_content=False)
