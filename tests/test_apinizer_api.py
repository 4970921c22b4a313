"""Apinizer API Ops project keys end to end over HTTP, through `keyfront serve`, on both stores:
keys, environments, deployment, the environment's material read, the token endpoint."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from chalicelib import admin
from chalicelib.core.tokens import Scope, TokenService
from tests.client import Resp
from tests.conftest import REPO, own_live_servers

# This module's own servers: its imports, concurrent renames and audit records stay off the
# shared session servers.
_apinizer_sqlite, _apinizer_dynamodb, live_server = own_live_servers("apinizer")

ALL = "read,manage,deploy"
AES = os.urandom(32)
ENVELOPE_FAILURE = {"status", "resultMessage", "error", "error_description"}


def _project() -> str:
    return f"p-{uuid.uuid4().hex[:10]}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Api:
    """An Apinizer personal token of one project (or any scopes), speaking Bearer."""

    def __init__(self, server: Any, project: str, perms: str = ALL, *,
                 scopes: tuple[str, ...] = (), principal: str = "apinizer-user",
                 token: str | None = None) -> None:
        self.server, self.project = server, project
        self.principal = principal
        self.token = token or server.mint(*(scopes or (f"apinizer:{project}:{perms}",)),
                                          principal=principal)
        self.client = server.client()

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None, auth: bool = True) -> Resp:
        h = {"Authorization": f"Bearer {self.token}"} if auth else {}
        h.update(headers or {})
        if body is not None:
            raw = json.dumps(body).encode()
        if raw is not None:
            h.setdefault("Content-Type", "application/json")
        return self.client.request(method, path, headers=h, raw=raw)

    def keys(self, suffix: str = "") -> str:
        return f"/apiops/projects/{self.project}/keys/{suffix}"

    def create(self, name: str = "k", *, status: int = 200, **fields: Any) -> Any:
        body = {"name": name, "keyType": "SECRET_KEY", "algorithm": "AES",
                "cryptoKeyInfoEnvironmentList": [
                    {"environmentName": "production", "content": b64(AES)}], **fields}
        if body["keyType"] != "SECRET_KEY":
            body.pop("algorithm")
        r = self.call("POST", self.keys(), body)
        assert r.status == status, r.text
        return r.json

    def material(self, env: str, name: str, token: str) -> Resp:
        return self.client.request(
            "GET", f"/apiops/projects/{self.project}/environments/{env}/keys/{name}/material/",
            headers={"Authorization": f"Bearer {token}"})


def environment(server: Any, project: str, name: str, env_type: str = "PRODUCTION") -> None:
    """Add an environment through the admin function (the operator's way)."""
    out = admin.handle({"action": "create-environment", "project": project, "name": name,
                        "type": env_type, "access_url": f"https://{name}.example"},
                       server.services)
    assert out["ok"], out


def project_with_environments(server: Any, *names: str) -> str:
    project = _project()
    for n in names or ("production",):
        environment(server, project, n)
    return project


def env_token(server: Any, project: str, env: str) -> str:
    return server.mint(f"apinizer:{project}/{env}:consume", principal=f"gateway-{env}")


def failure(r: Resp, status: int, text: str | None = None) -> str:
    """The vendor's failure envelope with `status` (and exactly `text`, if given)."""
    assert r.status == status, r.text
    body = r.json
    assert set(body) == ENVELOPE_FAILURE and body["status"] == "FAILURE", body
    assert body["resultMessage"] == body["error_description"]
    if text is not None:
        assert body["resultMessage"] == text, body
    return str(body["resultMessage"])


def both(api: Api, method: str, path: str, body: Any = None) -> tuple[Resp, Resp]:
    """The same call with and without the trailing slash (and its query string)."""
    base, _, query = path.partition("?")
    assert base.endswith("/")
    bare = base[:-1] + (f"?{query}" if query else "")
    return api.call(method, path, body), api.call(method, bare, body)


# ---- openssl-made keys -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openssl_keys(tmp_path_factory) -> dict[str, bytes]:
    """PEM keys made with the openssl command line: RSA (PKCS#8 and PKCS#1), EC, SPKI."""
    d: Path = tmp_path_factory.mktemp("openssl")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
        "-out", str(d / "rsa8.pem"))
    run("pkey", "-in", str(d / "rsa8.pem"), "-traditional", "-out", str(d / "rsa1.pem"))
    run("pkey", "-in", str(d / "rsa8.pem"), "-pubout", "-out", str(d / "rsa.pub"))
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(d / "ec1.pem"))
    run("pkcs8", "-topk8", "-nocrypt", "-in", str(d / "ec1.pem"), "-out", str(d / "ec8.pem"))
    run("pkey", "-in", str(d / "ec1.pem"), "-pubout", "-out", str(d / "ec.pub"))
    keys = {p.name: p.read_bytes() for p in d.iterdir()}
    assert b"BEGIN RSA PRIVATE KEY" in keys["rsa1.pem"]  # PKCS#1
    assert b"BEGIN PRIVATE KEY" in keys["rsa8.pem"] and b"BEGIN PRIVATE KEY" in keys["ec8.pem"]
    assert b"BEGIN EC PRIVATE KEY" in keys["ec1.pem"]
    return keys


# ---- names: unique under concurrency (first: moto answers a cancelled transaction by
# restoring a copy of the whole table, cheap while the module's table is small) -------------

