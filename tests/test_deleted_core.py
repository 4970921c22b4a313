"""The deleted-key mechanism in-process, on both stores: a window of 0 destroys every kind's
key in its delete; a purge interrupted midway finishes when run again, refuses restores
meanwhile, and is idempotent; two purges racing delete once, on record once."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from typing import Any

import pytest

from chalicelib import admin, maintenance
from chalicelib.core.access import check
from chalicelib.core.audit import AuditLog
from chalicelib.core.kinds import KINDS, MASTER_KEYS, PROJECT_KEYS, SIGNING, TENANT_KEYS, TRANSIT
from chalicelib.core.limits import GenerationRate
from chalicelib.core.project_keys import EnvironmentContent
from chalicelib.core.records import scan
from chalicelib.core.rotating import OwnerGone
from chalicelib.core.services import Services
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.errors import StoreTransactionCancelled
from chalicelib.store import Delete, Store

PASSWORD = "Correct-Horse-Battery-Staple-0123456789-xyz"
ALL = {TRANSIT: "read,write,admin", TENANT_KEYS: "read,manage,grant",
       MASTER_KEYS: "read,manage", PROJECT_KEYS: "read,manage,deploy",
       SIGNING: ",".join(sorted(KINDS[SIGNING].permissions))}


def _services(settings: Any, hsm: Any, store: Store, **changes: Any) -> Services:
    s = dataclasses.replace(settings, **changes)
    return Services(s, store, hsm, TokenService(store), AuditLog(store), GenerationRate(store, s))


def _grant(kind: str, ring: str, verb: str, user: str = "tester") -> Any:
    caller = Caller(Principal(uuid.uuid4().hex, user,
                              (Scope.parse(f"{kind}:{ring}:{ALL[kind]}"),), 2**40), "rid")
    return check(caller, KINDS[kind], ring, f"{kind}.{verb}")


def _everything(store: Store) -> list[tuple[str, str]]:
    """Every (pk, sk) of the rings' partitions written here (audit and heads aside)."""
    out = []
    for pk in _partitions:
        out += [(pk, i["sk"]) for i in scan(store, pk) if i["sk"] != "head"]
    return out


_partitions: list[str] = []


def test_a_window_of_0_destroys_every_kind_of_key_in_its_delete(settings, hsm, store):
    svc = _services(settings, hsm, store, deletion_window_seconds=0)
    domains = admin.deletion_adapters(svc)
    ring = uuid.uuid4().hex[:12]
    # StoredSafe: a key with two versions
    ss = domains[TRANSIT]
    key = ss.create_key(_grant(TRANSIT, ring, "key.create"), "k")
    ss.rotate(_grant(TRANSIT, ring, "key.rotate"), "k")
    # Auth0: a connection with its keys
    a0 = domains[SIGNING]
    con = a0.create_connection(_grant(SIGNING, ring, "connection.create"),
                               {"name": "c", "strategy": "oidc"})
    a0.create_connection_keys(_grant(SIGNING, ring, "connection_key.create"), con["id"],
                              "ES256")
    # MiaRec: a key with a grant
    mr = domains[TENANT_KEYS]
    tk = mr.create(_grant(TENANT_KEYS, ring, "key.create"), name="k", private_use="granted",
                   activate=True, bits=1024)
    # AI-VAULT: a master key and its secret
    av, domain_id = domains[MASTER_KEYS], str(1 + uuid.uuid4().int % 500)
    av.create_key(_grant(MASTER_KEYS, domain_id, "key.create"), name="mk", usage="u",
                  remarks="", password=PASSWORD)
    av.create_secret(_grant(MASTER_KEYS, domain_id, "secret.create"), name="psk", key="mk",
                     remarks="", password=PASSWORD)
    # Apinizer: a key deployed to an environment
    apz = domains[PROJECT_KEYS]
    apz.create_environment(ring, "production", "PRODUCTION", principal="test")
    apz.create(_grant(PROJECT_KEYS, ring, "key.create"), name="k", description=None,
               key_type="secret", algorithm="aes",
               environments=[EnvironmentContent("production", None, bytes(32))])
    _partitions[:] = [f"ss#{ring}", f"ss#{ring}#k#{key.objectid}",
                      f"auth0#{ring}#connections", f"auth0#{ring}#conkeys#{con['id']}",
                      f"miarec#{ring}#keys", f"miarec#{ring}#grants#{tk.id}",
                      f"aivault#{domain_id}", f"apz#{ring}#keys"]
    assert len(_everything(store)) >= 12

    ss.delete(_grant(TRANSIT, ring, "key.delete"), "k")
    a0.delete_connection(_grant(SIGNING, ring, "connection.delete"), con["id"])
    mr.delete(_grant(TENANT_KEYS, ring, "key.delete"), tk.id)
    av.delete_secret(_grant(MASTER_KEYS, domain_id, "secret.delete"), "psk")
    av.delete_key(_grant(MASTER_KEYS, domain_id, "key.delete"), "mk")
    apz.delete(_grant(PROJECT_KEYS, ring, "key.delete"), "k")
    assert _everything(store) == []
    assert [i for i in scan(store, "deleted") if ring in i["sk"] or domain_id == i["ring"]] \
        == []


