"""Chalice's local gateway, built once per process, and the stage's environment.

`keyfront serve` (chalicelib/serving.py) hands every request to `KeyfrontLocalGateway`:
Chalice's `LocalGateway`, which turns it into the API Gateway event `chalice local` builds, runs
the route's authorizer, if any, and calls the app. Only avoidable per-request costs are
removed, the results are unchanged:

- One gateway per process instead of one per connection, and its route matcher pre-indexed by
  segment count (`IndexedRouteMatcher`: the same MatchResult as Chalice's `RouteMatcher`,
  found among fewer candidates).
- The Lambda context's configuration (function name, memory, timeout) is read once, not three
  chained config lookups per request; each request still gets its own `LambdaContext`.
- A path no route matches gets API Gateway's 403 without Chalice's echo of the
  Authorization header.

One result differs from Chalice's, towards API Gateway's: path parameters are handed to the
app percent-decoded (`/keys/a%20b` gives `a b`), as API Gateway does; `chalice local` hands
them over as sent. A segment whose escapes are not UTF-8 is handed over as sent.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any
from urllib.parse import unquote

from chalice.app import Chalice
from chalice.compat import parse_qs, urlparse
from chalice.config import Config
from chalice.local import (
    ForbiddenError,
    HeaderType,
    LambdaContext,
    LambdaEventConverter,
    LocalGateway,
    MatchResult,
    RouteMatcher,
)

from chalicelib.config import REPO_ROOT

# A route's segments: (parameter name, None) for "{name}", (None, literal) otherwise.
_Segment = tuple[str | None, str | None]


class IndexedRouteMatcher(RouteMatcher):
    """Chalice's RouteMatcher with the routes split once and grouped by segment count.

    `RouteMatcher.match_route` walks every route in sorted order, splitting each one, and
    returns the first whose segment count is the URL's and whose literal segments are equal
    (so '/api/v2/x' wins over '/api/{version}/x': '{' sorts after the other characters).
    Routes of another length are skipped there without touching anything, so walking only
    the routes of the URL's length, in the same sorted order and with the same shared
    `captured` dict, gives the same MatchResult, including the parameters a failed candidate
    of the same length leaves in `captured`. URLs with a query, a fragment, ';', a tab, CR or
    LF, or not starting with exactly one '/', go through urlparse/parse_qs as in Chalice;
    plain paths skip both (urlparse would return them unchanged as the path, no query).
    """

    def __init__(self, route_urls: list[str]) -> None:
        super().__init__(route_urls)  # self.route_urls, sorted
        by_len: dict[int, list[tuple[str, tuple[_Segment, ...]]]] = {}
        for route_url in self.route_urls:
            parts = route_url.split("/")
            segments = tuple((p[1:-1], None) if p.startswith("{") and p.endswith("}")
                             else (None, p) for p in parts)
            by_len.setdefault(len(parts), []).append((route_url, segments))
        self._by_len = by_len

    def match_route(self, url: str) -> MatchResult:
        """The route matching url, as RouteMatcher.match_route; ValueError if none does."""
        if (url[:1] == "/" and url[1:2] != "/" and "?" not in url and "#" not in url
                and ";" not in url and "\t" not in url and "\r" not in url
                and "\n" not in url):
            path = url
            query_params: dict[str, list[str]] = {}
        else:
            parsed_url = urlparse(url)
            query_params = parse_qs(parsed_url.query, keep_blank_values=True)
            path = parsed_url.path
        if path != "/" and path.endswith("/"):
            path = path[:-1]
        parts = path.split("/")
        captured: dict[str, str] = {}
        for route_url, segments in self._by_len.get(len(parts), ()):
            for part, (param, literal) in zip(parts, segments, strict=True):
                if param is not None:
                    captured[param] = part
                elif part != literal:
                    break
            else:
                return MatchResult(route_url, captured, query_params)
        raise ValueError(f"No matching route found for: {url}")


class KeyfrontLocalGateway(LocalGateway):
    """Chalice's LocalGateway, built once per server, with an indexed route matcher and the
    Lambda context's configuration looked up once."""

    def __init__(self, app_object: Chalice, config: Config) -> None:
        super().__init__(app_object, config)
        self.event_converter = LambdaEventConverter(
            IndexedRouteMatcher(list(app_object.routes)), app_object.api.binary_types)
        # What LocalGateway._generate_lambda_context reads from the config per request.
        timeout = config.lambda_timeout
        self._context_args = {
            "function_name": config.function_name,
            "memory_size": config.lambda_memory_size,
            "max_runtime_ms": (self.MAX_LAMBDA_EXECUTION_TIME if timeout is None
                               else timeout) * 1000,
        }

    def _generate_lambda_context(self) -> LambdaContext:
        return LambdaContext(**self._context_args)

    def _generate_lambda_event(self, method: str, path: str, headers: HeaderType,
                               body: bytes | None) -> Any:
        # Chalice answers a path no route matches with API Gateway's 403, echoing the
        # Authorization header into a hand-built JSON body (a non-ASCII one drops the
        # connection; a quote breaks the JSON; a token is sent back). The same 403,
        # without the echo.
        try:
            event = super()._generate_lambda_event(method, path, headers, body)
        except ValueError:
            raise ForbiddenError(
                {"x-amzn-RequestId": uuid.uuid4().hex,
                 "x-amzn-ErrorType": "MissingAuthenticationTokenException"},
                b'{"message": "Missing Authentication Token"}') from None
        params = event.get("pathParameters")
        if params:
            event["pathParameters"] = {k: _decoded(v) for k, v in params.items()}
        return event


def _decoded(segment: str) -> str:
    """A path segment percent-decoded, as API Gateway hands path parameters over; as sent
    when its escapes are not UTF-8."""
    if "%" not in segment:
        return segment
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return segment


def stage_environment(stage: str) -> dict[str, str]:
    """The environment_variables of a stage in .chalice/config.json (global, then stage)."""
    cfg = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())
    env = dict(cfg.get("environment_variables", {}))
    env.update(cfg.get("stages", {}).get(stage, {}).get("environment_variables", {}))
    return env


def apply_stage_environment(stage: str) -> None:
    """Set the stage's variables that the environment does not set already.

    SOFTHSM2_CONF and the token directory inside it are relative to the repository root,
    so the relative config path is made absolute here.
    """
    for k, v in stage_environment(stage).items():
        if k == "SOFTHSM2_CONF" and not os.path.isabs(v):
            v = str(REPO_ROOT / v)
        os.environ.setdefault(k, v)
