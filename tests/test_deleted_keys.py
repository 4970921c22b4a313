"""Recoverable deletion end to end, on both stores: each dialect's delete answers as the
vendor documents and hides the key from every view at once; the admin function lists and
restores it (as it was, refused while its name is taken); the purge after the window leaves
nothing of it in the store."""

from __future__ import annotations

import base64
import itertools
import json
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from chalicelib import admin, maintenance
from chalicelib.core.records import scan
from tests.auth0_support import connection_ring, domain
from tests.storedsafe_support import SS, assert_fail, assert_success, new_vault

# ---- the operator's side, through the admin function -------------------------------------------


def adm(server: Any, **event: Any) -> dict[str, Any]:
    """One admin event on the server's store."""
    return admin.handle(event, server.services)


def deleted(server: Any, kind: str, ring: str) -> list[dict[str, Any]]:
    """The deleted keys of a ring, as `keyfront keys deleted` lists them."""
    out = adm(server, action="list-deleted", kind=kind, ring=ring)
    assert out["ok"], out
    return list(out["deleted"])


def only_deleted(server: Any, kind: str, ring: str, name: str) -> dict[str, Any]:
    """The one deleted key of that name; its listing shows no record (no material)."""
    found = [d for d in deleted(server, kind, ring) if d["name"] == name]
    assert len(found) == 1, found
    entry = found[0]
    assert set(entry) == {"kind", "ring", "id", "name", "deleted_at", "deleted_by",
                          "purge_after", "due", "purging"}
    assert entry["due"] is False and entry["purging"] is False
    return entry


def restore(server: Any, kind: str, ring: str, oid: str) -> dict[str, Any]:
    """A restore through the admin function (its result, ok or not)."""
    return adm(server, action="restore-deleted", kind=kind, ring=ring, id=oid)


def refused(out: dict[str, Any], *words: str) -> None:
    """A restore refused with the conflict error, its message naming what is in the way."""
    assert out["ok"] is False and out["error"] == "conflict", out
    assert all(w in out["message"] for w in words), out


def purge_after_window(server: Any) -> dict[str, Any]:
    """The scheduled purge, run as if the deletion window had passed."""
    later = time.time() + server.settings.deletion_window_seconds + 60
    out = maintenance.run(server.services, now=later, only="purge")
    assert out["ok"], out
    return dict(out["steps"]["purge"])


def items(server: Any, pk: str) -> list[dict[str, Any]]:
    """Every item of a partition."""
    return list(scan(server.services.store, pk))


def no_entry(server: Any, kind: str, ring: str, oid: str) -> None:
    """The deleted-key entry is gone, and a restore of it says so."""
    assert list(scan(server.services.store, "deleted", f"{kind}#{ring}#{oid}#")) == []
    out = restore(server, kind, ring, oid)
    assert out["ok"] is False and out["error"] == "not_found", out


def audited(server: Any, action: str, oid: str) -> list[tuple[str, str]]:
    """(principal, outcome) of the audit records of `action` on a deleted key."""
    return sorted((r["principal"], r["outcome"]) for r in server.services.audit.find(
        action=action) if r["object"].endswith(f"/deleted/{oid}"))


# ---- StoredSafe: a key with versions -------------------------------------------------------------