class FailingDeletes:
    """The real store, whose n-th delete_if fails (a purge dying midway)."""

    def __init__(self, store: Store, fail_at: int) -> None:
        self._store, self.left = store, fail_at

    def delete_if(self, pk: str, sk: str, expected_version: int | None = None) -> None:
        self.left -= 1
        if self.left == 0:
            raise RuntimeError("the process died")
        self._store.delete_if(pk, sk, expected_version)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _key_with_grants(svc: Services, ring: str, users: int) -> str:
    mr = admin.deletion_adapters(svc)[TENANT_KEYS]
    kid = mr.create(_grant(TENANT_KEYS, ring, "key.create"), name="k", private_use="granted",
                    activate=False, bits=1024).id
    for n in range(users):
        mr.grant_user(_grant(TENANT_KEYS, ring, "grant.create"), kid, f"user-{n}")
    mr.delete(_grant(TENANT_KEYS, ring, "key.delete"), kid)
    return kid


def test_an_interrupted_purge_finishes_when_run_again(settings, hsm, store):
    svc = _services(settings, hsm, store)
    ring = uuid.uuid4().hex[:12]
    kid = _key_with_grants(svc, ring, 3)
    grants = f"miarec#{ring}#grants#{kid}"
    assert len(list(scan(store, grants))) == 4  # the creator and three users
    later = 10**10

    dying = _services(settings, hsm, FailingDeletes(store, 3))  # type: ignore[arg-type]
    out = admin.deleted_bin(dying).purge(admin.deletion_adapters(dying), principal="scheduler",
                                         now=later)
    assert out["purged"] == 0 and out["failed"] == [f"miarec#{ring}#{kid}"]
    # the scheduled step reports the failure (its invocation fails), and so does the event
    dying = _services(settings, hsm, FailingDeletes(store, 1))  # type: ignore[arg-type]
    step = maintenance.run(dying, now=later, only="purge")
    assert step["ok"] is False and step["steps"]["purge"]["failed"], step
    dying = _services(settings, hsm, FailingDeletes(store, 1))  # type: ignore[arg-type]
    event = admin.handle({"action": "purge-deleted", "all_due": True}, dying)
    assert event["ok"] is False and event["error"] == "purge_failed", event
    assert len(list(scan(store, grants))) == 2
    [entry] = list(scan(store, "deleted", f"miarec#{ring}#{kid}#"))
    assert entry["purging"] is True
    # once a purge has begun, a restore is refused: it would bring back a key half gone
    refused = admin.handle({"action": "restore-deleted", "kind": TENANT_KEYS, "ring": ring,
                            "id": kid}, svc)
    assert refused["ok"] is False and "purged" in refused["message"], refused
    # run again, it finishes; once more, there is nothing to do
    bin_ = admin.deleted_bin(svc)
    adapters = admin.deletion_adapters(svc)
    assert bin_.purge(adapters, principal="scheduler", now=later)["purged"] == 1
    assert list(scan(store, grants)) == []
    assert list(scan(store, "deleted", f"miarec#{ring}#{kid}#")) == []
    assert bin_.purge(adapters, principal="scheduler", now=later)["purged"] == 0
    purges = [r for r in svc.audit.find(action="miarec.key.purge")
              if r["object"].endswith(kid)]
    assert [(r["principal"], r["details"]["count"]) for r in purges] == [("scheduler", 2)]