def test_two_concurrent_renames_to_one_name_exactly_one_wins(live_server):
    project = project_with_environments(live_server)
    api = Api(live_server, project)
    for n in ("a", "b", "c"):
        api.create(n)
    failure(api.call("PUT", api.keys("a/"), {"name": "b"}), 400,
            "Key (name: b) is already exist! Try update operation if want to change its value.")
    for round_ in range(2):
        target = f"target-{round_}"
        sources = ["a", "b"] if round_ == 0 else [f"x{round_}", f"y{round_}"]
        if round_:
            for s in sources:
                api.create(s)
        barrier = threading.Barrier(2)
        answers: dict[str, Resp] = {}

        def rename(source: str, target: str, barrier: threading.Barrier,
                   answers: dict[str, Resp]) -> None:
            mine = Api(live_server, project, token=api.token)
            barrier.wait()
            answers[source] = mine.call("PUT", mine.keys(f"{source}/"), {"name": target})
        threads = [threading.Thread(target=rename, args=(s, target, barrier, answers))
                   for s in sources]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wins = [s for s, r in answers.items() if r.status == 200]
        assert len(wins) == 1, {s: r.text for s, r in answers.items()}
        loser = next(s for s in sources if s not in wins)
        failure(answers[loser], 400, f"Key (name: {target}) is already exist! Try update "
                                     "operation if want to change its value.")
        names = [k["name"] for k in api.call("GET", api.keys()).json["resultList"]]
        assert names.count(target) == 1 and loser in names and wins[0] not in names


# ---- keys: the whole life, both path forms ---------------------------------------------------

def test_create_read_list_update_delete_in_both_path_forms(live_server):
    project = project_with_environments(live_server, "production", "staging")
    api = Api(live_server, project)
    staging = os.urandom(16)
    r = api.call("POST", api.keys(), {
        "name": "my-key", "description": "Key for API encryption", "keyType": "SECRET_KEY",
        "algorithm": "AES", "cryptoKeyInfoEnvironmentList": [
            {"environmentName": "production", "content": b64(AES), "alias": "prod-alias"},
            {"environmentName": "staging", "content": b64(staging)}]})
    assert r.status == 200, r.text
    body = r.json
    assert body["status"] == "SUCCESS" and body["success"] is True and body["resultCount"] == 1
    assert body["deploymentResult"] == {
        "success": True, "message": "Deployment completed successfully",
        "environmentResults": [
            {"environmentName": "production", "success": True,
             "message": "Deployed successfully"},
            {"environmentName": "staging", "success": True, "message": "Deployed successfully"}]}
    key = body["resultList"][0]
    assert uuid.UUID(key["id"]).version == 7
    assert key == {"id": key["id"], "name": "my-key", "description": "Key for API encryption",
                   "projectId": project, "keyType": "SECRET_KEY", "algorithm": "AES",
                   "cryptoKeyInfoEnvironmentList": [
                       {"environmentName": "production", "alias": "prod-alias",
                        "source": "UPLOAD"},
                       {"environmentName": "staging", "alias": None, "source": "UPLOAD"}]}
    assert b64(AES) not in r.text and b64(staging) not in r.text
    # the same key again (the bare path form this time)
    dup = api.call("POST", api.keys()[:-1], {
        "name": "my-key", "keyType": "SECRET_KEY", "algorithm": "DES",
        "cryptoKeyInfoEnvironmentList": []})
    failure(dup, 400, "Key (name: my-key) is already exist! Try update operation if want to "
                      "change its value.")

    for got in both(api, "GET", api.keys("my-key/")):
        assert got.status == 200 and got.json["resultList"] == [key], got.text
    api.create("second", cryptoKeyInfoEnvironmentList=[])
    for got in both(api, "GET", api.keys()):
        assert got.status == 200, got.text
        assert [k["name"] for k in got.json["resultList"]] == ["my-key", "second"]
        assert got.json["resultCount"] == 2 and b64(AES) not in got.text

    # rename, description kept, environments kept (content too: see the material test)
    a, b = both(api, "PUT", api.keys("my-key/?jwkUpdateAction=UPDATE&updateScope=SAME_PROJECT"),
                {"name": "renamed"})
    assert a.status == 200, a.text
    assert a.json["resultList"][0] == {**key, "name": "renamed"}
    assert a.json["deploymentResult"]["environmentResults"][1]["environmentName"] == "staging"
    failure(b, 400, "Key (name: my-key) is not found! Try create operation.")
    failure(api.call("GET", api.keys("my-key/")), 400,
            "Key (name: my-key) is not found! Try create operation.")
    r = api.call("PUT", api.keys("renamed"), {"description": "new words"})
    assert r.status == 200 and r.json["resultList"][0]["description"] == "new words", r.text

    a, b = both(api, "DELETE", api.keys("renamed/?jwkDeleteAction=DELETE"))
    assert a.status == 200, a.text
    assert a.json == {"status": "SUCCESS", "success": True, "resultList": [], "resultCount": 0,
                      "deploymentResult": {
                          "success": True, "message": "Undeployment completed successfully",
                          "environmentResults": [
                              {"environmentName": "production", "success": True,
                               "message": "Undeployed successfully"},
                              {"environmentName": "staging", "success": True,
                               "message": "Undeployed successfully"}]}}
    failure(b, 400, "Key (name: renamed) is not found! Try create operation.")
    # the name is free again
    api.create("renamed")
    assert [k["name"] for k in api.call("GET", api.keys()).json["resultList"]] == [
        "second", "renamed"]


# ---- material: import, deployment, the environment's read ----------------------------------