def test_storedsafe_key_delete_restore_purge(live_server):
    vault = new_vault()
    ss = SS(live_server, vault)
    assert_success(ss.create("k"), 201)
    ct1 = ss.ok_encrypt("k", b"first")
    assert_success(ss.rotate("k"), 201)
    ct2 = ss.ok_encrypt("k", b"second")
    before = ss.key("k")

    ci = assert_success(ss.delete("k"), 200)  # the vendor's answer, as before
    assert ci["name"] == "k" and ci["objectid"] == before["objectid"]
    oid = ci["objectid"]
    assert_fail(ss.read("k"), 404)
    assert_fail(ss.decrypt("k", ct1), 404)
    assert [k["name"] for k in ss.list().json["KEYS"]] == []
    entry = only_deleted(live_server, "storedsafe", vault, "k")
    assert entry["id"] == oid and entry["deleted_by"] == "tester"
    # another vault's token sees nothing of it, and has no way to restore it
    other = SS(live_server)
    assert_fail(other.call("GET", f"/{vault}/keys/k"), 403)

    # the name is free: a new key takes it, and the restore is refused while it has it
    assert_success(ss.create("k"), 201)
    refused(restore(live_server, "storedsafe", vault, oid), "k", "taken")
    assert_success(ss.delete("k"), 200)
    out = restore(live_server, "storedsafe", vault, oid)
    assert out["ok"] and out["restored"]["name"] == "k", out
    assert ss.key("k") == before  # as it was: versions, objectid, settings
    assert ss.ok_decrypt("k", ct1) == b"first" and ss.ok_decrypt("k", ct2) == b"second"
    assert [k["name"] for k in ss.list().json["KEYS"]] == ["k"]
    # the refused restore and the restore, on record
    assert audited(live_server, "storedsafe.key.restore_deleted", oid) == [
        ("admin-function", "failure"), ("admin-function", "success")]

    # deleted again; after its window the purge leaves nothing of it
    versions = f"ss#{vault}#k#{oid}"
    assert_success(ss.delete("k"), 200)
    assert len(items(live_server, versions)) == 2
    purge_after_window(live_server)
    assert items(live_server, versions) == []
    assert [i["sk"] for i in items(live_server, f"ss#{vault}")] == ["head"]
    no_entry(live_server, "storedsafe", vault, oid)
    assert_fail(ss.decrypt("k", ct1), 404)
    assert audited(live_server, "storedsafe.key.purge", oid) == [("scheduler", "success")]
    # the other incarnation's versions went with its own purge
    assert not [d for d in deleted(live_server, "storedsafe", vault) if d["due"] is False
                and d["name"] == "k"]


def test_a_purge_by_the_admin_is_idempotent(live_server):
    vault = new_vault()
    ss = SS(live_server, vault)
    assert_success(ss.create("k"), 201)
    oid = assert_success(ss.delete("k"), 200)["objectid"]
    event = {"action": "purge-deleted", "kind": "storedsafe", "ring": vault, "id": oid}
    assert adm(live_server, **event) == {"ok": True, "purged": 1, "waiting": 0, "failed": []}
    out = adm(live_server, **event)
    assert out["ok"] is False and out["error"] == "not_found", out
    assert items(live_server, f"ss#{vault}#k#{oid}") == []
    assert audited(live_server, "storedsafe.key.purge", oid) == [("admin-function", "success")]


# ---- Auth0: a connection with its keys -----------------------------------------------------------

AUTH0_SCOPES = ("read:connections,create:connections,delete:connections,"
                "read:connections_keys,create:connections_keys,update:connections_keys")


class Auth0:
    """A tenant's Management API caller."""

    def __init__(self, server: Any, tenant: str | None = None) -> None:
        self.server = server
        self.tenant = tenant or f"t{uuid.uuid4().hex[:10]}"
        self.h = {"Authorization": "Bearer " + server.mint(f"auth0:{self.tenant}:{AUTH0_SCOPES}")}
        self.c = server.client()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.c.request(method, "/api/v2/connections" + path, body, headers=self.h)


def test_auth0_connection_delete_restore_purge(live_server):
    api = Auth0(live_server)
    name = f"c-{uuid.uuid4().hex[:8]}"
    r = api.call("POST", "", {"name": name, "strategy": "oidc",
                              "options": {"client_secret": "s3cret"}})
    assert r.status == 201, r.text
    con = r.json
    cid = con["id"]
    assert api.call("POST", f"/{cid}/keys", {"signing_alg": "ES256"}).status == 201
    keys = api.call("GET", f"/{cid}/keys").json
    jwks_path = f"/tenants/{api.tenant}/connections/{cid}/.well-known/jwks.json"
    jwks = live_server.client().get(jwks_path).json
    assert len(jwks["keys"]) == 2

    assert api.call("DELETE", f"/{cid}").status == 202  # the vendor's answer
    assert api.call("GET", f"/{cid}").status == 404
    assert api.call("GET", f"/{cid}/keys").status == 404
    assert live_server.client().get(jwks_path).status == 404
    assert api.call("GET", "").json == []
    entry = only_deleted(live_server, "auth0", api.tenant, name)
    assert entry["id"] == cid
    other = Auth0(live_server)
    assert other.call("GET", f"/{cid}").status == 404

    r = api.call("POST", "", {"name": name, "strategy": "oidc"})
    assert r.status == 201
    refused(restore(live_server, "auth0", api.tenant, cid), name)
    assert api.call("DELETE", f"/{r.json['id']}").status == 202
    assert restore(live_server, "auth0", api.tenant, cid)["ok"]
    assert api.call("GET", f"/{cid}").json == con  # options opened again
    assert api.call("GET", f"/{cid}/keys").json == keys
    assert live_server.client().get(jwks_path).json == jwks
    # the current key signs as before
    record = domain(live_server.services).connections.get(api.tenant, cid)
    ring = connection_ring(api.tenant, record)
    signer = domain(live_server.services).rings.signer(ring)
    assert signer.kid == next(k["kid"] for k in keys if k["current"])
    assert live_server.services.hsm.sign(signer.wrapped, signer.context, b"data",
                                         signer.scheme)

    assert api.call("DELETE", f"/{cid}").status == 202
    assert items(live_server, ring.pk)  # the keys wait for the window
    purge_after_window(live_server)
    assert items(live_server, ring.pk) == []
    assert [i["sk"] for i in items(live_server, f"auth0#{api.tenant}#connections")] == []
    no_entry(live_server, "auth0", api.tenant, cid)


