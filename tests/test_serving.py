"""`keyfront serve` (chalicelib/serving.py): gunicorn in front of Chalice's local gateway.

The WSGI adapter is checked against a small app called directly, and the HTTP behaviour a
tester found missing in the former http.server runner against the live server: idle
connections are closed, an invalid Content-Length is a 400, a chunked body is read, an
oversized body is refused before it is read.
"""

from __future__ import annotations

import io
import json
import socket
import time
from typing import Any

import pytest
from chalice import Chalice
from chalice.config import Config

from chalicelib.serving import MAX_REQUEST_BYTES, GatewayApp


@pytest.fixture(scope="module")
def tiny() -> GatewayApp:
    app = Chalice(app_name="tiny")

    @app.route("/api/v2/connections/{cid}")
    def connection(cid):
        return {"route": "static", "cid": cid}

    @app.route("/api/{version}/connections/{cid}", methods=["GET", "POST"],
               content_types=["*/*"])
    def versioned(version, cid):
        r = app.current_request
        return {"route": "param", "version": version, "cid": cid,
                "query": dict(r.query_params or {}), "token": r.headers.get("x-http-token"),
                "body": r.raw_body.decode()}

    config = Config.create(chalice_stage="dev", app_name="tiny", chalice_app=app)
    return GatewayApp(app, config, max_body=64)


