"""The in-process caches of token and key records: their bound, and what bypasses them.

Two domain or token-service instances over one store stand for two processes (two Lambda
containers or two `keyfront serve` workers): a change made through one is seen by the other
within the bound, and at once by the one that made it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from chalicelib.core.access import check
from chalicelib.core.audit import AuditLog
from chalicelib.core.cache import TtlCache
from chalicelib.core.kinds import KINDS, TRANSIT
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.core.transit import TransitKeys
from chalicelib.errors import NotFound, Unauthenticated

KIND = KINDS[TRANSIT]
_rings = itertools.count(9100)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """The real store, counting reads."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.gets = 0

    def get(self, pk: str, sk: str) -> Any:
        self.gets += 1
        return self._store.get(pk, sk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# ---- the cache itself -----------------------------------------------------------------------

def test_entries_live_for_the_bound_and_the_cache_is_bounded():
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(1.0, entries=3, clock=clock)
    cache.put("a", 1)
    clock.now += 0.99
    assert cache.get("a") == 1
    clock.now += 0.02
    assert cache.get("a") is None  # older than the bound: read again
    for i, k in enumerate("bcde"):
        cache.put(k, i)
    assert cache.get("b") is None and cache.get("e") == 3  # least recently used went first


def test_zero_seconds_turns_the_cache_off():
    cache: TtlCache[str, int] = TtlCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None


def test_a_read_that_predates_a_drop_is_not_cached():
    cache: TtlCache[str, int] = TtlCache(10)
    mark = cache.drops()  # a reader starts reading the store ...
    cache.drop("k")  # ... this process changes the record meanwhile ...
    cache.put("k", 1, read_after=mark)  # ... the old value is not kept
    assert cache.get("k") is None
    cache.put("k", 2, read_after=cache.drops())
    assert cache.get("k") == 2


# ---- tokens ---------------------------------------------------------------------------------

def test_a_revocation_takes_effect_at_once_here_and_within_the_bound_elsewhere(store):
    counting = CountingStore(store)
    here = TokenService(counting, cache_seconds=60)  # type: ignore[arg-type]
    elsewhere = TokenService(counting, cache_seconds=60)  # type: ignore[arg-type]
    raw, record = here.create("alice", [Scope.parse("storedsafe:1:read")], 3600)
    for svc in (here, elsewhere):
        svc.authenticate(raw)
    reads = counting.gets
    for _ in range(5):
        here.authenticate(raw)
        elsewhere.authenticate(raw)
    assert counting.gets == reads  # steady state: no store read
    here.revoke(record["token_id"])
    with pytest.raises(Unauthenticated):
        here.authenticate(raw)  # the process that revoked: at once
    elsewhere.authenticate(raw)  # another process: until its entry is older than the bound
    elsewhere._cache.seconds = 0  # the bound has passed (the entry is no longer used)
    with pytest.raises(Unauthenticated):
        elsewhere.authenticate(raw)


def test_an_expired_token_is_refused_even_from_the_cache(store):
    clock = Clock()
    svc = TokenService(store, clock=clock, cache_seconds=60)
    raw, _ = svc.create("alice", [Scope.parse("storedsafe:1:read")], 10)
    svc.authenticate(raw)
    clock.now += 11
    with pytest.raises(Unauthenticated):
        svc.authenticate(raw)


def test_unknown_tokens_are_not_cached(store):
    svc = TokenService(store, cache_seconds=60)
    for i in range(3):
        with pytest.raises(Unauthenticated):
            svc.authenticate("kf_" + f"{i}" * 43)
    assert svc._cache._items == {}


# ---- key records ----------------------------------------------------------------------------

def _grant(ring: str, action: str, perms: str = "read,write,admin"):  # noqa: ANN202 - a Grant
    scope = Scope.parse(f"storedsafe:{ring}:{perms}")
    caller = Caller(Principal("tid", "tester", (scope,), 2**40), "rid")
    return check(caller, KIND, ring, f"storedsafe.{action}")


@pytest.fixture
def two_processes(store, hsm, settings):
    counting = CountingStore(store)
    cached = dataclasses.replace(settings, cache_seconds=60)
    here, elsewhere = (TransitKeys(KIND, counting, hsm, AuditLog(counting), cached)  # type: ignore[arg-type]
                       for _ in range(2))
    return counting, here, elsewhere


def test_steady_state_key_use_reads_nothing_from_the_store(two_processes):
    counting, here, _ = two_processes
    ring = str(next(_rings))
    here.create_key(_grant(ring, "key.create"), "k")
    ct = here.encrypt(_grant(ring, "encrypt"), "k", b"x").ciphertext
    here.decrypt(_grant(ring, "decrypt"), "k", ct)
    reads = counting.gets
    for _ in range(5):
        ct = here.encrypt(_grant(ring, "encrypt"), "k", b"x").ciphertext
        here.decrypt(_grant(ring, "decrypt"), "k", ct)
        here.rewrap(_grant(ring, "rewrap"), "k", ct)
    assert counting.gets == reads


def test_a_newer_version_than_the_cached_one_reads_the_record_again(two_processes):
    _, here, elsewhere = two_processes
    ring = str(next(_rings))
    here.create_key(_grant(ring, "key.create"), "k")
    assert here.encrypt(_grant(ring, "encrypt"), "k", b"x").key_version == 1  # cached: v1
    elsewhere.rotate(_grant(ring, "key.rotate"), "k")
    v2 = elsewhere.encrypt(_grant(ring, "encrypt"), "k", b"new").ciphertext
    assert here.decrypt(_grant(ring, "decrypt"), "k", v2).plaintext == b"new"
    assert here.encrypt(_grant(ring, "encrypt"), "k", b"x", key_version=2).key_version == 2
    assert here.encrypt(_grant(ring, "encrypt"), "k", b"x").key_version == 2  # refreshed


def test_a_change_here_is_seen_here_at_once_and_elsewhere_within_the_bound(two_processes):
    _, here, elsewhere = two_processes
    ring = str(next(_rings))
    here.create_key(_grant(ring, "key.create"), "k")
    for svc in (here, elsewhere):
        svc.encrypt(_grant(ring, "encrypt"), "k", b"x")  # both cache the record
    here.rotate(_grant(ring, "key.rotate"), "k")
    assert here.encrypt(_grant(ring, "encrypt"), "k", b"x").key_version == 2  # at once
    assert elsewhere.encrypt(_grant(ring, "encrypt"), "k", b"x").key_version == 1  # the bound
    here.delete(_grant(ring, "key.delete"), "k")
    # (a read-only caller: a writer's encrypt would create the missing key)
    with pytest.raises(NotFound):
        here.encrypt(_grant(ring, "encrypt", "read"), "k", b"x")
    elsewhere._records.seconds = 0  # the bound has passed
    with pytest.raises(NotFound):
        elsewhere.encrypt(_grant(ring, "encrypt", "read"), "k", b"x")
