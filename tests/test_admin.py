"""The admin function (the Lambda handler's code) and the console script that calls it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib import admin
from chalicelib.config import Settings
from chalicelib.core.services import Services

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def services(tmp_path, settings):
    import dataclasses

    return Services.build(dataclasses.replace(settings, sqlite_path=str(tmp_path / "a.db")))


def test_create_list_revoke_through_events(services):
    out = admin.handle({"action": "create-token", "principal": "ci",
                        "scopes": [{"kind": "storedsafe", "ring": "7", "perms": ["read"]}],
                        "ttl_seconds": 600}, services)
    assert out["ok"] and out["token"].startswith("kf_")
    tid = out["record"]["token_id"]
    assert services.tokens.authenticate(out["token"]).name == "ci"
    listed = admin.handle({"action": "list-tokens"}, services)
    assert [t["token_id"] for t in listed["tokens"]] == [tid]
    assert out["token"] not in json.dumps(listed)
    assert admin.handle({"action": "revoke-token", "token_id": tid}, services)["ok"]
    actions = [r["action"] for r in services.audit.find()]
    assert actions == ["token.create", "token.revoke"]
    assert out["token"] not in json.dumps(services.audit.find())


def test_health_event(services):
    assert admin.handle({"action": "health"}, services) == {
        "ok": True, "checks": {"hsm": "ok", "store": "ok"}}


@pytest.mark.parametrize("event,error", [
    ([], "invalid_input"),
    ({}, "invalid_input"),
    ({"action": "drop-tables"}, "invalid_input"),
    ({"action": "create-token", "principal": "x", "scopes": "all"}, "invalid_input"),
    ({"action": "create-token", "principal": "x", "scopes": [{"kind": "storedsafe"}]},
     "invalid_input"),
    ({"action": "revoke-token", "token_id": "ffffffffffffffff"}, "not_found"),
    ({"action": "revoke-token"}, "invalid_input"),
])
def test_bad_events_answer_errors(services, event, error):
    out = admin.handle(event, services)
    assert out["ok"] is False and out["error"] == error and out["message"]


def test_lambda_function_is_registered():
    sys.path.insert(0, str(REPO))
    import app

    assert "admin" in app.app.pure_lambda_functions[0].name
    with pytest.raises(admin.AdminEventFailed):  # a FunctionError, visible to the caller
        app.admin_function({"action": "nope"}, None)


def test_console_script_mints_a_token_as_json(tmp_path):
    env = {**os.environ, "KEYFRONT_SQLITE_PATH": str(tmp_path / "cli.db")}
    keyfront = [sys.executable, "-m", "chalicelib.cli"]
    res = subprocess.run([*keyfront, "token", "create", "--principal", "script",
                          "--scope", "storedsafe:179:read,write", "--ttl", "60", "--json"],
                         env=env, cwd=REPO, capture_output=True, text=True, check=True)
    out = json.loads(res.stdout)
    assert out["ok"] and out["record"]["scopes"] == [
        {"kind": "storedsafe", "ring": "179", "perms": ["read", "write"]}]
    settings = Settings.from_env()
    import dataclasses

    svc = Services.build(dataclasses.replace(settings, sqlite_path=str(tmp_path / "cli.db")))
    assert svc.tokens.authenticate(out["token"]).name == "script"
    bad = subprocess.run([*keyfront, "token", "create", "--principal", "x", "--scope",
                          "nokind:1:read", "--json"], env=env, cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"] == "invalid_input"
    raw = subprocess.run([*keyfront, "admin", '{"action": "list-tokens"}'], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert json.loads(raw.stdout)["tokens"][0]["principal"] == "script"