def test_two_purges_racing_delete_once(settings, hsm, store):
    svc = _services(settings, hsm, store)
    ring = uuid.uuid4().hex[:12]
    kid = _key_with_grants(svc, ring, 2)
    bin_ = admin.deleted_bin(svc)
    adapter = admin.deletion_adapters(svc)[TENANT_KEYS]
    entry = bin_.get(TENANT_KEYS, ring, kid)
    start, done = threading.Barrier(2), []

    def run() -> None:
        start.wait()
        done.append(bin_.purge_entry(entry, adapter, principal="scheduler"))
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done) == [0, 1]
    assert list(scan(store, f"miarec#{ring}#grants#{kid}")) == []
    assert list(scan(store, "deleted", f"miarec#{ring}#{kid}#")) == []
    assert len([r for r in svc.audit.find(action="miarec.key.purge")
                if r["object"].endswith(kid)]) == 1


def test_a_restore_that_read_the_entry_before_a_purge_marked_it_fails(settings, hsm, store):
    svc = _services(settings, hsm, store)
    ring = uuid.uuid4().hex[:12]
    kid = _key_with_grants(svc, ring, 1)
    bin_ = admin.deleted_bin(svc)
    read = bin_.get(TENANT_KEYS, ring, kid)
    bin_._mark(read)  # a purge begins
    # the restore's transaction is conditional on the entry as it read it
    ops = admin.deletion_adapters(svc)[TENANT_KEYS].restore_ops(read)
    with pytest.raises(StoreTransactionCancelled):
        store.transact([*ops, Delete("deleted", read.sk, read.version)])
    assert store.get(f"miarec#{ring}#keys", f"key#{kid}") is None


def test_a_purge_from_a_stale_listing_leaves_a_key_deleted_again(settings, hsm, store):
    """A key restored and deleted again while a purge works from its listing of the first
    deletion keeps its new window: each deletion is an entry of its own."""
    svc = _services(settings, hsm, store)
    ring = uuid.uuid4().hex[:12]
    kid = _key_with_grants(svc, ring, 1)
    bin_ = admin.deleted_bin(svc)
    mr = admin.deletion_adapters(svc)[TENANT_KEYS]
    stale = bin_.get(TENANT_KEYS, ring, kid)  # what a purge listed
    bin_.restore(TENANT_KEYS, ring, kid, mr, principal="admin-function")
    mr.delete(_grant(TENANT_KEYS, ring, "key.delete"), kid)
    again = bin_.get(TENANT_KEYS, ring, kid)
    assert again.sk != stale.sk and again.version == stale.version == 1
    assert bin_.purge_entry(stale, mr, principal="scheduler") == 0
    assert bin_.get(TENANT_KEYS, ring, kid) == again  # not marked, not purged
    assert len(list(scan(store, f"miarec#{ring}#grants#{kid}"))) == 2
    bin_.restore(TENANT_KEYS, ring, kid, mr, principal="admin-function")
    assert store.get(f"miarec#{ring}#keys", f"key#{kid}") is not None


def test_material_of_a_deleted_key_is_not_in_its_listing(settings, hsm, store):
    svc = _services(settings, hsm, store)
    ring = uuid.uuid4().hex[:12]
    kid = _key_with_grants(svc, ring, 0)
    listed = admin.handle({"action": "list-deleted", "kind": TENANT_KEYS, "ring": ring}, svc)
    assert [d["id"] for d in listed["deleted"]] == [kid]
    [entry] = list(scan(store, "deleted", f"miarec#{ring}#{kid}#"))
    assert entry["records"][0]["wrapped"]
    assert "wrapped" not in str(listed) and "records" not in str(listed)


