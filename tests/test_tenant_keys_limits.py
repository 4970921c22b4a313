"""The MiaRec domain's limits in-process (a live server runs with the default sizes): the key
cap and the size-priced generation rate, rendered in MiaRec's envelope."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from chalicelib.core.access import check
from chalicelib.core.audit import AuditLog
from chalicelib.core.limits import GenerationRate
from chalicelib.core.services import Services
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.dialects.miarec.envelope import render
from chalicelib.dialects.miarec.routes import tenant_keys
from chalicelib.errors import LimitExceeded, TooManyRequests


def _domain(settings, hsm, store, **sizes):
    small = dataclasses.replace(settings, **sizes)
    return tenant_keys(Services(small, store, hsm, TokenService(store), AuditLog(store),
                                GenerationRate(store, small, clock=lambda: 1_800_000_000.0)))


def _grant(dom, tenant: str):
    user = str(uuid.uuid4())
    caller = Caller(Principal(uuid.uuid4().hex, user,
                              (Scope.parse(f"miarec:{tenant}:read,manage,grant"),), 2**40),
                    "rid")
    return check(caller, dom.kind, tenant, dom.action("key.create"))


def test_the_key_cap_is_a_400_invalid_state(settings, hsm, store):
    dom = _domain(settings, hsm, store, max_keys_per_ring=1)
    tenant = str(uuid.uuid4())
    grant = _grant(dom, tenant)
    dom.create(grant, name="one", private_use="granted", activate=True, bits=1024)
    with pytest.raises(LimitExceeded) as e:
        dom.create(grant, name="two", private_use="granted", activate=False, bits=1024)
    r = render(e.value, None, "rid")
    assert r.status_code == 400 and json.loads(r.body)["error"] == "InvalidState"


def test_generation_is_priced_by_size_and_refused_with_429(settings, hsm, store):
    dom = _domain(settings, hsm, store, generation_rate=5)  # 1024 costs 1, 2048 costs 4
    grant = _grant(dom, str(uuid.uuid4()))
    dom.create(grant, name="small", private_use="granted", activate=False, bits=1024)
    dom.create(grant, name="medium", private_use="granted", activate=False, bits=2048)
    with pytest.raises(TooManyRequests) as e:
        dom.create(grant, name="more", private_use="granted", activate=False, bits=1024)
    r = render(e.value, None, "rid")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert json.loads(r.body)["error"] == "TooManyRequests"
    refused = [a for a in dom._audit.find(action="miarec.key.create")
               if a["outcome"] == "failure"]
    assert [a["details"]["reason"] for a in refused] == ["rate_limited"]
