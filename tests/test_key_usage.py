"""Last use of every key (core/usage.py) and the delete guard, on both stores.

The dialects are called through the WSGI application `keyfront serve` runs (the API
Gateway event Chalice builds, every vendor path, header and envelope), in process so that the
usage clock can be moved: uses are recorded with what and when, written once per key per
flush period, never moved backwards by another process, and a delete of a key used within
the guard's window is refused in the vendor's envelope unless the admin function forces it.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from chalicelib import admin
from chalicelib.core.services import Services, set_services
from chalicelib.core.usage import KeyUsage
from chalicelib.errors import Unavailable

T0 = 1_800_000_000.0
FLUSH = 60
GUARD = 300
SS = "/api/1.0/transparent"
PASSWORD = "Correct-Horse-Battery-Staple-0123456789-xyz"  # AI-VAULT's rules: 43, four classes
SHA1 = hashes.SHA1()  # noqa: S303 - OAEP's hash, as the MiaRec tests use


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class UsageCalls:
    """A store that counts the calls on usage items (partitions "usage#..."), by method."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()
        self.fail_writes = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _count(self, method: str, pk: str) -> None:
        if pk.startswith("usage#"):
            self.calls[method] += 1

    def get(self, pk: str, sk: str) -> Any:
        self._count("get", pk)
        return self._store.get(pk, sk)

    def query(self, pk: str, *args: Any, **kwargs: Any) -> Any:
        self._count("query", pk)
        return self._store.query(pk, *args, **kwargs)

    def put_if_absent(self, item: dict[str, Any]) -> Any:
        self._count("put_if_absent", item["pk"])
        if self.fail_writes and item["pk"].startswith("usage#"):
            raise Unavailable("the store is not reachable")
        return self._store.put_if_absent(item)

    def update_if_version(self, item: dict[str, Any], expected: int) -> Any:
        self._count("update_if_version", item["pk"])
        if self.fail_writes and item["pk"].startswith("usage#"):
            raise Unavailable("the store is not reachable")
        return self._store.update_if_version(item, expected)

    def writes(self) -> int:
        """Writes of usage items so far."""
        return self.calls["put_if_absent"] + self.calls["update_if_version"]


class Gateway:
    """The app as `keyfront serve` runs it, over services on a counting store."""

    def __init__(self, svc: Services, counting: UsageCalls) -> None:
        from chalicelib.serving import load_app

        self.svc, self.counting, self.app = svc, counting, load_app("dev")
        self.clock = Clock()

    def usage(self, factory: Any) -> KeyUsage:
        """The usage of a dialect's domain, on the test's clock."""
        usage: KeyUsage = self.svc.domain(factory).usage
        usage.clock = self.clock
        return usage

    def call(self, method: str, path: str, body: Any = None, *,
             headers: dict[str, str] | None = None, query: str = "") -> tuple[int, Any]:
        raw = b"" if body is None else json.dumps(body).encode()
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path,
                   "RAW_URI": path + (f"?{query}" if query else ""), "QUERY_STRING": query,
                   "CONTENT_LENGTH": str(len(raw)), "CONTENT_TYPE": "application/json",
                   "wsgi.input": io.BytesIO(raw)}
        for k, v in (headers or {}).items():
            environ["HTTP_" + k.upper().replace("-", "_")] = v
        status: list[str] = []
        out = b"".join(self.app(environ, lambda s, h: status.append(s)))
        return int(status[0].split()[0]), json.loads(out) if out else None

    def mint(self, *scopes: str, principal: str = "tester") -> str:
        from chalicelib.core.tokens import Scope

        raw, _ = self.svc.tokens.create(principal, [Scope.parse(s) for s in scopes], 3600)
        return raw

    def admin(self, **event: Any) -> dict[str, Any]:
        return admin.handle(event, self.svc)