# ---- MiaRec: a key with grants ------------------------------------------------------------------

MIAREC_KEYS = "/api/v2/encrypt_keys"
SHA1 = hashes.SHA1()  # noqa: S303 - OAEP's hash here


class MiaRec:
    """A MiaRec user of a tenant (HTTP Basic with a keyfront token)."""

    def __init__(self, server: Any, tenant: str) -> None:
        self.user = str(uuid.uuid4())
        token = server.mint(f"miarec:{tenant}:read,manage,grant", principal=self.user)
        basic = base64.b64encode(f"{self.user}:{token}".encode()).decode()
        self.h = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        self.c = server.client()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.c.request(method, MIAREC_KEYS + path, body, headers=self.h)


def test_miarec_key_with_grants_delete_restore_purge(live_server):
    tenant = str(uuid.uuid4())
    api, friend = MiaRec(live_server, tenant), MiaRec(live_server, tenant)
    r = api.call("POST", ".json", {"encrypt_key": {"name": "k", "key_lenght": 1024,
                                                   "is_active": True}})
    assert r.status == 201, r.text
    key = r.json["encrypt_key"]
    kid = key["id"]
    users = f"/{kid}/authorized_users"
    assert api.call("POST", f"{users}.json", {"user": {"user_id": friend.user}}).status == 201
    public = serialization.load_pem_public_key(key["public_key"].encode())
    wrapped = public.encrypt(b"session", padding.OAEP(padding.MGF1(SHA1), SHA1, None))
    body = {"ciphertext": base64.b64encode(wrapped).decode(), "hash": "sha1"}

    assert api.call("DELETE", f"/{kid}.json").status == 200
    assert api.call("GET", f"/{kid}.json").status == 404
    assert friend.call("POST", f"/{kid}/decrypt.json", body).status == 404
    assert api.call("GET", f"{users}.json").status == 404
    listed = api.call("GET", ".json").json
    assert listed["total"] == 0 and listed["encrypt_keys"] == []
    only_deleted(live_server, "miarec", tenant, "k")
    other = MiaRec(live_server, str(uuid.uuid4()))
    assert other.call("GET", f"/{kid}.json").status == 404

    assert restore(live_server, "miarec", tenant, kid)["ok"]
    assert api.call("GET", f"/{kid}.json").json["encrypt_key"] == key  # active again
    r = friend.call("POST", f"/{kid}/decrypt.json", body)  # the grant holds
    assert r.status == 200 and base64.b64decode(r.json["plaintext"]) == b"session"
    assert api.call("GET", f"{users}.json").json["total"] == 2
    assert api.call("GET", ".json").json["total"] == 1

    grants = f"miarec#{tenant}#grants#{kid}"
    assert api.call("DELETE", f"/{kid}.json").status == 200
    assert len(items(live_server, grants)) == 2
    purge_after_window(live_server)
    assert items(live_server, grants) == []
    assert [i["sk"] for i in items(live_server, f"miarec#{tenant}#keys")] == ["head"]
    no_entry(live_server, "miarec", tenant, kid)


def test_a_restored_key_is_inactive_when_another_became_active(live_server):
    tenant = str(uuid.uuid4())
    api = MiaRec(live_server, tenant)
    first = api.call("POST", ".json", {"encrypt_key": {"name": "a", "key_lenght": 1024,
                                                       "is_active": True}}).json["encrypt_key"]
    assert api.call("DELETE", f"/{first['id']}.json").status == 200
    second = api.call("POST", ".json", {"encrypt_key": {"name": "b", "key_lenght": 1024,
                                                        "is_active": True}})
    assert second.status == 201
    assert restore(live_server, "miarec", tenant, first["id"])["ok"]
    listed = api.call("GET", ".json").json["encrypt_keys"]
    assert [(k["name"], k["is_active"]) for k in listed] == [("a", False), ("b", True)]


