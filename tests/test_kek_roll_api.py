"""The KEK roll end to end, on both stores: data of every dialect made over HTTP under KEK 1,
`keyfront serve` restarted with KEYFRONT_KEK_VERSION=2, the roll run through the admin event
in small batches while clients keep encrypting, decrypting and renaming over HTTP, then KEK 1
destroyed: every blob names KEK 2, nothing was lost, and everything still works.

The server has KEK labels of its own (created through the bootstrap), so destroying its
version 1 leaves the session's KEK alone; KEYFRONT_CACHE_SECONDS=0 and
KEYFRONT_KEK_DESTROY_AFTER_SECONDS=0 stand for "the waits have passed" without sleeping.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwt
from joserfc.jwk import KeySet

from chalicelib import admin
from chalicelib.core.kek_roll import find_wrapped
from chalicelib.core.material import unwrap_under_password
from chalicelib.hsm import WrappedKey
from chalicelib.hsm.bootstrap import ensure_keys
from tests.auth0_support import connection_ring, domain
from tests.conftest import LiveServer, free_port
from tests.storedsafe_support import SS, assert_success

SHA1 = hashes.SHA1()  # noqa: S303 - OAEP's hash (SoftHSM decrypts OAEP with SHA-1 only)
PASSWORD = "Correct-Horse-Battery-Staple-0123456789-xyz"
AUTH0_SCOPES = ("read:connections,create:connections,read:connections_keys,"
                "create:connections_keys,read:signing_keys,create:signing_keys,"
                "update:signing_keys")
MIAREC = "/api/v2/encrypt_keys"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.fixture(params=["sqlite", "dynamodb"])
def server_env(request, tmp_path) -> Iterator[tuple[str, dict[str, str]]]:
    """A store of this test's own and KEK labels of its own (version 1 created)."""
    prefix = f"roll-{uuid.uuid4().hex[:8]}"
    env = {"KEYFRONT_STORE": request.param, "KEYFRONT_ACCESS_LOG": "0",
           "KEYFRONT_CACHE_SECONDS": "0", "KEYFRONT_KEK_VERSION": "1",
           "KEYFRONT_KEK_DESTROY_AFTER_SECONDS": "0",
           "KEYFRONT_KEK_LABEL_PREFIX": f"{prefix}-kek",
           "KEYFRONT_BIND_KEY_LABEL_PREFIX": f"{prefix}-bind"}
    table = None
    if request.param == "sqlite":
        env["KEYFRONT_SQLITE_PATH"] = str(tmp_path / "roll.sqlite3")
    else:
        from chalicelib.store.dynamodb_store import create_table

        moto = request.getfixturevalue("moto_endpoint")
        table = f"kf-roll-{uuid.uuid4().hex[:8]}"
        create_table(table, region="us-east-1", endpoint_url=moto)
        env.update({"KEYFRONT_DYNAMODB_TABLE": table, "KEYFRONT_DYNAMODB_ENDPOINT": moto})
    yield request.param, env
    if table is not None:
        from chalicelib.store.dynamodb_store import make_client

        client = make_client("dynamodb", "us-east-1", env["KEYFRONT_DYNAMODB_ENDPOINT"])
        client.update_table(TableName=table, DeletionProtectionEnabled=False)
        client.delete_table(TableName=table)


def serve(backend: str, env: dict[str, str], tmp: Path) -> LiveServer:
    srv = LiveServer(backend, env, free_port(), tmp / f"server-{uuid.uuid4().hex[:6]}.log")
    ensure_keys(srv.settings)  # `keyfront hsm init` with the server's settings
    srv.start()
    return srv


def every_blob(store: Any) -> list[tuple[str, str, WrappedKey]]:
    out, cursor = [], None
    while True:
        page = store.scan_all(cursor, limit=100)
        out += [(i["pk"], i["sk"], WrappedKey.from_dict(b))
                for i in page.items for _, b in find_wrapped(i)]
        if page.cursor is None:
            return out
        cursor = page.cursor