def _gateway(store: Any, settings: Any) -> Iterator[Gateway]:
    counting = UsageCalls(store)
    svc = Services.build(dataclasses.replace(settings, usage_flush_seconds=FLUSH,
                                             delete_guard_seconds=GUARD), store=counting)
    set_services(svc)
    try:
        yield Gateway(svc, counting)
    finally:
        set_services(None)


@pytest.fixture
def gw(store, settings) -> Iterator[Gateway]:
    """The served app on each store in turn."""
    yield from _gateway(store, settings)


@pytest.fixture
def sqlite_gw(sqlite_store, settings) -> Iterator[Gateway]:
    """The served app on a SQLite file (which the console script can open as well)."""
    yield from _gateway(sqlite_store, settings)


def _ms(t: float) -> int:
    return int(t * 1000)


# ---- StoredSafe ------------------------------------------------------------------------------

def _ss(gw: Gateway, vault: str, perms: str = "admin") -> Any:
    token = gw.mint(f"storedsafe:{vault}:{perms}")

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return gw.call(method, f"{SS}/{vault}/{path}" if not path.startswith("/") else
                       SS + path, body, headers={"X-Http-Token": token})
    return call


def test_storedsafe_uses_are_recorded_coalesced_and_shown(gw):
    from chalicelib.dialects.storedsafe.routes import transit_keys

    usage = gw.usage(transit_keys)
    ss = _ss(gw, "11")
    assert ss("POST", "keys/k", {"type": "aes256-gcm96"})[0] == 201
    status, read = ss("GET", "keys/k")
    assert status == 200 and read["KEYS"][0]["last_used"] is None  # created, never used
    objectid = read["KEYS"][0]["objectid"]
    gw.counting.calls.clear()

    plaintext = base64.b64encode(b"hello").decode()
    status, enc = ss("POST", "encrypt/k", {"plaintext": plaintext})
    assert status == 200, enc
    assert gw.counting.writes() == 1  # the first use in this process writes at once
    ct = enc["CALLINFO"]["ciphertext"]
    for i in range(20):  # within the period: no store call at all on usage items
        gw.clock.t = T0 + 1 + i
        assert ss("POST", "decrypt/k", {"ciphertext": ct})[0] == 200
    # the first write read the item (absent) and put it; nothing since
    assert (gw.counting.calls["get"], gw.counting.writes()) == (1, 1)
    stored = usage.last("storedsafe", "11", objectid)
    assert stored is not None and stored.last_for == "decrypt"
    assert stored.uses == {"encrypt": _ms(T0), "decrypt": _ms(T0 + 20)}

    gw.clock.t = T0 + FLUSH  # the use that crosses the period writes once more
    assert ss("POST", "/rewrap/11/k", {"ciphertext": ct})[0] == 200
    assert ss("POST", "decrypt/k", {"ciphertext": ct})[0] == 200
    # one blind write at the version this process left: no read (the 2nd get is `last`)
    assert (gw.counting.calls["get"], gw.counting.writes()) == (2, 2)
    item = gw.counting._store.get(KeyUsage.pk("storedsafe", "11"), f"key#{objectid}")
    # stored: what the crossing use saw; the decrypt after it waits for the next period
    assert item["uses"] == {"encrypt": _ms(T0), "decrypt": _ms(T0 + 20),
                            "rewrap": _ms(T0 + FLUSH)}
    assert item["name"] == "k"

    status, read = ss("GET", "keys/k")  # the vendor's key read: stored and this process's
    assert read["KEYS"][0]["last_used"] == "2027-01-15T08:01:00.000Z"
    assert read["KEYS"][0]["last_used_for"] == "decrypt"  # same ms as rewrap: first by name

    out = gw.admin(action="key-usage", kind="storedsafe", ring="11", id="k")
    assert out["ok"] and [u["key_id"] for u in out["usage"]] == [objectid]
    assert out["usage"][0]["uses"]["encrypt"] == "2027-01-15T08:00:00.000Z"
    listed = gw.admin(action="key-usage", kind="storedsafe", ring="11")
    assert listed["usage"] == out["usage"]
    # another vault's token sees nothing of it
    other = _ss(gw, "12")
    status, body = other("GET", "/11/keys/k")
    assert status == 403 and "last_used" not in json.dumps(body)
    assert gw.admin(action="key-usage", kind="storedsafe", ring="12")["usage"] == []


