"""The tenant-key rules as pure functions: no HSM, no store."""

from __future__ import annotations

import time
import uuid

import pytest

from chalicelib.core.access import ring_of
from chalicelib.core.keys import new_key_id
from chalicelib.core.tenant_keys import (
    GRANTED,
    RING,
    TenantKey,
    added,
    changed,
    check_granter,
    check_private_use,
    removed,
)
from chalicelib.core.tokens import Principal, Scope
from chalicelib.errors import Forbidden, InvalidState, LimitExceeded


def _key(private_use: str = GRANTED, has_private: bool = True) -> TenantKey:
    return TenantKey(id="k", ring="r", name="n", private_use=private_use, active=False,
                     bits=2048, has_private=has_private, public_pem="", created_at="",
                     updated_at="")


def test_adding_an_active_key_deactivates_the_previous_one():
    head, off = added({}, "a", True, 10)
    assert head == {"active": "a", "count": 1} and off is None
    head, off = added(head, "b", False, 10)
    assert head == {"active": "a", "count": 2} and off is None
    head, off = added(head, "c", True, 10)
    assert head == {"active": "c", "count": 3} and off == "a"


def test_the_cap_counts_every_key():
    with pytest.raises(LimitExceeded):
        added({"active": None, "count": 3}, "d", False, 3)


def test_changing_activity():
    head = {"active": "a", "count": 2}
    assert changed(head, "b", True) == ({"active": "b", "count": 2}, "a")
    assert changed(head, "a", True) == (head, None)  # already active: nothing changes
    assert changed(head, "a", False) == ({"active": None, "count": 2}, None)
    assert changed(head, "b", False) == (head, None)  # b was not active
    assert changed(head, "b", None) == (head, None)


def test_removing_keys():
    assert removed({"active": "a", "count": 2}, "a") == {"active": None, "count": 1}
    assert removed({"active": "a", "count": 2}, "b") == {"active": "a", "count": 1}
    assert removed({}, "b") == {"active": None, "count": 0}


def test_private_use_needs_a_grant_for_granted_keys_and_export():
    check_private_use(_key(GRANTED), granted=True)
    check_private_use(_key(RING), granted=False)  # ring-wide keys decrypt for any reader
    with pytest.raises(Forbidden):
        check_private_use(_key(GRANTED), granted=False)
    with pytest.raises(Forbidden):  # exporting always needs the grant
        check_private_use(_key(RING), granted=False, export=True)
    check_private_use(_key(RING), granted=True, export=True)
    with pytest.raises(InvalidState):  # an encrypt-only key has no private use at all
        check_private_use(_key(GRANTED, has_private=False), granted=True)


def test_only_granted_users_grant():
    check_granter(True)
    with pytest.raises(Forbidden):
        check_granter(False)


def test_key_ids_are_time_ordered_uuid7():
    ids = [new_key_id(time.time() + i / 1000) for i in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert all(uuid.UUID(i).version == 7 for i in ids)


def test_ring_of():
    def principal(*rings: str) -> Principal:
        return Principal("t", "u", tuple(Scope("miarec", r, frozenset({"read"}))
                                         for r in rings), 0)
    assert ring_of(principal("a"), "miarec", "default", None) == "a"
    assert ring_of(principal("a"), "miarec", "default", "b") == "b"  # authorize decides
    assert ring_of(principal("*"), "miarec", "default", None) == "default"
    with pytest.raises(Forbidden):
        ring_of(principal("a", "b"), "miarec", "default", None)
