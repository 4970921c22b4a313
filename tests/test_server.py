"""The spine over HTTP: /health on both stores, keep-alive, error guard, 503 when broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from chalice.app import Request

from chalicelib.dialects.http import guarded, json_response
from chalicelib.errors import KeyfrontError, NotFound
from tests.client import Client
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent


def test_health_ok_on_both_stores(live_server):
    c = live_server.client()
    r = c.get("/health")
    assert r.status == 200, live_server.log_tail()
    assert r.json == {"status": "ok", "checks": {"hsm": "ok", "store": "ok"}}
    assert r.headers["content-type"] == "application/json"


def test_keep_alive_connection_is_reused(sqlite_server):
    c = sqlite_server.client()
    for _ in range(20):
        assert c.get("/health").status == 200
    sock = c._conn.sock  # the same socket served every request
    assert sock is not None and c.get("/health").status == 200 and c._conn.sock is sock


def test_unknown_route_is_a_client_error(sqlite_server):
    r = sqlite_server.client().get("/no/such/route")
    assert 400 <= r.status < 500


def test_health_is_503_when_the_kek_is_missing(tmp_path):
    port = free_port()
    env = {**os.environ, "KEYFRONT_KEK_LABEL_PREFIX": "no-such-kek",
           "KEYFRONT_SQLITE_PATH": str(tmp_path / "s.db"), "KEYFRONT_ACCESS_LOG": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "chalicelib.cli", "serve", "--port",
                             str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        r = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = Client("127.0.0.1", port, timeout=2).get("/health")
                break
            except OSError:
                time.sleep(0.1)
        assert r is not None, proc.stdout.read().decode() if proc.stdout else ""
        assert r.status == 503
        body = r.json
        assert body["status"] == "unavailable" and body["checks"]["hsm"] != "ok"
        assert body["checks"]["store"] == "ok"
        assert "Traceback" not in r.text
    finally:
        proc.terminate()
        proc.wait(10)


class _FakeBp:
    """Just enough of a blueprint for the guard: a current_request."""

    def __init__(self) -> None:
        self.current_request = Request({
            "multiValueQueryStringParameters": None, "headers": {}, "pathParameters": {},
            "requestContext": {"httpMethod": "GET", "resourcePath": "/x", "path": "/x"},
            "body": None, "isBase64Encoded": False, "stageVariables": None})


def _render(exc: KeyfrontError, request: Request, rid: str):
    return json_response(exc.status, {"message": exc.message, "request_id": rid})


def test_guard_maps_expected_errors_and_hides_unexpected_ones(caplog):
    bp = _FakeBp()

    @guarded(bp, _render)
    def missing():
        raise NotFound("Key not found")

    @guarded(bp, _render)
    def broken():
        raise RuntimeError("secret-material-0xDEADBEEF")

    r = missing()
    assert r.status_code == 404 and json.loads(r.body)["message"] == "Key not found"
    with caplog.at_level("ERROR"):
        r = broken()
    body = json.loads(r.body)
    assert r.status_code == 500
    assert body["message"].startswith("internal error (request id ")
    assert "secret-material" not in r.body and "Traceback" not in r.body
    logged = json.loads(caplog.records[-1].getMessage())
    assert logged["error"] == "RuntimeError" and logged["request_id"] == body["request_id"]




def test_server_restart_keeps_tokens_and_data(tmp_path):
    """A second start on the same store reuses it: earlier tokens still work."""
    from tests.conftest import LiveServer

    env = {"KEYFRONT_STORE": "sqlite", "KEYFRONT_ACCESS_LOG": "0",
           "KEYFRONT_SQLITE_PATH": str(tmp_path / "persist.sqlite3")}
    first = LiveServer("sqlite", env, free_port(), tmp_path / "a.log")
    first.start()
    token = first.mint("storedsafe:1:read")
    first.stop()
    assert "First start: an admin token" in first.log_tail()
    second = LiveServer("sqlite", env, free_port(), tmp_path / "b.log")
    second.start()
    try:
        assert second.services.tokens.authenticate(token).name == "tester"
        assert second.client().get("/health").status == 200
        assert "First start" not in second.log_path.read_text()
        # the token printed on the first start works, was audited, and is the only one
        import re

        printed = re.search(r"^\s+(kf_\S+)$", first.log_tail(), re.M)
        assert printed is not None
        admin = second.services.tokens.authenticate(printed.group(1))
        assert admin.name == "local-admin" and admin.can("storedsafe", "any", "admin")
        admins = [t for t in second.services.tokens.list() if t["principal"] == "local-admin"]
        assert [t["token_id"] for t in admins] == [admin.token_id]
        assert second.services.audit.find(action="token.create",
                                          obj=f"token/{admin.token_id}")
    finally:
        second.stop()


def test_json_object_turns_every_parse_failure_into_invalid_input():
    import pytest

    from chalicelib.dialects.http import json_object
    from chalicelib.errors import InvalidInput

    class Req:
        def __init__(self, raw: bytes) -> None:
            self.raw_body = raw

    for raw in (b"[" * 100_000, b"{", b"\xff\xfe", b"[1]", b'"x"', b"x" * (1024 * 1024 + 1)):
        with pytest.raises(InvalidInput):
            json_object(Req(raw))
    assert json_object(Req(b"")) == {} and json_object(Req(b'{"a": 1}')) == {"a": 1}