def test_openssl_keys_import_and_each_environment_reads_its_own_material(
        live_server, openssl_keys):
    project = project_with_environments(live_server, "production", "test")
    api = Api(live_server, project)
    prod, test = env_token(live_server, project, "production"), \
        env_token(live_server, project, "test")
    cases = [("rsa8", "PRIVATE_KEY", "rsa8.pem", "RSA"), ("rsa1", "PRIVATE_KEY", "rsa1.pem",
                                                            "RSA"),
             ("ec1", "PRIVATE_KEY", "ec1.pem", "EC"), ("ec8", "PRIVATE_KEY", "ec8.pem", "EC"),
             ("rsa-pub", "PUBLIC_KEY", "rsa.pub", "RSA"), ("ec-pub", "PUBLIC_KEY", "ec.pub", "EC"),
             ("rsa-secret", "SECRET_KEY", "rsa8.pem", "RSA")]
    for name, key_type, file, algorithm in cases:
        pem = openssl_keys[file]
        other = openssl_keys["rsa1.pem" if file != "rsa1.pem" else "rsa8.pem"] \
            if algorithm == "RSA" and key_type != "PUBLIC_KEY" else pem
        fields: dict[str, Any] = {"keyType": key_type}
        if key_type == "SECRET_KEY":
            fields["algorithm"] = "RSA"
        made = api.create(name, cryptoKeyInfoEnvironmentList=[
            {"environmentName": "production", "content": b64(pem)},
            {"environmentName": "test", "content": b64(other)}], **fields)
        assert made["resultList"][0]["algorithm"] == algorithm, (name, made)
        got = api.material("production", name, prod)
        assert got.status == 200, got.text
        item = got.json["resultList"][0]
        assert base64.b64decode(item["cryptoKeyInfoEnvironmentList"][0]["content"]) == pem
        assert item["name"] == name and item["keyType"] == key_type
        got = api.material("test", name, test)
        assert base64.b64decode(
            got.json["resultList"][0]["cryptoKeyInfoEnvironmentList"][0]["content"]) == other
    # a PEM given as it is (not base64) is accepted, and read back byte for byte
    raw_pem = openssl_keys["rsa.pub"].decode()
    api.create("raw-pem", keyType="PUBLIC_KEY", cryptoKeyInfoEnvironmentList=[
        {"environmentName": "production", "content": raw_pem}])
    got = api.material("production", "raw-pem", prod)
    assert base64.b64decode(got.json["resultList"][0]["cryptoKeyInfoEnvironmentList"][0][
        "content"]).decode() == raw_pem
    # ... and wrapped the way `base64` writes files (76-character lines)
    wrapped = base64.encodebytes(openssl_keys["ec8.pem"]).decode()
    api.create("wrapped-b64", keyType="PRIVATE_KEY", cryptoKeyInfoEnvironmentList=[
        {"environmentName": "production", "content": wrapped}])
    # nothing of the material in the store in the clear
    store = live_server.services.store
    items = store.query(f"apz#{project}#keys", "key#", limit=100).items
    dumped = repr(items).encode()
    for pem in openssl_keys.values():
        body = b"".join(pem.splitlines()[1:-1])
        assert body[:40] not in dumped and b64(pem)[:40].encode() not in dumped


def test_material_is_read_only_by_the_environment_while_deployed(live_server):
    project = project_with_environments(live_server, "production", "sandbox")
    api = Api(live_server, project)
    prod = env_token(live_server, project, "production")
    sandbox = env_token(live_server, project, "sandbox")
    api.create("k", cryptoKeyInfoEnvironmentList=[
        {"environmentName": "production", "content": b64(AES)}])
    r = api.material("production", "k", prod)
    assert r.status == 200, r.text
    content = r.json["resultList"][0]["cryptoKeyInfoEnvironmentList"][0]["content"]
    assert base64.b64decode(content) == AES
    bare = api.client.request(
        "GET", f"/apiops/projects/{project}/environments/production/keys/k/material",
        headers={"Authorization": f"Bearer {prod}"})
    assert bare.status == 200 and bare.json == r.json, bare.text
    r2 = api.call("GET", f"/apiops/projects/{project}/environments/production/keys/k/material")
    denied = failure(r2, 400)  # the project's own manage+deploy token reads no material
    assert "permission" in denied
    # another environment's token, and this one's token for a key deployed elsewhere
    failure(api.material("production", "k", sandbox), 400, denied)
    failure(api.material("sandbox", "k", sandbox), 400,
            "Key (name: k) is not found! Try create operation.")
    # an environment token reads nothing else: not the keys, not the environments
    env_api = Api(live_server, project, token=prod)
    failure(env_api.call("GET", api.keys()), 400, denied)
    failure(env_api.call("GET", api.keys("k/")), 400, denied)
    failure(env_api.call("GET", f"/apiops/projects/{project}/environments/"), 400, denied)
    # redeployed to sandbox only: production's token reads nothing, sandbox's its own
    new = os.urandom(24)
    r = api.call("PUT", api.keys("k/"), {"cryptoKeyInfoEnvironmentList": [
        {"environmentName": "sandbox", "content": b64(new)}]})
    assert r.status == 200, r.text
    failure(api.material("production", "k", prod), 400,
            "Key (name: k) is not found! Try create operation.")
    got = api.material("sandbox", "k", sandbox).json["resultList"][0]
    assert base64.b64decode(got["cryptoKeyInfoEnvironmentList"][0]["content"]) == new
    # deleted: undeployed everywhere
    assert api.call("DELETE", api.keys("k/")).status == 200
    failure(api.material("sandbox", "k", sandbox), 400,
            "Key (name: k) is not found! Try create operation.")
    # every material read, and its refusals, audited
    records = [r for r in live_server.services.audit.find(action="apinizer.key.material")
               if f"/{project}/" in r["object"]]
    outcomes = sorted(r["outcome"] for r in records)
    # read three times; refused to the project's token and another environment's; not deployed
    # (sandbox before the redeploy, production after it, sandbox after the delete)
    assert outcomes == ["denied"] * 2 + ["failure"] * 3 + ["success"] * 3, outcomes
    assert all(b64(AES) not in json.dumps(r) for r in records)
    # granted or refused, a read is one object: the key in that environment
    assert {r["object"] for r in records} <= {
        f"apinizer/{project}/environments/{e}/keys/k" for e in ("production", "sandbox")}