class _Chunked(io.BytesIO):
    """A wsgi.input of unknown length that hands out at most 5 bytes per read."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(5 if size is None or size < 0 else min(size, 5))


def _call(app: GatewayApp, method: str, target: str, body: bytes = b"", *,
          headers: dict[str, str] | None = None, chunked: bool = False) \
        -> tuple[int, dict[str, str], Any]:
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
        "RAW_URI": target, "wsgi.input": _Chunked(body) if chunked else io.BytesIO(body),
    }
    if not chunked:
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    seen: list[Any] = []
    out = b"".join(app(environ, lambda status, hdrs: seen.extend((status, hdrs))))
    status, hdrs = seen
    parsed = dict(hdrs)
    assert int(parsed["Content-Length"]) == len(out)
    return int(status.split()[0]), parsed, json.loads(out)


def test_requests_reach_the_route_as_under_chalice_local(tiny):
    assert _call(tiny, "GET", "/api/v2/connections/abc")[::2] == \
        (200, {"route": "static", "cid": "abc"})
    status, _, body = _call(tiny, "POST", "/api/1.0/connections/abc/?x=1&x=2", b'{"k": 1}',
                            headers={"X-Http-Token": "t"})
    assert status == 200 and body == {"route": "param", "version": "1.0", "cid": "abc",
                                      "query": {"x": "2"}, "token": "t", "body": '{"k": 1}'}
    status, headers, body = _call(tiny, "GET", "/no/such/route",
                                  headers={"Authorization": "Bearer secret"})
    assert (status, body) == (403, {"message": "Missing Authentication Token"})
    assert "secret" not in json.dumps(headers)


def test_chunked_bodies_are_read_and_bounded(tiny):
    assert _call(tiny, "POST", "/api/1.0/connections/c", b"x" * 64, chunked=True)[2]["body"] \
        == "x" * 64
    status, headers, body = _call(tiny, "POST", "/api/1.0/connections/c", b"x" * 65,
                                  chunked=True)
    assert (status, body) == (413, {"message": "Request Entity Too Large"})


def test_an_oversized_declared_body_is_refused_without_reading_it(tiny):
    class Unread(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise AssertionError("the body was read")

    seen: list[Any] = []
    out = tiny({"REQUEST_METHOD": "POST", "PATH_INFO": "/api/1.0/connections/c",
                "RAW_URI": "/api/1.0/connections/c", "CONTENT_LENGTH": "65",
                "wsgi.input": Unread()}, lambda s, h: seen.extend((s, h)))
    assert seen[0].startswith("413") and json.loads(b"".join(out))["message"]


# ---- the live server ---------------------------------------------------------------------------


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read the answer until the server closes or a response is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk
            head, sep, rest = got.partition(b"\r\n\r\n")
            if sep:
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    return got


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    from tests.conftest import _start_server

    srv = _start_server("sqlite", tmp_path_factory.mktemp("two-workers"), None, workers=2)
    yield srv
    srv.stop()


def test_workers_share_the_store_and_the_hsm_and_the_first_start_token_is_printed_once(
        two_workers):
    token = two_workers.mint("storedsafe:5:read,write")
    clients = [two_workers.client() for _ in range(12)]  # spread over both workers
    first = clients[0].post("/api/1.0/transparent/5/keys/shared", {"type": "aes256-gcm96"},
                            headers={"X-Http-Token": token})
    assert first.status == 201
    for c in clients:
        r = c.post("/api/1.0/transparent/5/encrypt/shared", {"plaintext": "aGk="},
                   headers={"X-Http-Token": token})
        assert r.status == 200, r.text
        ct = r.json["CALLINFO"]["ciphertext"]
        for d in clients[:3]:
            r = d.post("/api/1.0/transparent/5/decrypt/shared", {"ciphertext": ct},
                       headers={"X-Http-Token": token})
            assert r.status == 200 and r.json["CALLINFO"]["plaintext"] == "aGk="
        c.close()
    assert two_workers.log_tail(100_000).count("First start: an admin token") == 1


def test_idle_connections_are_closed(sqlite_server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", sqlite_server.port), timeout=60) as s:
        assert s.recv(1) == b""  # closed by the server, nothing sent
    assert time.monotonic() - started < 30
    # A client that sends half a request line and stops is dropped too.
    with socket.create_connection(("127.0.0.1", sqlite_server.port), timeout=60) as s:
        s.sendall(b"GET /hea")
        data = s.recv(4096)
        assert data == b"" or data.startswith(b"HTTP/1.1 4")


def _json_body(answer: bytes) -> Any:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    return json.loads(body)


def test_an_invalid_content_length_is_a_400_in_json(sqlite_server):
    for value in (b"abc", b"-1", b"1, 2"):
        answer = _raw(sqlite_server.port, b"POST /api/1.0/transparent/1/keys HTTP/1.1\r\n"
                      b"Host: x\r\nContent-Length: " + value + b"\r\n\r\n{}")
        assert answer.startswith(b"HTTP/1.1 400"), (value, answer[:80])
        assert _json_body(answer) == {"message": "Bad Request"}


def test_an_over_long_request_line_is_a_414_in_json(sqlite_server):
    answer = _raw(sqlite_server.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414")
    assert _json_body(answer) == {"message": "URI Too Long"}


def test_a_chunked_body_is_read(sqlite_server):
    token = sqlite_server.mint("storedsafe:9:read,write,admin")
    body = json.dumps({"type": "aes256-gcm96"}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                      for i in range(0, len(body), 7)) + b"0\r\n\r\n"
    answer = _raw(sqlite_server.port,
                  b"POST /api/1.0/transparent/9/keys/chunked-%d HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nX-Http-Token: %s\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n%s"
                  % (time.time_ns(), token.encode(), chunks))
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    assert b"chunked-" in answer


def test_an_oversized_body_is_refused_before_it_is_read(sqlite_server):
    # Only the headers and a few bytes are sent: the answer comes without the rest.
    answer = _raw(sqlite_server.port,
                  b"POST /api/1.0/transparent/1/keys HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n{" % (MAX_REQUEST_BYTES + 1))
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"Request Entity Too Large" in answer


def test_chalice_local_still_serves_the_app(tmp_path):
    import os
    import subprocess

    from tests.client import Client
    from tests.conftest import REPO, free_port

    port = free_port()
    env = {**os.environ, "KEYFRONT_STORE": "sqlite",
           "KEYFRONT_SQLITE_PATH": str(tmp_path / "local.sqlite3")}
    log = open(tmp_path / "chalice-local.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "chalice"), "local", "--port",
                             str(port)], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                c = Client("127.0.0.1", port, timeout=5)
                status = c.get("/health").status
                c.close()
                break
            except OSError:
                time.sleep(0.2)  # polling a starting server
        assert status == 200, (tmp_path / "chalice-local.log").read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
