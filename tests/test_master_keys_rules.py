"""The master-key domain's pure rules (no HSM, no store), and its limits in-process rendered
in AI-VAULT's envelope (a live server runs with the default sizes)."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.core.access import check
from chalicelib.core.audit import AuditLog
from chalicelib.core.limits import GenerationRate
from chalicelib.core.master_keys import (
    MasterKey,
    check_bindable,
    check_deletable,
    key_added,
    key_removed,
    ordered,
    secret_added,
    secret_removed,
)
from chalicelib.core.services import Services
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.dialects.aivault.envelope import render
from chalicelib.dialects.aivault.routes import master_keys
from chalicelib.errors import Conflict, InvalidState, LimitExceeded, TooManyRequests

PASSWORD = "Rules-test-password-0123456789-abcdefghij"


def _key(name: str, created: str = "2026-01-01T00:00:00.000Z", kid: str = "id",
         bound: str | None = None) -> MasterKey:
    return MasterKey(id=kid, ring="1", name=name, remarks="", created_at=created, usage="u",
                     bound=bound)


def test_caps_count_keys_and_secrets_separately():
    head = key_added({}, 2)
    head = key_added(head, 2)
    assert head == {"keys": 2}
    with pytest.raises(LimitExceeded) as e:
        key_added(head, 2)
    assert e.value.reason == "key_cap_reached"
    head = secret_added(head, 1)
    assert head == {"keys": 2, "secrets": 1}
    with pytest.raises(LimitExceeded) as e:
        secret_added(head, 1)
    assert e.value.reason == "secret_cap_reached"
    assert key_removed(secret_removed(head)) == {"keys": 1, "secrets": 0}
    assert key_removed({}) == {"keys": 0}  # never below zero


def test_a_bound_key_is_neither_deleted_nor_bound_again():
    free, bound = _key("a"), _key("a", bound="psk")
    check_deletable(free)
    check_bindable(free)
    with pytest.raises(InvalidState) as e:
        check_deletable(bound)
    assert e.value.reason == "key_bound"
    with pytest.raises(Conflict) as c:
        check_bindable(bound)
    assert c.value.reason == "key_already_bound"


def test_ordering_and_filter():
    keys = [_key("b", "2026-01-01T00:00:01.000Z", "2"), _key("a", "2026-01-01T00:00:02.000Z",
                                                            "3"),
            _key("ab", "2026-01-01T00:00:01.000Z", "1")]
    assert [k.name for k in ordered(keys)] == ["a", "b", "ab"]  # newest first, ties by id
    assert [k.name for k in ordered(keys, "created", False)] == ["ab", "b", "a"]
    assert [k.name for k in ordered(keys, "name", False)] == ["a", "ab", "b"]
    assert [k.name for k in ordered(keys, "name", True, "a")] == ["ab", "a"]
    with pytest.raises(ValueError):
        ordered(keys, "size")


_names = st.text(alphabet="abc-_1", min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_names, st.integers(0, 5)), max_size=8),
       st.sampled_from(["created", "name"]), st.booleans(), st.text(alphabet="abc", max_size=2))
def test_ordering_is_a_sorted_selection(items, by, descending, contains):
    keys = [_key(n, f"2026-01-01T00:00:0{t}.000Z", f"{i:03d}") for i, (n, t) in
            enumerate(items)]
    out = ordered(keys, by, descending, contains)
    assert sorted(k.id for k in out) == sorted(k.id for k in keys if contains in k.name)
    sort_key = [(k.created_at if by == "created" else k.name, k.id) for k in out]
    assert sort_key == sorted(sort_key, reverse=descending)


# ---- limits, in-process ----------------------------------------------------------------------

def _domain(settings, hsm, store, **sizes):
    small = dataclasses.replace(settings, **sizes)
    return master_keys(Services(small, store, hsm, TokenService(store), AuditLog(store),
                                GenerationRate(store, small)))


def _grant(dom, verb: str, ring: str, token_id: str):
    caller = Caller(Principal(token_id, "rules", (Scope.parse(f"aivault:{ring}:read,manage"),),
                              2**40), "rid")
    return check(caller, dom.kind, ring, dom.action(verb))


def _code(exc) -> str:
    r = render(exc, None, "rid")
    assert r.status_code == 200
    return json.loads(r.body)["status"]


def test_the_psk_cap_is_31000010(settings, hsm, sqlite_store):
    dom = _domain(settings, hsm, sqlite_store, aivault_max_psk=1)
    token = uuid.uuid4().hex
    for name in ("k1", "k2"):
        dom.create_key(_grant(dom, "key.create", "5", token), name=name, usage="u",
                       remarks="", password=PASSWORD)
    dom.create_secret(_grant(dom, "secret.create", "5", token), name="p1", key="k1",
                      remarks="", password=PASSWORD)
    with pytest.raises(LimitExceeded) as e:
        dom.create_secret(_grant(dom, "secret.create", "5", token), name="p2", key="k2",
                          remarks="", password=PASSWORD)
    assert _code(e.value) == "31000010"


def test_the_generation_rate_is_31000022_system_busy(settings, hsm, sqlite_store):
    dom = _domain(settings, hsm, sqlite_store, generation_rate=2)
    token = uuid.uuid4().hex
    dom.create_key(_grant(dom, "key.create", "6", token), name="k1", usage="u", remarks="",
                   password=PASSWORD)
    dom.create_secret(_grant(dom, "secret.create", "6", token), name="p1", key="k1",
                      remarks="", password=PASSWORD)
    with pytest.raises(TooManyRequests) as e:
        dom.create_key(_grant(dom, "key.create", "6", token), name="k2", usage="u",
                       remarks="", password=PASSWORD)
    assert _code(e.value) == "31000022"
    refused = [a for a in dom._audit.find(action="aivault.key.create")
               if a["outcome"] == "failure"]
    assert [a["details"]["reason"] for a in refused] == ["rate_limited"]


# ---- the password rules judge the form the key is derived from (NFC) ----------------------

def test_decomposed_characters_do_not_pad_a_password_past_the_rules():
    from chalicelib.dialects.aivault.models import CreateMK, parse
    from chalicelib.errors import InvalidInput

    body = {"MKName": "pw1", "MKUsage": "u"}
    with pytest.raises(InvalidInput, match="Password"):  # 20 precomposed e-acute: too short
        parse(CreateMK, {**body, "Password": "e\u0301" * 20})
    with pytest.raises(InvalidInput, match="Password"):  # one class once composed
        parse(CreateMK, {**body, "Password": "e\u0301" * 40})
    ok = parse(CreateMK, {**body, "Password": "e\u0301" * 30 + "A1" * 6})
    assert ok.Password == "\u00e9" * 30 + "A1" * 6  # the form the key is derived from


def test_the_name_rule_compares_compatibility_forms():
    from chalicelib.dialects.aivault.models import check_password
    from chalicelib.errors import InvalidInput

    name = "Kabcdefghijklmnopqrstuvwxyz0123456789abcdK"
    for password in (name, name[::-1], name.replace("K", "\u212a"), name.upper()):
        with pytest.raises(InvalidInput, match="key name"):
            check_password(password, name)


def test_an_out_of_range_wrap_cost_setting_fails_when_the_domain_is_built(settings, hsm, store):
    bad = dataclasses.replace(settings, password_wrap_scrypt=(2**17, 8, 1))  # 128 MiB
    with pytest.raises(ValueError, match="scrypt cost"):
        master_keys(Services(bad, store, hsm, TokenService(store), AuditLog(store),
                             GenerationRate(store, bad)))
