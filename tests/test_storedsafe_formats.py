"""StoredSafe's pure formats, with vectors: ciphertext strings, names, AAD, backup parsing."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chalicelib.core.transparent import (
    LEVELS,
    _backup_digest,
    _parse_backup,
    format_ciphertext,
    key_bits,
    parse_ciphertext,
    validate_name,
    validate_vault,
    version_aad,
)
from chalicelib.errors import InvalidInput

DATA = bytes(range(42))  # 12 nonce + 14 body + 16 tag: base64 without padding
DATA_B64 = base64.b64encode(DATA).decode()


def test_ciphertext_round_trip_vectors():
    assert format_ciphertext(1, DATA) == f"storedsafe:v1:{DATA_B64}"
    assert format_ciphertext(12, b"\x00" * 28) == "storedsafe:v12:" + "A" * 38 + "=="
    for n in (1, 9, 10, 123456789):
        assert parse_ciphertext(format_ciphertext(n, DATA)) == (n, DATA)


@pytest.mark.parametrize("text,words", [
    ("", "storedsafe:v"),
    (None, "storedsafe:v"),
    (b"storedsafe:v1:AAAA", "storedsafe:v"),
    (f"vault:v1:{DATA_B64}", "storedsafe:v"),
    (f"storedsafe:v0:{DATA_B64}", "storedsafe:v"),
    (f"storedsafe:v01:{DATA_B64}", "storedsafe:v"),
    (f"storedsafe:v-1:{DATA_B64}", "storedsafe:v"),
    (f"storedsafe:v1234567890:{DATA_B64}", "storedsafe:v"),  # more than 9 digits
    (f"storedsafe:V1:{DATA_B64}", "storedsafe:v"),
    (f"storedsafe:v1:{DATA_B64}\n", "storedsafe:v"),
    (f" storedsafe:v1:{DATA_B64}", "storedsafe:v"),
    (f"storedsafe:v1:{DATA_B64.replace('A', '-')}", "storedsafe:v"),  # base64url alphabet
    (f"storedsafe:v1:{DATA_B64}=", "base64"),
    (f"storedsafe:v1:{DATA_B64[:-1]}", "base64"),
    ("storedsafe:v1:" + base64.b64encode(b"x" * 27).decode(), "truncated"),
    ("storedsafe:v1:", "truncated"),
])
def test_malformed_ciphertexts(text, words):
    with pytest.raises(InvalidInput) as e:
        parse_ciphertext(text)
    assert words in e.value.message and e.value.field == "ciphertext"


def test_aad_binds_origin_and_version():
    assert version_aad("179/my-key/123456789012", 3) == b"storedsafe|179/my-key/123456789012|v3"
    # a ciphertext made with one AAD does not open with another (what the service relies on)
    key, nonce = bytes(16), bytes(12)
    ct = AESGCM(key).encrypt(nonce, b"p", version_aad("179/k/1", 1))
    for other in (version_aad("180/k/1", 1), version_aad("179/j/1", 1),
                  version_aad("179/k/2", 1), version_aad("179/k/1", 2)):
        with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
            AESGCM(key).decrypt(nonce, ct, other)


def test_names_vaults_types_and_levels():
    for ok in ("k", "my-new-key", "A.b_c-9", "x" * 128):
        assert validate_name(ok) == ok
    for bad in ("", ".x", "-x", "a b", "a/b", "a#b", "x" * 129, "ä", None, 7):
        with pytest.raises(InvalidInput):
            validate_name(bad)
    assert validate_vault("179") == "179"
    for bad in ("", "17a", "-1", "1" * 21, None, "*"):
        with pytest.raises(InvalidInput):
            validate_vault(bad)
    assert key_bits("aes128-gcm96") == 128 and key_bits("aes256-gcm96") == 256
    for bad in ("aes128-ofb", "rsa-2048", "", None):
        with pytest.raises(InvalidInput):
            key_bits(bad)
    assert LEVELS["read"] >= LEVELS["write"] >= LEVELS["admin"] == {"admin"}


def _backup(meta: dict, versions: list) -> str:
    doc = {"format": "keyfront-storedsafe-backup", "v": 1, "key": meta, "versions": versions}
    return base64.b64encode(json.dumps(doc).encode()).decode()


META = {"type": "aes128-gcm96", "allow_export": True, "allow_backup": True,
        "allow_delete": True, "info": "", "latest_version": 1, "min_decryption_version": 1,
        "origin": "1/k/100000000000"}
WRAPPED = {"kind": "aes", "size": 128, "curve": None, "exportable": True, "kek_label": "kek",
           "mechanism": "AES_KEY_WRAP_PAD", "context": "c", "blob": "AAAA",
           "public_der": None, "tag": "AAAA"}


def test_backup_parsing():
    meta, blobs = _parse_backup(_backup(META, [{"key_version": 1, "wrapped": WRAPPED}]))
    assert meta == META and blobs[0].blob == b"\x00\x00\x00" and blobs[0].size == 128
    bad = [
        "", "!!", base64.b64encode(b"[]").decode(),
        _backup({**META, "latest_version": 2}, [{"key_version": 1, "wrapped": WRAPPED}]),
        _backup({**META, "min_decryption_version": 2}, [{"key_version": 1, "wrapped": WRAPPED}]),
        _backup({**META, "type": "rsa"}, [{"key_version": 1, "wrapped": WRAPPED}]),
        _backup({**META, "extra": 1}, [{"key_version": 1, "wrapped": WRAPPED}]),
        _backup({**META, "allow_export": "yes"}, [{"key_version": 1, "wrapped": WRAPPED}]),
        _backup(META, [{"key_version": 2, "wrapped": WRAPPED}]),
        _backup(META, [{"key_version": 1, "wrapped": {**WRAPPED, "blob": "!"}}]),
        _backup(META, [{"key_version": 1, "wrapped": {**WRAPPED, "size": "128"}}]),
        _backup(META, [{"key_version": 1, "wrapped": {k: v for k, v in WRAPPED.items()
                                                      if k != "tag"}}]),
    ]
    for text in bad:
        with pytest.raises(InvalidInput):
            _parse_backup(text)
    # the digest that binds the blobs covers every metadata field
    d = _backup_digest(META)
    for k, v in (("allow_export", False), ("origin", "2/k/1"), ("latest_version", 2),
                 ("info", "x"), ("type", "aes256-gcm96")):
        assert _backup_digest({**META, k: v}) != d