# ---- AI-VAULT: a master key and its pre-shared key ---------------------------------------------

AIVAULT = "/AIVAULT/v1"
_domains = itertools.count(401)  # domains are 1..500; the other modules use the low ones
PASSWORD = "Correct-Horse-Battery-Staple-0123456789-xyz"


class AiVault:
    """A caller of one AI-VAULT domain."""

    def __init__(self, server: Any, domain_id: int) -> None:
        self.domain = domain_id
        token = server.mint(f"aivault:{domain_id}:read,manage")
        self.h = {"Authorization": f"Bearer {token}", "DomainID": str(domain_id)}
        self.c = server.client()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        r = self.c.request(method, AIVAULT + path, body, headers=self.h)
        assert r.status == 200, r.text
        return r.json

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        out = self.call(method, path, body)
        assert out.get("status", "00000000") == "00000000", out
        return out.get("data")


def _aivault_domain() -> int:
    return next(_domains)


def _records(server: Any, domain_id: int) -> dict[str, dict[str, Any]]:
    return {i["sk"]: i for i in items(server, f"aivault#{domain_id}") if i["sk"] != "head"}


def test_aivault_mk_and_psk_delete_restore_purge(live_server):
    api = AiVault(live_server, _aivault_domain())
    d = api.domain
    api.call("POST", "/createMK", {"MKName": "mk", "MKUsage": "u", "Password": PASSWORD})
    api.ok("POST", "/createPSK", {"PSKName": "psk", "MKName": "mk", "Password": PASSWORD})
    stored = _records(live_server, d)
    [mk] = api.ok("GET", "/queryMK")
    [psk] = api.ok("GET", "/queryPSK")

    api.ok("DELETE", "/deletePSK/psk")
    assert api.ok("GET", "/queryPSK") is None
    entry = only_deleted(live_server, "aivault", str(d), "psk")
    other = AiVault(live_server, _aivault_domain())
    other.h["DomainID"] = str(d)  # another domain's token, naming this domain
    assert other.call("GET", "/queryPSK")["status"] != "00000000"
    # the master key is free: a new PSK may bind it, and the restore is then refused
    api.ok("POST", "/createPSK", {"PSKName": "psk-2", "MKName": "mk", "Password": PASSWORD})
    refused(restore(live_server, "aivault", str(d), entry["id"]), "mk", "bound")
    api.ok("DELETE", "/deletePSK/psk-2")
    # its master key deleted and a new one made under its name: refused too
    api.ok("DELETE", "/deleteMK/mk")
    mk_entry = only_deleted(live_server, "aivault", str(d), "mk")
    api.call("POST", "/createMK", {"MKName": "mk", "MKUsage": "u", "Password": PASSWORD})
    refused(restore(live_server, "aivault", str(d), entry["id"]), "mk", "gone")
    refused(restore(live_server, "aivault", str(d), mk_entry["id"]), "mk", "taken")
    api.ok("DELETE", "/deleteMK/mk")
    # the master key back, then its PSK, bound to it again: as it was
    assert restore(live_server, "aivault", str(d), mk_entry["id"])["ok"]
    assert restore(live_server, "aivault", str(d), entry["id"])["ok"]
    assert api.ok("GET", "/queryMK") == [mk] and api.ok("GET", "/queryPSK") == [psk]
    now = _records(live_server, d)
    for sk in ("key#mk", "secret#psk"):  # material and binding equal to before
        assert {k: v for k, v in now[sk].items() if k != "version"} == \
            {k: v for k, v in stored[sk].items() if k != "version"}
    api.call("DELETE", "/deleteMK/mk")  # bound again: refused by the vendor's rule
    assert "key#mk" in _records(live_server, d)

    api.ok("DELETE", "/deletePSK/psk")
    api.ok("DELETE", "/deleteMK/mk")
    purge_after_window(live_server)
    assert _records(live_server, d) == {}
    for e in deleted(live_server, "aivault", str(d)):
        raise AssertionError(f"left after the purge: {e}")
    no_entry(live_server, "aivault", str(d), entry["id"])
    assert json.dumps(adm(live_server, action="list-deleted")).find(PASSWORD) == -1


