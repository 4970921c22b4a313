"""Scheduled rotation end to end, on both stores: a period per key (StoredSafe's /config as
`auto_rotate_period`, the admin function and the CLI for every kind), the maintenance step
`rotate` (injected `now`) rotating each due key exactly once, even with two schedulers
racing, through the domain's own rotate; a caller's rotation moves the schedule on; a deleted
key's schedule is dropped; the kinds whose keys do not rotate are refused clearly."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from chalicelib import admin, cli, maintenance
from chalicelib.core import rotation
from chalicelib.core.services import Services
from chalicelib.errors import InvalidInput
from tests.conftest import own_live_servers
from tests.storedsafe_support import SS, assert_fail, assert_success

_rotation_sqlite, _rotation_dynamodb, live_server = own_live_servers("rotation")

HOUR = 3600
AUTH0_SCOPES = ("read:connections,create:connections,delete:connections,"
                "read:connections_keys,create:connections_keys,update:connections_keys,"
                "read:signing_keys,create:signing_keys,update:signing_keys")


def _step(services: Services, now: float) -> dict[str, Any]:
    out = maintenance.run(services, now=now, only="rotate")
    # keys that failed are listed, and then the run (the scheduled invocation) is not ok
    assert out["ok"] is not bool(out["steps"]["rotate"].get("failed")), out
    return out["steps"]["rotate"]


def _admin(services: Services, **event: Any) -> dict[str, Any]:
    return admin.handle(event, services)


def _version(ss: SS, name: str) -> int:
    return int(ss.key(name)["key_version"])


def _scheduled_rotations(services: Services, obj: str, action: str) -> list[dict[str, Any]]:
    return [r for r in services.audit.find(action=action, obj=obj)
            if r["outcome"] == "success"]


# ---- the rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("value,seconds", [
    (0, 0), ("0", 0), (3600, 3600), ("3600", 3600), ("24h", 86400), ("30d", 30 * 86400),
    ("1h30m", 5400), ("90m", 5400), ("1d12h", 129600), ("3600s", 3600),
])
def test_periods_vault_accepts(value, seconds):
    assert rotation.parse_period(value) == seconds


@pytest.mark.parametrize("value", [
    -1, "-1", "59m", 3599, "1x", "", "h", "24 h", "1.5h", True, 1.5, None, [], "١٢h",
    "9999999999d", 10**12,
])
def test_periods_refused(value):
    with pytest.raises(InvalidInput):
        rotation.parse_period(value)


def test_due_is_inclusive():
    assert rotation.due(100, 100) and rotation.due(100, 101) and not rotation.due(100, 99.9)


# ---- StoredSafe: /config auto_rotate_period -------------------------------------------------

def test_storedsafe_config_sets_reads_and_validates_the_period(live_server):
    ss = SS(live_server)
    assert_success(ss.create("k"), 201)
    assert ss.key("k")["auto_rotate_period"] == "0"
    ci = assert_success(ss.config("k", auto_rotate_period="24h"), 200)
    assert ci["auto_rotate_period"] == "86400"
    assert ss.key("k")["auto_rotate_period"] == "86400"
    assert_success(ss.config("k", auto_rotate_period=7200), 200)
    assert ss.key("k")["auto_rotate_period"] == "7200"
    # the other fields of /config still work beside it, and leave the period alone
    assert_success(ss.config("k", allow_delete=False), 200)
    assert ss.key("k")["auto_rotate_period"] == "7200"
    for bad in ("30m", "abc", -5, True, 1.5, "1h 5m", 3599, [], {}):
        body = assert_fail(ss.config("k", auto_rotate_period=bad), 400, token=ss.token)
        assert "auto_rotate_period" in body["ERRORS"][0], (bad, body)
    assert ss.key("k")["auto_rotate_period"] == "7200"
    # another vault's token: refused, and the period stays
    other = SS(live_server)
    r = other.call("POST", f"/{ss.vault}/keys/k/config", {"auto_rotate_period": 0})
    assert_fail(r, 403)
    # a missing key: the vendor's not-found
    assert_fail(ss.config("nope", auto_rotate_period="1h"), 404)
    got = _admin(live_server.services, action="get-rotation", kind="storedsafe",
                 ring=ss.vault, id="k")
    assert got["ok"] and got["rotation"]["period_seconds"] == 7200
    assert_success(ss.config("k", auto_rotate_period=0), 200)
    assert ss.key("k")["auto_rotate_period"] == "0"
    got = _admin(live_server.services, action="get-rotation", kind="storedsafe",
                 ring=ss.vault, id="k")
    assert got["rotation"]["period_seconds"] == 0 and got["rotation"]["next_due"] is None


def test_a_due_key_rotates_once_and_not_before(live_server):
    svc = live_server.services
    ss = SS(live_server)
    assert_success(ss.create("due"), 201)
    old = ss.ok_encrypt("due", b"before")
    t0 = time.time()
    assert_success(ss.config("due", auto_rotate_period="1h"), 200)
    t1 = time.time()
    _step(svc, t0 + HOUR - 60)  # not yet
    assert _version(ss, "due") == 1
    summary = _step(svc, t1 + HOUR + 1)
    assert _version(ss, "due") == 2
    assert summary["rotated"] >= 1 and summary["failed"] == []
    _step(svc, t1 + HOUR + 2)  # its next rotation is an hour after this one
    assert _version(ss, "due") == 2
    got = _admin(svc, action="get-rotation", kind="storedsafe", ring=ss.vault, id="due")
    listed = _admin(svc, action="list-rotations", kind="storedsafe")["rotations"]
    assert got["rotation"] in listed
    entry = maintenance.rotation_domains(svc)["storedsafe"].rotation(ss.vault, "due")
    assert entry is not None and entry.next_due == int(t1 + HOUR + 1) + HOUR
    assert entry.last_rotated == int(t1 + HOUR + 1)
    # a new period counts from the last rotation
    assert_success(ss.config("due", auto_rotate_period="2h"), 200)
    entry = maintenance.rotation_domains(svc)["storedsafe"].rotation(ss.vault, "due")
    assert entry is not None and entry.next_due == int(t1 + HOUR + 1) + 2 * HOUR
    # the new version encrypts; the old ciphertext still opens
    assert ss.encrypt("due", b"after").json["CALLINFO"]["ciphertext"].startswith(
        "storedsafe:v2:")
    assert ss.ok_decrypt("due", old) == b"before"
    done = _scheduled_rotations(svc, f"storedsafe/{ss.vault}/due", "storedsafe.key.rotate")
    assert [(r["principal"], r["details"].get("key_version")) for r in done] == \
        [("scheduler", 2)]
    set_by = [r for r in svc.audit.find(action="storedsafe.key.config",
                                        obj=f"storedsafe/{ss.vault}/due")
              if r["details"].get("period") == HOUR]
    assert set_by and set_by[0]["principal"] == "tester"


def test_two_schedulers_racing_rotate_each_key_once(live_server):
    svc = live_server.services
    other = Services.build(live_server.settings)  # a second container: its own domains
    ss = SS(live_server)
    names = [f"r{i}" for i in range(4)]
    for name in names:
        assert_success(ss.create(name), 201)
        assert_success(ss.config(name, auto_rotate_period=HOUR), 200)
    now = time.time() + HOUR + 5
    barrier = threading.Barrier(4)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run(services: Services) -> None:
        try:
            barrier.wait()
            results.append(_step(services, now))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(s,)) for s in (svc, other, svc, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and all(r["failed"] == [] for r in results), (errors, results)
    for name in names:
        assert _version(ss, name) == 2, name
        done = _scheduled_rotations(svc, f"storedsafe/{ss.vault}/{name}",
                                    "storedsafe.key.rotate")
        assert len(done) == 1 and done[0]["principal"] == "scheduler"


def test_a_rotation_by_a_caller_moves_the_schedule_on(live_server):
    svc = live_server.services
    ss = SS(live_server)
    assert_success(ss.create("pushed"), 201)
    assert_success(ss.config("pushed", auto_rotate_period=HOUR), 200)
    # time passes: the rotation is due now
    _backdate(svc, "storedsafe", ss.vault, "pushed")
    assert_success(ss.rotate("pushed"), 201)  # the caller rotates first
    before = time.time()
    got = _admin(svc, action="get-rotation", kind="storedsafe", ring=ss.vault, id="pushed")
    assert got["rotation"]["period_seconds"] == HOUR
    _step(svc, before)  # counted from the caller's rotation: not due
    assert _version(ss, "pushed") == 2
    _step(svc, before + HOUR + 1)
    assert _version(ss, "pushed") == 3


def _backdate(svc: Services, kind: str, ring: str, target: str) -> None:
    """Make an entry due now, as if its period had passed (the index item's next_due)."""
    item = svc.store.get(rotation.PK, rotation.sort_key(kind, ring, target))
    assert item is not None
    svc.store.update_if_version({**{k: v for k, v in item.items() if k != "version"},
                                 "next_due": int(time.time()) - 10}, int(item["version"]))


def test_a_deleted_keys_schedule_is_dropped(live_server):
    svc = live_server.services
    ss = SS(live_server)
    assert_success(ss.create("gone"), 201)
    assert_success(ss.config("gone", auto_rotate_period=HOUR), 200)
    assert_success(ss.delete("gone"), 200)
    assert_success(ss.create("gone"), 201)  # the name again: another key
    summary = _step(svc, time.time() + HOUR + 5)
    assert summary["dropped"] >= 1 and summary["failed"] == []
    assert _version(ss, "gone") == 1  # the new key was never scheduled
    assert ss.key("gone")["auto_rotate_period"] == "0"
    assert svc.store.get(rotation.PK, rotation.sort_key("storedsafe", ss.vault, "gone")) is None
    assert not [r for r in _admin(svc, action="list-rotations")["rotations"]
                if r["ring"] == ss.vault]
    dropped = _scheduled_rotations(svc, f"storedsafe/{ss.vault}/gone",
                                   "storedsafe.key.schedule")
    assert [(r["principal"], r["details"]["period"]) for r in dropped] == [("scheduler", 0)]


def test_a_restored_key_is_scheduled_again(live_server):
    svc = live_server.services
    ss = SS(live_server)
    assert_success(ss.create("back"), 201)
    assert_success(ss.config("back", auto_rotate_period=HOUR), 200)
    assert_success(ss.delete("back"), 200)
    assert _step(svc, time.time() + HOUR + 5)["failed"] == []  # its schedule is dropped
    assert svc.store.get(rotation.PK, rotation.sort_key("storedsafe", ss.vault, "back")) is None
    [gone] = _admin(svc, action="list-deleted", kind="storedsafe", ring=ss.vault)["deleted"]
    out = _admin(svc, action="restore-deleted", kind="storedsafe", ring=ss.vault,
                 id=gone["id"])
    assert out["ok"], out
    assert ss.key("back")["auto_rotate_period"] == str(HOUR)
    got = _admin(svc, action="get-rotation", kind="storedsafe", ring=ss.vault, id="back")
    assert got["rotation"]["period_seconds"] == HOUR
    _step(svc, time.time() + HOUR + 5)
    assert _version(ss, "back") == 2


# ---- the admin function and the CLI ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["miarec", "aivault", "apinizer"])
def test_kinds_whose_keys_do_not_rotate_are_refused(live_server, kind):
    for event in ({"action": "set-rotation", "period_seconds": HOUR},
                  {"action": "get-rotation"}):
        out = _admin(live_server.services, **event, kind=kind, ring="r1", id="k1")
        assert out["ok"] is False and out["error"] == "invalid_state", out
        assert f"rotation does not apply to {kind} keys" in out["message"]
    out = _admin(live_server.services, action="list-rotations", kind=kind)
    assert out["ok"] is False and "does not apply" in out["message"]


def test_admin_events_refuse_bad_input(live_server):
    svc = live_server.services
    ss = SS(live_server)
    assert_success(ss.create("a"), 201)
    cases = [
        ({"kind": "nope", "ring": ss.vault, "id": "a", "period_seconds": HOUR}, "invalid_input"),
        ({"kind": "storedsafe", "ring": ss.vault, "id": "a", "period_seconds": 60},
         "invalid_input"),
        ({"kind": "storedsafe", "ring": ss.vault, "id": "a", "period_seconds": "soon"},
         "invalid_input"),
        ({"kind": "storedsafe", "ring": ss.vault, "id": "a"}, "invalid_input"),
        ({"kind": "storedsafe", "ring": ss.vault, "id": "", "period_seconds": HOUR},
         "invalid_input"),
        ({"kind": "storedsafe", "ring": ss.vault, "id": "missing", "period_seconds": HOUR},
         "not_found"),
        ({"kind": "auth0", "ring": "no-such-tenant", "id": "signing", "period_seconds": HOUR},
         "not_found"),
        ({"kind": "auth0", "ring": "a#b", "id": "signing", "period_seconds": HOUR},
         "not_found"),
    ]
    for event, code in cases:
        out = _admin(svc, action="set-rotation", **event)
        assert out["ok"] is False and out["error"] == code, (event, out)
    assert ss.key("a")["auto_rotate_period"] == "0"
    out = _admin(svc, action="set-rotation", kind="storedsafe", ring=ss.vault, id="a",
                 period_seconds="30d")
    assert out["ok"] and out["rotation"]["period_seconds"] == 30 * 86400
    assert out["rotation"]["next_due"].endswith("Z")
    assert ss.key("a")["auto_rotate_period"] == str(30 * 86400)
    record = [r for r in svc.audit.find(action="storedsafe.key.schedule",
                                        obj=f"storedsafe/{ss.vault}/a")]
    assert [(r["principal"], r["details"]["period"]) for r in record] == \
        [("admin-function", 30 * 86400)]


def test_cli_sets_gets_and_lists(live_server, monkeypatch, capsys):
    from chalicelib.core import services as container

    ss = SS(live_server)
    assert_success(ss.create("c"), 201)
    monkeypatch.setattr(container, "_services", live_server.services)
    monkeypatch.setattr(container, "_pid", __import__("os").getpid())
    assert cli.main(["keys", "rotation", "set", "storedsafe", ss.vault, "c",
                     "--period", "2d"]) == 0
    assert '"period_seconds": 172800' in capsys.readouterr().out
    assert cli.main(["keys", "rotation", "get", "storedsafe", ss.vault, "c"]) == 0
    assert '"period_seconds": 172800' in capsys.readouterr().out
    assert cli.main(["keys", "rotation", "list", "--kind", "storedsafe"]) == 0
    assert f'"ring": "{ss.vault}"' in capsys.readouterr().out
    assert cli.main(["keys", "rotation", "set", "miarec", "t", "k", "--period", "2d"]) == 1
    assert "rotation does not apply to miarec keys" in capsys.readouterr().err


# ---- Auth0: a connection's key ring and the tenant's signing ring --------------------------

class _Auth0:
    def __init__(self, srv: Any) -> None:
        self.tenant = f"t{uuid.uuid4().hex[:10]}"
        self.h = {"Authorization": "Bearer " + srv.mint(f"auth0:{self.tenant}:{AUTH0_SCOPES}")}
        self.c = srv.client()

    def get(self, path: str) -> Any:
        r = self.c.get(path, headers=self.h)
        assert r.status == 200, r.text
        return r.json

    def post(self, path: str, body: Any) -> Any:
        r = self.c.post(path, json_body=body, headers=self.h)
        assert r.status in (200, 201), r.text
        return r.json


def test_auth0_rings_rotate_when_due(live_server):
    svc = live_server.services
    api = _Auth0(live_server)
    con = api.post("/api/v2/connections", {"name": f"c-{uuid.uuid4().hex[:8]}",
                                           "strategy": "oidc"})
    api.post(f"/api/v2/connections/{con['id']}/keys", {"signing_alg": "ES256"})
    signing = api.get("/api/v2/keys/signing")
    con_keys = api.get(f"/api/v2/connections/{con['id']}/keys")
    jwks_path = f"/tenants/{api.tenant}/connections/{con['id']}/.well-known/jwks.json"
    before_jwks = {k["kid"] for k in api.get(jwks_path)["keys"]}
    for target in (con["id"], "signing"):
        out = _admin(svc, action="set-rotation", kind="auth0", ring=api.tenant, id=target,
                     period_seconds="1h")
        assert out["ok"] and out["rotation"]["period_seconds"] == HOUR, out
    t = time.time()
    _step(svc, t + HOUR - 60)
    assert api.get(f"/api/v2/connections/{con['id']}/keys") == con_keys
    summary = _step(svc, t + HOUR + 5)
    assert summary["failed"] == [], summary
    after = api.get(f"/api/v2/connections/{con['id']}/keys")
    slots = {k["kid"]: k for k in after}
    old = {k["kid"]: k for k in con_keys}
    [was_current] = [k for k in old.values() if k["current"]]
    [was_next] = [k for k in old.values() if k["next"]]
    assert slots[was_next["kid"]]["current"] and slots[was_current["kid"]]["previous"]
    [new] = [k for k in after if k["kid"] not in old]
    assert new["next"] and new["algorithm"] == "ES256"  # the algorithm it had
    assert {k["kid"] for k in api.get(jwks_path)["keys"]} == before_jwks | {new["kid"]}
    signing_after = api.get("/api/v2/keys/signing")
    new_signing = [k for k in signing_after if k["kid"] not in {s["kid"] for s in signing}]
    assert len(new_signing) == 1 and new_signing[0]["next"]
    tenant_jwks = {k["kid"] for k in api.get(f"/tenants/{api.tenant}/.well-known/jwks.json")
                   ["keys"]}
    assert new_signing[0]["kid"] in tenant_jwks
    # once: running again at the same time does nothing more
    _step(svc, t + HOUR + 5)
    assert api.get(f"/api/v2/connections/{con['id']}/keys") == after
    done = _scheduled_rotations(svc, f"auth0/{api.tenant}/connections/{con['id']}/keys/"
                                     f"{new['kid']}", "auth0.connection_key.rotate")
    assert [r["principal"] for r in done] == ["scheduler"]
    # a caller's rotation moves the schedule on
    _backdate(svc, "auth0", api.tenant, "signing")
    api.post("/api/v2/keys/signing/rotate", {})
    count = len(api.get("/api/v2/keys/signing"))
    _step(svc, time.time())
    assert len(api.get("/api/v2/keys/signing")) == count


def test_auth0_deleted_connection_schedule_is_dropped(live_server):
    svc = live_server.services
    api = _Auth0(live_server)
    con = api.post("/api/v2/connections", {"name": f"c-{uuid.uuid4().hex[:8]}",
                                           "strategy": "oidc"})
    api.post(f"/api/v2/connections/{con['id']}/keys", {"signing_alg": "ES256"})
    assert _admin(svc, action="set-rotation", kind="auth0", ring=api.tenant, id=con["id"],
                  period_seconds=HOUR)["ok"]
    r = api.c.delete(f"/api/v2/connections/{con['id']}", headers=api.h)
    assert r.status == 202, r.text
    summary = _step(svc, time.time() + HOUR + 5)
    assert summary["dropped"] >= 1 and summary["failed"] == []
    assert svc.store.get(rotation.PK, rotation.sort_key("auth0", api.tenant, con["id"])) is None
    # a connection without keys cannot be scheduled: its ring does not exist
    bare = api.post("/api/v2/connections", {"name": f"c-{uuid.uuid4().hex[:8]}",
                                            "strategy": "oidc"})
    out = _admin(svc, action="set-rotation", kind="auth0", ring=api.tenant, id=bare["id"],
                 period_seconds=HOUR)
    assert out["ok"] is False and out["error"] == "not_found"


def _race(runs: list[Any]) -> list[dict[str, Any]]:
    """Run each callable in a thread of its own, released together; their results."""
    barrier = threading.Barrier(len(runs))
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run(work: Any) -> None:
        try:
            barrier.wait(timeout=30)
            results.append(work())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(w,)) for w in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == [] and not any(t.is_alive() for t in threads), errors
    return results


