"""Transit keys in-process on both stores: a change and its audit record are one transaction,
deletion leaves no orphaned blobs (and resumes after a crash), trim, version and key caps,
and backups that restore whatever their size."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
from typing import Any

import pytest

from chalicelib.core.access import check
from chalicelib.core.audit import AuditLog
from chalicelib.core.kinds import KINDS, TRANSIT
from chalicelib.core.limits import GenerationRate
from chalicelib.core.records import scan
from chalicelib.core.tokens import Caller, Principal, Scope
from chalicelib.core.transit import TransitKeys, restore_body_limit
from chalicelib.dialects.http import MAX_BODY_BYTES
from chalicelib.errors import (
    InvalidInput,
    InvalidState,
    LimitExceeded,
    NotFound,
    TooManyRequests,
)
from chalicelib.store import Store

KIND = KINDS[TRANSIT]
_rings = itertools.count(7000)


class Crash(BaseException):
    """A process dying right after a store write returned (kill -9 at the worst moment)."""


class CrashingStore:
    """The real store; when armed, the n-th transaction commits and then the process dies."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.crash_after: int | None = None

    def transact(self, ops: list[Any]) -> None:
        self._store.transact(ops)
        if self.crash_after is not None:
            self.crash_after -= 1
            if self.crash_after == 0:
                self.crash_after = None
                raise Crash

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _caller(ring: str) -> Caller:
    scope = Scope.parse(f"storedsafe:{ring}:read,write,admin")
    return Caller(Principal("tid", "tester", (scope,), 2**40), "rid")


class Ring:
    """One ring's grants over a TransitKeys domain."""

    def __init__(self, core: TransitKeys, ring: str | None = None) -> None:
        self.core, self.ring = core, ring or str(next(_rings))
        self.caller = _caller(self.ring)

    def g(self, action: str, variant: str | None = None):  # noqa: ANN201 - a Grant
        return check(self.caller, KIND, self.ring, f"storedsafe.{action}", variant)


@pytest.fixture
def crashing(store, hsm, settings):
    wrapped = CrashingStore(store)
    core = TransitKeys(KIND, wrapped, hsm, AuditLog(wrapped), settings)  # type: ignore[arg-type]
    return wrapped, core


def _versions(store: Store, core: TransitKeys, ring: str, name: str, objectid: str) -> list[str]:
    return [it["sk"] for it in scan(store, f"ss#{ring}#{name}#{objectid}", "v#")]


def _records(core: TransitKeys, action: str, ring: str, name: str) -> list[dict[str, Any]]:
    return core._audit.find(action=action, obj=f"storedsafe/{ring}/{name}")


def test_a_rotation_is_never_acknowledged_without_its_record(crashing):
    store, core = crashing
    r = Ring(core)
    core.create_key(r.g("key.create"), "k")
    store.crash_after = 1
    with pytest.raises(Crash):
        core.rotate(r.g("key.rotate"), "k")
    # the version exists, and so does its record: they were one transaction
    assert core.read_key(r.g("key.read"), "k").latest_version == 2
    recs = _records(core, "storedsafe.key.rotate", r.ring, "k")
    assert [(x["outcome"], x["details"]["key_version"]) for x in recs] == [("success", 2)]
    creates = _records(core, "storedsafe.key.create", r.ring, "k")
    assert [x["outcome"] for x in creates] == ["success"]


def _immediate(settings):  # noqa: ANN202 - Settings
    """The settings with a deletion window of 0: a delete destroys the key at once."""
    return dataclasses.replace(settings, deletion_window_seconds=0)


def test_delete_leaves_no_orphaned_blobs(store, hsm, settings):
    core = TransitKeys(KIND, store, hsm, AuditLog(store), _immediate(settings))
    r = Ring(core)
    key = core.create_key(r.g("key.create"), "k")
    for _ in range(3):
        core.rotate(r.g("key.rotate"), "k")
    assert len(_versions(store, core, r.ring, "k", key.objectid)) == 4
    core.delete(r.g("key.delete"), "k")
    assert _versions(store, core, r.ring, "k", key.objectid) == []
    assert store.get(f"ss#{r.ring}", "key#k") is None
    assert list(scan(store, "deleted", f"storedsafe#{r.ring}#{key.objectid}#")) == []
    assert [x["outcome"] for x in _records(core, "storedsafe.key.delete", r.ring, "k")] == \
        ["success"]


