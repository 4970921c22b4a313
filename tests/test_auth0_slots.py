"""The slot rules of rotating rings, as pure functions (no HSM, no store), and the ring head
that stays bounded however long the history; plus a ring written in the old head format."""

from __future__ import annotations

import json

import pytest

from chalicelib.core.audit import AuditLog
from chalicelib.core.limits import GenerationRate
from chalicelib.core.rotating import (
    KEY_SK_PREFIX,
    RING_SK,
    initial_head,
    revoke_key,
    rotate_head,
)
from chalicelib.core.services import Services
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.errors import InvalidState, NotFound
from tests.auth0_support import domain, grant, ring_state_of, tenant_ring


def _apply(slots: dict[str, dict], changes: dict[str, dict]) -> None:
    for kid, change in changes.items():
        slots.setdefault(kid, {}).update(change)


def test_three_rotations_and_a_revoke():
    head = initial_head("k1", "k2")
    slots = {"k1": {"slot": "current", "current_since": "t0"}, "k2": {"slot": "next"}}
    assert (head["current"], head["next"], head["previous"], head["published"]) == \
        ("k1", "k2", [], 2)

    head, changes, retired = rotate_head(head, "k3", "t1")
    _apply(slots, changes)
    assert retired == [] and (head["current"], head["next"]) == ("k2", "k3")
    assert slots["k1"] == {"slot": "previous", "current_since": "t0", "current_until": "t1",
                           "order": 1}
    assert slots["k2"] == {"slot": "current", "current_since": "t1"}
    for n, t in ((4, "t2"), (5, "t3")):
        head, changes, _ = rotate_head(head, f"k{n}", t)
        _apply(slots, changes)
    assert (head["current"], head["next"], head["published"]) == ("k4", "k5", 5)
    assert [k for k, s in sorted(slots.items(), key=lambda i: -i[1].get("order", 0))
            if s["slot"] == "previous"] == ["k3", "k2", "k1"]

    change = revoke_key(head, slots["k2"], "k2", "t4")
    assert change == {"slot": "revoked", "revoked_at": "t4", "wrapped": None}


def test_only_a_previous_key_can_be_revoked():
    head = initial_head("k1", "k2")
    head, changes, _ = rotate_head(head, "k3", "t1")
    slots = {"k1": changes["k1"], "k2": changes["k2"], "k3": changes["k3"]}
    for kid in ("k2", "k3"):  # current, next
        with pytest.raises(InvalidState) as e:
            revoke_key(head, slots[kid], kid, "t2")
        assert e.value.reason == "key_not_revocable"
    with pytest.raises(NotFound):
        revoke_key(head, None, "nope", "t2")
    slots["k1"].update(revoke_key(head, slots["k1"], "k1", "t2"))
    with pytest.raises(InvalidState) as e:
        revoke_key(head, slots["k1"], "k1", "t3")
    assert e.value.reason == "key_revoked"


def test_a_kid_already_in_the_ring_cannot_be_reused():
    head = initial_head("k1", "k2")
    head, _, _ = rotate_head(head, "k3", "t1", keep_previous=1)
    for kid in ("k1", "k2", "k3"):
        with pytest.raises(ValueError):
            rotate_head(head, kid, "t9", keep_previous=1)


def test_keep_previous_retires_older_keys():
    head = initial_head("k1", "k2")
    head, _, retired = rotate_head(head, "k3", "t1", keep_previous=1)
    assert retired == [] and head["previous"] == ["k1"] and head["published"] == 3
    head, _, retired = rotate_head(head, "k4", "t2", keep_previous=1)
    assert retired == ["k1"] and head["previous"] == ["k2"] and head["published"] == 3


def test_the_head_stays_bounded_over_thousands_of_rotations():
    """2,600 rotations once pushed the ring item past DynamoDB's 400 KB: the head now holds
    the current and next kids and counters, whatever the history."""
    head = initial_head("k" * 22, "n" * 22)
    sizes = set()
    for i in range(5000):
        head, changes, _ = rotate_head(head, f"{i:022d}", "2026-12-02T11:03:34.123Z")
        assert len(changes) == 3  # the old current, the old next and the new key
        if i > 10:
            sizes.add(len(json.dumps(head)) - len(str(head["rotations"])) -
                      len(str(head["published"])))
    assert len(sizes) == 1 and sizes.pop() < 200
    assert head["published"] == 5002 and head["rotations"] == 5000


def test_the_input_head_is_not_modified():
    head = initial_head("k1", "k2")
    before = repr(head)
    rotate_head(head, "k3", "t1", keep_previous=1)
    assert repr(head) == before


# ---- a ring written before the head was bounded ----------------------------------------------

def test_an_old_format_ring_reads_the_same_and_moves_its_history_on_change(settings, hsm,
                                                                           store):
    services = Services(settings, store, hsm, TokenService(store), AuditLog(store),
                        GenerationRate(store, settings))
    dom = domain(services)
    caller = Caller(Principal("tid", "t", (Scope.parse(
        "auth0:old:read:signing_keys,create:signing_keys,update:signing_keys"),), 2**40), "r")
    for _ in range(3):
        dom.rotate_signing_key(grant(dom, caller, "old", "signing_key.rotate"))
    ref = tenant_ring("old")
    head, keys = ring_state_of(store, dom, ref)
    previous = [k.kid for k in keys if k.previous]
    dom.revoke_signing_key(grant(dom, caller, "old", "signing_key.revoke"), previous[-1])
    _, keys = ring_state_of(store, dom, ref)
    before = [(k.kid, k.slot, k.current_since, k.current_until, k.revoked_at) for k in keys]

    # rewrite the ring as the old format stored it: lists and times in the head, none in keys
    ring = store.get(ref.pk, RING_SK)
    legacy = {"pk": ref.pk, "sk": RING_SK, "current": ring["current"], "next": ring["next"],
              "previous": [k[0] for k in before if k[1] == "previous"],
              "revoked": [k[0] for k in before if k[1] == "revoked"],
              "times": {k[0]: {n: v for n, v in (("current_since", k[2]),
                                                  ("current_until", k[3]),
                                                  ("revoked_at", k[4])) if v}
                        for k in before}}
    store.update_if_version(legacy, ring["version"])
    for kid, *_ in before:
        item = store.get(ref.pk, KEY_SK_PREFIX + kid)
        old = {k: v for k, v in item.items() if k not in
               ("version", "slot", "current_since", "current_until", "revoked_at", "order")}
        store.update_if_version(old, item["version"])

    keys = dom.rings.keys(ref, lambda exc: None)
    assert [(k.kid, k.slot, k.current_since, k.current_until, k.revoked_at)
            for k in keys] == before
    # the next change moves the history into the keys: the head is bounded again
    new = dom.rotate_signing_key(grant(dom, caller, "old", "signing_key.rotate"))
    head, keys = ring_state_of(store, dom, ref)
    assert "times" not in head and "revoked" not in head and head["next"] == new.kid
    assert [k.kid for k in keys][2:] == [before[0][0]] + [k[0] for k in before[2:]]
    assert head["published"] == sum(not k.revoked for k in keys)