def test_update_keeps_what_is_not_given(live_server):
    project = project_with_environments(live_server, "production", "test")
    api = Api(live_server, project)
    prod = env_token(live_server, project, "production")
    test = env_token(live_server, project, "test")
    api.create("k", description="d", cryptoKeyInfoEnvironmentList=[
        {"environmentName": "production", "content": b64(AES), "alias": "a1"}])
    # an entry without content keeps the material the key holds there; a new one needs it
    failure(api.call("PUT", api.keys("k/"), {"cryptoKeyInfoEnvironmentList": [
        {"environmentName": "production"}, {"environmentName": "test"}]}), 400,
        "content: the key material for environment test is required")
    other = os.urandom(16)
    r = api.call("PUT", api.keys("k/"), {"cryptoKeyInfoEnvironmentList": [
        {"environmentName": "production", "alias": "a2"},
        {"environmentName": "test", "content": b64(other)}]})
    assert r.status == 200, r.text
    key = r.json["resultList"][0]
    assert key["description"] == "d" and key["algorithm"] == "AES"
    assert key["cryptoKeyInfoEnvironmentList"] == [
        {"environmentName": "production", "alias": "a2", "source": "UPLOAD"},
        {"environmentName": "test", "alias": None, "source": "UPLOAD"}]
    got = api.material("production", "k", prod).json["resultList"][0]
    assert base64.b64decode(got["cryptoKeyInfoEnvironmentList"][0]["content"]) == AES
    got = api.material("test", "k", test).json["resultList"][0]
    assert base64.b64decode(got["cryptoKeyInfoEnvironmentList"][0]["content"]) == other
    # a changed type or algorithm needs new material everywhere
    failure(api.call("PUT", api.keys("k/"), {"algorithm": "DES"}), 400)
    failure(api.call("PUT", api.keys("k/"), {
        "algorithm": "DESede", "cryptoKeyInfoEnvironmentList": [
            {"environmentName": "test", "content": b64(os.urandom(32))}]}), 400)
    r = api.call("PUT", api.keys("k/"), {
        "algorithm": "DESede", "cryptoKeyInfoEnvironmentList": [
            {"environmentName": "test", "content": b64(os.urandom(24))}]})
    assert r.status == 200 and r.json["resultList"][0]["algorithm"] == "DESede", r.text
    # material of the other algorithm than the key's: refused, nothing changed
    failure(api.call("PUT", api.keys("k/"), {"cryptoKeyInfoEnvironmentList": [
        {"environmentName": "test", "content": b64(os.urandom(8))}]}), 400)
    assert api.call("GET", api.keys("k/")).json["resultList"][0]["algorithm"] == "DESede"
    # an empty list undeploys everywhere, the key stays
    r = api.call("PUT", api.keys("k/"), {"cryptoKeyInfoEnvironmentList": []})
    assert r.status == 200 and r.json["resultList"][0]["cryptoKeyInfoEnvironmentList"] == []


# ---- errors ----------------------------------------------------------------------------------

