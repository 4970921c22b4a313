"""A thin runner around Chalice's local gateway, with TCP_NODELAY and less per-request work.

Requests are still served by Chalice's local machinery: `ChaliceRequestHandler` (http.server)
turns them into API Gateway events for `LocalGateway`, which runs the route's authorizer, if
any, and calls the app. Only avoidable per-request costs are removed, the results are unchanged:

- TCP_NODELAY on each accepted socket. `chalice local` writes the headers and the body of a
  response in two sends; with Nagle on, a keep-alive client waits for the delayed ACK (~40 ms)
  before the body arrives.
- The response's headers and body go out in one send (the same bytes): one wake-up of the
  client instead of two.
- One `LocalGateway` per server instead of one per connection, and its route matcher
  pre-indexed by segment count (`IndexedRouteMatcher`: the same MatchResult as Chalice's
  `RouteMatcher`, found among fewer candidates).
- The request's headers are copied into a dict in one pass, not one scan per header.
- The Lambda context's configuration (function name, memory, timeout) is read once, not three
  chained config lookups per request; each request still gets its own `LambdaContext`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import uuid
from email.message import Message
from typing import Any

from chalice.app import Chalice
from chalice.compat import parse_qs, urlparse
from chalice.config import Config
from chalice.deploy.validate import validate_routes
from chalice.local import (
    ChaliceRequestHandler,
    ForbiddenError,
    HeaderType,
    LambdaContext,
    LambdaEventConverter,
    LocalDevServer,
    LocalGateway,
    MatchResult,
    RouteMatcher,
    ThreadedHTTPServer,
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
            return super()._generate_lambda_event(method, path, headers, body)
        except ValueError:
            raise ForbiddenError(
                {"x-amzn-RequestId": uuid.uuid4().hex,
                 "x-amzn-ErrorType": "MissingAuthenticationTokenException"},
                b'{"message": "Missing Authentication Token"}') from None


def header_dict(headers: Message) -> dict[str, Any]:
    """dict(headers), in one pass over the headers instead of one per header.

    dict() of an email Message maps each header name, as sent, to msg[name]: the value of
    the first header with that name in any case (so repeated headers keep the first value).
    """
    items = headers.items()
    first: dict[str, Any] = {}
    for name, value in items:
        first.setdefault(name.lower(), value)
    return {name: first[name.lower()] for name, _ in items}


class NoDelayHandler(ChaliceRequestHandler):
    """Chalice's request handler with Nagle's algorithm disabled (StreamRequestHandler flag),
    the server's shared gateway, and each response written in one send."""

    disable_nagle_algorithm = True

    def __init__(self, request: Any, client_address: Any, server: Any, app_object: Chalice,
                 config: Config, gateway: LocalGateway | None = None) -> None:
        if gateway is None:
            super().__init__(request, client_address, server, app_object, config)
            return
        # ChaliceRequestHandler.__init__ builds a LocalGateway per connection: reuse ours.
        self.local_gateway = gateway
        super(ChaliceRequestHandler, self).__init__(request, client_address, server)

    def _parse_payload(self) -> tuple[HeaderType, bytes | None]:
        # ChaliceRequestHandler's, with dict(self.headers) built in one pass (see below).
        body = None
        content_length = int(self.headers.get("content-length", "0"))
        if content_length > 0:
            body = self.rfile.read(content_length)
        return header_dict(self.headers), body

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if os.environ.get("KEYFRONT_ACCESS_LOG", "1") != "0":
            super().log_message(format, *args)

    def _send_http_response_with_body(self, code: int, headers: HeaderType,
                                      body: str | bytes) -> None:
        # ChaliceRequestHandler's, with the end of the headers and the body in one write.
        self.send_response(code)
        if not isinstance(body, bytes):
            body = body.encode("utf-8")
        self.send_header("Content-Length", str(len(body)))
        content_type = headers.pop("Content-Type", "application/json")
        self.send_header("Content-Type", content_type)
        for header_name, header_value in headers.items():
            if isinstance(header_value, list):
                for value in header_value:
                    self.send_header(header_name, value)
            else:
                self.send_header(header_name, header_value)
        if self.request_version != "HTTP/0.9":  # end_headers() then write(body), one send
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(body)
            self.flush_headers()
        else:  # no status line nor headers: end_headers() sends nothing
            self.wfile.write(body)


class QuietThreadedHTTPServer(ThreadedHTTPServer):
    """Threaded server whose listen backlog fits benchmarks with many clients."""

    request_queue_size = 128


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


def make_server(app: Chalice, config: Config, host: str, port: int) -> LocalDevServer:
    """Chalice's LocalDevServer for app, with our handler, server class and one gateway.

    Like chalice.local.create_local_server, it gives the app a thread-local current_request.
    """
    from chalice.local import LocalChalice

    class _Local(LocalChalice, app.__class__):  # type: ignore[misc,valid-type]
        pass

    app.__class__ = _Local
    gateway = KeyfrontLocalGateway(app, config)  # no per-request state: shared by threads
    return LocalDevServer(app, config, host, port,
                          handler_cls=functools.partial(NoDelayHandler, gateway=gateway),
                          server_cls=QuietThreadedHTTPServer)


def build_server(host: str, port: int, stage: str = "dev") -> LocalDevServer:
    """Load app.py with the stage's environment (variables already set win) and bind."""
    apply_stage_environment(stage)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import app as app_module

    app = app_module.app
    validate_routes(app.routes)
    config = Config.create(chalice_stage=stage, app_name=app.app_name, chalice_app=app,
                           project_dir=str(REPO_ROOT))
    return make_server(app, config, host, port)
