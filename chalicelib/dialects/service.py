"""Vendor-neutral routes: GET /health, GET /openapi.json."""

from __future__ import annotations

import threading
from typing import Any

from chalice import Blueprint, Response

from chalicelib.core.services import get_services
from chalicelib.dialects.http import guarded, json_response
from chalicelib.errors import KeyfrontError

bp = Blueprint(__name__)


def _render(exc: KeyfrontError, request: object, rid: str) -> Response:
    status = 503 if exc.status >= 500 else exc.status
    return json_response(status, {"status": "unavailable" if status == 503 else "error",
                                  "message": exc.message, "request_id": rid})


@bp.route("/health", methods=["GET"])
@guarded(bp, _render)
def health() -> Response:
    """200 when the HSM (token, KEK) and the store answer; 503 otherwise."""
    checks = get_services().health()
    ok = all(v == "ok" for v in checks.values())
    return json_response(200 if ok else 503,
                         {"status": "ok" if ok else "unavailable", "checks": checks})


_document: dict[str, Any] | None = None
_document_lock = threading.Lock()


@bp.route("/openapi.json", methods=["GET"])
@guarded(bp, _render)
def openapi_document() -> Response:
    """The OpenAPI 3.1 description of every route (built once per process)."""
    global _document
    from chalicelib import openapi

    with _document_lock:
        if _document is None:
            _document = openapi.build(bp.current_app)
    return json_response(200, _document)
