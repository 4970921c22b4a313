"""The slot rules of signing-key rings, as pure functions (no HSM, no store)."""

from __future__ import annotations

import pytest

from chalicelib.core.signing_keys import (
    KeyAlreadyRevoked,
    KeyNotFound,
    KeyNotRevocable,
    check_state,
    initial_state,
    revoke_state,
    rotate_state,
)


def test_three_rotations_and_a_revoke():
    s = initial_state("k1", "k2", "t0")
    check_state(s)
    assert (s["current"], s["next"], s["previous"], s["revoked"]) == ("k1", "k2", [], [])
    assert s["times"] == {"k1": {"current_since": "t0"}, "k2": {}}

    s, retired = rotate_state(s, "k3", "t1")
    check_state(s)
    assert retired == []
    assert (s["current"], s["next"], s["previous"]) == ("k2", "k3", ["k1"])
    assert s["times"]["k1"] == {"current_since": "t0", "current_until": "t1"}
    assert s["times"]["k2"] == {"current_since": "t1"}

    s, _ = rotate_state(s, "k4", "t2")
    s, _ = rotate_state(s, "k5", "t3")
    check_state(s)
    assert (s["current"], s["next"], s["previous"]) == ("k4", "k5", ["k3", "k2", "k1"])
    assert s["times"]["k3"] == {"current_since": "t2", "current_until": "t3"}

    s = revoke_state(s, "k2", "t4")
    check_state(s)
    assert s["previous"] == ["k3", "k1"] and s["revoked"] == ["k2"]
    assert s["times"]["k2"]["revoked_at"] == "t4"


def test_only_a_previous_key_can_be_revoked():
    s = initial_state("k1", "k2", "t0")
    s, _ = rotate_state(s, "k3", "t1")
    for kid in ("k2", "k3"):  # current, next
        with pytest.raises(KeyNotRevocable):
            revoke_state(s, kid, "t2")
    with pytest.raises(KeyNotFound):
        revoke_state(s, "nope", "t2")
    s = revoke_state(s, "k1", "t2")
    with pytest.raises(KeyAlreadyRevoked):
        revoke_state(s, "k1", "t3")


def test_a_revoked_key_never_comes_back():
    s = initial_state("k1", "k2", "t0")
    s, _ = rotate_state(s, "k3", "t1")
    s = revoke_state(s, "k1", "t2")
    for i in range(4, 8):
        s, _ = rotate_state(s, f"k{i}", f"t{i}")
        check_state(s)
        assert s["revoked"] == ["k1"]
        assert "k1" not in (s["current"], s["next"], *s["previous"])
    with pytest.raises(ValueError):
        rotate_state(s, "k1", "t9")  # a kid already in the ring cannot be reused


def test_keep_previous_retires_older_keys():
    s = initial_state("k1", "k2", "t0")
    s, retired = rotate_state(s, "k3", "t1", keep_previous=1)
    assert retired == [] and s["previous"] == ["k1"]
    s, retired = rotate_state(s, "k4", "t2", keep_previous=1)
    check_state(s)
    assert retired == ["k1"] and s["previous"] == ["k2"] and "k1" not in s["times"]


def test_the_input_state_is_not_modified():
    s = initial_state("k1", "k2", "t0")
    before = repr(s)
    rotate_state(s, "k3", "t1")
    s2, _ = rotate_state(s, "k3", "t1")
    revoke_state(s2, "k1", "t2")
    assert repr(s) == before and s2["previous"] == ["k1"]
