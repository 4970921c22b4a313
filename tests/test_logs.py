"""Structured logs and EMF metrics, through Chalice's test client (which gives the app a
Lambda context) and the admin function's Lambda entry point."""

from __future__ import annotations

import io
import json
import sys
import uuid
from pathlib import Path

import pytest
from chalice.test import Client

from chalicelib import logs
from chalicelib.core.services import get_services
from chalicelib.core.tokens import Scope

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import app as app_module  # noqa: E402 - app.py lives at the repository root


@pytest.fixture(scope="module")
def client():
    with Client(app_module.app, stage_name="dev") as c:
        yield c


@pytest.fixture
def lines(capsys):
    """The JSON lines the keyfront loggers and the EMF metrics write during a test."""
    handler = logs.setup(metrics=True).registered_handler
    buffer = io.StringIO()
    handler.stream = buffer  # (setStream would flush the old stream, maybe a closed capture)
    capsys.readouterr()

    def read() -> list[dict]:
        text = buffer.getvalue() + capsys.readouterr().out  # logs + EMF (printed)
        out = []
        for line in text.splitlines():
            if line.strip():
                out.append(json.loads(line))  # every line is one JSON object
        return out

    yield read
    handler.stream = sys.__stdout__
    logs.setup(metrics=False)


def _token(vault: str, perms: list[str]) -> str:
    raw, _ = get_services().tokens.create(
        "log-tester", [Scope.from_dict({"kind": "storedsafe", "ring": vault, "perms": perms})],
        600)
    return raw


def test_every_line_is_json_with_the_lambda_and_gateway_request_ids(client, lines):
    vault = str(uuid.uuid4().int % 10**6)
    token = _token(vault, ["write"])
    r = client.http.post(f"/api/1.0/transparent/{vault}/keys/k1",
                         headers={"X-Http-Token": token, "Content-Type": "application/json"},
                         body="{}")
    assert r.status_code == 201
    out = lines()
    audit = [entry for entry in out if "audit" in entry.get("message", {})]
    assert audit, out
    entry = audit[-1]
    assert entry["level"] == "INFO" and entry["timestamp"] and entry["service"] == "keyfront"
    uuid.UUID(entry["function_request_id"])  # Lambda's request id from the context
    assert entry["correlation_id"] == entry["message"]["audit"]["request_id"]
    assert entry["principal"] == "log-tester"
    assert entry["cold_start"] in (True, False)
    emf = [entry for entry in out if "_aws" in entry]
    assert emf[-1]["dialect"] == "storedsafe" and emf[-1]["Operations"] == [1.0]
    assert "Latency" in emf[-1] and "Errors" not in emf[-1]
    metric_names = {m["Name"] for m in emf[-1]["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert metric_names == {"Operations", "Latency"}
    assert token not in json.dumps(out)


def test_a_401_is_logged_once_per_interval_and_counted(client, lines, monkeypatch):
    sampled = logs._Sampled(3600)
    monkeypatch.setattr(logs, "_unauthenticated", sampled)
    for _ in range(3):
        r = client.http.get("/api/v2/encrypt_keys.json",
                            headers={"Authorization": "Bearer kf_not-a-token"})
        assert r.status_code == 401
    out = lines()
    logged = [entry for entry in out
              if isinstance(entry.get("message"), dict)
              and entry["message"].get("event") == "unauthenticated"]
    assert len(logged) == 1  # the next two fall in the same interval
    line = logged[0]
    assert line["level"] == "WARNING" and line["message"]["dialect"] == "miarec"
    assert line["message"]["route"] == "/api/v2/encrypt_keys.json"
    assert "kf_not-a-token" not in json.dumps(out)
    counted = [entry for entry in out if "_aws" in entry and "Unauthenticated" in entry]
    assert len(counted) == 3 and counted[0]["action"]


def test_sampling_counts_what_it_leaves_out():
    now = [0.0]
    sampled = logs._Sampled(10, clock=lambda: now[0])
    assert sampled.take() == 0
    assert sampled.take() is None and sampled.take() is None
    now[0] = 10.0
    assert sampled.take() == 2
    assert sampled.take() is None


def test_the_first_request_of_a_process_is_the_cold_one(monkeypatch):
    monkeypatch.setattr(logs, "_cold", True)
    logger = logs.setup()
    logs.invocation(None)
    assert logger.thread_safe_get_current_keys()["cold_start"] is True
    logs.invocation(None)
    assert logger.thread_safe_get_current_keys()["cold_start"] is False


def test_admin_function_lines_carry_its_request_id(client, lines):
    result = client.lambda_.invoke("admin", {"action": "create-token", "principal": "x",
                                             "ttl_seconds": 60, "scopes": [
        {"kind": "storedsafe", "ring": "1", "perms": ["read"]}]})
    assert result.payload["ok"] is True
    entry = next(e for e in lines() if "audit" in e.get("message", {}))
    uuid.UUID(entry["function_request_id"])
    assert entry["message"]["audit"]["action"] == "token.create"
