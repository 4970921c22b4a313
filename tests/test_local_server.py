"""chalicelib/local_server.py: the same route matches as Chalice's local gateway, with less
work per request."""

from __future__ import annotations

import random
from typing import Any

import pytest
from chalice.local import RouteMatcher

from chalicelib.local_server import (
    IndexedRouteMatcher,
)

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




# ---- path parameters, as API Gateway hands them over ------------------------------------------


def test_path_parameters_are_percent_decoded_like_api_gateways():
    from chalice.config import Config

    import app
    from chalicelib.local_server import KeyfrontLocalGateway

    gateway = KeyfrontLocalGateway(app.app, Config(chalice_stage="dev"))

    def params(path: str) -> dict[str, str]:
        return gateway._generate_lambda_event("GET", path, {}, None)["pathParameters"]

    assert params("/api/v2/connections/a%20b") == {"cid": "a b"}
    assert params("/api/v2/connections/a%2Fb") == {"cid": "a/b"}  # still one segment
    assert params("/api/v2/connections/%C3%A9%25") == {"cid": "\u00e9%"}
    assert params("/api/v2/connections/plain") == {"cid": "plain"}
    # escapes that are not UTF-8: handed over as sent, for the dialect to refuse
    assert params("/api/v2/connections/%FF") == {"cid": "%FF"}
    assert params("/api/v2/connections/%ED%A0%80") == {"cid": "%ED%A0%80"}
