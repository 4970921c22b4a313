"""`keyfront serve`: the app behind gunicorn, through Chalice's own local gateway.

gunicorn does the HTTP: pre-forked workers (one per CPU by default), each with its own PKCS#11
session and store connection (both are opened per process), a thread pool per worker,
keep-alive with a timeout, slow and idle clients dropped after a timeout, chunked request
bodies, a 400 for a malformed request (an invalid Content-Length included). `GatewayApp` turns
each WSGI request into the API Gateway event Chalice's `LocalGateway` builds, as `chalice
local` does, so a route sees the same request here as under `chalice local` and in Lambda.

A body larger than API Gateway's payload limit is refused with API Gateway's 413 before it is
read (by its Content-Length, or while reading a chunked body); the dialects then apply their
own, smaller limits.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from chalice.app import Chalice
from chalice.config import Config
from chalice.deploy.validate import validate_routes
from chalice.local import LocalGatewayException

from chalicelib.config import REPO_ROOT
from chalicelib.local_server import KeyfrontLocalGateway, apply_stage_environment

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
_READ_CHUNK = 64 * 1024

StartResponse = Callable[..., Any]


def _too_large() -> tuple[str, list[tuple[str, str]], bytes]:
    return ("413 Payload Too Large", [("Content-Type", "application/json"),
                                      ("x-amzn-ErrorType", "RequestEntityTooLarge")],
            b'{"message": "Request Entity Too Large"}')


class GatewayApp:
    """A WSGI application that hands every request to Chalice's local gateway."""

    def __init__(self, app: Chalice, config: Config,
                 max_body: int = MAX_REQUEST_BYTES) -> None:
        from chalice.local import LocalChalice

        if not isinstance(app, LocalChalice):
            class _Local(LocalChalice, app.__class__):  # type: ignore[misc,valid-type]
                pass  # a thread-local current_request, as chalice.local gives the app

            app.__class__ = _Local
        self.gateway = KeyfrontLocalGateway(app, config)  # no per-request state: shared
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any],
                 start_response: StartResponse) -> Iterable[bytes]:
        body = self._body(environ)
        if body is None:
            status, headers, out = _too_large()
        else:
            status, headers, out = self._handle(environ, body)
        headers.append(("Content-Length", str(len(out))))
        start_response(status, headers)
        return [out]

    def _body(self, environ: dict[str, Any]) -> bytes | None:
        """The request body, or None when it exceeds the limit (refused before it is read
        when its length is declared)."""
        length = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if length:  # the server has checked it is a number
            if int(length) > self.max_body:
                return None
            return stream.read(int(length)) if int(length) else b""
        parts, size = [], 0  # chunked (or no body): read up to one byte past the limit
        while size <= self.max_body:
            chunk = stream.read(min(_READ_CHUNK, self.max_body + 1 - size))
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return None if size > self.max_body else b"".join(parts)

    def _handle(self, environ: dict[str, Any], body: bytes) \
            -> tuple[str, list[tuple[str, str]], bytes]:
        headers = _request_headers(environ)
        try:
            response = self.gateway.handle_request(
                method=environ["REQUEST_METHOD"], path=_request_path(environ),
                headers=headers, body=body or None)
        except LocalGatewayException as exc:
            out = exc.body or b""
            return (f"{exc.CODE} {_reason(exc.CODE)}",
                    [(k, str(v)) for k, v in exc.headers.items()], out)
        status = int(response["statusCode"])
        out_headers: list[tuple[str, str]] = []
        for name, value in response["headers"].items():
            if name.lower() != "content-length":
                out_headers.append((name, str(value)))
        for name, values in (response.get("multiValueHeaders") or {}).items():
            out_headers += [(name, str(v)) for v in values]
        if not any(n.lower() == "content-type" for n, _ in out_headers):
            out_headers.append(("Content-Type", "application/json"))
        raw = response["body"]
        if response.get("isBase64Encoded"):
            data = base64.b64decode(raw)
        elif isinstance(raw, bytes):
            data = raw
        else:
            data = (raw or "").encode("utf-8")
        return f"{status} {_reason(status)}", out_headers, data


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _request_path(environ: dict[str, Any]) -> str:
    """The request target as sent (path and query): what Chalice's gateway parses."""
    raw = environ.get("RAW_URI")
    if raw and raw.startswith("/"):
        return str(raw)
    # WSGI's PATH_INFO is the decoded path as latin-1 text: quote its bytes back.
    path = quote(environ.get("PATH_INFO", "").encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


def _request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers by name (the gateway matches names without regard to case)."""
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
               if k.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        headers["content-length"] = environ["CONTENT_LENGTH"]
    return headers


def load_app(stage: str = "dev") -> GatewayApp:
    """app.py with the stage's environment (variables already set win), as a WSGI app."""
    apply_stage_environment(stage)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import app as app_module

    app = app_module.app
    validate_routes(app.routes)
    config = Config.create(chalice_stage=stage, app_name=app.app_name, chalice_app=app,
                           project_dir=str(REPO_ROOT))
    return GatewayApp(app, config)


class _Captured:
    """A stand-in socket that keeps what gunicorn writes to it (an error response)."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data


def json_error_worker() -> type:
    """gunicorn's threaded worker whose answers to requests it cannot parse (a malformed
    request line or header, an invalid Content-Length, an over-long URI) are JSON in API
    Gateway's shape, `{"message": reason}`, instead of an HTML page: every answer of the
    service is JSON. gunicorn decides the status; only the body changes."""
    from gunicorn.workers.gthread import ThreadWorker

    class JsonErrorWorker(ThreadWorker):  # type: ignore[misc]
        def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
            captured = _Captured()
            super().handle_error(req, captured, addr, exc)
            status_line = captured.data.split(b"\r\n", 1)[0].decode("latin-1")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                return  # nothing was answered
            reason = parts[2] if len(parts) > 2 else ""
            body = json.dumps({"message": reason}).encode()
            head = (f"HTTP/1.1 {parts[1]} {reason}\r\nConnection: close\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
            try:
                client.sendall(head.encode("latin-1") + body)
            except OSError:
                self.log.debug("Failed to send error message.")

    return JsonErrorWorker


def bound_socket_io(sock: socket.socket, seconds: float) -> None:
    """Bound every blocking read and write on the connections `sock` accepts.

    gunicorn's threaded worker reads a request in a pool thread with a blocking socket and no
    time limit: a client that sends part of a request and stops (slowloris) would hold the
    thread for ever. Accepted sockets inherit SO_RCVTIMEO/SO_SNDTIMEO from the listener, so a
    read or write that waits longer than `seconds` fails and gunicorn closes the connection.
    Idle kept-alive connections are closed by gunicorn's own keep-alive timeout.
    """
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def serve(host: str, port: int, *, stage: str = "dev", workers: int = 1, threads: int = 8,
          keepalive: int = 5, timeout: int = 30, client_timeout: float = 10,
          access_log: bool = True, on_ready: Callable[[], None] | None = None,
          hooks: dict[str, Callable[..., Any]] | None = None) -> None:
    """Serve the app with gunicorn until interrupted: `workers` processes, `threads` each.

    The app is loaded in each worker after the fork, so every worker opens its own HSM
    session and store connection. A connection idle for `keepalive` seconds is closed, and so
    is one whose request (or response) stalls for `client_timeout` seconds. `on_ready` runs
    in the master once it listens; `hooks` are further gunicorn server hooks (benchmarks).
    """
    from gunicorn.app.base import BaseApplication

    options = {
        "bind": f"{host}:{port}", "workers": workers, "threads": threads,
        "worker_class": json_error_worker(), "keepalive": keepalive, "timeout": timeout,
        # API Gateway takes request lines and headers of about 10 KB; gunicorn's most is 8190
        "limit_request_line": 8190, "limit_request_field_size": 8190,
        "graceful_timeout": 5, "backlog": 512,
        "accesslog": "-" if access_log else None, "errorlog": "-", "loglevel": "warning",
        "proc_name": "keyfront", "preload_app": False, **(hooks or {}),
    }
    ready = threading.Event()

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

            def when_ready(server: Any) -> None:  # in the master, before the workers fork
                for listener in server.LISTENERS:
                    bound_socket_io(listener.sock, client_timeout)
                if on_ready is not None and not ready.is_set():
                    ready.set()
                    on_ready()
            self.cfg.set("when_ready", when_ready)

        def load(self) -> GatewayApp:
            return load_app(stage)

    _Server().run()