def test_storedsafe_delete_guard_and_admin_force(gw):
    from chalicelib.dialects.storedsafe.routes import transit_keys

    gw.usage(transit_keys)
    ss = _ss(gw, "21")
    assert ss("POST", "keys/k", {})[0] == 201
    assert ss("POST", "keys/unused", {})[0] == 201
    assert ss("DELETE", "keys/unused")[0] == 200  # never used: deleted as before
    status, enc = ss("POST", "encrypt/k", {"plaintext": base64.b64encode(b"x").decode()})
    assert status == 200
    gw.clock.t = T0 + GUARD - 1
    status, body = ss("DELETE", "keys/k")
    assert status == 400, body  # the vendor's FAIL envelope, its 400
    assert body["CALLINFO"]["status"] == "FAIL" and "used" in json.dumps(body["ERRORS"])
    assert ss("GET", "keys/k")[0] == 200  # still there
    audited = gw.svc.audit.find(action="storedsafe.key.delete")
    assert [(r["outcome"], r["details"].get("reason")) for r in audited][-1] == \
        ("failure", "invalid_state")

    # forced through the admin function: deleted, audited under the admin principal
    out = gw.admin(action="delete-key", kind="storedsafe", ring="21", id="k", force=True)
    assert out == {"ok": True}
    assert ss("GET", "keys/k")[0] == 404
    records = gw.svc.audit.find(action="storedsafe.key.delete")
    assert (records[-1]["principal"], records[-1]["outcome"]) == ("admin-function", "success")
    # the delete's own record (written with the delete) says it was forced; no other record
    assert records[-1]["details"].get("forced") is True
    assert not any(r["details"].get("forced") for r in records[:-1])
    assert gw.svc.audit.find(action="key.delete.force") == []

    # a new key under the name starts unused (usage is by object id), and past the window
    # a used key is deleted through the vendor API
    assert ss("POST", "keys/k", {})[0] == 201
    out = gw.admin(action="key-usage", kind="storedsafe", ring="21", id="k")
    assert out == {"ok": True, "usage": []}
    assert ss("GET", "keys/k")[1]["KEYS"][0]["last_used"] is None
    assert ss("POST", "encrypt/k", {"plaintext": base64.b64encode(b"x").decode()})[0] == 200
    gw.clock.t += GUARD
    assert ss("DELETE", "keys/k")[0] == 200


def test_admin_events_refuse_bad_input(gw):
    for event, error in (({"action": "key-usage", "kind": "nope", "ring": "1"}, "invalid_input"),
                         ({"action": "key-usage", "kind": "storedsafe"}, "invalid_input"),
                         ({"action": "key-usage", "kind": "storedsafe", "ring": "1",
                           "id": "missing"}, "not_found"),
                         ({"action": "delete-key", "kind": "storedsafe", "ring": "1",
                           "id": "k", "force": "yes"}, "invalid_input"),
                         ({"action": "delete-key", "kind": "storedsafe", "ring": "1"},
                          "invalid_input"),
                         ({"action": "delete-key", "kind": "auth0", "ring": "t",
                           "id": "kid"}, "invalid_input")):
        out = gw.admin(**event)
        assert out["ok"] is False and out["error"] == error and out["message"], event


# ---- MiaRec ----------------------------------------------------------------------------------