class Data:
    """What a client of each dialect made under KEK 1, and how to check it still works."""

    def __init__(self, srv: LiveServer) -> None:
        # StoredSafe: a key with three versions, ciphertexts under each
        self.ss = SS(srv)
        assert_success(self.ss.create("k"), 201)
        self.cts: list[tuple[str, bytes]] = []
        for v in range(3):
            if v:
                assert_success(self.ss.rotate("k"), 201)
            for i in range(3):
                pt = f"v{v} message {i}".encode()
                self.cts.append((self.ss.ok_encrypt("k", pt), pt))
        # Auth0: a connection with a client secret and its keys; the tenant's signing keys
        self.tenant = f"t{uuid.uuid4().hex[:10]}"
        self.auth0_token = srv.mint(f"auth0:{self.tenant}:{AUTH0_SCOPES}")
        self.secret = f"s3cret-{uuid.uuid4().hex}"
        r = self.auth0(srv, "POST", "/api/v2/connections", {
            "name": f"c-{uuid.uuid4().hex[:8]}", "strategy": "oidc",
            "options": {"client_id": "abc", "client_secret": self.secret}})
        assert r.status == 201, r.text
        self.connection = r.json
        cid = self.connection["id"]
        r = self.auth0(srv, "POST", f"/api/v2/connections/{cid}/keys",
                       {"signing_alg": "ES256"})
        assert r.status == 201, r.text
        r = self.auth0(srv, "POST", "/api/v2/keys/signing/rotate")
        assert r.status == 201, r.text
        self.jwks = self.jwks_docs(srv)
        # MiaRec: an RSA key generated in the HSM
        self.mr_user = str(uuid.uuid4())
        self.mr_tenant = str(uuid.uuid4())
        self.mr_token = srv.mint(f"miarec:{self.mr_tenant}:read,manage,grant",
                                 principal=self.mr_user)
        r = self.miarec(srv, "POST", f"{MIAREC}.json", {"encrypt_key": {
            "name": "k", "add_type": "generate", "key_length": 2048, "is_active": True}})
        assert r.status == 201, r.text
        self.mr_key = r.json["encrypt_key"]
        # AI-VAULT: a master key and a PSK bound to it, handed out under a password
        self.av_domain = "41"
        self.av_token = srv.mint(f"aivault:{self.av_domain}:read,manage")
        r = self.aivault(srv, "POST", "/createMK", {"MKName": "mk-1", "MKUsage": "u",
                                                    "Password": PASSWORD})
        assert r.status == 200, r.text
        self.mk = unwrap_under_password(r.json["CipherMasterKey"], PASSWORD)
        r = self.aivault(srv, "POST", "/createPSK", {"PSKName": "psk-1", "MKName": "mk-1",
                                                     "Password": PASSWORD})
        assert r.status == 200 and r.json["status"] == "00000000", r.text
        self.psk = unwrap_under_password(r.json["data"]["PSK"], PASSWORD)
        # Apinizer: a key deployed to an environment, its material read there
        self.project = f"p-{uuid.uuid4().hex[:8]}"
        out = admin.handle({"action": "create-environment", "project": self.project,
                            "name": "production", "type": "PRODUCTION"}, srv.services)
        assert out["ok"], out
        self.apz_token = srv.mint(f"apinizer:{self.project}:read,manage,deploy")
        self.env_token = srv.mint(f"apinizer:{self.project}/production:consume")
        self.aes = uuid.uuid4().bytes + uuid.uuid4().bytes
        r = srv.client().request(
            "POST", f"/apiops/projects/{self.project}/keys/",
            headers={"Authorization": f"Bearer {self.apz_token}",
                     "Content-Type": "application/json"},
            raw=json.dumps({"name": "k", "keyType": "SECRET_KEY", "algorithm": "AES",
                            "cryptoKeyInfoEnvironmentList": [
                                {"environmentName": "production",
                                 "content": b64(self.aes)}]}).encode())
        assert r.status == 200, r.text
        assert self.apinizer_material(srv) == self.aes

    # ---- the dialects' calls ---------------------------------------------------------------

    def auth0(self, srv: LiveServer, method: str, path: str, body: Any = None) -> Any:
        if body is None and method != "GET":
            body = {}
        return srv.client().request(method, path, body,
                                    headers={"Authorization": f"Bearer {self.auth0_token}"})

    def jwks_docs(self, srv: LiveServer) -> tuple[Any, Any]:
        c = srv.client()
        cid = self.connection["id"]
        return (c.get(f"/tenants/{self.tenant}/.well-known/jwks.json").json,
                c.get(f"/tenants/{self.tenant}/connections/{cid}/.well-known/jwks.json").json)

    def miarec(self, srv: LiveServer, method: str, path: str, body: Any = None,
               client: Any = None) -> Any:
        basic = base64.b64encode(f"{self.mr_user}:{self.mr_token}".encode()).decode()
        return (client or srv.client()).request(
            method, path, headers={"Authorization": f"Basic {basic}",
                                   "Content-Type": "application/json"},
            raw=None if body is None else json.dumps(body).encode())

    def miarec_decrypts(self, srv: LiveServer, client: Any = None) -> None:
        public = serialization.load_pem_public_key(self.mr_key["public_key"].encode())
        session = uuid.uuid4().bytes * 2
        ct = public.encrypt(session, padding.OAEP(padding.MGF1(SHA1), SHA1, None))
        r = self.miarec(srv, "POST", f"{MIAREC}/{self.mr_key['id']}/decrypt.json",
                        {"ciphertext": b64(ct), "hash": "sha1"}, client)
        assert r.status == 200, r.text
        assert base64.b64decode(r.json["plaintext"]) == session

    def aivault(self, srv: LiveServer, method: str, path: str, body: Any = None) -> Any:
        return srv.client().request(
            method, "/AIVAULT/v1" + path,
            headers={"Authorization": f"Bearer {self.av_token}",
                     "DomainID": self.av_domain, "Content-Type": "application/json"},
            raw=None if body is None else json.dumps(body).encode())

    def apinizer_material(self, srv: LiveServer, client: Any = None) -> bytes:
        r = (client or srv.client()).request(
            "GET", f"/apiops/projects/{self.project}/environments/production/keys/k/material/",
            headers={"Authorization": f"Bearer {self.env_token}"})
        assert r.status == 200, r.text
        return base64.b64decode(
            r.json["resultList"][0]["cryptoKeyInfoEnvironmentList"][0]["content"])

    # ---- after the roll --------------------------------------------------------------------

    def check_everything(self, srv: LiveServer) -> None:
        """Every dialect's data still works, through the API (and the HSM layer where no
        API uses a key again)."""
        # StoredSafe: every ciphertext of every version decrypts; the key still rotates
        for ct, pt in self.cts:
            assert self.ss.ok_decrypt("k", ct) == pt
        assert_success(self.ss.rotate("k"), 201)
        ct = self.ss.ok_encrypt("k", b"after")
        assert self.ss.ok_decrypt("k", ct) == b"after"
        # Auth0: the connection's secret reads back, the published keys are unchanged and
        # tokens signed in the HSM with the tenant's and the connection's keys verify
        cid = self.connection["id"]
        r = self.auth0(srv, "GET", f"/api/v2/connections/{cid}")
        assert r.status == 200 and r.json["options"]["client_secret"] == self.secret
        assert self.jwks_docs(srv) == self.jwks
        dom = domain(srv.services)
        record = dom.connections.get(self.tenant, cid)
        for signer, doc in ((dom.signer(self.tenant), self.jwks[0]),
                            (dom.rings.signer(connection_ring(self.tenant, record)),
                             self.jwks[1])):
            header = {"alg": signer.algorithm, "kid": signer.kid, "typ": "JWT"}
            signing_input = ".".join(b64url(json.dumps(p).encode())
                                     for p in (header, {"sub": "after the roll"}))
            sig = srv.services.hsm.sign(signer.wrapped, signer.context,
                                        signing_input.encode(), signer.scheme)
            token = f"{signing_input}.{b64url(sig)}"
            claims = jwt.decode(token, KeySet.import_key_set(doc),
                                algorithms=[signer.algorithm]).claims
            assert claims["sub"] == "after the roll"
        assert self.auth0(srv, "POST", "/api/v2/keys/signing/rotate").status == 201
        # MiaRec: decryption in the HSM; the exported key is the same key
        self.miarec_decrypts(srv)
        r = self.miarec(srv, "POST", f"{MIAREC}/{self.mr_key['id']}/export.json",
                        {"password": "export pw 1234"})
        assert r.status == 200, r.text
        private = serialization.load_pem_private_key(r.json["private_key"].encode(),
                                                     b"export pw 1234")
        assert private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode().strip() == self.mr_key["public_key"].strip()
        # AI-VAULT: the stored master key and PSK are the keys handed out under the password
        hsm = srv.services.hsm
        stored = {b.context.split("/")[2]: b for pk, _, b in every_blob(srv.services.store)
                  if pk.startswith("aivault#")}
        assert hsm.export_secret(stored["keys"], stored["keys"].context) == self.mk
        assert hsm.export_secret(stored["secrets"], stored["secrets"].context) == self.psk
        r = self.aivault(srv, "GET", "/queryMK")
        assert r.status == 200 and r.json["data"][0]["MKName"] == "mk-1", r.text
        r = self.aivault(srv, "POST", "/createMK", {"MKName": "mk-2", "MKUsage": "u",
                                                    "Password": PASSWORD})
        assert r.status == 200, r.text
        # Apinizer: the environment reads the same material
        assert self.apinizer_material(srv) == self.aes


