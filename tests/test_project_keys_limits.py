"""The project-keys domain's limits in-process (a live server runs with the default sizes), on
both stores, rendered in the Apinizer envelope: the key cap, and the generation rate that
opening a private key spends (on a fixed clock: a rate window never ends mid-test)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from chalicelib.core.access import check
from chalicelib.core.audit import AuditLog
from chalicelib.core.limits import GenerationRate
from chalicelib.core.project_keys import EnvironmentContent
from chalicelib.core.services import Services
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.dialects.apinizer.envelope import render
from chalicelib.dialects.apinizer.routes import project_keys
from chalicelib.errors import Forbidden, InvalidInput, LimitExceeded, TooManyRequests


def test_the_key_cap_is_a_400_and_a_deleted_key_makes_room(settings, hsm, store):
    small = dataclasses.replace(settings, max_keys_per_ring=2)
    dom = project_keys(Services(small, store, hsm, TokenService(store), AuditLog(store),
                                GenerationRate(store, small)))
    dom.create_environment("p", "production", "TEST", principal="test")
    caller = Caller(Principal("t1", "user", (Scope.parse("apinizer:p:manage,deploy"),),
                              2**40), "rid")

    def create(name: str) -> None:
        grant = check(caller, dom.kind, "p", dom.action("key.create"), "deploy")
        dom.create(grant, name=name, description=None, key_type="secret", algorithm="aes",
                   environments=[EnvironmentContent("production", None, os.urandom(16))])
    create("one")
    create("two")
    with pytest.raises(LimitExceeded) as e:
        create("three")
    r = render(e.value, None, "rid")
    body = json.loads(r.body)
    assert r.status_code == 400 and body["status"] == "FAILURE" and "2" in body["resultMessage"]
    dom.delete(check(caller, dom.kind, "p", dom.action("key.delete")), "one")
    create("three")
    listed = dom.list(check(Caller(Principal("t2", "reader", (Scope.parse("apinizer:p:read"),),
                                             2**40), "rid"), dom.kind, "p",
                            dom.action("key.list")))
    assert [k.name for k in listed] == ["two", "three"]


def test_opening_private_keys_spends_the_generation_rate(settings, hsm, store):
    """Each distinct private key given costs 1, spent before anything is parsed (garbage
    too); the same material for several environments costs 1; past the rate, 429."""
    small = dataclasses.replace(settings, generation_rate=5)
    rate = GenerationRate(store, small, clock=lambda: 1_800_000_000.0)
    dom = project_keys(Services(small, store, hsm, TokenService(store), AuditLog(store), rate))
    project = f"p-{os.urandom(4).hex()}"
    envs = [f"e{i}" for i in range(4)]
    for e in envs:
        dom.create_environment(project, e, "TEST", principal="test")
    caller = Caller(Principal(os.urandom(8).hex(), "user",
                              (Scope.parse(f"apinizer:{project}:manage,deploy"),), 2**40),
                    "rid")

    def create(contents: list[bytes]) -> None:
        grant = check(caller, dom.kind, project, dom.action("key.create"), "deploy")
        dom.create(grant, name="k", description=None, key_type="private", algorithm=None,
                   environments=[EnvironmentContent(e, None, c)
                                 for e, c in zip(envs, contents, strict=False)])
    with pytest.raises(InvalidInput):  # garbage: refused after spending 3
        create([os.urandom(40) for _ in range(3)])
    with pytest.raises(InvalidInput):  # one material for all four: 1 spent
        create([b"x" * 40] * 4)
    with pytest.raises(TooManyRequests) as e:  # 2 more would make 6 of 5
        create([os.urandom(40), os.urandom(40)])
    r = render(e.value, None, "rid")
    body = json.loads(r.body)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert body["status"] == "FAILURE" and body["error"] == "too_many_requests"
    refused = [a for a in dom._audit.find(action="apinizer.key.create")
               if a["outcome"] == "failure" and a["principal"] == "user"]
    assert refused[-1]["details"]["reason"] == "rate_limited"


def test_issuing_tokens_spends_the_root_tokens_rate(settings, hsm, store):
    """Each issuance spends 1 of the root token's rate, and a derived token's generations
    spend its root's: minting fresh tokens neither escapes nor resets the rate. Only this
    kind's scopes are issued."""
    small = dataclasses.replace(settings, generation_rate=3)
    rate = GenerationRate(store, small, clock=lambda: 1_800_000_000.0)
    tokens = TokenService(store)
    dom = project_keys(Services(small, store, hsm, tokens, AuditLog(store), rate))
    project = f"p-{os.urandom(4).hex()}"
    dom.create_environment(project, "e", "TEST", principal="test")
    raw, _ = tokens.create("user", [Scope.parse(f"apinizer:{project}:manage,deploy"),
                                    Scope.parse("storedsafe:*:read")], 3600)
    root = Caller(tokens.authenticate(raw), "rid")
    with pytest.raises(Forbidden) as other:  # another kind's scope
        dom.issue_token(root, [Scope.parse("storedsafe:1:read")])
    assert other.value.reason == "scope_not_held"
    child_raw, record = dom.issue_token(root, None)  # spends 1
    assert [s["kind"] for s in record["scopes"]] == ["apinizer"]
    child = Caller(tokens.authenticate(child_raw), "rid")
    grant = check(child, dom.kind, project, dom.action("key.create"), "deploy")
    pem = _rsa_pem()
    dom.create(grant, name="k", description=None, key_type="private", algorithm=None,
               environments=[EnvironmentContent("e", None, pem)])  # spends 1 of the root's
    dom.issue_token(root, None)  # the third
    with pytest.raises(TooManyRequests):
        dom.issue_token(root, None)
    with pytest.raises(TooManyRequests):
        dom.update(check(child, dom.kind, project, dom.action("key.update")), "k",
                   environments=[EnvironmentContent("e", None, _rsa_pem())])


def _rsa_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