def test_miarec_decrypt_and_export_are_recorded_and_guarded(gw):
    from chalicelib.dialects.miarec.routes import tenant_keys

    usage = gw.usage(tenant_keys)
    tenant, user = str(uuid.uuid4()), str(uuid.uuid4())
    token = gw.mint(f"miarec:{tenant}:read,manage,grant", principal=user)
    basic = base64.b64encode(f"{user}:{token}".encode()).decode()
    h = {"Authorization": f"Basic {basic}"}
    keys = "/api/v2/encrypt_keys"
    status, created = gw.call("POST", f"{keys}.json", {"encrypt_key": {
        "name": "k", "add_type": "generate", "key_lenght": 1024}}, headers=h)
    assert status == 201, created
    key = created["encrypt_key"]
    public = serialization.load_pem_public_key(key["public_key"].encode())
    wrapped = public.encrypt(b"0123456789abcdef",  # type: ignore[union-attr]
                             padding.OAEP(padding.MGF1(SHA1), SHA1, None))
    body = {"ciphertext": base64.b64encode(wrapped).decode(), "hash": "sha1"}
    for i in range(3):
        gw.clock.t = T0 + i
        assert gw.call("POST", f"{keys}/{key['id']}/decrypt.json", body, headers=h)[0] == 200
    assert gw.counting.writes() == 1
    gw.clock.t = T0 + FLUSH + 5
    status, _ = gw.call("POST", f"{keys}/{key['id']}/export.json",
                        {"password": "export pw 1234"}, headers=h)
    assert status == 200 and gw.counting.writes() == 2
    use = usage.last("miarec", tenant, key["id"])
    assert use is not None and use.uses == {"decrypt": _ms(T0 + 2), "export": _ms(T0 + 65)}

    gw.clock.t = T0 + 70
    status, refused = gw.call("DELETE", f"{keys}/{key['id']}.json", headers=h)
    assert status == 400 and refused["error"] == "InvalidState", refused
    assert gw.call("GET", f"{keys}/{key['id']}.json", headers=h)[0] == 200
    # another tenant's token: the same 404 as for any key it cannot see, no use shown
    other = gw.mint(f"miarec:{uuid.uuid4()}:read,manage,grant", principal=user)
    ob = {"Authorization": "Basic " + base64.b64encode(f"{user}:{other}".encode()).decode()}
    status, body = gw.call("GET", f"{keys}/{key['id']}.json", headers=ob)
    assert status in (403, 404) and "last_used" not in json.dumps(body)
    out = gw.admin(action="delete-key", kind="miarec", ring=tenant, id=key["id"], force=True)
    assert out == {"ok": True}
    forced = [r for r in gw.svc.audit.find(action="miarec.key.delete")
              if r["outcome"] == "success"]
    assert [r["details"].get("forced") for r in forced] == [True]
    assert gw.call("GET", f"{keys}/{key['id']}.json", headers=h)[0] == 404


# ---- AI-VAULT --------------------------------------------------------------------------------

