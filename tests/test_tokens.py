"""Tokens: minted, stored as a hash only, scoped, expiring, revocable; on both stores."""

from __future__ import annotations

import pytest

from chalicelib.core.tokens import Scope, TokenService, hash_token
from chalicelib.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from chalicelib.store import Delete


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_create_and_authenticate(store):
    svc = TokenService(store)
    raw, record = svc.create("alice", [Scope.parse("storedsafe:179:read,write")], 3600)
    assert raw.startswith("kf_") and len(raw) >= 40
    p = svc.authenticate(raw)
    assert p.name == "alice" and p.token_id == record["token_id"]
    assert p.can("storedsafe", "179", "write")
    assert not p.can("storedsafe", "179", "admin")
    assert not p.can("storedsafe", "180", "read")
    assert not p.knows("storedsafe", "180")
    with pytest.raises(Forbidden) as exc:
        p.require("storedsafe", "179", "read", "admin")
    assert exc.value.needed == ("read", "admin")


def test_token_stored_only_as_hash(store):
    svc = TokenService(store)
    raw, record = svc.create("alice", [Scope.parse("storedsafe:*:read")], 60)
    items = store.query("tokens").items + [store.get(f"token#{hash_token(raw)}", "token")]
    dump = repr(items)
    assert raw not in dump and raw[3:] not in dump
    assert all("hash" not in r for r in svc.list())


def test_wildcard_ring_and_perms_with_colons(store):
    svc = TokenService(store)
    raw, _ = svc.create("ops", [Scope.parse("auth0:*:read:signing_keys,update:signing_keys")])
    p = svc.authenticate(raw)
    assert p.can("auth0", "anything", "update:signing_keys")
    assert not p.can("auth0", "anything", "create:signing_keys")
    assert not p.can("storedsafe", "1", "read")


@pytest.mark.parametrize("raw", [None, "", "nope", "kf_" + "A" * 43, "kf_" + "x" * 200])
def test_bad_tokens_are_unauthenticated(store, raw):
    with pytest.raises(Unauthenticated):
        TokenService(store).authenticate(raw)


def test_expiry(store):
    clock = Clock()
    svc = TokenService(store, clock=clock)
    raw, _ = svc.create("alice", [Scope.parse("storedsafe:1:read")], 10)
    svc.authenticate(raw)
    clock.t += 10
    with pytest.raises(Unauthenticated):
        svc.authenticate(raw)


def test_revoke(store):
    svc = TokenService(store)
    raw, record = svc.create("alice", [Scope.parse("storedsafe:1:read")])
    other, _ = svc.create("bob", [Scope.parse("storedsafe:1:read")])
    revoked = svc.revoke(record["token_id"])
    assert revoked["revoked_at"]
    with pytest.raises(Unauthenticated):
        svc.authenticate(raw)
    svc.authenticate(other)
    assert svc.revoke(record["token_id"])["revoked_at"] == revoked["revoked_at"]
    with pytest.raises(NotFound):
        svc.revoke("0000000000000000")
    listed = {r["token_id"]: r for r in svc.list()}
    assert listed[record["token_id"]]["revoked_at"] and not listed[_["token_id"]]["revoked_at"]


@pytest.mark.parametrize("principal,scopes,ttl", [
    ("", ["storedsafe:1:read"], 60),
    ("a", [], 60),
    ("a", ["nosuchkind:1:read"], 60),
    ("a", ["storedsafe:1:fly"], 60),
    ("a", ["storedsafe:1:read"], 0),
    ("a", ["storedsafe:1:read"], 10**9),
])
def test_create_rejects_bad_input(store, principal, scopes, ttl):
    with pytest.raises(InvalidInput):
        TokenService(store).create(principal, [Scope.parse(s) for s in scopes], ttl)


@pytest.mark.parametrize("text", ["storedsafe", "storedsafe:1", ":1:read", "a::read"])
def test_scope_parse_rejects(text):
    with pytest.raises(InvalidInput):
        Scope.parse(text)


@pytest.mark.parametrize("raw", ["kf_\ud800" + "A" * 42, "kf_" + "é" * 43, "kf_" + "A" * 42 + "=",
                                 b"kf_" + b"A" * 43, 12345])
def test_malformed_tokens_never_reach_the_hash(store, raw):
    with pytest.raises(Unauthenticated):
        TokenService(store).authenticate(raw)


def test_revoke_when_the_hash_record_is_already_gone(store):
    """TTL can remove the hash record before the index: revoking still ends, revoked."""
    svc = TokenService(store)
    raw, record = svc.create("alice", [Scope.parse("storedsafe:1:read")])
    store.delete_if(f"token#{hash_token(raw)}", "token")
    assert svc.revoke(record["token_id"])["revoked_at"]
    with pytest.raises(Unauthenticated):
        svc.authenticate(raw)