def test_bad_keys_are_400_and_nothing_is_stored(live_server, openssl_keys):
    project = project_with_environments(live_server, "production")
    api = Api(live_server, project)
    env = [{"environmentName": "production", "content": b64(AES)}]

    def refused(body: Any, text: str | None = None, *, raw: bytes | None = None) -> str:
        r = api.call("POST", api.keys(), body, raw=raw)
        return failure(r, 400, text)

    refused({"name": "k", "keyType": "SECRET_KEY", "cryptoKeyInfoEnvironmentList": env},
            "algorithm is required for SECRET_KEY! Supported values: AES, DES, DESede, RSA")
    assert "production-2" in refused(
        {"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
         "cryptoKeyInfoEnvironmentList": [*env, {"environmentName": "production-2",
                                                 "content": b64(AES)}]})
    assert refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
                    "cryptoKeyInfoEnvironmentList": [env[0], env[0]]})
    for algorithm, size in (("AES", 15), ("AES", 64), ("DES", 16), ("DESede", 32),
                            ("DESede", 8)):
        text = refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": algorithm,
                        "cryptoKeyInfoEnvironmentList": [
                            {"environmentName": "production",
                             "content": b64(os.urandom(size))}]})
        assert str(size) in text and "production" in text, text
    pub, priv = openssl_keys["rsa.pub"], openssl_keys["rsa8.pem"]
    for key_type, content in (("PRIVATE_KEY", pub), ("PUBLIC_KEY", priv[:200]),
                              ("PRIVATE_KEY", AES), ("PUBLIC_KEY", b"not a key at all")):
        text = refused({"name": "k", "keyType": key_type, "cryptoKeyInfoEnvironmentList": [
            {"environmentName": "production", "content": b64(content)}]})
        assert "key" in text and b64(content)[:20] not in text, text
    refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "RSA",
             "cryptoKeyInfoEnvironmentList": [{"environmentName": "production",
                                               "content": b64(AES)}]})
    refused({"name": "k", "keyType": "PRIVATE_KEY", "algorithm": "AES",
             "cryptoKeyInfoEnvironmentList": [{"environmentName": "production",
                                               "content": b64(priv)}]})
    refused({"name": "k", "keyType": "PRIVATE_KEY", "algorithm": "EC",
             "cryptoKeyInfoEnvironmentList": [{"environmentName": "production",
                                               "content": b64(priv)}]})
    # encoding and shape
    refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
             "cryptoKeyInfoEnvironmentList": [{"environmentName": "production",
                                               "content": "%%% not base64"}]})
    refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
             "cryptoKeyInfoEnvironmentList": [{"environmentName": "production",
                                               "content": ""}]})
    refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
             "cryptoKeyInfoEnvironmentList": [{"environmentName": "production"}]})
    refused({"name": "k", "keyType": "SYMMETRIC", "cryptoKeyInfoEnvironmentList": env})
    refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "aes",
             "cryptoKeyInfoEnvironmentList": env})
    refused({"name": 1, "keyType": "SECRET_KEY", "algorithm": "AES",
             "cryptoKeyInfoEnvironmentList": env})
    refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
             "cryptoKeyInfoEnvironmentList": {"environmentName": "production"}})
    refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
             "cryptoKeyInfoEnvironmentList": [{"environmentName": "production",
                                               "content": 12}]})
    refused({"keyType": "SECRET_KEY", "algorithm": "AES", "cryptoKeyInfoEnvironmentList": env})
    refused({"name": "k", "algorithm": "AES", "cryptoKeyInfoEnvironmentList": env})
    refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES"})
    refused({"name": "", "keyType": "SECRET_KEY", "algorithm": "AES",
             "cryptoKeyInfoEnvironmentList": env})
    refused(None, raw=b'{"name": ')
    refused(None, raw=b"[]")
    refused(None, raw=b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    refused({"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
             "cryptoKeyInfoEnvironmentList": [{"environmentName": "production",
                                               "content": "A" * 100_000}]})
    assert api.call("GET", api.keys()).json["resultList"] == []
    assert live_server.services.store.query(f"apz#{project}#keys", limit=10).items == []

    # PUT and DELETE: not found, bad query parameters, bad bodies
    missing = "Key (name: nope) is not found! Try create operation."
    failure(api.call("PUT", api.keys("nope/"), {"description": "x"}), 400, missing)
    failure(api.call("DELETE", api.keys("nope/")), 400, missing)
    failure(api.call("GET", api.keys("nope/")), 400, missing)
    api.create("k")
    for query in ("jwkUpdateAction=DROP", "updateScope=EVERYWHERE", "jwkUpdateAction="):
        text = failure(api.call("PUT", api.keys(f"k/?{query}"), {"description": "x"}), 400)
        assert query.split("=")[0] in text
    text = failure(api.call("DELETE", api.keys("k/?jwkDeleteAction=KEEP")), 400)
    assert "jwkDeleteAction" in text
    failure(api.call("PUT", api.keys("k/"), raw=b"NaN"), 400)
    failure(api.call("PUT", api.keys("k/"), {"keyType": "PUBLIC_KEY"}), 400)
    failure(api.call("PUT", api.keys("k/"), {"cryptoKeyInfoEnvironmentList": [
        {"environmentName": "nowhere", "content": b64(AES)}]}), 400,
        "Environment (name: nowhere) is not found!")
    assert api.call("GET", api.keys("k/")).json["resultList"][0]["description"] is None


def test_authentication_and_permission_answers(live_server):
    project = project_with_environments(live_server, "production")
    api = Api(live_server, project)
    api.create("k")
    routes = [("POST", api.keys(), {"name": "n", "keyType": "SECRET_KEY", "algorithm": "AES",
                                    "cryptoKeyInfoEnvironmentList": []}),
              ("GET", api.keys(), None), ("GET", api.keys("k/"), None),
              ("PUT", api.keys("k/"), {"description": "x"}), ("DELETE", api.keys("k/"), None),
              ("GET", f"/apiops/projects/{project}/environments/", None),
              ("GET", f"/apiops/environments/{project}", None),
              ("GET", "/apiops/environments/", None),
              ("GET", f"/apiops/projects/{project}/environments/production/keys/k/material/",
               None)]
    expired_token, _ = TokenService(live_server.services.store,
                                    clock=lambda: time.time() - 7200).create(
        "apinizer-user", [Scope.parse(f"apinizer:{project}:{ALL}")], 60)
    for method, path, body in routes:
        failure(api.call(method, path, body, auth=False), 401,
                "Empty Key! Client must be authenticated to access this resource.")
        failure(api.call(method, path, body, headers={"Authorization": "Bearer kf_nope"},
                         auth=False), 401, "Token is not valid!")
        failure(api.call(method, path, body, headers={"Authorization": "Basic eDp5"},
                         auth=False), 401, "Token is not valid!")
        failure(api.call(method, path, body,
                         headers={"Authorization": f"Bearer {expired_token}"}, auth=False),
                401, "Token was expired!")
    # another project's full token: the same 400 whether the key (or project) exists or not
    stranger = Api(live_server, _project())
    answers = set()
    for target in (project, _project()):
        for method, path, body in routes[:5]:
            r = stranger.call(method, path.replace(project, target).replace("/k/", "/zz/"
                              if target != project else "/k/"), body)
            answers.add(failure(r, 400))
    assert len(answers) == 1, answers
    assert api.call("GET", api.keys("k/")).status == 200  # nothing changed
    # the permission matrix: read reads; manage without deploy creates only undeployed keys
    reader = Api(live_server, project, "read")
    assert reader.call("GET", api.keys()).status == 200
    assert reader.call("GET", api.keys("k/")).status == 200
    assert reader.call("GET", f"/apiops/projects/{project}/environments/").status == 200
    assert reader.call("GET", "/apiops/environments/").status == 200
    for method, path, body in (routes[0], routes[3], routes[4]):
        failure(reader.call(method, path, body), 400, next(iter(answers)))
    manager = Api(live_server, project, "manage")
    assert manager.call("GET", api.keys("k/")).status == 200  # manage implies read
    r = manager.call("POST", api.keys(), {"name": "undeployed", "keyType": "SECRET_KEY",
                                          "algorithm": "AES", "cryptoKeyInfoEnvironmentList": []})
    assert r.status == 200, r.text
    failure(manager.call("POST", api.keys(), {
        "name": "deployed", "keyType": "SECRET_KEY", "algorithm": "AES",
        "cryptoKeyInfoEnvironmentList": [{"environmentName": "production",
                                          "content": b64(AES)}]}), 400, next(iter(answers)))
    failure(manager.call("DELETE", api.keys("k/")), 400, next(iter(answers)))
    deployer = Api(live_server, project, "deploy")
    failure(deployer.call("DELETE", api.keys("k/")), 400, next(iter(answers)))
    assert Api(live_server, project, "manage,deploy").call("DELETE", api.keys("k/")).status \
        == 200
    # denials audited under the token's principal
    denied = [r for r in live_server.services.audit.find()
              if r["outcome"] == "denied" and f"apinizer/{project}" in r["object"]]
    assert len(denied) >= 10


def test_writes_are_audited_without_material(live_server):
    project = project_with_environments(live_server, "production", "test")
    api = Api(live_server, project, principal=f"auditor-{uuid.uuid4().hex[:6]}")
    api.create("k", cryptoKeyInfoEnvironmentList=[
        {"environmentName": e, "content": b64(AES)} for e in ("production", "test")])
    r = api.call("PUT", api.keys("k/?jwkUpdateAction=NULLIFY"), {
        "name": "k2", "cryptoKeyInfoEnvironmentList": [{"environmentName": "production"}]})
    assert r.status == 200, r.text
    # the environment the update took the key away from is reported too
    assert r.json["deploymentResult"]["environmentResults"] == [
        {"environmentName": "production", "success": True, "message": "Deployed successfully"},
        {"environmentName": "test", "success": True, "message": "Undeployed successfully"}]
    assert api.call("DELETE", api.keys("k2/")).status == 200
    records = [r for r in live_server.services.audit.find()
               if r["principal"] == api.principal]
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("apinizer.key.create", "success"), ("apinizer.key.update", "success"),
        ("apinizer.key.delete", "success")]
    assert records[0]["object"] == f"apinizer/{project}/keys/k"
    assert records[1]["object"] == f"apinizer/{project}/keys/k2"
    assert records[1]["details"]["renamed"] is True
    assert records[1]["details"]["option"] == "NULLIFY"
    assert records[0]["details"]["deployed"] == ["production", "test"]
    assert records[1]["details"]["old_name"] == "k"
    assert records[1]["details"]["deployed"] == ["production"]
    assert records[1]["details"]["undeployed"] == ["test"]
    assert records[2]["details"]["undeployed"] == ["production"]
    assert b64(AES) not in json.dumps(records)