def test_aivault_material_handed_out_is_a_use_and_guards_the_delete(gw):
    from chalicelib.dialects.aivault.routes import master_keys

    usage = gw.usage(master_keys)
    domain = str(100 + int.from_bytes(os.urandom(2), "big") % 400)
    h = {"Authorization": f"Bearer {gw.mint(f'aivault:{domain}:read,manage')}",
         "DomainID": domain}
    base = "/AIVAULT/v1"
    status, _ = gw.call("POST", f"{base}/createMK", {"MKName": "mk1", "MKUsage": "test",
                                                     "Password": PASSWORD}, headers=h)
    assert status == 200
    status, psk = gw.call("POST", f"{base}/createPSK", {"PSKName": "p1", "MKName": "mk1",
                                                        "Password": PASSWORD}, headers=h)
    assert status == 200 and psk["status"] == "00000000", psk
    listed = gw.admin(action="key-usage", kind="aivault", ring=domain)["usage"]
    assert sorted((u["name"], u["last_used_for"]) for u in listed) == [
        ("mk1", "export"), ("p1", "export")]
    mk = gw.admin(action="key-usage", kind="aivault", ring=domain, id="mk1")["usage"]
    assert mk[0]["last_used_at"] == "2027-01-15T08:00:00.000Z"
    assert gw.admin(action="key-usage", kind="aivault", ring=domain,
                    id="psk/p1")["usage"][0]["name"] == "p1"

    gw.clock.t = T0 + 10
    status, body = gw.call("DELETE", f"{base}/deletePSK/p1", headers=h)
    assert status == 200 and body["status"] == "31000005", body  # the vendor's "not now"
    out = gw.admin(action="delete-key", kind="aivault", ring=domain, id="psk/p1", force=True)
    assert out == {"ok": True}
    forced = [r for r in gw.svc.audit.find(action="aivault.secret.delete")
              if r["outcome"] == "success"]
    assert [r["details"].get("forced") for r in forced] == [True]
    assert usage.last("aivault", domain, mk[0]["key_id"]) is not None
    gw.clock.t = T0 + GUARD
    status, body = gw.call("DELETE", f"{base}/deleteMK/mk1", headers=h)
    assert status == 200 and body["status"] == "00000000", body


# ---- Apinizer --------------------------------------------------------------------------------

def test_apinizer_deploy_and_material_reads_are_uses(gw):
    from chalicelib.dialects.apinizer.routes import project_keys

    usage = gw.usage(project_keys)
    project = f"p-{uuid.uuid4().hex[:8]}"
    assert gw.admin(action="create-environment", project=project, name="prod",
                    type="PRODUCTION")["ok"]
    h = {"Authorization": f"Bearer {gw.mint(f'apinizer:{project}:manage,deploy')}"}
    keys = f"/apiops/projects/{project}/keys/"
    content = base64.b64encode(os.urandom(16)).decode()
    status, body = gw.call("POST", keys, {
        "name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
        "cryptoKeyInfoEnvironmentList": [{"environmentName": "prod", "content": content}]},
        headers=h)
    assert status == 200, body
    kid = body["resultList"][0]["id"]
    assert usage.last("apinizer", project, kid).uses == {"deploy": _ms(T0)}

    gateway = {"Authorization": f"Bearer {gw.mint(f'apinizer:{project}/prod:consume')}"}
    gw.clock.t = T0 + FLUSH
    status, body = gw.call("GET", f"/apiops/projects/{project}/environments/prod/keys/k/"
                           "material/", headers=gateway)
    assert status == 200, body
    assert usage.last("apinizer", project, kid).uses == {"deploy": _ms(T0),
                                                         "export": _ms(T0 + FLUSH)}
    assert gw.counting.writes() == 2

    status, body = gw.call("DELETE", f"{keys}k/", headers=h)
    assert status == 400 and body["status"] == "FAILURE" and "used" in body["resultMessage"]
    gw.clock.t = T0 + FLUSH + GUARD
    status, body = gw.call("DELETE", f"{keys}k/", headers=h)
    assert status == 200 and body["status"] == "SUCCESS", body


# ---- the core: never backwards, failures, two processes --------------------------------------