class Traffic:
    """Clients working over HTTP during the roll; every response must be a success."""

    def __init__(self, srv: LiveServer, data: Data) -> None:
        self.srv, self.data = srv, data
        self.made: list[tuple[str, bytes]] = []  # StoredSafe ciphertexts made meanwhile
        self.failures: list[str] = []
        self.done = threading.Event()
        self.ops = [0, 0, 0]
        self.cond = threading.Condition()
        self.names: list[str] = []
        self.ss = SS(srv, data.ss.vault, token=data.ss.token)
        self.mr_client, self.apz_client = srv.client(), srv.client()
        workers: list[Callable[[], None]] = [self.storedsafe, self.miarec, self.apinizer]
        self.threads = [threading.Thread(target=self.loop, args=(i, w))
                        for i, w in enumerate(workers)]

    def loop(self, i: int, work: Callable[[], None]) -> None:
        while not self.done.is_set():
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - every failure is collected and shown
                self.failures.append(f"{work.__name__}: {exc!r}")
                self.done.set()
            with self.cond:
                self.ops[i] += 1
                self.cond.notify_all()

    def storedsafe(self) -> None:
        ss = self.ss
        pt = uuid.uuid4().bytes
        ct = ss.ok_encrypt("k", pt)
        self.made.append((ct, pt))
        old_ct, old_pt = self.data.cts[len(self.made) % len(self.data.cts)]
        assert ss.ok_decrypt("k", old_ct) == old_pt
        assert ss.ok_decrypt("k", ct) == pt

    def miarec(self) -> None:
        # renames rewrite the very item the roll rewrites: its conflicts are redone
        client = self.mr_client
        name = f"renamed-{len(self.names)}"
        r = self.data.miarec(self.srv, "PUT", f"{MIAREC}/{self.data.mr_key['id']}.json",
                             {"encrypt_key": {"name": name}}, client)
        assert r.status == 200, r.text
        self.names.append(name)
        self.data.miarec_decrypts(self.srv, client)

    def apinizer(self) -> None:
        assert self.data.apinizer_material(self.srv, self.apz_client) == self.data.aes

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        self.step()
        return self

    def step(self) -> None:
        """Wait until every client finished one more operation (so the roll's batches and
        the clients' requests interleave, without timing)."""
        with self.cond:
            target = [n + 1 for n in self.ops]
            self.cond.wait_for(lambda: self.done.is_set()
                               or all(n >= t for n, t in zip(self.ops, target, strict=True)))

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self.threads:
            t.join()


