"""MiaRec encrypt keys end to end over HTTP, through `keyfront serve`, on both stores."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.client import Resp
from tests.conftest import own_live_servers

if TYPE_CHECKING:
    pass

KEYS = "/api/v2/encrypt_keys"
ALL = "read,manage,grant"
SHA1 = hashes.SHA1()  # noqa: S303 - OAEP's hash (what SoftHSM and older recorders do)


# This module's own servers: its key generations, concurrent activations (cancelled
# transactions, which moto answers by restoring a copy of the whole table) and audit records
# would otherwise slow every later test on the shared session servers past the store
# client's read timeout.
_miarec_sqlite, _miarec_dynamodb, live_server = own_live_servers("miarec")


class Api:
    """A MiaRec user (a UUID) of one tenant, with a keyfront token, speaking HTTP Basic."""

    def __init__(self, server: Any, tenant: str, perms: str = ALL,
                 user: str | None = None) -> None:
        self.server, self.tenant = server, tenant
        self.user = user or str(uuid.uuid4())
        self.token = server.mint(f"miarec:{tenant}:{perms}", principal=self.user)
        self.client = server.client()

    def headers(self) -> dict[str, str]:
        basic = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
        return {"Authorization": f"Basic {basic}", "Accept": "application/json"}

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> Resp:
        h = {**self.headers(), **(headers or {})}
        if body is not None:
            raw = json.dumps(body).encode()
        if raw is not None:
            h.setdefault("Content-Type", "application/json")
        return self.client.request(method, path, headers=h, raw=raw)

    def create(self, status: int = 201, **fields: Any) -> Any:
        r = self.call("POST", f"{KEYS}.json", {"encrypt_key": {"name": "k", **fields}})
        assert r.status == status, r.text
        return r.json["encrypt_key"] if status == 201 else r.json


def _tenant() -> str:
    return str(uuid.uuid4())


def invalid(r: Resp, field: str) -> None:
    """A 400 InvalidRecord naming `field`."""
    assert r.status == 400, r.text
    body = r.json
    assert body["error"] == "InvalidRecord" and body["description"] == "Record Validation errors"
    assert field in body["details"], body


# ---- create, read, list ----------------------------------------------------------------------

def test_generate_read_list_update_delete(live_server):
    api = Api(live_server, _tenant())
    r = api.call("POST", f"{KEYS}.json",
                 {"encrypt_key": {"name": "first", "tenant_id": api.tenant, "add_type":
                                  "generate", "key_lenght": 1024, "is_active": True}})
    assert r.status == 201, r.text
    key = r.json["encrypt_key"]
    assert r.headers["location"] == f"{KEYS}/{key['id']}.json"
    assert uuid.UUID(key["id"]).version == 7
    assert key | {"public_key": None, "created_at": None, "updated_at": None, "id": None} == {
        "id": None, "name": "first", "tenant_id": api.tenant, "protection_mode": "user",
        "is_active": True, "key_length": 1024, "has_private_key": True, "public_key": None,
        "created_at": None, "updated_at": None}
    assert key["created_at"].endswith("+0000") and "T" in key["created_at"]
    public = serialization.load_pem_public_key(key["public_key"].encode())
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 1024
    assert "private" not in r.text.lower().replace("has_private_key", "")

    default = api.create()  # key_length defaults to 2048, inactive
    assert default["key_length"] == 2048 and default["is_active"] is False

    got = api.call("GET", f"{KEYS}/{key['id']}.json")
    assert got.status == 200 and got.json["encrypt_key"] == key
    assert api.call("GET", f"{KEYS}/{key['id']}").status == 404  # the suffix is required

    r = api.call("PUT", f"{KEYS}/{key['id']}.json", {"encrypt_key": {"name": "renamed"}})
    assert r.status == 200 and r.json["encrypt_key"]["name"] == "renamed"
    assert r.json["encrypt_key"]["is_active"] is True
    r = api.call("PUT", f"{KEYS}/{default['id']}.json", {"encrypt_key": {"is_active": True}})
    assert r.status == 200 and r.json["encrypt_key"]["is_active"] is True
    listed = api.call("GET", f"{KEYS}.json").json
    assert listed["total"] == 2 and listed["next_url"] is None
    assert [(k["id"], k["is_active"]) for k in listed["encrypt_keys"]] == [
        (key["id"], False), (default["id"], True)]  # creation order, one active

    assert api.call("DELETE", f"{KEYS}/{default['id']}.json").status == 200
    assert api.call("GET", f"{KEYS}/{default['id']}.json").status == 404
    assert api.call("DELETE", f"{KEYS}/{default['id']}.json").status == 404
    listed = api.call("GET", f"{KEYS}.json").json
    assert listed["total"] == 1 and not any(k["is_active"] for k in listed["encrypt_keys"])


def test_paging(live_server):
    api = Api(live_server, _tenant())
    pem = _public_pem(rsa.generate_private_key(65537, 1024))  # noqa: S505 - a test key
    made = [api.create(add_type="import", public_key=pem)["id"] for _ in range(5)]
    seen, url, pages = [], f"{KEYS}.json?limit=2", 0
    while url:
        r = api.call("GET", url)
        assert r.status == 200, r.text
        assert r.json["total"] == 5 and len(r.json["encrypt_keys"]) <= 2
        seen += [k["id"] for k in r.json["encrypt_keys"]]
        url, pages = r.json["next_url"], pages + 1
    assert seen == made and pages == 3
    assert len(api.call("GET", f"{KEYS}.json").json["encrypt_keys"]) == 5  # default 20
    for bad in ("0", "1001", "-1", "1e3", "x", ""):
        invalid(api.call("GET", f"{KEYS}.json?limit={bad}"), "limit")
    assert api.call("GET", f"{KEYS}.json?limit=1000").status == 200
    invalid(api.call("GET", f"{KEYS}.json?cursor=garbage"), "cursor")
    other = Api(live_server, _tenant())
    other.create(add_type="import", public_key=pem)
    other.create(add_type="import", public_key=pem)
    foreign = other.call("GET", f"{KEYS}.json?limit=1").json["next_url"]
    invalid(api.call("GET", foreign), "cursor")  # another tenant's cursor


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "field"), [
    ({"is_active": "yes"}, "is_active"),
    ({"is_active": 1}, "is_active"),
    ({"key_length": 3072}, "key_length"),
    ({"key_length": "2048"}, "key_length"),
    ({"key_length": 2048.0}, "key_length"),
    ({"key_lenght": True}, "key_lenght"),
    ({"protection_mode": "admin"}, "protection_mode"),
    ({"add_type": "steal"}, "add_type"),
    ({"name": "n" * 256}, "name"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"tenant_id": "not-a-uuid"}, "tenant_id"),
    ({"colour": "red"}, "colour"),
    ({"public_key": "x"}, "public_key"),  # only for import
    ({"add_type": "import"}, "public_key"),  # required for import
    ({"add_type": "import", "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n"
      "-----END PUBLIC KEY-----"}, "public_key"),
    ({"add_type": "import", "public_key": "not base64 at all!"}, "public_key"),
])
def test_bad_create_bodies_are_400_and_store_nothing(live_server, fields, field):
    api = Api(live_server, _tenant())
    body = {"name": "k", **fields}
    if "tenant_id" in fields:
        body["tenant_id"] = fields["tenant_id"]
    invalid(api.call("POST", f"{KEYS}.json", {"encrypt_key": body}), field)
    assert api.call("GET", f"{KEYS}.json").json["total"] == 0


def test_bad_bodies_of_every_route(live_server):
    api = Api(live_server, _tenant())
    kid = api.create(key_length=1024)["id"]
    invalid(api.call("POST", f"{KEYS}.json", {"key": {}}), "encrypt_key")
    invalid(api.call("POST", f"{KEYS}.json", raw=b"{"), "body")
    invalid(api.call("POST", f"{KEYS}.json", raw=b"[1]"), "body")
    for change, field in (({"key_length": 4096}, "key_length"), ({"is_active": "true"},
                          "is_active"), ({"tenant_id": api.tenant}, "tenant_id"),
                          ({"name": "x" * 1000}, "name")):
        invalid(api.call("PUT", f"{KEYS}/{kid}.json", {"encrypt_key": change}), field)
    invalid(api.call("POST", f"{KEYS}/{kid}/authorized_users.json",
                     {"user": {"user_id": "bob"}}), "user_id")
    invalid(api.call("POST", f"{KEYS}/{kid}/authorized_users.json",
                     {"user": {"user_id": str(uuid.uuid4()), "admin": True}}), "admin")
    invalid(api.call("POST", f"{KEYS}/{kid}/decrypt.json", {"ciphertext": "***"}),
            "ciphertext")
    invalid(api.call("POST", f"{KEYS}/{kid}/decrypt.json",
                     {"ciphertext": "AAAA", "hash": "md5"}), "hash")
    invalid(api.call("POST", f"{KEYS}/{kid}/export.json", {"password": ""}), "password")
    invalid(api.call("POST", f"{KEYS}/{kid}/export.json", {"password": 7}), "password")
    for path in (f"{KEYS}/not-a-uuid.json", f"{KEYS}/{'9' * 2000}.json",
                 f"{KEYS}/{uuid.uuid4()}.json"):
        r = api.call("GET", path)
        assert r.status == 404 and r.json == {"error": "NotFound",
                                              "description": "Record not found"}, r.text
    assert api.call("GET", f"{KEYS}/{'z' * 2000}/authorized_users.json").status == 404
    assert api.call("GET", f"{KEYS}.json?tenant_id=nope").status == 400


# ---- authentication and tenants ---------------------------------------------------------------

def test_basic_and_bearer_authentication(live_server):
    api = Api(live_server, _tenant())
    assert api.call("GET", f"{KEYS}.json").status == 200
    bearer = {"Authorization": f"Bearer {api.token}"}
    assert api.client.get(f"{KEYS}.json", headers=bearer).status == 200

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode())
                .decode()}
    for headers in ({}, basic(str(uuid.uuid4()), api.token), basic(api.user, "kf_nope"),
                    {"Authorization": "Basic !!!"}, {"Authorization": "Digest x"},
                    basic(api.user, "")):
        r = api.client.get(f"{KEYS}.json", headers=headers)
        assert r.status == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == 'Basic realm="keyfront"'
        assert r.json["error"] == "Unauthorized" and api.token not in r.text


def test_other_tenants_token_gets_one_answer(live_server):
    owner, stranger = Api(live_server, _tenant()), Api(live_server, _tenant())
    kid = owner.create(key_length=1024)["id"]
    missing = str(uuid.uuid4())
    for method, tail, body in (("GET", ".json", None), ("PUT", ".json",
                               {"encrypt_key": {"name": "x"}}), ("DELETE", ".json", None),
                               ("GET", "/authorized_users.json", None),
                               ("POST", "/authorized_users.json",
                                {"user": {"user_id": stranger.user}}),
                               ("POST", "/decrypt.json", {"ciphertext": "AAAA", "hash": "sha1"}),
                               ("POST", "/export.json",
                         {"password": "a long export pw"})):
        here = stranger.call(method, f"{KEYS}/{kid}{tail}", body)
        there = stranger.call(method, f"{KEYS}/{missing}{tail}", body)
        assert here.status == there.status == 404 and here.json == there.json, here.text
    # naming the owner's tenant: 403 without an existence oracle
    r = stranger.call("GET", f"{KEYS}/{kid}.json?tenant_id={owner.tenant}")
    assert r.status == 403 and r.json == {"error": "AccessDenied",
                                          "description": "Access is denied"}
    r = stranger.call("POST", f"{KEYS}.json",
                      {"encrypt_key": {"name": "x", "tenant_id": owner.tenant}})
    assert r.status == 403
    assert owner.call("GET", f"{KEYS}/{kid}.json").status == 200


def test_permissions(live_server):
    tenant = _tenant()
    owner = Api(live_server, tenant)
    kid = owner.create(key_length=1024)["id"]
    reader = Api(live_server, tenant, "read")
    assert reader.call("GET", f"{KEYS}/{kid}.json").status == 200
    for method, path, body in (("POST", f"{KEYS}.json", {"encrypt_key": {"name": "x"}}),
                               ("PUT", f"{KEYS}/{kid}.json", {"encrypt_key": {"name": "x"}}),
                               ("DELETE", f"{KEYS}/{kid}.json", None),
                               ("POST", f"{KEYS}/{kid}/authorized_users.json",
                                {"user": {"user_id": reader.user}})):
        r = reader.call(method, path, body)
        assert r.status == 403 and r.json["error"] == "AccessDenied", (path, r.text)
    records = [r for r in live_server.services.audit.find() if r["principal"] == reader.user]
    assert sum(r["outcome"] == "denied" for r in records) >= 4


# ---- grants ----------------------------------------------------------------------------------

def test_grants_follow_miarec(live_server):
    tenant = _tenant()
    creator = Api(live_server, tenant)
    admin = Api(live_server, tenant)  # every permission, but not granted the key
    kid = creator.create(key_length=1024)["id"]
    users = f"{KEYS}/{kid}/authorized_users"
    r = creator.call("GET", f"{users}.json")
    assert r.json == {"next_url": None, "total": 1, "users": [{"user_id": creator.user}]}

    r = admin.call("POST", f"{users}.json", {"user": {"user_id": admin.user}})
    assert r.status == 403 and r.json["error"] == "AccessDenied"  # even an administrator
    r = creator.call("POST", f"{users}.json", {"user": {"user_id": admin.user.upper()}})
    assert r.status == 201, r.text
    assert r.headers["location"] == f"{users}/{admin.user}.json"
    r = creator.call("POST", f"{users}.json", {"user": {"user_id": admin.user}})
    assert r.status == 409 and r.json == {"error": "InvalidState",
                                          "description": "Such user is authorized already"}
    # now granted, the administrator grants and revokes too
    third = str(uuid.uuid4())
    assert admin.call("POST", f"{users}.json", {"user": {"user_id": third}}).status == 201
    listed = creator.call("GET", f"{users}.json?limit=2").json
    assert listed["total"] == 3 and len(listed["users"]) == 2 and listed["next_url"]
    rest = creator.call("GET", listed["next_url"]).json
    assert {u["user_id"] for u in listed["users"] + rest["users"]} == {
        creator.user, admin.user, third}
    assert admin.call("DELETE", f"{users}/{third}.json").status == 200
    assert admin.call("DELETE", f"{users}/{third}.json").status == 404
    assert admin.call("DELETE", f"{users}/{third}").status == 404
    assert admin.call("DELETE", f"{users}/{admin.user}.json").status == 200
    r = admin.call("DELETE", f"{users}/{creator.user}.json")
    assert r.status == 403  # no longer granted: cannot revoke
    assert creator.call("GET", f"{users}.json").json["total"] == 1


# ---- one active key under concurrency ---------------------------------------------------------

def test_one_active_key_under_concurrent_requests(live_server):
    tenant = _tenant()
    pem = _public_pem(rsa.generate_private_key(65537, 1024))  # noqa: S505 - a test key
    apis = [Api(live_server, tenant) for _ in range(6)]
    created: list[str] = []
    statuses: list[int] = []

    def create(api: Api) -> None:
        r = api.call("POST", f"{KEYS}.json", {"encrypt_key": {
            "name": "racer", "add_type": "import", "public_key": pem, "is_active": True}})
        statuses.append(r.status)
        if r.status == 201:
            created.append(r.json["encrypt_key"]["id"])

    threads = [threading.Thread(target=create, args=(a,)) for a in apis]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 6
    keys = apis[0].call("GET", f"{KEYS}.json").json
    assert keys["total"] == 6
    assert sum(k["is_active"] for k in keys["encrypt_keys"]) == 1

    def activate(api: Api, kid: str) -> None:
        r = api.call("PUT", f"{KEYS}/{kid}.json", {"encrypt_key": {"is_active": True}})
        statuses.append(r.status)

    statuses.clear()
    threads = [threading.Thread(target=activate, args=(a, k)) for a, k in zip(apis, created,
                                                                               strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 6
    keys = apis[0].call("GET", f"{KEYS}.json").json["encrypt_keys"]
    assert sum(k["is_active"] for k in keys) == 1


# ---- import, decrypt, export -----------------------------------------------------------------

def _public_pem(private: rsa.RSAPrivateKey) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True,
                          check=True).stdout


def _openssl_keys(tmp: Path) -> dict[str, tuple[str, str | None, str]]:
    """`openssl genrsa` keys: label -> (private PEM, password, public PEM)."""
    plain = tmp / "plain.pem"
    _openssl("genrsa", "-out", str(plain), "2048")
    public = _openssl("rsa", "-in", str(plain), "-pubout").decode()
    pw = "pa:ss wörd"
    out = {
        "pkcs8 plain": (plain.read_text(), None, public),
        "pkcs1 plain": (_openssl("rsa", "-in", str(plain), "-traditional").decode(), None,
                        public),
        "pkcs1 encrypted": (_openssl("rsa", "-in", str(plain), "-traditional", "-aes256",
                                     "-passout", f"pass:{pw}").decode(), pw, public),
        "pkcs8 encrypted": (_openssl("pkcs8", "-topk8", "-in", str(plain), "-v2", "aes-256-cbc",
                                     "-passout", f"pass:{pw}").decode(), pw, public),
    }
    return out


def test_openssl_keys_import_decrypt_and_export(live_server, tmp_path):
    api = Api(live_server, _tenant())
    keys = _openssl_keys(tmp_path)
    assert "BEGIN RSA PRIVATE KEY" in keys["pkcs1 plain"][0]
    assert "Proc-Type: 4,ENCRYPTED" in keys["pkcs1 encrypted"][0]
    assert "BEGIN ENCRYPTED PRIVATE KEY" in keys["pkcs8 encrypted"][0]
    for label, (private, password, public) in keys.items():
        body = public.replace("-----BEGIN PUBLIC KEY-----", "").replace(
            "-----END PUBLIC KEY-----", "") if "pkcs1" in label else public  # armour optional
        fields: dict[str, Any] = {"add_type": "import", "public_key": body,
                                  "private_key": private}
        if password:
            fields["private_key_password"] = password
        key = api.create(**fields)
        assert key["has_private_key"] is True and key["key_length"] == 2048, label
        # a session key wrapped with the published public key decrypts in the service
        published = serialization.load_pem_public_key(key["public_key"].encode())
        session = b"0123456789abcdef0123456789abcdef"
        wrapped = published.encrypt(session, padding.OAEP(padding.MGF1(SHA1), SHA1, None))
        r = api.call("POST", f"{KEYS}/{key['id']}/decrypt.json",
                     {"ciphertext": base64.b64encode(wrapped).decode(), "hash": "sha1"})
        assert r.status == 200, (label, r.text)
        assert base64.b64decode(r.json["plaintext"]) == session

    # the exported PKCS#8 opens with openssl and the password, and is the same key
    r = api.call("POST", f"{KEYS}/{key['id']}/export.json", {"password": "export pw 1234"})
    assert r.status == 200, r.text
    exported = r.json["private_key"].encode()
    assert exported.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    pem_path = tmp_path / "exported.pem"
    pem_path.write_bytes(exported)
    opened = _openssl("pkey", "-in", str(pem_path), "-passin", "pass:export pw 1234", "-pubout")
    assert opened.decode().strip() == keys["pkcs8 encrypted"][2].strip()
    with pytest.raises(subprocess.CalledProcessError):
        _openssl("pkey", "-in", str(pem_path), "-passin", "pass:wrong", "-pubout")
    audited = [x for x in live_server.services.audit.find(action="miarec.key.export")
               if x["principal"] == api.user]
    assert [x["outcome"] for x in audited] == ["success"]


def test_sha256_oaep_is_a_clear_400_on_this_hsm(live_server):
    """SoftHSM 2.6.1 does RSA-OAEP with SHA-1 only; the private key is never used outside
    the HSM to make SHA-256 work, so the answer is a 400 naming the hash."""
    api = Api(live_server, _tenant())
    key = api.create(key_length=1024)
    public = serialization.load_pem_public_key(key["public_key"].encode())
    sha256 = hashes.SHA256()
    ct = public.encrypt(b"k" * 16, padding.OAEP(padding.MGF1(sha256), sha256, None))
    r = api.call("POST", f"{KEYS}/{key['id']}/decrypt.json",
                 {"ciphertext": base64.b64encode(ct).decode()})  # sha256 is the default
    invalid(r, "hash")
    assert "SHA256" in r.json["details"]["hash"]


def test_import_errors_name_the_field_and_store_nothing(live_server, tmp_path):
    api = Api(live_server, _tenant())
    keys = _openssl_keys(tmp_path)
    private, password, public = keys["pkcs8 encrypted"]
    other = rsa.generate_private_key(65537, 2048)
    small = _openssl("genrsa", "3072").decode()
    cases = [
        ({"public_key": _public_pem(other), "private_key": keys["pkcs8 plain"][0]},
         "private_key"),  # not a pair
        ({"public_key": public, "private_key": private, "private_key_password": "wrong"},
         "private_key_password"),
        ({"public_key": public, "private_key": private}, "private_key_password"),
        ({"public_key": public, "private_key": keys["pkcs8 plain"][0],
          "private_key_password": "x"}, "private_key_password"),
        ({"public_key": public, "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n"
          "-----END PRIVATE KEY-----\n"}, "private_key"),
        ({"public_key": _openssl("rsa", "-pubout", stdin=small.encode()).decode(),
          "private_key": small}, "public_key"),  # 3072 bits: not a MiaRec size
        ({"public_key": _openssl("pkey", "-pubout", stdin=_openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"))
            .decode()}, "public_key"),
        ({"public_key": public, "private_key_password": "x"}, "private_key_password"),
        ({"public_key": public, "key_length": 2048}, "key_length"),
    ]
    for fields, field in cases:
        r = api.call("POST", f"{KEYS}.json",
                     {"encrypt_key": {"name": "k", "add_type": "import", **fields}})
        invalid(r, field)
        assert password not in r.text
    assert api.call("GET", f"{KEYS}.json").json["total"] == 0


def test_encrypt_only_keys_and_protection_modes(live_server):
    tenant = _tenant()
    creator, reader = Api(live_server, tenant), Api(live_server, tenant, "read")
    private = rsa.generate_private_key(65537, 2048)
    only_public = creator.create(add_type="import", public_key=_public_pem(private),
                                 is_active=True)
    assert only_public["has_private_key"] is False and only_public["is_active"] is True
    ct = private.public_key().encrypt(b"s" * 16, padding.OAEP(padding.MGF1(SHA1), SHA1, None))
    body = {"ciphertext": base64.b64encode(ct).decode(), "hash": "sha1"}
    r = creator.call("POST", f"{KEYS}/{only_public['id']}/decrypt.json", body)
    assert r.status == 400 and r.json["error"] == "InvalidState", r.text
    r = creator.call("POST", f"{KEYS}/{only_public['id']}/export.json",
                         {"password": "a long export pw"})
    assert r.status == 400 and r.json["error"] == "InvalidState"

    # a user-protected key: only granted users decrypt; an app-protected one: any reader
    user_key = creator.create(key_length=1024)
    app_key = creator.create(key_length=1024, protection_mode="app")
    assert app_key["protection_mode"] == "app"
    for key, status in ((user_key, 403), (app_key, 200)):
        public = serialization.load_pem_public_key(key["public_key"].encode())
        ct = public.encrypt(b"s" * 16, padding.OAEP(padding.MGF1(SHA1), SHA1, None))
        r = reader.call("POST", f"{KEYS}/{key['id']}/decrypt.json",
                        {"ciphertext": base64.b64encode(ct).decode(), "hash": "sha1"})
        assert r.status == status, r.text
        # a damaged ciphertext is the caller's problem: 400 naming it
        r = creator.call("POST", f"{KEYS}/{key['id']}/decrypt.json",
                         {"ciphertext": base64.b64encode(bytes(128)).decode(), "hash": "sha1"})
        invalid(r, "ciphertext")
    # export needs manage and a grant, whatever the protection
    manager = Api(live_server, tenant)
    r = manager.call("POST", f"{KEYS}/{app_key['id']}/export.json",
                         {"password": "a long export pw"})
    assert r.status == 403
    r = reader.call("POST", f"{KEYS}/{app_key['id']}/export.json",
                         {"password": "a long export pw"})
    assert r.status == 403
    outcomes = {(x["action"], x["outcome"]) for x in live_server.services.audit.find()
                if x["principal"] in (reader.user, manager.user)}
    assert ("miarec.key.decrypt", "success") in outcomes
    assert ("miarec.key.decrypt", "denied") in outcomes
    assert ("miarec.key.export", "denied") in outcomes


def test_export_passwords_users_and_tenants_must_be_what_grants_can_name(live_server):
    """An exported key's strength is its password's; grants name canonical user ids; the
    tenant comes from the request or the token, and is a tenant id."""
    tenant = _tenant()
    api = Api(live_server, tenant)
    key = api.create(key_length=1024)
    invalid(api.call("POST", f"{KEYS}/{key['id']}/export.json", {"password": "short pw"}),
            "password")
    # a token whose principal is not a canonical user id is refused (its grants could never
    # be revoked by URL)
    for principal in (str(uuid.uuid4()).upper(), "svc-backup"):
        other = Api(live_server, tenant, user=principal)
        r = other.call("GET", f"{KEYS}.json")
        assert r.status == 403 and r.json["error"] == "AccessDenied", r.text
    # an all-rings token names its tenant in the request; an odd tenant scope is refused
    star = Api(live_server, "*")
    r = star.call("POST", f"{KEYS}.json", {"encrypt_key": {"name": "k"}})
    invalid(r, "tenant_id")
    upper = Api(live_server, tenant.upper())
    r = upper.call("GET", f"{KEYS}.json")
    assert r.status == 403 and r.json["error"] == "AccessDenied", r.text


def test_a_key_that_asks_too_costly_a_derivation_is_refused_before_it_is_opened(live_server):
    """An encrypted PKCS#8 key names its own PBKDF2 rounds: a client must not make the
    service spend minutes of CPU (with the interpreter lock held) opening it."""
    import time

    api = Api(live_server, _tenant())
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _encrypted_pkcs8(private, b"pw", iterations=3_000_000)
    started = time.monotonic()
    r = api.call("POST", f"{KEYS}.json", {"encrypt_key": {
        "name": "costly", "add_type": "import", "tenant_id": api.tenant,
        "public_key": _public_pem(private), "private_key": pem.decode(),
        "private_key_password": "pw"}})
    invalid(r, "private_key")
    assert "too costly" in json.dumps(r.json) and time.monotonic() - started < 0.5


def _encrypted_pkcs8(private: Any, password: bytes, iterations: int) -> bytes:
    """PKCS#8 PEM under PBES2/PBKDF2 with `iterations` (openssl writes it; it takes a while)."""
    import tempfile

    clear = private.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    with tempfile.NamedTemporaryFile() as f:
        f.write(clear)
        f.flush()
        return subprocess.run(
            ["openssl", "pkcs8", "-topk8", "-in", f.name, "-v2", "aes-256-cbc", "-iter",
             str(iterations), "-passout", "pass:" + password.decode()],
            check=True, capture_output=True).stdout


def _public_pem(private: Any) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