# ---- environments ----------------------------------------------------------------------------

def test_environments_in_every_path_form(live_server):
    project = _project()
    environment(live_server, project, "production", "PRODUCTION")
    environment(live_server, project, "sandbox", "SANDBOX")
    api = Api(live_server, project, "read")
    for path in (f"/apiops/projects/{project}/environments/", "/apiops/environments/",
                 f"/apiops/environments/{project}"):
        for r in both(api, "GET", path if path.endswith("/") else path + "/"):
            assert r.status == 200, (path, r.text)
            assert r.json["resultCount"] == 2
            envs = r.json["resultList"]
            assert [e["name"] for e in envs] == ["production", "sandbox"]
            assert envs[1] | {"id": None} == {
                "id": None, "name": "sandbox", "description": None, "type": "SANDBOX",
                "status": "ACTIVE", "accessUrl": "https://sandbox.example", "deployed": True,
                "redeployRequired": False}
    # a token naming two projects names one in the path
    two = Api(live_server, project, scopes=(f"apinizer:{project}:read",
                                            f"apinizer:{_project()}:read"))
    failure(two.call("GET", "/apiops/environments/"), 400)
    assert two.call("GET", f"/apiops/environments/{project}").status == 200
    # the admin events: duplicates, bad types and names, deleting one in use
    svc = live_server.services
    for event in ({"name": "production", "type": "PRODUCTION"},
                  {"name": "qa", "type": "STAGING"}, {"name": "a/b", "type": "TEST"},
                  {"name": "", "type": "TEST"}, {"type": "TEST"}):
        out = admin.handle({"action": "create-environment", "project": project, **event}, svc)
        assert out["ok"] is False and out["message"], (event, out)
    Api(live_server, project).create("k")
    out = admin.handle({"action": "delete-environment", "project": project,
                        "name": "production"}, svc)
    assert out["ok"] is False and "deployed" in out["message"]
    out = admin.handle({"action": "delete-environment", "project": project,
                        "name": "sandbox"}, svc)
    assert out == {"ok": True}
    out = admin.handle({"action": "list-environments", "project": project}, svc)
    assert [e["name"] for e in out["environments"]] == ["production"]
    audit = [r["action"] for r in svc.audit.find() if f"apinizer/{project}/env" in r["object"]]
    assert audit.count("apinizer.environment.create") >= 2
    assert "apinizer.environment.delete" in audit
    # the refused delete (in use) and the refused creates are the admin function's too
    refused = [r for r in svc.audit.find() if f"apinizer/{project}/env" in r["object"]
               and r["outcome"] != "success"]
    assert refused and {r["principal"] for r in refused} == {admin.ADMIN_PRINCIPAL}, refused


