"""StoredSafe's pure formats, with vectors: ciphertext strings, names, AAD, backup parsing."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chalicelib.core import transit
from chalicelib.core.access import check
from chalicelib.core.audit import _safe_details
from chalicelib.core.kinds import KINDS, TRANSIT
from chalicelib.core.transit import TransitKey, TransitKeys, key_bits
from chalicelib.dialects.storedsafe.models import validate_name, validate_vault
from chalicelib.errors import InvalidInput, MisplacedRecord
from chalicelib.formats import key_backup
from chalicelib.formats.ciphertext import format_ciphertext, parse_ciphertext

KIND = KINDS[TRANSIT]
StoredRecordError = MisplacedRecord


def version_aad(origin: str, n: int) -> bytes:
    return transit.version_aad(TRANSIT, origin, n)


def _parse_backup(text: str):
    return key_backup.parse_backup(TRANSIT, text, transit.KEY_TYPES)


def _backup_digest(meta: dict) -> str:
    return key_backup.backup_digest(TRANSIT, meta)


_backup_vault = key_backup.backup_ring
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
    # the vendor's levels are hierarchical: admin implies write implies read
    assert KIND.effective(frozenset({"admin"})) == {"read", "write", "admin"}
    assert KIND.effective(frozenset({"write"})) == {"read", "write"}
    assert KIND.effective(frozenset({"read"})) == {"read"}


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


# ---- backups name their vault; records are read from where they are found ---------------------

META_V2 = {**META, "vault": "1"}


def _v2(meta: dict, versions: list) -> str:
    doc = {"format": "keyfront-storedsafe-backup", "v": 2, "key": meta, "versions": versions}
    return base64.b64encode(json.dumps(doc).encode()).decode()


def test_backup_v2_names_its_vault_and_the_digest_binds_it():
    one = [{"key_version": 1, "wrapped": WRAPPED}]
    meta, _ = _parse_backup(_v2(META_V2, one))
    assert meta == META_V2 and _backup_vault(meta) == "1"
    assert _backup_vault(META) == "1"  # v1: the origin's vault stands for it
    assert _backup_digest({**META_V2, "vault": "2"}) != _backup_digest(META_V2)
    assert _backup_digest(META_V2) != _backup_digest(META)
    # (the vault id and key name formats are the dialect's: a backup naming another vault is
    # refused by restore, see test_storedsafe_security)
    for bad in (
        _v2(META, one),  # v2 without its vault
        _v2({**META_V2, "vault": 1}, one),
        _backup(META_V2, one),  # a vault in v1 metadata
        _v2({**META_V2, "origin": "1/k"}, one),
        _v2({**META_V2, "origin": "1/k/1/2"}, one),
        base64.b64encode(json.dumps({"format": "keyfront-storedsafe-backup", "v": True,
                                     "key": META, "versions": one}).encode()).decode(),
        base64.b64encode(json.dumps({"format": "keyfront-storedsafe-backup", "v": 3,
                                     "key": META_V2, "versions": one}).encode()).decode(),
    ):
        with pytest.raises(InvalidInput):
            _parse_backup(bad)


def test_deeply_nested_backups_are_invalid_input():
    for raw in (b"[" * 100_000, b'{"format":"keyfront-storedsafe-backup","v":2,"key":'
                + b"{\"a\":" * 100_000):
        with pytest.raises(InvalidInput):
            _parse_backup(base64.b64encode(raw).decode())


ITEM = {"pk": "ss#7", "sk": "key#k1", "name": "k1", "type": "aes128-gcm96",
        "latest_version": 2, "min_decryption_version": 1, "allow_export": True,
        "allow_backup": True, "allow_delete": True, "info": "", "objectid": "123456789012",
        "origin": "7/k1/123456789012", "created_at": 1, "updated_at": 2, "version": 3}


def test_a_key_record_is_read_from_where_it_is_found():
    key = TransitKey.from_item(KIND, "7", ITEM)
    assert (key.ring, key.name, key.objectid, key.item_version) == ("7", "k1", "123456789012", 3)
    assert key.context(2) == "storedsafe/7/k1/123456789012/2"
    assert key.versions_pk == "ss#7#k1#123456789012"
    # a restored key: its origin is another key of the same vault
    restored = TransitKey.from_item(KIND, "7", {**ITEM, "origin": "7/other/999"})
    assert restored.origin == "7/other/999" and restored.context(1).startswith("storedsafe/7/k1/")
    for bad in (
        {**ITEM, "sk": "key#moved"},  # a copy at another name: its own name disagrees
        {**ITEM, "pk": "ss#8"},  # in another vault's partition
        {**ITEM, "name": "other"},
        {**ITEM, "origin": "8/k1/123456789012"},  # origin in another vault
        {**ITEM, "origin": "7/k1"},
        {**ITEM, "objectid": "1#2"},
        {**ITEM, "objectid": 123456789012},
        {**ITEM, "type": "rsa-2048"},
        {**ITEM, "min_decryption_version": 3},
        {**ITEM, "state": "zombie"},  # not a lifecycle state
        {**ITEM, "min_available_version": 2},  # above min_decryption_version
        {k: v for k, v in ITEM.items() if k != "origin"},
    ):
        with pytest.raises(StoredRecordError) as e:
            TransitKey.from_item(KIND, "7", bad)
        assert e.value.status == 500 and e.value.message == "internal error"
    with pytest.raises(StoredRecordError):
        TransitKey.from_item(KIND, "8", ITEM)


def test_audit_details_the_store_cannot_hold_are_dropped():
    assert _safe_details({"bits": 10**40, "key_version": 2, "type": "x" * 1000,
                          "count": -(10**38), "name": "k", "slot": True, "kid": None,
                          "algorithm": 1.5, "plaintext": "p"}) == \
        {"key_version": 2, "name": "k", "slot": True, "kid": None}


def test_every_failure_is_audited_even_an_unexpected_one(sqlite_store, hsm, settings):
    from chalicelib.core.audit import AuditLog
    from chalicelib.core.tokens import Caller, Principal, Scope

    audit = AuditLog(sqlite_store)
    core = TransitKeys(KIND, sqlite_store, hsm, audit, settings)
    caller = Caller(Principal("tid", "tester", (Scope.parse("storedsafe:5:read,write,admin"),),
                              2**40), "rid-1")
    core.create_key(check(caller, KIND, "5", "storedsafe.key.create"), "k")
    grant = check(caller, KIND, "5", "storedsafe.datakey", "plaintext")

    def boom(n: int) -> bytes:
        raise RuntimeError("unexpected")

    core._hsm = type("H", (), {"random_bytes": staticmethod(boom)})()
    with pytest.raises(RuntimeError):
        core.datakey(grant, "k", bits=256)
    with pytest.raises(InvalidInput):
        core.datakey(grant, "k", bits=10**40)
    recs = audit.find(action="storedsafe.datakey", obj="storedsafe/5/k")
    assert [(r["outcome"], r["details"]) for r in recs] == [
        ("failure", {"reason": "internal_error", "bits": 256, "type": "plaintext"}),
        ("failure", {"reason": "invalid_input", "type": "plaintext"}),
    ]
    assert all(r["request_id"] == "rid-1" and r["token_id"] == "tid" for r in recs)
