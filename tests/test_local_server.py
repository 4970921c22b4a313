"""chalicelib/local_server.py: the same answers as Chalice's local gateway and http.server,
with less work per request."""

from __future__ import annotations

import http.client
import io
import json
import random
import socketserver
import threading
from typing import Any

import pytest
from chalice import Chalice
from chalice.config import Config
from chalice.local import ChaliceRequestHandler, LocalGateway, RouteMatcher

from chalicelib.local_server import (
    IndexedRouteMatcher,
    NoDelayHandler,
    header_dict,
    make_server,
)
from tests.client import Client

# ---- route matching --------------------------------------------------------------------------


def _match(matcher: RouteMatcher, url: str) -> Any:
    try:
        return matcher.match_route(url)
    except ValueError as exc:
        return ("ValueError", str(exc))


def _app_routes() -> list[str]:
    import app

    return list(app.app.routes)


def test_indexed_matcher_gives_chalices_match_for_the_apps_routes():
    routes = _app_routes()
    ours, chalice = IndexedRouteMatcher(routes), RouteMatcher(routes)
    rnd = random.Random(0)
    values = ["v2", "1.0", "connections", "keys", "signing", "rotate", "transparent", "x", "",
              "~z", "{y}", "1", "encrypt", "a b", "%2F", "é"]
    matched = 0
    for _ in range(4000):
        route = rnd.choice(routes)
        url = "/".join(rnd.choice(values) if p.startswith("{") else p
                       for p in route.split("/"))
        url += rnd.choice(["", "", "", "/", "?a=1&a=2&b=", "#f", ";p", "?"])
        if rnd.random() < 0.05:
            url = rnd.choice(["/", "//", "http://h"]) + url
        expected = _match(chalice, url)
        assert _match(ours, url) == expected, url
        matched += not isinstance(expected, tuple) or expected[0] != "ValueError"
    assert matched > 3000  # most generated URLs name a route


def test_static_segments_win_over_parameters_as_in_chalice():
    routes = _app_routes()
    m = IndexedRouteMatcher(routes)
    r = m.match_route("/api/v2/connections/abc")
    assert (r.route, r.captured) == ("/api/v2/connections/{cid}", {"cid": "abc"})
    r = m.match_route("/api/1.0/transparent/1/keys/k/")
    assert r.route == "/api/{version}/transparent/{vaultid}/keys/{name}"
    assert r.captured == {"version": "1.0", "vaultid": "1", "name": "k"}
    r = m.match_route("/api/1.0/transparent/1/keys?x=1&x=2&y=")
    assert r.query_params == {"x": ["1", "2"], "y": [""]}
    assert r == RouteMatcher(routes).match_route("/api/1.0/transparent/1/keys?x=1&x=2&y=")
    with pytest.raises(ValueError):
        m.match_route("/api/1.0/no/such/route")


def test_indexed_matcher_keeps_chalices_order_and_leftover_captures():
    # Chalice walks the sorted routes with one `captured` dict: a candidate that fails after
    # capturing leaves its parameters behind. The indexed matcher keeps even that.
    routes = ["/a/{x}/c", "/a/{y}/d", "/a/b/{z}", "/a/b/c", "/{p}", "/q"]
    ours, chalice = IndexedRouteMatcher(routes), RouteMatcher(routes)
    assert ours.match_route("/a/1/d").captured == {"x": "1", "y": "1"}
    rnd = random.Random(1)
    literals = ["a", "b", "c", "d", "q", "~", "A", "0", ""]
    for _ in range(300):
        rs = list({"/" + "/".join(rnd.choice([*literals, f"{{p{rnd.randint(0, 2)}}}"])
                                  for _ in range(rnd.randint(0, 4)))
                   for _ in range(rnd.randint(1, 8))})
        ours, chalice = IndexedRouteMatcher(rs), RouteMatcher(rs)
        for _ in range(20):
            url = "/" + "/".join(rnd.choice([*literals, "zz"]) for _ in range(rnd.randint(0, 4)))
            url += rnd.choice(["", "", "/", "?k=v"])
            assert _match(ours, url) == _match(chalice, url), (rs, url)


# ---- request headers -------------------------------------------------------------------------


HEADER_BLOCK = (b"Host: 127.0.0.1:8000\r\nAccept-Encoding: identity\r\nContent-Length: 2\r\n"
                b"X-Http-Token: kf_x\r\nContent-Type: application/json\r\n\r\n{}")