def test_cli_creates_environments(_apinizer_sqlite):
    live_server = _apinizer_sqlite  # the CLI is the admin function's code: one store suffices
    project = _project()
    cmd = [str(REPO / ".venv" / "bin" / "python"), "-m", "chalicelib.cli", "apinizer",
           "environment", "create", "--project", project, "--name", "production", "--type",
           "PRODUCTION"]
    env = {**os.environ, **live_server.env}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["environment"]["name"] == "production"
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    # an error is one line on stderr and exit status 1
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().endswith("environment production exists")
    r = Api(live_server, project, "read").call("GET", f"/apiops/projects/{project}/environments/")
    assert [e["type"] for e in r.json["resultList"]] == ["PRODUCTION"]


# ---- the token endpoint ----------------------------------------------------------------------

def _token(server: Any, form: str | bytes, headers: dict[str, str] | None = None) -> Resp:
    raw = form.encode() if isinstance(form, str) else form
    return server.client().request(
        "POST", "/apiops/auth/token/",
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        raw=raw)


def test_token_endpoint(live_server):
    project = project_with_environments(live_server)
    personal = Api(live_server, project, principal="ci-client")
    r = _token(live_server, f"grant_type=client_credentials&client_id=ci-client&"
                            f"client_secret={personal.token}")
    assert r.status == 200, r.text
    assert r.json["token_type"] == "Bearer" and 0 < r.json["expires_in"] <= 3600
    short = Api(live_server, project, token=r.json["access_token"])
    assert short.token != personal.token
    assert short.call("POST", short.keys(), {
        "name": "via-oauth", "keyType": "SECRET_KEY", "algorithm": "AES",
        "cryptoKeyInfoEnvironmentList": []}).status == 200
    # narrower: read only (and Basic client authentication, the bare path)
    basic = base64.b64encode(f"ci-client:{personal.token}".encode()).decode()
    r = live_server.client().request(
        "POST", "/apiops/auth/token", headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded"},
        raw=f"grant_type=client_credentials&scope=apinizer:{project}:read".encode())
    assert r.status == 200 and r.json["scope"] == f"apinizer:{project}:read", r.text
    reader = Api(live_server, project, token=r.json["access_token"])
    assert reader.call("GET", reader.keys("via-oauth/")).status == 200
    failure(reader.call("DELETE", reader.keys("via-oauth/")), 400)

    def oauth(resp: Resp, status: int, error: str) -> None:
        assert resp.status == status, resp.text
        assert resp.json["error"] == error and resp.json["error_description"], resp.json

    secret = f"client_secret={personal.token}"
    oauth(_token(live_server, f"grant_type=password&{secret}"), 400, "unsupported_grant_type")
    oauth(_token(live_server, secret), 400, "invalid_request")
    oauth(_token(live_server, "grant_type=client_credentials"), 400, "invalid_request")
    oauth(_token(live_server, f"grant_type=client_credentials&{secret}&{secret}"), 400,
          "invalid_request")
    oauth(_token(live_server, b"grant_type=client_credentials&x=\xff"), 400, "invalid_request")
    oauth(_token(live_server, f"grant_type=client_credentials&{secret}&scope=nonsense"), 400,
          "invalid_request")
    oauth(_token(live_server, f"grant_type=client_credentials&{secret}&"
                              f"scope=apinizer:{_project()}:read"), 400, "invalid_scope")
    oauth(_token(live_server, f"grant_type=client_credentials&{secret}&"
                              f"scope=apinizer:{project}:consume"), 400, "invalid_scope")
    oauth(_token(live_server, "grant_type=client_credentials&client_secret=kf_nope"), 401,
          "unauthorized_client")
    oauth(_token(live_server, f"grant_type=client_credentials&client_id=someone&{secret}"), 401,
          "unauthorized_client")
    oauth(_token(live_server, "grant_type=client_credentials&" + "x=1&" * 20), 400,
          "invalid_request")
    expired, _ = TokenService(live_server.services.store,
                              clock=lambda: time.time() - 7200).create(
        "ci-client", [Scope.parse(f"apinizer:{project}:read")], 60)
    r = _token(live_server, f"grant_type=client_credentials&client_secret={expired}")
    oauth(r, 401, "unauthorized_client")
    assert r.json["error_description"] == "Token was expired!"
    issued = [r for r in live_server.services.audit.find(action="token.issue")
              if r["principal"] == "ci-client"]
    assert sum(r["outcome"] == "success" for r in issued) >= 2