# ---- Apinizer: a key deployed to environments --------------------------------------------------

AES = bytes(range(32))


def _env(server: Any, project: str, name: str) -> None:
    out = adm(server, action="create-environment", project=project, name=name,
              type="PRODUCTION")
    assert out["ok"], out


class Apinizer:
    """A project's personal token."""

    def __init__(self, server: Any, project: str) -> None:
        self.server, self.project = server, project
        self.h = {"Authorization": "Bearer " + server.mint(f"apinizer:{project}:read,manage,"
                                                           "deploy")}
        self.c = server.client()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.c.request(method, f"/apiops/projects/{self.project}/{path}", body,
                              headers=self.h)

    def create(self, name: str, *envs: str) -> Any:
        r = self.call("POST", "keys/", {
            "name": name, "keyType": "SECRET_KEY", "algorithm": "AES",
            "cryptoKeyInfoEnvironmentList": [
                {"environmentName": e, "content": base64.b64encode(AES).decode()}
                for e in envs]})
        assert r.status == 200, r.text
        return r

    def material(self, env: str, name: str) -> Any:
        token = self.server.mint(f"apinizer:{self.project}/{env}:consume")
        return self.c.request("GET", f"/apiops/projects/{self.project}/environments/{env}/"
                              f"keys/{name}/material/",
                              headers={"Authorization": f"Bearer {token}"})


def _deployed(answer: Any) -> list[str]:
    [key] = answer["resultList"]
    return sorted(e["environmentName"] for e in key["cryptoKeyInfoEnvironmentList"])


def test_apinizer_deployed_key_delete_restore_purge(live_server):
    project = f"p-{uuid.uuid4().hex[:10]}"
    for env in ("production", "sandbox"):
        _env(live_server, project, env)
    api = Apinizer(live_server, project)
    api.create("k", "production", "sandbox")
    before = api.call("GET", "keys/k/").json
    kid = next(i["id"] for i in items(live_server, f"apz#{project}#keys")
               if i["sk"].startswith("key#"))

    r = api.call("DELETE", "keys/k/")
    assert r.status == 200, r.text
    assert api.call("GET", "keys/k/").status == 400  # the vendor's "not found"
    assert api.material("production", "k").status == 400
    assert api.call("GET", "keys/").json["resultList"] == []
    only_deleted(live_server, "apinizer", project, "k")
    other = Apinizer(live_server, f"p-{uuid.uuid4().hex[:10]}")
    other.project = project  # another project's token, on this project
    r = other.call("GET", "keys/")
    assert r.status == 400 and "resultList" not in r.json

    api.create("k", "production")
    refused(restore(live_server, "apinizer", project, kid), "k", "taken")
    assert api.call("DELETE", "keys/k/").status == 200
    # an environment of the deployment deleted (and made again) meanwhile: the restored key
    # is deployed only where it still can be
    assert adm(live_server, action="delete-environment", project=project,
               name="sandbox")["ok"]
    _env(live_server, project, "sandbox")
    assert restore(live_server, "apinizer", project, kid)["ok"]
    got = api.call("GET", "keys/k/").json
    assert _deployed(got) == ["production"] and _deployed(before) == ["production", "sandbox"]
    r = api.material("production", "k")
    assert r.status == 200, r.text
    content = r.json["resultList"][0]["cryptoKeyInfoEnvironmentList"][0]["content"]
    assert base64.b64decode(content) == AES
    assert api.material("sandbox", "k").status == 400

    assert api.call("DELETE", "keys/k/").status == 200
    purge_after_window(live_server)
    assert [i["sk"] for i in items(live_server, f"apz#{project}#keys")] == ["head"]
    no_entry(live_server, "apinizer", project, kid)


def test_restore_and_purge_events_check_their_input(live_server):
    out = adm(live_server, action="restore-deleted", kind="nope", ring="r", id="x")
    assert out == {"ok": False, "error": "invalid_input", "message": out["message"]}
    assert "kind" in out["message"]
    out = adm(live_server, action="restore-deleted", kind="storedsafe", ring="r")
    assert out["ok"] is False and out["error"] == "invalid_input" and "id" in out["message"]
    out = adm(live_server, action="list-deleted", ring="r")
    assert out["ok"] is False and out["error"] == "invalid_input"
    out = adm(live_server, action="restore-deleted", kind="storedsafe", ring="r", id="x")
    assert out["ok"] is False and out["error"] == "not_found"