def test_every_dialect_survives_a_kek_roll_under_live_traffic(server_env, tmp_path):
    backend, env = server_env
    srv = serve(backend, env, tmp_path)
    try:
        data = Data(srv)
    finally:
        srv.stop()
    blobs = every_blob(srv.services.store)
    assert {pk.split("#")[0] for pk, _, _ in blobs} == {"ss", "auth0", "miarec", "aivault",
                                                       "apz"}
    assert {b.kek_label for _, _, b in blobs} == {env["KEYFRONT_KEK_LABEL_PREFIX"] + "-v1"}
    assert {b.kind for _, _, b in blobs} == {"aes", "rsa", "ec"}

    # the operator: KEYFRONT_KEK_VERSION=2, `keyfront hsm init`, deploy (here: restart)
    srv = serve(backend, {**env, "KEYFRONT_KEK_VERSION": "2"}, tmp_path)
    svc = srv.services
    data.ss = SS(srv, data.ss.vault, token=data.ss.token)  # the same client, new server
    try:
        check = admin.handle({"action": "rewrap-check", "to_version": 2}, svc)
        assert check["ok"] and check["other_kek"] == len(blobs) and not check["done"]
        # the first destroy-kek retires KEK 1 (nothing is wrapped under it any more) ...
        retired = admin.handle({"action": "destroy-kek", "version": 1}, svc)
        assert retired["ok"] and retired["destroyed"] == [] and retired["retired"], retired
        assert svc.hsm.kek_retired(1) and svc.hsm.kek_exists(1)
        # ... and the destroy itself waits for a finished pass, and for no blob left
        early = admin.handle({"action": "destroy-kek", "version": 1}, svc)
        assert early["ok"] is False and "no finished pass" in early["message"]
        refused = admin.handle({"action": "destroy-kek", "version": 1, "force": True}, svc)
        assert refused["ok"] is False and refused["error"] == "invalid_state"
        assert f"{len(blobs)} stored key blobs" in refused["message"]

        with Traffic(srv, data) as traffic:
            runs = 0
            while True:  # the admin event, invoked until the pass is done
                out = admin.handle({"action": "rewrap", "to_version": 2, "max_items": 7}, svc)
                assert out["ok"], out
                runs += 1
                traffic.step()
                if out["done"]:
                    break
        assert traffic.failures == []
        assert runs > 3 and min(traffic.ops) >= runs
        counts = out["status"]["counts"]
        assert counts["rewrapped"] == len(blobs) and counts["failed"] == 0
        assert counts["rewritten"] <= len(blobs)

        after = every_blob(svc.store)
        assert {b.kek_label for _, _, b in after} == {env["KEYFRONT_KEK_LABEL_PREFIX"] + "-v2"}
        assert len(after) == len(blobs)
        check = admin.handle({"action": "rewrap-check", "to_version": 2}, svc)
        assert check["ok"] and check["done"] and check["other_kek"] == 0
        out = admin.handle({"action": "destroy-kek", "version": 1}, svc)
        assert out["ok"] and out["destroyed"] == [env["KEYFRONT_KEK_LABEL_PREFIX"] + "-v1",
                                                  env["KEYFRONT_BIND_KEY_LABEL_PREFIX"] + "-v1"]
        assert not svc.hsm.kek_exists(1)

        # nothing lost: every ciphertext made before and during the roll decrypts
        for ct, pt in data.cts + traffic.made:
            assert data.ss.ok_decrypt("k", ct) == pt
        r = data.miarec(srv, "GET", f"{MIAREC}/{data.mr_key['id']}.json")
        assert r.status == 200 and r.json["encrypt_key"]["name"] == traffic.names[-1]
        data.check_everything(srv)
        assert {b.kek_label for _, _, b in every_blob(svc.store)} == \
            {env["KEYFRONT_KEK_LABEL_PREFIX"] + "-v2"}
    finally:
        srv.stop()