def test_a_delete_within_its_window_keeps_the_versions_until_the_purge(store, hsm, settings):
    t = [1_800_000_000.0]
    core = TransitKeys(KIND, store, hsm, AuditLog(store), settings, clock=lambda: t[0])
    r = Ring(core)
    key = core.create_key(r.g("key.create"), "k")
    core.rotate(r.g("key.rotate"), "k")
    core.delete(r.g("key.delete"), "k")
    assert store.get(f"ss#{r.ring}", "key#k") is None
    assert len(_versions(store, core, r.ring, "k", key.objectid)) == 2
    window = settings.deletion_window_seconds
    assert core.bin.purge({TRANSIT: core}, principal="scheduler", now=t[0] + window - 1) \
        == {"purged": 0, "waiting": 1, "failed": []}
    assert len(_versions(store, core, r.ring, "k", key.objectid)) == 2
    assert core.bin.purge({TRANSIT: core}, principal="scheduler", now=t[0] + window)[
        "purged"] == 1
    assert _versions(store, core, r.ring, "k", key.objectid) == []
    assert list(scan(store, "deleted", f"storedsafe#{r.ring}#{key.objectid}#")) == []


def test_a_delete_interrupted_after_its_transaction_is_finished_by_the_purge(crashing):
    store, core = crashing
    core = TransitKeys(KIND, store, core._hsm, core._audit, _immediate(core._settings))
    r = Ring(core)
    key = core.create_key(r.g("key.create"), "k")
    core.rotate(r.g("key.rotate"), "k")
    core.create_key(r.g("key.create"), "other")
    store.crash_after = 1
    with pytest.raises(Crash):
        core.delete(r.g("key.delete"), "k")
    # acknowledged or not, the key is deleted and the deletion is on record
    assert [x["outcome"] for x in _records(core, "storedsafe.key.delete", r.ring, "k")] == \
        ["success"]
    assert store.get(f"ss#{r.ring}", "key#k") is None
    assert len(_versions(store, core, r.ring, "k", key.objectid)) == 2  # not purged yet
    assert [k.name for k in core.list_keys(r.g("key.list"))] == ["other"]
    # the name is free at once, with a fresh incarnation
    again = core.create_key(r.g("key.create"), "k")
    assert again.objectid != key.objectid and again.latest_version == 1
    # the next purge (its window of 0 has passed) finishes the interrupted one
    assert core.bin.purge({TRANSIT: core}, principal="scheduler")["purged"] == 1
    assert _versions(store, core, r.ring, "k", key.objectid) == []
    assert list(scan(store, "deleted", f"storedsafe#{r.ring}#{key.objectid}#")) == []
    assert len(_versions(store, core, r.ring, "k", again.objectid)) == 1


def test_a_tombstone_met_by_a_read_or_a_create_is_purged(store, hsm, settings):
    """Records in state "deleting" (the tombstones of releases before deleted-key entries)
    are still absent for every read and purged by whoever meets them."""
    core = TransitKeys(KIND, store, hsm, AuditLog(store), settings)
    r = Ring(core)
    for name in ("a", "b"):
        core.create_key(r.g("key.create"), name)
        item = store.get(f"ss#{r.ring}", f"key#{name}")
        store.update_if_version({**{k: v for k, v in item.items() if k != "version"},
                                 "state": "deleting"}, int(item["version"]))
    with pytest.raises(NotFound):
        core.read_key(r.g("key.read"), "a")
    assert store.get(f"ss#{r.ring}", "key#a") is None
    core.create_key(r.g("key.create"), "b")
    assert core.read_key(r.g("key.read"), "b").latest_version == 1