def test_two_schedulers_racing_rotate_each_ring_once(live_server):
    svc = live_server.services
    other = Services.build(live_server.settings)
    api = _Auth0(live_server)
    con = api.post("/api/v2/connections", {"name": f"c-{uuid.uuid4().hex[:8]}",
                                           "strategy": "oidc"})
    api.post(f"/api/v2/connections/{con['id']}/keys", {"signing_alg": "ES256"})
    signing = api.get("/api/v2/keys/signing")
    for target in (con["id"], "signing"):
        assert _admin(svc, action="set-rotation", kind="auth0", ring=api.tenant, id=target,
                      period_seconds=HOUR)["ok"]
    now = time.time() + HOUR + 5
    results = _race([lambda s=s: _step(s, now) for s in (svc, other, svc, other)])
    assert all(r["failed"] == [] for r in results), results
    assert len(api.get(f"/api/v2/connections/{con['id']}/keys")) == 3  # current, next, one
    assert len(api.get("/api/v2/keys/signing")) == len(signing) + 1
    rotated = [r for r in svc.audit.find(action="auth0.signing_key.rotate")
               if r["object"].startswith(f"auth0/{api.tenant}/") and r["outcome"] == "success"]
    assert [r["principal"] for r in rotated] == ["scheduler"]


def test_a_failing_key_does_not_stop_the_others(live_server):
    svc = live_server.services
    ss = SS(live_server)
    for name in ("a", "bad", "b"):
        assert_success(ss.create(name), 201)
        assert_success(ss.config(name, auto_rotate_period=HOUR), 200)
    # "bad"'s record is tampered with (it names another key): its rotation fails
    pk, sk = f"ss#{ss.vault}", "key#bad"
    record = svc.store.get(pk, sk)
    svc.store.update_if_version({**{k: v for k, v in record.items() if k != "version"},
                                 "name": "a"}, int(record["version"]))
    # and index items that are not entries, or of a kind whose keys do not rotate
    svc.store.put_if_absent({"pk": rotation.PK, "sk": f"storedsafe#{ss.vault}",
                             "period": "x"})
    svc.store.put_if_absent({"pk": rotation.PK, "sk": f"miarec#{ss.vault}#k", "period": HOUR,
                             "next_due": 0, "incarnation": "1"})
    summary = _step(svc, time.time() + HOUR + 5)
    failed = [f for f in summary["failed"] if f.get("ring") == ss.vault]
    assert sorted((f["kind"], f["id"], f["error"]) for f in failed) == [
        ("miarec", "k", "invalid_input"), ("storedsafe", "bad", "internal_error")]
    assert {"item": f"storedsafe#{ss.vault}", "error": "internal_error",
            "message": "malformed index item"} in summary["failed"]
    assert _version(ss, "a") == 2 and _version(ss, "b") == 2
    refused = svc.audit.find(action="storedsafe.key.rotate", obj=f"storedsafe/{ss.vault}/bad")
    assert [(r["principal"], r["outcome"], r["details"]["reason"]) for r in refused] == \
        [("scheduler", "failure", "internal_error")]
    svc.store.delete_if(rotation.PK, f"storedsafe#{ss.vault}")
    svc.store.delete_if(rotation.PK, f"miarec#{ss.vault}#k")
    svc.store.update_if_version({**{k: v for k, v in record.items() if k != "version"}},
                                int(record["version"]) + 1)
    assert_success(ss.config("bad", auto_rotate_period=0), 200)