def test_racing_revokes_all_end_revoked(store):
    import threading

    svc = TokenService(store)
    raw, record = svc.create("alice", [Scope.parse("storedsafe:1:read")])
    results, barrier = [], threading.Barrier(6)

    def run() -> None:
        barrier.wait(10)
        results.append(svc.revoke(record["token_id"])["revoked_at"])

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6 and len(set(results)) == 1
    with pytest.raises(Unauthenticated):
        svc.authenticate(raw)


def test_a_creation_retried_after_a_lost_response_is_one_token(sqlite_store):
    """A store client that retries a transaction whose response was lost (moto ignores
    DynamoDB's request token) finds the token written: that is success, not an error."""

    class LostResponse:
        def __init__(self, store):
            self._store = store

        def transact(self, ops):
            self._store.transact(ops)  # written, the response lost: retried
            return self._store.transact(ops)

        def __getattr__(self, name):
            return getattr(self._store, name)

    tokens = TokenService(LostResponse(sqlite_store))  # type: ignore[arg-type]
    raw, record = tokens.create("p", [Scope.parse("storedsafe:1:read")])
    assert tokens.authenticate(raw).token_id == record["token_id"]
    assert [t["token_id"] for t in tokens.list()] == [record["token_id"]]


def test_expired_and_revoked_are_told_apart(store):
    clock = Clock()
    svc = TokenService(store, clock=clock)
    raw, record = svc.create("alice", [Scope.parse("miarec:*:read")], 60)
    svc.revoke(record["token_id"])
    with pytest.raises(Unauthenticated) as exc:
        svc.authenticate(raw)
    assert exc.value.reason != "token_expired"
    raw, _ = svc.create("alice", [Scope.parse("miarec:*:read")], 60)
    clock.t += 61
    with pytest.raises(Unauthenticated) as exc:
        svc.authenticate(raw)
    assert exc.value.reason == "token_expired"


def test_derived_tokens_are_narrower_and_never_outlive_their_parent(store):
    clock = Clock()
    svc = TokenService(store, clock=clock)
    raw, _ = svc.create("alice", [Scope.parse("apinizer:p1:read,manage"),
                                  Scope.parse("storedsafe:*:read")], 600)
    parent = svc.authenticate(raw)
    same, record = svc.derive(parent, None, 3600)
    assert record["expires_at"] == clock.t + 600  # clamped to the parent's expiry
    assert svc.authenticate(same).scopes == parent.scopes and same != raw
    narrow, record = svc.derive(parent, [Scope.parse("apinizer:p1:read"),
                                         Scope.parse("storedsafe:179:read")], 60)
    assert record["expires_at"] == clock.t + 60
    p = svc.authenticate(narrow)
    assert p.name == "alice" and p.can("storedsafe", "179", "read")
    assert not p.can("apinizer", "p1", "manage") and not p.can("storedsafe", "180", "read")
    for wider in ("apinizer:p1:deploy", "apinizer:p2:read", "apinizer:*:read",
                  "miarec:p1:read"):
        with pytest.raises(Forbidden) as exc:
            svc.derive(parent, [Scope.parse(wider)], 60)
        assert exc.value.reason == "scope_not_held"


def test_a_derived_token_dies_with_its_parent(store):
    """A derived token records its parent and root; it is refused once the parent is revoked
    (at once in this process, through a warm cache), derives no further, and is refused when
    the parent's record is gone."""
    svc = TokenService(store, cache_seconds=300)
    raw, record = svc.create("alice", [Scope.parse("apinizer:p:read,manage")], 3600)
    parent = svc.authenticate(raw)
    child_raw, child = svc.derive(parent, None, 600)
    assert child["parent_token_id"] == child["root_token_id"] == record["token_id"]
    p = svc.authenticate(child_raw)  # both records now cached
    assert p.parent_token_id == record["token_id"] and p.root == record["token_id"]
    assert parent.root == record["token_id"] and not parent.parent_token_id
    with pytest.raises(Forbidden) as exc:
        svc.derive(p, None, 600)
    assert exc.value.reason == "token_derived"
    listed = {r["token_id"]: r for r in svc.list()}
    assert listed[child["token_id"]]["parent_token_id"] == record["token_id"]
    svc.revoke(record["token_id"])
    with pytest.raises(Unauthenticated) as gone:
        svc.authenticate(child_raw)
    assert gone.value.reason == "token_revoked"
    # another process's cache-less service agrees; and a parent whose record is gone
    with pytest.raises(Unauthenticated):
        TokenService(store).authenticate(child_raw)
    raw2, record2 = svc.create("bob", [Scope.parse("apinizer:p:read")], 3600)
    child2_raw, _ = svc.derive(svc.authenticate(raw2), None, 600)
    index = store.get("tokens", record2["token_id"])
    store.transact([Delete("tokens", record2["token_id"], int(index["version"]))])
    with pytest.raises(Unauthenticated):
        TokenService(store).authenticate(child2_raw)