def test_a_pre_roll_backup_restores_under_the_new_kek_and_a_stale_process_cannot_write(
        server_env, tmp_path):
    """A backup taken under KEK 1 and restored after the roll lands under KEK 2 (so the full
    check before the destroy cannot miss it); a process still configured for KEK 1 can
    wrap nothing once KEK 1 is retired; after the destroy, the old backup is the service
    unable to use it (StoredSafe's 503 envelope), not a 500."""
    from chalicelib.errors import Unavailable
    from chalicelib.hsm import Hsm

    backend, env = server_env
    srv = serve(backend, env, tmp_path)
    try:
        ss = SS(srv)
        assert_success(ss.create("k"), 201)
        ct = ss.ok_encrypt("k", b"before the roll")
        r = ss.backup("k")
        assert_success(r, 200)
        backup = r.json["KEYS"]["backup"]
        stale = Hsm(srv.settings)  # a process still configured for KEK 1
    finally:
        srv.stop()
    srv = serve(backend, {**env, "KEYFRONT_KEK_VERSION": "2"}, tmp_path)
    svc = srv.services
    ss = SS(srv, ss.vault, token=ss.token)
    v2 = env["KEYFRONT_KEK_LABEL_PREFIX"] + "-v2"
    try:
        out = admin.handle({"action": "destroy-kek", "version": 1}, svc)  # retire first
        assert out["ok"] and out["retired"] and out["destroyed"] == [], out
        with pytest.raises(Unavailable, match="retired"):
            stale.generate_aes(256, "storedsafe/x/k/1/1")
        while not admin.handle({"action": "rewrap", "to_version": 2}, svc)["done"]:
            pass
        # the pre-roll backup, restored after the pass: under KEK 2, and it works
        assert_success(ss.restore("restored", backup), 200)
        assert ss.ok_decrypt("restored", ct) == b"before the roll"
        assert {b.kek_label for _, _, b in every_blob(svc.store)} == {v2}
        out = admin.handle({"action": "destroy-kek", "version": 1}, svc)
        assert out["ok"] and len(out["destroyed"]) == 2, out
        assert ss.ok_decrypt("restored", ct) == b"before the roll"
        # the backup still names KEK 1, which is gone: the service cannot use it
        r = ss.restore("again", backup)
        assert r.status == 503, r.text
        assert r.json["CALLINFO"]["status"] == "FAIL" and "KEK version 1" in r.text
    finally:
        srv.stop()