def test_a_key_copied_into_another_project_is_never_used_there(live_server):
    """The key record and its name's claim copied unchanged into project B: addressing it
    there is a generic 500 (audited as a failure), B's list leaves it out, A is untouched."""
    a = project_with_environments(live_server)
    b = project_with_environments(live_server)
    owner, thief = Api(live_server, a), Api(live_server, b)
    owner.create("k")
    store = live_server.services.store
    for item in store.query(f"apz#{a}#keys", limit=10).items:
        if item["sk"] != "head":
            store.put_if_absent({**{k: v for k, v in item.items() if k != "version"},
                                 "pk": f"apz#{b}#keys"})
    for method, body in (("GET", None), ("PUT", {"description": "x"}), ("DELETE", None)):
        r = thief.call(method, thief.keys("k/"), body)
        text = failure(r, 500)
        assert a not in text and b not in text and "k" not in text.replace("(request id", "")
    r = thief.call("GET", thief.keys())
    assert r.status == 200 and r.json["resultList"] == []
    failures = [r for r in live_server.services.audit.find()
                if r["outcome"] == "failure" and r["object"].startswith(f"apinizer/{b}/keys")]
    assert len(failures) >= 4
    assert owner.call("GET", owner.keys("k/")).status == 200



def test_token_endpoint_issues_children_of_this_kind_that_die_with_their_parent(live_server):
    """The endpoint issues apinizer scopes only; the token it issues is refused once its
    parent is revoked through the admin function, derives no further, and the token list
    shows its parent."""
    project = project_with_environments(live_server)
    personal = live_server.mint(f"apinizer:{project}:read", "storedsafe:*:read",
                                principal="ci-client")
    secret = f"grant_type=client_credentials&client_secret={personal}"
    r = _token(live_server, f"{secret}&scope=storedsafe:1:read")
    assert r.status == 400 and r.json["error"] == "invalid_scope", r.text
    r = _token(live_server, secret)
    assert r.status == 200 and r.json["scope"] == f"apinizer:{project}:read", r.text
    child = Api(live_server, project, token=r.json["access_token"])
    assert child.call("GET", child.keys()).status == 200
    r = _token(live_server, f"grant_type=client_credentials&"
                            f"client_secret={child.token}")
    assert r.status == 400, r.text  # no grandchildren
    parent_id = live_server.services.tokens.authenticate(personal).token_id
    listed = admin.handle({"action": "list-tokens"}, live_server.services)["tokens"]
    assert any(t.get("parent_token_id") == parent_id for t in listed)
    assert admin.handle({"action": "revoke-token", "token_id": parent_id},
                        live_server.services)["ok"]
    # the server's cache holds the parent's record at most cache_seconds (1 s by default)
    time.sleep(live_server.services.settings.cache_seconds + 0.2)
    failure(child.call("GET", child.keys()), 401)


def test_algorithms_that_do_not_fit_the_key_type_are_refused_without_material(live_server):
    """Checked on every write, material or none: AES on a private key, EC on a secret key."""
    project = project_with_environments(live_server)
    api = Api(live_server, project)
    api.create("pair", keyType="PRIVATE_KEY", cryptoKeyInfoEnvironmentList=[])
    failure(api.call("PUT", api.keys("pair/"), {"algorithm": "AES"}), 400)
    failure(api.call("PUT", api.keys("pair/"), {"keyType": "PUBLIC_KEY", "algorithm": "DES"}),
            400)
    got = api.call("GET", api.keys("pair/")).json["resultList"][0]
    assert got["keyType"] == "PRIVATE_KEY" and got["algorithm"] is None, got
    failure(api.call("POST", api.keys(), {"name": "s", "keyType": "SECRET_KEY",
                                          "algorithm": "EC",
                                          "cryptoKeyInfoEnvironmentList": []}), 400)
    api.create("s", cryptoKeyInfoEnvironmentList=[])
    failure(api.call("PUT", api.keys("s/"), {"algorithm": "EC"}), 400)
    assert api.call("PUT", api.keys("s/"), {"algorithm": "DES"}).status == 200


def test_pem_text_is_material_only_for_keys_that_are_pem(live_server):
    """Content starting "-----BEGIN" is taken as it is only for PRIVATE_KEY, PUBLIC_KEY and
    SECRET_KEY RSA: 32 bytes of such text are no AES key, on create or update."""
    project = project_with_environments(live_server)
    api = Api(live_server, project)
    text = "-----BEGIN KEY-----" + "A" * 13
    assert len(text) == 32
    for algorithm, size in (("AES", 32), ("AES", 16), ("DESede", 24)):
        failure(api.call("POST", api.keys(), {
            "name": "s", "keyType": "SECRET_KEY", "algorithm": algorithm,
            "cryptoKeyInfoEnvironmentList": [
                {"environmentName": "production", "content": text[:size]}]}), 400)
    api.create("s")
    failure(api.call("PUT", api.keys("s/"), {"cryptoKeyInfoEnvironmentList": [
        {"environmentName": "production", "content": text}]}), 400)


@pytest.mark.parametrize("project", ["*", "a\ud800b", "a\x07b", "p" * 1024, "a/b", "", 7])
def test_admin_project_names_are_checked_as_the_routes_check_them(live_server, project):
    """A lone surrogate, a control character, 1024 characters, "/" or "*" (the scopes'
    wildcard): a clean refusal, never an internal error, for every environment event."""
    for action in ("create-environment", "list-environments", "delete-environment"):
        out = admin.handle({"action": action, "project": project, "name": "production",
                            "type": "TEST"}, live_server.services)
        assert out["ok"] is False and out.get("error") != "internal_error", out
        assert "project" in json.dumps(out), out


def test_the_wildcard_is_no_project_in_the_routes(live_server):
    api = Api(live_server, "*", token=live_server.mint("apinizer:*:read,manage,deploy"))
    failure(api.call("GET", api.keys()), 400)
    failure(api.call("POST", api.keys(), {"name": "k", "keyType": "SECRET_KEY",
                                          "algorithm": "AES",
                                          "cryptoKeyInfoEnvironmentList": []}), 400)