def test_trim_deletes_versions_below_min_available(store, hsm, settings):
    core = TransitKeys(KIND, store, hsm, AuditLog(store), settings)
    r = Ring(core)
    key = core.create_key(r.g("key.create"), "k")
    cts = {1: core.encrypt(r.g("encrypt"), "k", b"one").ciphertext}
    for n in (2, 3, 4):
        core.rotate(r.g("key.rotate"), "k")
        cts[n] = core.encrypt(r.g("encrypt"), "k", str(n).encode()).ciphertext
    with pytest.raises(InvalidInput):  # not above min_decryption_version
        core.trim(r.g("key.trim"), "k", 2)
    core.configure(r.g("key.config"), "k", min_decryption_version=3)
    trimmed = core.trim(r.g("key.trim"), "k")
    assert trimmed.min_available_version == 3
    assert _versions(store, core, r.ring, "k", key.objectid) == \
        ["v#0000000003", "v#0000000004"]
    with pytest.raises(InvalidState):
        core.decrypt(r.g("decrypt"), "k", cts[2])
    with pytest.raises(InvalidInput):  # min_decryption_version cannot go below what exists
        core.configure(r.g("key.config"), "k", min_decryption_version=2)
    # a backup carries what is left, and restores into the same ring
    _, backup = core.backup(r.g("key.backup"), "k")
    doc = json.loads(base64.b64decode(backup))
    assert [v["key_version"] for v in doc["versions"]] == [3, 4]
    copy = core.restore(r.g("key.restore"), "copy", backup)
    assert (copy.min_available_version, copy.latest_version) == (3, 4)
    for n in (3, 4):
        assert core.decrypt(r.g("decrypt"), "copy", cts[n]).plaintext == str(n).encode()
    rec = _records(core, "storedsafe.key.trim", r.ring, "k")
    assert [x["outcome"] for x in rec] == ["failure", "success"]
    assert rec[1]["details"] == {"key_version": 3, "count": 2}


def test_version_and_key_caps(store, hsm, settings):
    small = dataclasses.replace(settings, max_versions_per_key=3, max_keys_per_ring=2)
    core = TransitKeys(KIND, store, hsm, AuditLog(store), small)
    r = Ring(core)
    core.create_key(r.g("key.create"), "k")
    core.rotate(r.g("key.rotate"), "k")
    core.rotate(r.g("key.rotate"), "k")
    with pytest.raises(LimitExceeded):
        core.rotate(r.g("key.rotate"), "k")
    core.configure(r.g("key.config"), "k", min_decryption_version=2)
    core.trim(r.g("key.trim"), "k")
    assert core.rotate(r.g("key.rotate"), "k").latest_version == 4
    core.create_key(r.g("key.create"), "j")
    with pytest.raises(LimitExceeded):
        core.create_key(r.g("key.create"), "third")
    with pytest.raises(LimitExceeded):  # encrypt's create-on-first-use counts too
        core.encrypt(r.g("encrypt"), "third", b"x")
    core.delete(r.g("key.delete"), "j")
    core.create_key(r.g("key.create"), "third")


def test_what_backup_produces_restore_accepts(store, hsm, settings):
    """A backup grows linearly with its versions; at the version cap it still fits the
    restore body limit (it did not at ~2,200 versions under the general 1 MiB limit)."""
    core = TransitKeys(KIND, store, hsm, AuditLog(store), settings)
    r = Ring(core, "1234567890123456")
    name = "a-key-name-of-some-length-" + "x" * 40
    core.create_key(r.g("key.create"), name, info="i" * 1024)
    sizes = {}
    for n in (1, 21):
        while core.read_key(r.g("key.read"), name).latest_version < n:
            core.rotate(r.g("key.rotate"), name)
        _, backup = core.backup(r.g("key.backup"), name)
        sizes[n] = len(json.dumps({"backup": backup, "token": "kf_" + "x" * 43}))
    per_version = (sizes[21] - sizes[1]) / 20
    at_cap = sizes[1] + per_version * (settings.max_versions_per_key - 1)
    assert at_cap <= restore_body_limit(settings)
    assert restore_body_limit(settings) > MAX_BODY_BYTES  # so the cap is not 1 MiB's


def test_generation_rate_per_token(store, settings):
    rate = GenerationRate(store, dataclasses.replace(settings, generation_rate=2,
                                                     generation_window_seconds=60),
                          clock=lambda: 1_000_040.0)  # 20 s into a window
    caller, other = _caller("1"), Caller(Principal("tid2", "t2", (), 2**40), "r")
    rate.spend(caller)
    rate.spend(caller)
    with pytest.raises(TooManyRequests) as e:
        rate.spend(caller)
    assert e.value.status == 429 and e.value.params["retry_after"] == 60 - 20
    rate.spend(other)  # another token has its own budget
    rate.spend(None)  # the service's own work is not limited
