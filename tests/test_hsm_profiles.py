"""HSM differences handled by configuration, each simulated on SoftHSM: an HSM that makes
the AES-GCM IV itself (CloudHSM ignores a supplied IV and writes its own into the parameter
buffer) and a maximum AES-GCM input (CloudHSM: 16 KiB)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from chalicelib import errors
from chalicelib.config import Settings
from chalicelib.hsm.service import GCM_NONCE_BYTES, Hsm

CTX = "test/profiles/k/1"


class _IvWritingKey:
    """A SoftHSM key object that behaves like CloudHSM's for AES-GCM encryption: the IV the
    caller supplied is replaced by one the "HSM" chooses, written into the caller's buffer."""

    def __init__(self, real, written: list[bytes]) -> None:
        self._real, self._written = real, written

    def encrypt(self, data, mechanism=None, mechanism_param=None):
        iv = os.urandom(GCM_NONCE_BYTES)
        mechanism_param.nonce[:] = iv
        self._written.append(iv)
        return self._real.encrypt(data, mechanism=mechanism, mechanism_param=mechanism_param)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def hsm_like(settings, monkeypatch):
    """make(iv_writing, **settings changes) -> an Hsm on the test token."""

    def make(iv_writing: bool, **changes) -> tuple[Hsm, list[bytes]]:
        hsm = Hsm(dataclasses.replace(settings, **changes))
        written: list[bytes] = []
        if iv_writing:
            usable = hsm._usable
            monkeypatch.setattr(hsm, "_usable",
                                lambda *a: _IvWritingKey(usable(*a), written))
        return hsm, written

    return make


@pytest.mark.parametrize("from_hsm", [True, False])
def test_the_iv_an_hsm_writes_is_the_one_returned(hsm_like, from_hsm):
    hsm, written = hsm_like(True, gcm_iv_from_hsm=from_hsm)
    key = hsm.generate_aes(256, CTX)
    sealed = hsm.encrypt_gcm(key, CTX, b"attack at dawn", b"aad")
    assert sealed[:GCM_NONCE_BYTES] == written[-1]  # read back, not the one supplied
    assert hsm.decrypt_gcm(key, CTX, sealed, b"aad") == b"attack at dawn"
    again = hsm.encrypt_gcm(key, CTX, b"attack at dawn", b"aad")
    assert again[:GCM_NONCE_BYTES] == written[-1] != sealed[:GCM_NONCE_BYTES]


def test_an_hsm_expected_to_make_the_iv_that_does_not_is_refused(hsm_like):
    hsm, _ = hsm_like(False, gcm_iv_from_hsm=True)  # SoftHSM keeps the (zeroed) buffer
    key = hsm.generate_aes(128, CTX)
    with pytest.raises(errors.Unavailable, match="no GCM IV"):
        hsm.encrypt_gcm(key, CTX, b"x", b"")


def test_a_supplied_iv_is_fresh_per_call(hsm_like):
    hsm, _ = hsm_like(False)
    key = hsm.generate_aes(128, CTX)
    nonces = {hsm.encrypt_gcm(key, CTX, b"same", b"")[:GCM_NONCE_BYTES] for _ in range(8)}
    assert len(nonces) == 8 and bytes(GCM_NONCE_BYTES) not in nonces


def test_the_largest_gcm_input_the_hsm_takes(hsm_like):
    hsm, _ = hsm_like(False, hsm_max_gcm_bytes=16 * 1024)
    key = hsm.generate_aes(128, CTX)
    sealed = hsm.encrypt_gcm(key, CTX, bytes(16 * 1024), b"")
    assert hsm.decrypt_gcm(key, CTX, sealed, b"") == bytes(16 * 1024)
    with pytest.raises(errors.LimitExceeded):
        hsm.encrypt_gcm(key, CTX, bytes(16 * 1024 + 1), b"")
    unlimited, _ = hsm_like(False)
    big = unlimited.encrypt_gcm(key, CTX, bytes(16 * 1024 + 1), b"")
    with pytest.raises(errors.LimitExceeded):
        hsm.decrypt_gcm(key, CTX, big, b"")


def test_the_hsm_maximum_caps_the_plaintext_limit(monkeypatch):
    monkeypatch.setenv("KEYFRONT_MAX_PLAINTEXT_BYTES", "65536")
    monkeypatch.setenv("KEYFRONT_HSM_MAX_GCM_BYTES", "16384")
    monkeypatch.setenv("KEYFRONT_GCM_IV_FROM_HSM", "true")
    s = Settings.from_env()
    assert (s.max_plaintext_bytes, s.hsm_max_gcm_bytes, s.gcm_iv_from_hsm) == \
        (16384, 16384, True)
    monkeypatch.setenv("KEYFRONT_HSM_MAX_GCM_BYTES", "0")
    monkeypatch.delenv("KEYFRONT_GCM_IV_FROM_HSM")
    s = Settings.from_env()
    assert (s.max_plaintext_bytes, s.gcm_iv_from_hsm) == (65536, False)


class _MechanismRecorder:
    def __init__(self, real, used: list) -> None:
        self._real, self._used = real, used

    def sign(self, data, mechanism=None, mechanism_param=None):
        self._used.append(mechanism)
        return self._real.sign(data, mechanism=mechanism, mechanism_param=mechanism_param)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.mark.parametrize("where,expected", [
    ("hsm", {"RSA_PKCS1_SHA256": "SHA256_RSA_PKCS", "RSA_PSS_SHA384": "SHA384_RSA_PKCS_PSS"}),
    ("host", {"RSA_PKCS1_SHA256": "RSA_PKCS", "RSA_PSS_SHA384": "RSA_PKCS_PSS"}),
])
def test_rsa_sign_hashing_is_configuration(settings, monkeypatch, where, expected):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    from chalicelib.hsm.types import SignScheme

    hsm = Hsm(dataclasses.replace(settings, rsa_sign_hashing=where))
    used: list = []
    usable = hsm._usable
    monkeypatch.setattr(hsm, "_usable", lambda *a: _MechanismRecorder(usable(*a), used))
    key = hsm.generate_rsa(2048, CTX)
    public = serialization.load_der_public_key(key.public_der)
    for scheme, mechanism in expected.items():
        signature = hsm.sign(key, CTX, b"signed bytes", SignScheme[scheme])
        assert used[-1].name == mechanism
        if "PSS" in scheme:
            public.verify(signature, b"signed bytes", padding.PSS(
                mgf=padding.MGF1(hashes.SHA384()), salt_length=48), hashes.SHA384())
        else:
            public.verify(signature, b"signed bytes", padding.PKCS1v15(), hashes.SHA256())


def test_an_unknown_sign_hashing_is_refused(settings):
    with pytest.raises(errors.Unavailable, match="KEYFRONT_RSA_SIGN_HASHING"):
        Hsm(dataclasses.replace(settings, rsa_sign_hashing="elsewhere"))
