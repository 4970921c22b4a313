"""The project-keys domain's cap in-process (a live server runs with the default sizes), on
both stores, rendered in the Apinizer envelope."""

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
from chalicelib.errors import LimitExceeded


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
