"""The `keyfront` console script: bad input and unreachable components give one clear line on
stderr and a non-zero exit, never a traceback; --version; help on every command and flag."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib import cli

REPO = Path(__file__).resolve().parent.parent
KEYFRONT = [sys.executable, "-m", "chalicelib.cli"]


def run(*args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
        **kwargs) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run([*KEYFRONT, *args], cwd=REPO, capture_output=True, text=True,
                          env={**full, **(env or {})}, timeout=120, **kwargs)


def one_error_line(res: subprocess.CompletedProcess[str], *words: str) -> str:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("keyfront: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_bad_scope(tmp_path):
    res = run("token", "create", "--principal", "x", "--scope", "bogus",
              env={"KEYFRONT_SQLITE_PATH": str(tmp_path / "s.db")})
    one_error_line(res, "'bogus'", "KIND:RING:PERM")


def test_unknown_kind_and_unknown_token(tmp_path):
    env = {"KEYFRONT_SQLITE_PATH": str(tmp_path / "s.db")}
    one_error_line(run("token", "create", "--principal", "x", "--scope", "nope:1:read",
                       env=env))
    one_error_line(run("token", "revoke", "ffffffffffffffff", env=env), "no such token")


@pytest.mark.parametrize("env,words", [
    ({"KEYFRONT_PIN": "000000"}, ("cannot log in", "PinIncorrect")),
    ({"KEYFRONT_PKCS11_MODULE": "/nonexistent/libpkcs11.so"},
     ("cannot be loaded", "/nonexistent/libpkcs11.so")),
    ({"KEYFRONT_TOKEN_LABEL": "no-such-token"}, ("not available", "no-such-token")),
])
def test_hsm_init_with_a_bad_pin_module_or_token(env, words):
    one_error_line(run("hsm", "init", env=env), *words)


def test_store_init_without_credentials(tmp_path):
    env = {"KEYFRONT_STORE": "dynamodb", "KEYFRONT_DYNAMODB_TABLE": "kf-nocreds",
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"}
    unset = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
             "KEYFRONT_DYNAMODB_ENDPOINT")
    one_error_line(run("store", "init", env=env, unset=unset), "cannot be reached",
                   "credentials")
    one_error_line(run("store", "init", env={**env, "AWS_PROFILE": "no-such-profile"},
                       unset=unset), "cannot be reached", "no-such-profile")


def test_store_init_against_an_endpoint_that_does_not_answer(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"KEYFRONT_STORE": "dynamodb", "KEYFRONT_DYNAMODB_TABLE": "kf-none",
           "KEYFRONT_DYNAMODB_ENDPOINT": f"http://127.0.0.1:{port}"}
    one_error_line(run("store", "init", env=env), "cannot be reached")


def test_serve_on_a_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run("serve", "--port", str(port),
                  env={"KEYFRONT_SQLITE_PATH": str(tmp_path / "s.db")})
    one_error_line(res, f"127.0.0.1:{port}", "in use")


def test_a_closed_pipe_ends_quietly(tmp_path, settings):
    import dataclasses

    from chalicelib.core.services import Services
    from chalicelib.core.tokens import Scope

    env = {**os.environ, "KEYFRONT_SQLITE_PATH": str(tmp_path / "s.db")}
    services = Services.build(dataclasses.replace(settings, sqlite_path=str(tmp_path / "s.db")))
    scope = Scope.parse("storedsafe:1:read")
    for i in range(400):  # enough output (~100 KB) to outlast the pipe's buffer
        services.tokens.create(f"p{i}", [scope], 600)
    proc = subprocess.Popen([*KEYFRONT, "token", "list"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # what `| head` does
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141  # the reader left before the ~100 KB were written
    assert err == ""


def test_debug_shows_the_traceback(tmp_path):
    res = run("--debug", "token", "create", "--principal", "x", "--scope", "bogus",
              env={"KEYFRONT_SQLITE_PATH": str(tmp_path / "s.db")})
    assert res.returncode == 1 and "Traceback" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("keyfront: error: ")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"keyfront {cli._version()}"


def _walk(parser: argparse.ArgumentParser, path: str):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{path} {name} has no help"
                yield from _walk(sub, f"{path} {name}")


def test_every_command_and_flag_has_help():
    seen = []
    for path, parser in _walk(cli.build_parser(), "keyfront"):
        seen.append(path)
        assert parser.description, f"{path} has no description"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, f"{path} {action.option_strings or action.dest} has no help"
        parser.format_help()
    assert "keyfront deploy template" in seen and "keyfront hsm init" in seen


def test_keys_deleted_restore_and_purge(tmp_path, settings):
    import dataclasses

    from chalicelib.core.access import check
    from chalicelib.core.kinds import KINDS, TRANSIT
    from chalicelib.core.services import Services
    from chalicelib.core.tokens import Caller, Principal, Scope
    from chalicelib.dialects.storedsafe.routes import transit_keys

    db = str(tmp_path / "s.db")
    svc = Services.build(dataclasses.replace(settings, sqlite_path=db))
    caller = Caller(Principal("tid", "someone", (Scope.parse("storedsafe:42:read,write"),),
                              2**40), "rid")
    keys = transit_keys(svc)
    oid = keys.create_key(check(caller, KINDS[TRANSIT], "42", "storedsafe.key.create"),
                          "k").objectid
    keys.delete(check(caller, KINDS[TRANSIT], "42", "storedsafe.key.delete"), "k")
    env = {"KEYFRONT_SQLITE_PATH": db}

    res = run("keys", "deleted", "--kind", "storedsafe", env=env)
    assert res.returncode == 0, res.stderr
    [listed] = json.loads(res.stdout)["deleted"]
    assert (listed["ring"], listed["id"], listed["name"], listed["deleted_by"]) == \
        ("42", oid, "k", "someone")
    res = run("keys", "restore", "storedsafe", "42", oid, env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["restored"]["id"] == oid, res.stderr
    one_error_line(run("keys", "restore", "storedsafe", "42", oid, env=env), "no deleted")
    one_error_line(run("keys", "purge", env=env), "--all-due")
    keys.delete(check(caller, KINDS[TRANSIT], "42", "storedsafe.key.delete"), "k")
    res = run("keys", "purge", "--all-due", env=env)  # its window has not passed
    assert res.returncode == 0 and json.loads(res.stdout)["waiting"] == 1, res.stderr
    res = run("keys", "purge", "storedsafe", "42", oid, env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["purged"] == 1, res.stderr
    assert json.loads(run("keys", "deleted", env=env).stdout)["deleted"] == []
