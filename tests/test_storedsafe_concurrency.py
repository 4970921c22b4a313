"""StoredSafe under concurrent requests, its audit trail and what reaches the store.
Both stores (live_server)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any

from tests.storedsafe_support import SS, assert_fail, assert_success, b64, new_vault

THREADS = 8

def _race(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(i) in n threads released together by a barrier; results in thread order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return results


def test_racing_rotations_give_distinct_versions(live_server):
    vault = new_vault()
    ss = SS(live_server, vault)
    assert_success(ss.create("k"), 201)
    clients = [SS(live_server, vault, token=ss.token) for _ in range(THREADS)]
    for client in clients:
        # 24 rotations racing for one key retry one another through moto, which serialises
        # every call: on a loaded machine one answer can take longer than the client's
        # default 30 s. What is checked is distinct versions, not speed.
        client.c.timeout = 120.0
    per_thread = 3

    def rotate(i: int) -> list[int]:
        out = []
        for _ in range(per_thread):
            r = clients[i].rotate("k")
            out.append(int(assert_success(r, 201)["key_version"]))
        return out

    got = [v for vs in _race(THREADS, rotate) for v in vs]
    total = THREADS * per_thread
    # no version lost, none handed out twice
    assert sorted(got) == list(range(2, total + 2))
    assert ss.key("k")["key_version"] == str(total + 1)
    # and each version exists and works
    for n in (1, total // 2, total + 1):
        ct = ss.ok_encrypt("k", b"x", key_version=n)
        assert ct.startswith(f"storedsafe:v{n}:") and ss.ok_decrypt("k", ct) == b"x"
    objectid = ss.key("k")["objectid"]
    items = live_server.services.store.query(f"ss#{vault}#k#{objectid}", "v#", limit=100).items
    assert [it["key_version"] for it in items] == list(range(1, total + 2))


def test_creating_the_same_key_at_once_leaves_one_key_and_one_clear_error(live_server):
    vault = new_vault()
    clients = [SS(live_server, vault) for _ in range(THREADS)]

    results = _race(THREADS, lambda i: clients[i].create("same", info=f"by {i}"))
    created = [r for r in results if r.status == 201]
    assert len(created) == 1, [r.status for r in results]
    for r in results:
        if r.status != 201:
            body = assert_fail(r, 409)
            assert "already exists" in body["ERRORS"][0]
    keys = clients[0].list().json["KEYS"]
    assert len(keys) == 1
    assert keys[0]["objectid"] == created[0].json["CALLINFO"]["objectid"]


def test_racing_encrypts_that_create_a_missing_key(live_server):
    vault = new_vault()
    clients = [SS(live_server, vault, "read,write") for _ in range(THREADS)]

    results = _race(THREADS, lambda i: clients[i].encrypt("auto", f"msg {i}".encode()))
    for r in results:
        assert_success(r, 200)
    assert sum(r.json["CALLINFO"]["general"] == ["key auto created"] for r in results) == 1
    assert len(clients[0].list().json["KEYS"]) == 1
    for i, r in enumerate(results):
        assert clients[0].ok_decrypt("auto", r.json["CALLINFO"]["ciphertext"]) == \
            f"msg {i}".encode()


def test_concurrent_use_during_rotation(live_server):
    vault = new_vault()
    ss = SS(live_server, vault)
    assert_success(ss.create("k"), 201)
    clients = [SS(live_server, vault, token=ss.token) for _ in range(THREADS)]

    def work(i: int) -> list[tuple[bytes, str]]:
        c = clients[i]
        out = []
        for j in range(5):
            if i % 4 == 0:
                assert_success(c.rotate("k"), 201)
            pt = f"{i}-{j}".encode()
            out.append((pt, c.ok_encrypt("k", pt)))
        return out

    for pairs in _race(THREADS, work):
        for pt, ct in pairs:
            assert ss.ok_decrypt("k", ct) == pt
            rw = assert_success(ss.rewrap("k", ct), 200)["ciphertext"]
            assert ss.ok_decrypt("k", rw) == pt


def test_every_change_and_use_is_audited_without_secrets(live_server):
    vault = new_vault()
    ss = SS(live_server, vault)
    reader = SS(live_server, vault, "read")
    secret = b"the plaintext must never be audited"
    assert_success(ss.create("k", allow_export=True), 201)
    ct = ss.ok_encrypt("k", secret)
    assert_success(ss.rotate("k"), 201)
    assert ss.ok_decrypt("k", ct) == secret
    rw = assert_success(ss.rewrap("k", ct), 200)["ciphertext"]
    dk = assert_success(ss.datakey("plaintext", "k", bits=128), 200)
    material = ss.export("k").json["KEYS"]["keys"]
    backup = ss.backup("k").json["KEYS"]["backup"]
    assert_success(ss.restore("copy", backup), 200)
    assert_success(ss.config("k", min_decryption_version=2), 200)
    assert_fail(reader.rotate("k"), 403)
    tampered = bytearray(base64.b64decode(rw.split(":", 2)[2]))
    tampered[-1] ^= 1
    assert_fail(ss.decrypt("k", "storedsafe:v2:" + b64(bytes(tampered))), 400)
    assert_success(ss.delete("copy"), 200)

    audit = live_server.services.audit
    obj = f"storedsafe/{vault}/k"

    def one(action: str, outcome: str = "success", o: str = obj) -> dict:
        recs = [r for r in audit.find(action=action, obj=o) if r["outcome"] == outcome]
        assert recs, (action, outcome)
        rec = recs[-1]
        assert rec["request_id"] and rec["time"] and rec["token_id"]
        return rec

    assert one("storedsafe.key.create")["principal"] == "tester"
    assert one("storedsafe.encrypt")["details"]["key_version"] == 1
    assert one("storedsafe.key.rotate")["details"]["key_version"] == 2
    assert one("storedsafe.decrypt")["details"]["key_version"] == 1
    assert one("storedsafe.rewrap")["details"] == {"from_version": 1, "to_version": 2}
    assert one("storedsafe.datakey")["details"]["bits"] == 128
    assert one("storedsafe.key.export")["details"]["count"] == 2
    assert one("storedsafe.key.backup")
    assert one("storedsafe.key.restore", o=f"storedsafe/{vault}/copy")
    assert one("storedsafe.key.config")
    assert one("storedsafe.key.rotate", "denied")["details"]["reason"] == "forbidden"
    assert one("storedsafe.decrypt", "failure")["details"]["reason"] == "integrity"
    assert one("storedsafe.key.delete", o=f"storedsafe/{vault}/copy")

    # nothing secret in any record of this vault
    everything = json.dumps([r for r in audit.find() if r["object"].startswith(
        f"storedsafe/{vault}")], default=str)
    forbidden = [secret.decode(), b64(secret), ct, rw, dk["ciphertext"], dk["plaintext"],
                 backup[:40], ss.token, *material.values()]
    for s in forbidden:
        assert s not in everything


def test_the_store_holds_only_wrapped_material(live_server):
    vault = new_vault()
    ss = SS(live_server, vault)
    assert_success(ss.create("k", type="aes256-gcm96", allow_export=True), 201)
    assert_success(ss.rotate("k"), 201)
    material = [base64.b64decode(v) for v in ss.export("k").json["KEYS"]["keys"].values()]
    objectid = ss.key("k")["objectid"]
    store = live_server.services.store
    record = store.get(f"ss#{vault}", "key#k")
    assert record["latest_version"] == 2 and record["objectid"] == objectid
    versions = store.query(f"ss#{vault}#k#{objectid}", "v#").items
    assert len(versions) == 2
    for item in versions:
        w = item["wrapped"]
        assert w["kind"] == "aes" and w["size"] == 256 and w["exportable"] is True
        assert w["context"] == f"storedsafe/{vault}/k/{objectid}/{item['key_version']}"
        assert w["kek_label"] and w["tag"]
    dump = repr([record, *versions]).encode()
    for raw in material:
        assert raw not in dump and base64.b64encode(raw) not in dump


def test_a_blob_moved_to_another_record_is_refused(live_server):
    vault = new_vault()
    ss = SS(live_server, vault)
    assert_success(ss.create("k"), 201)
    assert_success(ss.rotate("k"), 201)  # v2 is written, never read yet
    objectid = ss.key("k")["objectid"]
    store = live_server.services.store
    v1, v2 = store.query(f"ss#{vault}#k#{objectid}", "v#").items
    store.update_if_version({**v2, "wrapped": v1["wrapped"]}, v2["version"])
    # our own record failed its binding: not the client's fault, so a generic 500 that names
    # only the request id (never a 400 blaming the input, never the HSM's words), logged
    r = ss.encrypt("k", b"x", key_version=2)
    body = assert_fail(r, 500, token=ss.token)
    assert body["ERRORCODES"].keys() == {"5000"} and len(body["ERRORS"]) == 1
    assert body["ERRORS"][0].startswith("internal error (request id ")
    assert "belong" not in r.text and "integrity" not in r.text
    assert f"storedsafe/{vault}/k" in live_server.log_tail(20000)
    fails = [rec for rec in live_server.services.audit.find(
        action="storedsafe.encrypt", obj=f"storedsafe/{vault}/k") if rec["outcome"] == "failure"]
    assert fails and fails[-1]["details"]["reason"] == "internal_error"
    assert ss.ok_decrypt("k", ss.ok_encrypt("k", b"y", key_version=1)) == b"y"