def test_header_dict_is_dict_of_the_message():
    for raw in (b"A: 1\r\na: 2\r\nB: 3\r\nA: 4\r\n\r\n", b"\r\n", HEADER_BLOCK):
        msg = http.client.parse_headers(io.BytesIO(raw))
        assert header_dict(msg) == dict(msg)
        assert list(header_dict(msg)) == list(dict(msg))
    assert header_dict(http.client.parse_headers(io.BytesIO(b"A: 1\r\na: 2\r\n\r\n"))) == \
        {"A": "1", "a": "1"}


# ---- responses: the same bytes, in one write -------------------------------------------------


class _Recorder:
    """A wfile that remembers each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def _handler(raw_requestline: bytes, rest: bytes) -> NoDelayHandler:
    """A NoDelayHandler with no socket: request line given, the rest in rfile."""
    h = NoDelayHandler.__new__(NoDelayHandler)
    h.raw_requestline = raw_requestline
    h.rfile = io.BytesIO(rest)
    h.wfile = _Recorder()
    h.client_address = ("127.0.0.1", 1)
    h.date_time_string = lambda timestamp=None: "Thu, 01 Jan 2026 00:00:00 GMT"  # type: ignore
    return h




@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0", "HTTP/0.9"])
def test_response_bytes_are_chalices_in_one_write(version, monkeypatch):
    monkeypatch.setenv("KEYFRONT_ACCESS_LOG", "0")
    cases: list[tuple[int, dict[str, Any], str | bytes]] = [
        (200, {"Content-Type": "application/json; charset=UTF-8", "Cache-Control": "no-store"},
         json.dumps({"a": "é"})),
        (201, {"Set-Cookie": ["a=1", "b=2"], "Connection": "keep-alive"}, b"\x00\xff"),
        (404, {}, ""),
    ]
    for code, headers, body in cases:
        ours, chalice = _handler(b"", b""), _handler(b"", b"")
        for h in (ours, chalice):
            h.request_version, h.requestline, h.command = version, "GET / " + version, "GET"
        ours._send_http_response_with_body(code, dict(headers), body)
        ChaliceRequestHandler._send_http_response_with_body(chalice, code, dict(headers), body)
        assert b"".join(ours.wfile.writes) == b"".join(chalice.wfile.writes)
        assert len(ours.wfile.writes) == 1
        assert getattr(ours, "close_connection", None) == \
            getattr(chalice, "close_connection", None)


# ---- a live server: Chalice's gateway, shared, one send per response --------------------------


@pytest.fixture
def tiny_server():
    app = Chalice(app_name="tiny")

    @app.route("/api/v2/connections/{cid}")
    def connection(cid):
        return {"route": "static", "cid": cid}

    @app.route("/api/{version}/connections/{cid}", methods=["GET", "POST"])
    def versioned(version, cid):
        r = app.current_request
        return {"route": "param", "version": version, "cid": cid,
                "query": dict(r.query_params or {}), "token": r.headers.get("x-http-token"),
                "body": r.json_body}

    config = Config.create(chalice_stage="dev", app_name="tiny", chalice_app=app)
    server = make_server(app, config, "127.0.0.1", 0)
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server.server.server_address[1]
    server.server.shutdown()
    server.server.server_close()
    thread.join(10)


def test_served_through_one_shared_gateway_with_one_send_per_response(tiny_server,
                                                                     monkeypatch):
    monkeypatch.setenv("KEYFRONT_ACCESS_LOG", "0")
    built: list[object] = []
    init = LocalGateway.__init__
    monkeypatch.setattr(LocalGateway, "__init__",
                        lambda self, *a, **k: (built.append(self), init(self, *a, **k))[1])
    writes: list[int] = []
    write = socketserver._SocketWriter.write
    monkeypatch.setattr(socketserver._SocketWriter, "write",
                        lambda self, b: (writes.append(len(b)), write(self, b))[1])
    for _ in range(2):  # two connections, several requests each
        c = Client("127.0.0.1", tiny_server, timeout=10)
        r = c.get("/api/v2/connections/abc")
        assert (r.status, r.json) == (200, {"route": "static", "cid": "abc"})
        r = c.post("/api/1.0/connections/abc/?x=1&x=2", {"k": "é"},
                   headers={"X-Http-Token": "t"})
        assert r.status == 200 and r.json == {"route": "param", "version": "1.0", "cid": "abc",
                                              "query": {"x": "2"}, "token": "t",
                                              "body": {"k": "é"}}
        r = c.get("/no/such/route")
        assert r.status == 403 and r.json == {"message": "Missing Authentication Token"}
        sock = c._conn.sock
        assert c.get("/api/v2/connections/z").status == 200 and c._conn.sock is sock
        c.close()
    assert built == []  # no gateway per connection
    assert len(writes) == 8  # one write per response