def test_a_rotation_that_read_a_connection_before_its_delete_changes_nothing(
        settings, hsm, store):
    svc = _services(settings, hsm, store)
    a0 = admin.deletion_adapters(svc)[SIGNING]
    ring = uuid.uuid4().hex[:12]
    con = a0.create_connection(_grant(SIGNING, ring, "connection.create"),
                               {"name": "c", "strategy": "oidc"})
    a0.create_connection_keys(_grant(SIGNING, ring, "connection_key.create"), con["id"],
                              "ES256")
    read = a0.connections.get(ring, con["id"])  # what a racing rotation read
    ref = a0.connection_ref(ring, read)
    before = list(scan(store, ref.pk))
    a0.delete_connection(_grant(SIGNING, ring, "connection.delete"), con["id"])
    with pytest.raises(OwnerGone):
        with svc.audit.operation(None, "auth0.connection_key.rotate", "x",
                                 principal="test") as op:
            a0.rings.rotate(op, ref, "ES256", "x",
                            conditions=[a0.connections.exists_check(read)])
    assert list(scan(store, ref.pk)) == before  # the deleted connection's keys as they were


def test_a_restore_respects_the_rings_cap(settings, hsm, store):
    svc = _services(settings, hsm, store, max_keys_per_ring=1)
    ss = admin.deletion_adapters(svc)[TRANSIT]
    ring = uuid.uuid4().hex[:12]
    oid = ss.create_key(_grant(TRANSIT, ring, "key.create"), "k").objectid
    ss.delete(_grant(TRANSIT, ring, "key.delete"), "k")
    ss.create_key(_grant(TRANSIT, ring, "key.create"), "other")  # the ring is full again
    out = admin.handle({"action": "restore-deleted", "kind": TRANSIT, "ring": ring,
                        "id": oid}, svc)
    assert out["ok"] is False and out["error"] == "conflict" and "full" in out["message"], out
    ss.delete(_grant(TRANSIT, ring, "key.delete"), "other")
    out = admin.handle({"action": "restore-deleted", "kind": TRANSIT, "ring": ring,
                        "id": oid}, svc)
    assert out["ok"], out
    assert [k.name for k in ss.list_keys(_grant(TRANSIT, ring, "key.list"))] == ["k"]


def test_a_purge_destroys_this_processes_hsm_session_copies(settings, hsm, store):
    svc = _services(settings, hsm, store)
    ss = admin.deletion_adapters(svc)[TRANSIT]
    ring = uuid.uuid4().hex[:12]
    ss.create_key(_grant(TRANSIT, ring, "key.create"), "k")
    ss.rotate(_grant(TRANSIT, ring, "key.rotate"), "k")
    ct = ss.encrypt(_grant(TRANSIT, ring, "encrypt"), "k", b"x", key_version=1).ciphertext
    ss.encrypt(_grant(TRANSIT, ring, "encrypt"), "k", b"x")  # both versions unwrapped

    def cached() -> int:
        return int(hsm._ts.run(lambda state: len(state.cache)))
    before = cached()
    oid = ss.read_key(_grant(TRANSIT, ring, "key.read"), "k").objectid
    ss.delete(_grant(TRANSIT, ring, "key.delete"), "k")
    assert cached() == before  # restorable: nothing destroyed yet
    assert admin.handle({"action": "purge-deleted", "kind": TRANSIT, "ring": ring, "id": oid},
                        svc)["purged"] == 1
    assert cached() == before - 2
    assert ct.startswith("storedsafe:v1:")


def test_a_malformed_entry_is_left_out_and_the_others_are_purged(settings, hsm, store, caplog):
    svc = _services(settings, hsm, store)
    ring = uuid.uuid4().hex[:12]
    kid = _key_with_grants(svc, ring, 1)
    store.put_if_absent({"pk": "deleted", "sk": f"miarec#{ring}#broken#00"})  # no fields
    listed = admin.handle({"action": "list-deleted", "kind": TENANT_KEYS, "ring": ring}, svc)
    assert [d["id"] for d in listed["deleted"]] == [kid]
    out = admin.deleted_bin(svc).purge(admin.deletion_adapters(svc), principal="scheduler",
                                       now=10**10, kind=TENANT_KEYS, ring=ring)
    assert out == {"purged": 1, "waiting": 0, "failed": []}
    assert "is not a deleted-key entry" in caplog.text
