"""The core's record mechanisms on both stores: retry, paged scan, name claims (rename as one
transaction, unique under races) and the compare-and-swap ring head."""

from __future__ import annotations

import threading

import pytest

from chalicelib.core.records import (
    Place,
    claim,
    claimed,
    parsed,
    read_head,
    release,
    rename,
    retry,
    scan,
)
from chalicelib.errors import (
    Conflict,
    MisplacedRecord,
    StoreConditionFailed,
    StoreTransactionCancelled,
)


def test_retry_reruns_lost_races_then_says_busy():
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StoreTransactionCancelled(["ConditionalCheckFailed"])
        return "done"
    assert retry(attempt, 5) == "done" and len(calls) == 3

    def always() -> None:
        raise StoreConditionFailed("lost")
    with pytest.raises(Conflict) as e:
        retry(always, 4, what="key k")
    assert e.value.reason == "busy" and "key k" in e.value.message
    assert not isinstance(e.value, StoreConditionFailed)  # callers see one clear 409

    def refused() -> None:
        raise Conflict("exists", reason="key_exists")  # a rule, not a lost race: no retry
    calls.clear()
    with pytest.raises(Conflict) as e:
        retry(lambda: calls.append(1) or refused(), 4)
    assert e.value.reason == "key_exists" and len(calls) == 1


def test_scan_reads_every_page_in_order(store):
    for i in range(7):
        store.put_if_absent({"pk": "p", "sk": f"x#{i:02d}", "n": i})
    store.put_if_absent({"pk": "p", "sk": "y#0"})
    assert [it["n"] for it in scan(store, "p", "x#", page=3)] == list(range(7))
    assert [it["sk"] for it in scan(store, "p", page=2)][-1] == "y#0"


def test_parsed_reports_and_leaves_out_misplaced_items():
    def parse(item):
        if item["sk"] != item.get("name"):
            raise Place("p", item["sk"]).misplaced("names another")
        return item["sk"]
    seen: list[MisplacedRecord] = []
    items = iter([{"pk": "p", "sk": "a", "name": "a"}, {"pk": "p", "sk": "b", "name": "x"}])
    assert list(parsed(items, parse, seen.append)) == ["a"]
    assert seen[0].where == ("p", "b") and seen[0].status == 500
    assert "names another" in seen[0].detail and seen[0].message == "internal error"


def test_a_name_is_claimed_once_and_renamed_in_one_transaction(store):
    store.transact([claim("ring", "alpha", "id-1")])
    assert claimed(store, "ring", "alpha") == "id-1"
    with pytest.raises(StoreTransactionCancelled):
        store.transact([claim("ring", "alpha", "id-2")])
    store.transact([claim("ring", "beta", "id-2")])
    # a rename onto a taken name changes nothing
    with pytest.raises(StoreTransactionCancelled):
        store.transact(rename("ring", "alpha", "beta", "id-1"))
    assert (claimed(store, "ring", "alpha"), claimed(store, "ring", "beta")) == ("id-1", "id-2")
    store.transact(rename("ring", "alpha", "gamma", "id-1"))
    assert claimed(store, "ring", "alpha") is None and claimed(store, "ring", "gamma") == "id-1"
    store.transact([release("ring", "gamma")])
    assert claimed(store, "ring", "gamma") is None


def test_racing_renames_onto_one_name_leave_one_owner(store):
    for i in range(6):
        store.transact([claim("ring", f"old-{i}", f"id-{i}")])
    won: list[int] = []
    barrier = threading.Barrier(6)

    def go(i: int) -> None:
        barrier.wait()
        try:
            store.transact(rename("ring", f"old-{i}", "target", f"id-{i}"))
            won.append(i)
        except StoreTransactionCancelled:
            pass
    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and claimed(store, "ring", "target") == f"id-{won[0]}"
    left = [i for i in range(6) if claimed(store, "ring", f"old-{i}") is not None]
    assert sorted(left + won) == list(range(6))


def test_the_ring_head_is_compare_and_swap(store):
    head = read_head(store, "ring")
    assert (head.state, head.version) == ({}, 0)
    store.transact([head.replaced({"keys": 1})])
    with pytest.raises(StoreTransactionCancelled):  # a second "first" write loses
        store.transact([head.replaced({"keys": 1})])
    now = read_head(store, "ring")
    assert (now.state, now.version) == ({"keys": 1}, 1)
    store.transact([now.replaced({"keys": 2})])
    with pytest.raises(StoreTransactionCancelled):  # a stale head loses
        store.transact([now.replaced({"keys": 3})])
    with pytest.raises(StoreTransactionCancelled):  # and so does a condition on it
        store.transact([now.unchanged(), claim("ring", "n", "x")])
    assert read_head(store, "ring").state == {"keys": 2}


def test_racing_increments_of_a_head_lose_nothing(store):
    def bump() -> None:
        def attempt() -> None:
            head = read_head(store, "counter")
            store.transact([head.replaced({"n": head.state.get("n", 0) + 1})])
        retry(attempt, 200)
    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert read_head(store, "counter").state == {"n": 8}
