"""Shared helpers of the StoredSafe tests (no tests here): a vault-scoped caller over HTTP."""

from __future__ import annotations

import base64
import itertools
import os
from typing import Any

from tests.client import Resp

API = "/api/1.0/transparent"
# unique vault ids per test within a session (the servers are session-scoped)
_vaults = itertools.count(100_000 + os.getpid() % 1000 * 1000)


def new_vault() -> str:
    """A vault id no other test uses."""
    return str(next(_vaults))


def b64(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode()


class SS:
    """A StoredSafe client for one vault and token, on one keep-alive connection."""

    def __init__(self, server: Any, vault: str | None = None,
                 perms: str = "read,write,admin", token: str | None = None) -> None:
        self.server = server
        self.vault = vault or new_vault()
        self.token = token if token is not None else server.mint(
            f"storedsafe:{self.vault}:{perms}")
        self.c = server.client()

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
             legacy: bool = False, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> Resp:
        """One request; the token goes in X-Http-Token (or the body with legacy=True)."""
        tok = self.token if token is None else token
        h = dict(headers or {})
        if legacy:
            body = {**(body or {}), "token": tok}
        elif tok:
            h["X-Http-Token"] = tok
        if raw is not None:
            h.setdefault("Content-Type", "application/json")
            return self.c.request(method, API + path, headers=h, raw=raw)
        return self.c.request(method, API + path, body, headers=h)

    # the endpoints, by name
    def create(self, name: str, **body: Any) -> Resp:
        """POST /:vaultid/keys/:name."""
        return self.call("POST", f"/{self.vault}/keys/{name}", body)

    def read(self, name: str) -> Resp:
        """GET /:vaultid/keys/:name."""
        return self.call("GET", f"/{self.vault}/keys/{name}")

    def list(self) -> Resp:
        """GET /:vaultid/keys."""
        return self.call("GET", f"/{self.vault}/keys")

    def rotate(self, name: str) -> Resp:
        """POST /:vaultid/keys/:name/rotate."""
        return self.call("POST", f"/{self.vault}/keys/{name}/rotate")

    def config(self, name: str, **body: Any) -> Resp:
        """POST /:vaultid/keys/:name/config."""
        return self.call("POST", f"/{self.vault}/keys/{name}/config", body)

    def delete(self, name: str) -> Resp:
        """DELETE /:vaultid/keys/:name."""
        return self.call("DELETE", f"/{self.vault}/keys/{name}")

    def encrypt(self, name: str, plaintext: bytes | str, **body: Any) -> Resp:
        """POST /:vaultid/encrypt/:name (bytes are base64-encoded here)."""
        pt = b64(plaintext) if isinstance(plaintext, bytes) else plaintext
        return self.call("POST", f"/{self.vault}/encrypt/{name}", {"plaintext": pt, **body})

    def decrypt(self, name: str, ciphertext: str, **body: Any) -> Resp:
        """POST /:vaultid/decrypt/:name."""
        return self.call("POST", f"/{self.vault}/decrypt/{name}",
                         {"ciphertext": ciphertext, **body})

    def rewrap(self, name: str, ciphertext: str, **body: Any) -> Resp:
        """POST /rewrap/:vaultid/:name."""
        return self.call("POST", f"/rewrap/{self.vault}/{name}",
                         {"ciphertext": ciphertext, **body})

    def datakey(self, kind: str, name: str, **body: Any) -> Resp:
        """POST /:vaultid/datakey/:type/:name."""
        return self.call("POST", f"/{self.vault}/datakey/{kind}/{name}", body)

    def export(self, name: str, version: int | None = None) -> Resp:
        """GET /export/:vaultid/:name(/:key_version)."""
        suffix = "" if version is None else f"/{version}"
        return self.call("GET", f"/export/{self.vault}/{name}{suffix}")

    def backup(self, name: str) -> Resp:
        """GET /backup/:vaultid/:name."""
        return self.call("GET", f"/backup/{self.vault}/{name}")

    def restore(self, name: str, backup: str) -> Resp:
        """POST /restore/:vaultid/:name."""
        return self.call("POST", f"/restore/{self.vault}/{name}", {"backup": backup})

    # convenience
    def ok_encrypt(self, name: str, plaintext: bytes, **body: Any) -> str:
        """Encrypt and return the ciphertext (asserting success)."""
        r = self.encrypt(name, plaintext, **body)
        assert_success(r, 200)
        return r.json["CALLINFO"]["ciphertext"]

    def ok_decrypt(self, name: str, ciphertext: str) -> bytes:
        """Decrypt and return the plaintext bytes (asserting success)."""
        r = self.decrypt(name, ciphertext)
        assert_success(r, 200)
        return base64.b64decode(r.json["CALLINFO"]["plaintext"])

    def key(self, name: str) -> dict[str, Any]:
        """The key's KEYS entry (asserting it exists)."""
        r = self.read(name)
        assert_success(r, 200)
        return r.json["KEYS"][0]


ENVELOPE_KEYS = {"CALLINFO", "DATA", "HEADERS", "PARAMS"}


def assert_success(r: Resp, status: int) -> dict[str, Any]:
    """A SUCCESS envelope with `status`; returns CALLINFO."""
    body = r.json
    assert r.status == status, (r.status, r.text)
    assert body is not None and ENVELOPE_KEYS <= set(body), r.text
    assert "ERRORS" not in body and "ERRORCODES" not in body, r.text
    ci = body["CALLINFO"]
    assert ci["status"] == "SUCCESS" and ci["handler"] == "EncryptionHandler"
    assert ci["errors"] == 0 and ci["errorcodes"] == 0 and isinstance(ci["general"], list)
    assert body["PARAMS"] == []
    assert r.headers["content-type"].startswith("application/json")
    return ci


def assert_fail(r: Resp, status: int, token: str | None = None) -> dict[str, Any]:
    """A FAIL envelope with `status` (never a 500); returns the body."""
    body = r.json
    assert r.status == status, (r.status, r.text)
    assert body is not None and ENVELOPE_KEYS <= set(body), r.text
    ci = body["CALLINFO"]
    assert ci["status"] == "FAIL" and ci["handler"] == "EncryptionHandler"
    assert ci["errors"] == len(body["ERRORS"]) >= 1
    assert ci["errorcodes"] == len(body["ERRORCODES"]) >= 1
    assert all(isinstance(k, str) and k.isdigit() for k in body["ERRORCODES"])
    assert body["PARAMS"] == []
    if token is not None:
        assert ci["token"] == token
    return body