def test_two_processes_never_move_the_last_use_back(store, settings):
    """Two domains over one store (two processes): the later use survives a slower
    writer's write, whichever writes last; each write is conditional on what it read."""
    counting = UsageCalls(store)
    s = dataclasses.replace(settings, usage_flush_seconds=FLUSH)
    a_clock, b_clock = Clock(), Clock()
    a, b = KeyUsage(counting, s, a_clock), KeyUsage(counting, s, b_clock)  # type: ignore[arg-type]
    a_clock.t = T0 + 100
    a.record("storedsafe", "1", "obj", "encrypt", name="k")  # the later use, written first
    b_clock.t = T0 + 50
    b.record("storedsafe", "1", "obj", "encrypt", name="k")  # an earlier one, written after
    b.record("storedsafe", "1", "obj", "decrypt", name="k")  # within b's period: in memory
    stored = KeyUsage(store, s).last("storedsafe", "1", "obj")
    assert stored is not None and stored.uses == {"encrypt": _ms(T0 + 100)}
    b_clock.t = T0 + 50 + FLUSH
    b.record("storedsafe", "1", "obj", "decrypt", name="k")
    a_clock.t = T0 + 100 + FLUSH  # a writes blind at the version it left: refused, merges
    a.record("storedsafe", "1", "obj", "encrypt", name="k")
    stored = KeyUsage(store, s).last("storedsafe", "1", "obj")
    assert stored.uses == {"encrypt": _ms(T0 + 100 + FLUSH), "decrypt": _ms(T0 + 50 + FLUSH)}
    assert stored.last_for == "encrypt"
    # a has merged b's decrypt in memory too
    assert a.last("storedsafe", "1", "obj").uses == stored.uses


def test_a_failed_usage_write_fails_no_request(gw, caplog):
    from chalicelib.dialects.storedsafe.routes import transit_keys

    usage = gw.usage(transit_keys)
    ss = _ss(gw, "31")
    assert ss("POST", "keys/k", {})[0] == 201
    gw.counting.fail_writes = True
    status, body = ss("POST", "encrypt/k", {"plaintext": base64.b64encode(b"x").decode()})
    assert status == 200, body
    assert "last use of a storedsafe key not written" in caplog.text
    assert gw.counting.writes() == 1
    ss("POST", "encrypt/k", {"plaintext": base64.b64encode(b"x").decode()})
    assert gw.counting.writes() == 1  # not retried on every use: after the period
    gw.counting.fail_writes = False
    gw.clock.t = T0 + FLUSH
    ss("POST", "encrypt/k", {"plaintext": base64.b64encode(b"x").decode()})
    # the failed write left no version to write at: read (absent), then put
    assert (gw.counting.calls["get"], gw.counting.writes()) == (2, 2)
    objectid = ss("GET", "keys/k")[1]["KEYS"][0]["objectid"]
    assert usage.last("storedsafe", "31", objectid).uses == {"encrypt": _ms(T0 + FLUSH)}


def test_console_script_shows_usage_and_forces_a_delete(sqlite_gw, tmp_path):
    """`keyfront keys usage|delete` on the store the served app wrote (SQLite: a file the
    console script opens too)."""
    import subprocess
    import sys
    from pathlib import Path

    gw = sqlite_gw
    ss = _ss(gw, "41")
    assert ss("POST", "keys/k", {})[0] == 201
    assert ss("POST", "encrypt/k", {"plaintext": base64.b64encode(b"x").decode()})[0] == 200
    env = {**os.environ, "KEYFRONT_STORE": "sqlite",
           "KEYFRONT_SQLITE_PATH": str(tmp_path / "store.sqlite3"),
           "KEYFRONT_DELETE_GUARD_SECONDS": str(GUARD)}
    keyfront = [sys.executable, "-m", "chalicelib.cli", "keys"]
    repo = Path(__file__).resolve().parent.parent

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*keyfront, *args], env=env, cwd=repo, capture_output=True,
                              text=True, timeout=60)
    shown = run("usage", "storedsafe", "41", "k")
    assert shown.returncode == 0, shown.stderr
    use = json.loads(shown.stdout)["usage"]
    assert [(u["name"], u["last_used_for"]) for u in use] == [("k", "encrypt")]
    # used "now" on the test's clock (in the future of the console script's): refused
    refused = run("delete", "storedsafe", "41", "k")
    assert refused.returncode == 1 and "used" in refused.stderr, refused.stderr
    forced = run("delete", "storedsafe", "41", "k", "--force")
    assert forced.returncode == 0 and json.loads(forced.stdout) == {"ok": True}, forced.stderr
    assert ss("GET", "keys/k")[0] == 404
