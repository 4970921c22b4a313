"""Logging and metrics, configured here and nowhere else.

Every line under the `keyfront` logger (`keyfront.audit`, `keyfront.http`, ...) is one JSON
object, written by AWS Lambda Powertools' Logger: timestamp, level, message (a JSON message
stays an object), the Lambda request id (`function_request_id`), API Gateway's request id
(`correlation_id`, the `request_id` of audit records and error bodies), `cold_start`,
`function_name`, and the `principal` once a request is authorized. The HTTP middleware also
counts each request as CloudWatch embedded-metric-format (EMF) lines (when metrics are on):
`Operations`, `Unauthenticated` (401), `Denied` (403), `Rejected` (other 4xx), `Errors`
(5xx) and `Latency` in ms, per `dialect` and `action` (the route's view). 401s are also
logged, at most one line per `UNAUTHENTICATED_LOG_INTERVAL` seconds per process, with the
number left out since the last one: a flood of bad tokens must not become a flood of lines.

Powertools is imported on first use (the first request or `setup()`), not by `import app`:
see the README's "Logs and metrics" for what that costs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

SERVICE = "keyfront"  # the logger every module's logger descends from, and the namespace
UNAUTHENTICATED_LOG_INTERVAL = 10.0
_REQUEST_KEYS = ("function_request_id", "correlation_id", "cold_start", "principal")

_lock = threading.Lock()
_logger: Any = None  # the Powertools Logger once set up
_metrics_on = False
_cold = True


def setup(level: str | None = None, metrics: bool | None = None) -> Any:
    """Install the JSON handler on the `keyfront` logger (once per process) and return the
    Powertools Logger. `level`/`metrics` default to the settings (KEYFRONT_LOG_LEVEL,
    KEYFRONT_METRICS)."""
    global _logger, _metrics_on
    with _lock:
        if _logger is None:
            from aws_lambda_powertools import Logger

            from chalicelib.config import Settings

            settings = Settings.from_env()
            # Powertools' Logger(service=...) owns logging.getLogger(service): the parent of
            # every keyfront.* logger, so their lines are formatted by it.
            _logger = Logger(service=SERVICE, level=level or settings.log_level)
            _metrics_on = settings.metrics if metrics is None else metrics
        elif metrics is not None:
            _metrics_on = metrics
        if level:
            _logger.setLevel(level)
        return _logger


def invocation(context: Any) -> None:
    """Log keys of a direct invocation (the admin function): its Lambda request id and
    whether it is this process's first."""
    global _cold
    logger = setup()
    cold, _cold = _cold, False
    logger.thread_safe_clear_keys()
    logger.thread_safe_append_keys(
        function_request_id=getattr(context, "aws_request_id", None),
        function_name=getattr(context, "function_name", None), cold_start=cold)


def set_principal(name: str) -> None:
    """Name the authenticated caller on the rest of this request's lines."""
    if _logger is not None:
        _logger.thread_safe_append_keys(principal=name)


def _route(app: Any, request: Any) -> tuple[str, str]:
    """(dialect, action) of the request's route: the dialect package of its view and the
    view's name. Bounded by the routes, so usable as metric dimensions."""
    ctx = request.context or {}
    entry = app.routes.get(ctx.get("resourcePath", ""), {}).get(request.method)
    if entry is None:
        return "none", "none"
    module = getattr(entry.view_function, "__module__", "") or ""
    parts = module.split(".")
    dialect = parts[2] if parts[:2] == ["chalicelib", "dialects"] and len(parts) > 2 else "app"
    if dialect == "service":  # /health and the other routes of dialects/service.py
        dialect = "app"
    return dialect, entry.view_name


class _Sampled:
    """At most one line per interval; the lines left out are counted into the next one."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval, self._clock = interval, clock
        self._next = 0.0
        self._skipped = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """None when this line is left out, else how many were left out before it."""
        with self._lock:
            now = self._clock()
            if now < self._next:
                self._skipped += 1
                return None
            skipped, self._skipped = self._skipped, 0
            self._next = now + self._interval
            return skipped


_unauthenticated = _Sampled(UNAUTHENTICATED_LOG_INTERVAL)
_METRIC_BY_STATUS = {401: "Unauthenticated", 403: "Denied"}


def _emit_metrics(dialect: str, action: str, status: int, millis: float) -> None:
    from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

    # One EMF line per request: its dimensions are this request's own, so a shared
    # Metrics object (one dimension set per flush) would not do.
    metrics = EphemeralMetrics(namespace=SERVICE)
    metrics.add_dimension(name="dialect", value=dialect)
    metrics.add_dimension(name="action", value=action)
    metrics.add_metric(name="Operations", unit=MetricUnit.Count, value=1)
    outcome = _METRIC_BY_STATUS.get(status) or (
        "Errors" if status >= 500 else "Rejected" if status >= 400 else None)
    if outcome:
        metrics.add_metric(name=outcome, unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=round(millis, 3))
    metrics.flush_metrics()


def http_middleware(app: Any) -> Callable[[Any, Callable[[Any], Any]], Any]:
    """Chalice HTTP middleware: request-scoped log keys, the 401 line, the EMF metrics."""

    def middleware(event: Any, get_response: Callable[[Any], Any]) -> Any:
        global _cold
        from chalicelib.dialects.http import request_id

        logger = setup()
        context = getattr(app, "lambda_context", None)
        cold, _cold = _cold, False
        logger.thread_safe_clear_keys()  # nothing of a previous request on this thread
        logger.thread_safe_append_keys(
            function_request_id=getattr(context, "aws_request_id", None),
            function_name=getattr(context, "function_name", None),
            # the id audit records and error bodies carry (made up where there is none)
            correlation_id=request_id(event), cold_start=cold)
        ctx = event.context or {}
        dialect, action = _route(app, event)
        start = time.perf_counter()
        try:
            response = get_response(event)
        except Exception:
            if _metrics_on:
                _emit_metrics(dialect, action, 500, (time.perf_counter() - start) * 1000)
            logger.thread_safe_clear_keys()
            raise
        millis = (time.perf_counter() - start) * 1000
        status = int(getattr(response, "status_code", 200))
        if status == 401:
            skipped = _unauthenticated.take()
            if skipped is not None:
                logging.getLogger("keyfront.http").warning({
                    "event": "unauthenticated", "method": event.method,
                    "route": ctx.get("resourcePath"), "dialect": dialect, "action": action,
                    "source_ip": (ctx.get("identity") or {}).get("sourceIp"),
                    "left_out_since_last": skipped})
        if _metrics_on:
            _emit_metrics(dialect, action, status, millis)
        logger.thread_safe_clear_keys()
        return response

    return middleware
