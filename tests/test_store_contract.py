"""The store contract, run unchanged against SQLite (a real file) and DynamoDB (moto's server
over HTTP), plus the few backend-specific behaviours (persistence, wiring, outages, secrets).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.errors import (
    InvalidInput,
    StoreConditionFailed,
    StoreTransactionCancelled,
    Unavailable,
)
from chalicelib.store import Check, Delete, Page, Put, Store, Update, cursor_past, open_store

CCF = "ConditionalCheckFailed"
REPO = Path(__file__).resolve().parent.parent


def typed(value: Any) -> Any:
    """value with every leaf's type made explicit, so True != 1 and b"x" != "x" compare."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def run_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) on n threads released together; results (or exceptions) in order."""
    barrier = threading.Barrier(n)

    def call(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except Exception as e:  # collected, so the caller can count outcomes
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


def query_all(store: Store, pk: str, prefix: str = "", *, limit: int = 100,
              descending: bool = False) -> list[dict[str, Any]]:
    """Every item of a prefix, following cursors."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = store.query(pk, prefix, limit=limit, cursor=cursor, descending=descending)
        items.extend(page.items)
        if page.cursor is None:
            return items
        cursor = page.cursor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- single-item operations --------------------------------------------------------------


def test_get_missing_returns_none(store: Store) -> None:
    assert store.get("nobody", "nothing") is None


def test_put_if_absent_then_get(store: Store) -> None:
    written = store.put_if_absent({"pk": "k", "sk": "a", "name": "alpha", "version": 99})
    assert written == {"pk": "k", "sk": "a", "name": "alpha", "version": 1}
    assert store.get("k", "a") == written


def test_second_put_if_absent_fails_and_keeps_first(store: Store) -> None:
    store.put_if_absent({"pk": "k", "sk": "a", "name": "first"})
    with pytest.raises(StoreConditionFailed):
        store.put_if_absent({"pk": "k", "sk": "a", "name": "second"})
    assert store.get("k", "a") == {"pk": "k", "sk": "a", "name": "first", "version": 1}


def test_update_if_version(store: Store) -> None:
    store.put_if_absent({"pk": "k", "sk": "a", "name": "v1", "gone": "soon"})
    updated = store.update_if_version({"pk": "k", "sk": "a", "name": "v2"}, 1)
    assert updated == {"pk": "k", "sk": "a", "name": "v2", "version": 2}
    # The update replaces the whole item: attributes not given are gone.
    assert store.get("k", "a") == updated

    for wrong in (1, 3):
        with pytest.raises(StoreConditionFailed):
            store.update_if_version({"pk": "k", "sk": "a", "name": "lost"}, wrong)
    assert store.get("k", "a") == updated

    with pytest.raises(StoreConditionFailed):
        store.update_if_version({"pk": "k", "sk": "missing", "name": "x"}, 1)
    assert store.get("k", "missing") is None


def test_delete_if(store: Store) -> None:
    store.put_if_absent({"pk": "k", "sk": "a"})
    store.put_if_absent({"pk": "k", "sk": "b"})

    with pytest.raises(StoreConditionFailed):
        store.delete_if("k", "a", expected_version=2)
    assert store.get("k", "a") is not None
    store.delete_if("k", "a", expected_version=1)
    assert store.get("k", "a") is None

    store.delete_if("k", "b")
    assert store.get("k", "b") is None

    with pytest.raises(StoreConditionFailed):
        store.delete_if("k", "b")
    with pytest.raises(StoreConditionFailed):
        store.delete_if("k", "never", expected_version=1)


ALL_TYPES = {
    "text": "plain",
    "empty_text": "",
    "unicode": "héllo wörld ✓ 日本 \U0001f600",
    "blob": bytes(range(256)),
    "empty_blob": b"",
    "true": True,
    "false": False,
    "zero": 0,
    "negative": -42,
    "large": 10**37 + 1,
    "nothing": None,
    "list": [1, "two", b"\x03", None, True, [], {}, [[b""]]],
    "empty_list": [],
    "empty_dict": {},
    "nested": {"a": {"b": {"c": [{"d": b"\xff\x00"}]}}, "flags": [False, True]},
    # Dicts that look like the SQLite bytes tag must stay dicts.
    "tag_lookalike": {"$b": "AAAA"},
    "dollar_keys": {"$": 1, "$$b": "x", "$b": b"y", "plain": {"$b": {"$b": "z"}}},
    "$top": "a top-level attribute starting with $",
    "$b": "a top-level attribute named like the tag",
}


def test_values_round_trip_exactly(store: Store) -> None:
    store.put_if_absent({"pk": "types", "sk": "all", **ALL_TYPES})
    expected = {"pk": "types", "sk": "all", **ALL_TYPES, "version": 1}
    assert typed(store.get("types", "all")) == typed(expected)
    assert typed(store.query("types").items) == typed([expected])
    store.update_if_version({"pk": "types", "sk": "all", **ALL_TYPES}, 1)
    assert typed(store.get("types", "all")) == typed({**expected, "version": 2})


def test_tuples_and_bytearrays_come_back_as_lists_and_bytes(store: Store) -> None:
    store.put_if_absent({"pk": "k", "sk": "a", "t": (1, bytearray(b"x"))})
    assert typed(store.get("k", "a")["t"]) == typed([1, b"x"])


@pytest.mark.parametrize(("value", "error"), [
    (1.5, TypeError),
    ({1, 2}, TypeError),
    (object(), TypeError),
    ({1: "non-str key"}, TypeError),
    ({"": "empty key"}, ValueError),
    (10**38, ValueError),
    ([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["too deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], ValueError),
])
def test_unsupported_values_are_rejected(store: Store, value: Any, error: type) -> None:
    with pytest.raises(error):
        store.put_if_absent({"pk": "k", "sk": "a", "v": value})
    with pytest.raises(error):
        store.transact([Put({"pk": "k", "sk": "a", "v": value})])
    assert store.get("k", "a") is None


@pytest.mark.parametrize(("pk", "sk", "error"), [
    ("", "a", ValueError), ("k", "", ValueError), (1, "a", TypeError), ("k", None, TypeError),
    ("k", "x" * 1025, ValueError),
])
def test_invalid_keys_are_rejected(store: Store, pk: Any, sk: Any, error: type) -> None:
    with pytest.raises(error):
        store.put_if_absent({"pk": pk, "sk": sk})
    with pytest.raises(error):
        store.get(pk, sk)


def test_invalid_queries_are_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        store.query("")
    with pytest.raises(TypeError):
        store.query(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.query("k", None)  # type: ignore[arg-type]
    for limit in (0, -1, True):
        with pytest.raises(ValueError):
            store.query("k", limit=limit)


# --- queries -----------------------------------------------------------------------------


def _seed_query_items(store: Store) -> None:
    for sk in ["b#2", "a#1", "a#3", "a#2", "a", "a$", "b#1", "a#10"]:
        store.put_if_absent({"pk": "q", "sk": sk, "n": sk})
    store.put_if_absent({"pk": "q2", "sk": "a#1"})  # another partition, same sk
    store.put_if_absent({"pk": "qq", "sk": "a#1"})  # a partition whose name extends "q"


def test_query_by_prefix_in_order(store: Store) -> None:
    _seed_query_items(store)
    page = store.query("q", "a#")
    assert [i["sk"] for i in page.items] == ["a#1", "a#10", "a#2", "a#3"]
    assert page.cursor is None
    assert page.items[0] == {"pk": "q", "sk": "a#1", "n": "a#1", "version": 1}

    desc = store.query("q", "a#", descending=True)
    assert [i["sk"] for i in desc.items] == ["a#3", "a#2", "a#10", "a#1"]

    everything = store.query("q")
    assert [i["sk"] for i in everything.items] == [
        "a", "a#1", "a#10", "a#2", "a#3", "a$", "b#1", "b#2"]
    assert [i["sk"] for i in store.query("q", "a").items] == [
        "a", "a#1", "a#10", "a#2", "a#3", "a$"]
    assert store.query("q", "c") == Page([], None)
    assert store.query("nobody") == Page([], None)


def test_query_prefix_bounds_with_extreme_characters(store: Store) -> None:
    sks = ["p", "p\uffff", "p\U0001f600", "p\U0010ffff", "p\U0010ffffz", "q", "o\U0010ffff",
           "p\U0010fffe", "\U0010ffff", "\U0010ffff\U0010ffff"]
    for sk in sks:
        store.put_if_absent({"pk": "x", "sk": sk})
    expected = ["p", "p\uffff", "p\U0001f600", "p\U0010fffe", "p\U0010ffff", "p\U0010ffffz"]
    assert [i["sk"] for i in store.query("x", "p").items] == expected
    assert [i["sk"] for i in store.query("x", "p\U0010ffff").items] == expected[-2:]
    assert [i["sk"] for i in store.query("x", "\U0010ffff").items] == sks[-2:]


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("limit", [1, 4, 7, 25, 26])
def test_query_paging_returns_everything_once(store: Store, descending: bool,
                                              limit: int) -> None:
    sks = [f"item#{i:03d}" for i in range(25)]
    for sk in sks:
        store.put_if_absent({"pk": "pages", "sk": sk})
    store.put_if_absent({"pk": "pages", "sk": "other#1"})

    pages: list[Page] = []
    cursor = None
    while True:
        page = store.query("pages", "item#", limit=limit, cursor=cursor,
                           descending=descending)
        pages.append(page)
        assert len(page.items) <= limit
        if page.cursor is None:
            break
        cursor = page.cursor
    got = [i["sk"] for p in pages for i in p.items]
    assert got == (sorted(sks, reverse=True) if descending else sorted(sks))
    # No empty trailing page: the last page is the one without a cursor.
    assert len(pages) == -(-25 // limit)
    assert all(p.items for p in pages)


def test_bad_cursors_are_invalid_input(store: Store) -> None:
    store.put_if_absent({"pk": "c", "sk": "a#1"})
    store.put_if_absent({"pk": "c", "sk": "a#2"})
    store.put_if_absent({"pk": "d", "sk": "a#1"})
    store.put_if_absent({"pk": "d", "sk": "a#2"})
    cursor = store.query("c", "a#", limit=1).cursor
    assert cursor is not None
    for bad in ["not base64!", "e30", "", "AAAA"]:
        with pytest.raises(InvalidInput):
            store.query("c", "a#", cursor=bad)
    with pytest.raises(InvalidInput):
        store.query("d", "a#", cursor=cursor)  # another partition
    with pytest.raises(InvalidInput):
        store.query("c", "b#", cursor=cursor)  # another prefix


# --- whole-store scan --------------------------------------------------------------------


def scan_everything(store: Store, limit: int) -> list[Page]:
    """Every page of scan_all, following cursors."""
    pages, cursor = [], None
    while True:
        page = store.scan_all(cursor, limit=limit)
        pages.append(page)
        assert len(page.items) <= limit
        if page.cursor is None:
            return pages
        cursor = page.cursor


@pytest.mark.parametrize("limit", [1, 3, 7, 12, 13])
def test_scan_all_returns_every_item_once(store: Store, limit: int) -> None:
    keys = {(f"p{i % 4}", f"s#{i:02d}") for i in range(12)}
    for pk, sk in keys:
        store.put_if_absent({"pk": pk, "sk": sk, "blob": b"\x00" + sk.encode()})
    pages = scan_everything(store, limit)
    got = [(i["pk"], i["sk"]) for p in pages for i in p.items]
    assert sorted(got) == sorted(keys) and len(got) == len(keys)
    assert all(i["version"] == 1 and i["blob"] == b"\x00" + i["sk"].encode()
               for p in pages for i in p.items)
    assert len(pages) == -(-12 // limit) and all(p.items for p in pages)
    if store.name == "sqlite":
        assert got == sorted(keys)  # SQLite's order is the primary key's


def test_scan_all_resumes_after_changes_between_pages(store: Store) -> None:
    for i in range(6):
        store.put_if_absent({"pk": f"r{i}", "sk": "x"})
    first = store.scan_all(limit=2)
    seen = [(i["pk"], i["sk"]) for i in first.items]
    # the item the cursor names is deleted, another one changed: the scan goes on after it
    store.delete_if(*seen[-1])
    rest = [(i["pk"], i["sk"]) for p in scan_everything_from(store, first.cursor, 2)
            for i in p.items]
    assert sorted(seen + rest) == sorted((f"r{i}", "x") for i in range(6))
    assert not set(seen) & set(rest)


def scan_everything_from(store: Store, cursor: str | None, limit: int) -> list[Page]:
    """The pages of scan_all after `cursor`."""
    pages = []
    while cursor is not None:
        page = store.scan_all(cursor, limit=limit)
        pages.append(page)
        cursor = page.cursor
    return pages


def test_scan_all_skips_a_whole_partition_from_cursor_past(store: Store) -> None:
    for pk in ("a", "b", "c", "d"):
        for i in range(5):
            store.put_if_absent({"pk": pk, "sk": f"{i}" * (i + 1)})
    order = [(i["pk"], i["sk"]) for p in scan_everything(store, 100) for i in p.items]
    for pk in ("a", "b", "c", "d"):
        after = [(i["pk"], i["sk"])
                 for p in scan_everything_from(store, cursor_past(pk), 3) for i in p.items]
        last = max(n for n, key in enumerate(order) if key[0] == pk)
        assert after == order[last + 1:], pk


def test_scan_all_of_an_empty_store_and_bad_arguments(store: Store) -> None:
    assert store.scan_all() == Page([], None)
    for bad in ["not base64!", "e30", "", "AAAA"]:
        with pytest.raises(InvalidInput):
            store.scan_all(bad)
    for limit in (0, -1, True):
        with pytest.raises(ValueError):
            store.scan_all(limit=limit)


# --- transactions ------------------------------------------------------------------------


def _seed_transaction_items(store: Store) -> dict[str, dict[str, Any]]:
    items = {sk: store.put_if_absent({"pk": "t", "sk": sk, "v": sk})
             for sk in ["upd", "del", "chk"]}
    return items


def test_transaction_with_a_failing_condition_writes_nothing(store: Store) -> None:
    before = _seed_transaction_items(store)
    ops = [
        Put({"pk": "t", "sk": "new", "v": "new"}),
        Update({"pk": "t", "sk": "upd", "v": "changed"}, expected_version=1),
        Check("t", "chk", expected_version=2),  # fails: chk is at version 1
        Delete("t", "del", expected_version=1),
    ]
    with pytest.raises(StoreTransactionCancelled) as caught:
        store.transact(ops)
    assert caught.value.reasons == [None, None, CCF, None]
    assert caught.value.failed_index == 2
    assert store.get("t", "new") is None
    for sk, item in before.items():
        assert store.get("t", sk) == item


def test_transaction_names_every_failing_condition(store: Store) -> None:
    before = _seed_transaction_items(store)
    ops = [
        Check("t", "chk", expected_version=1),
        Put({"pk": "t", "sk": "upd"}),  # exists
        Delete("t", "missing"),  # absent
        Update({"pk": "t", "sk": "del"}, expected_version=7),
        Check("t", "chk2"),  # absent, as required
    ]
    with pytest.raises(StoreTransactionCancelled) as caught:
        store.transact(ops)
    assert caught.value.reasons == [None, CCF, CCF, CCF, None]
    assert caught.value.failed_index == 1
    for sk, item in before.items():
        assert store.get("t", sk) == item


def test_transaction_applies_everything(store: Store) -> None:
    _seed_transaction_items(store)
    store.transact([
        Put({"pk": "t", "sk": "new", "v": b"new"}),
        Update({"pk": "t", "sk": "upd", "v": "changed"}, expected_version=1),
        Delete("t", "del", expected_version=1),
        Check("t", "chk", expected_version=1),
        Check("t", "absent"),
    ])
    assert store.get("t", "new") == {"pk": "t", "sk": "new", "v": b"new", "version": 1}
    assert store.get("t", "upd") == {"pk": "t", "sk": "upd", "v": "changed", "version": 2}
    assert store.get("t", "del") is None
    assert store.get("t", "chk") == {"pk": "t", "sk": "chk", "v": "chk", "version": 1}
    assert store.get("t", "absent") is None


def test_unconditional_put_overwrites_and_restarts_at_version_1(store: Store) -> None:
    store.put_if_absent({"pk": "t", "sk": "a", "v": "old"})
    store.update_if_version({"pk": "t", "sk": "a", "v": "older"}, 1)
    store.transact([Put({"pk": "t", "sk": "a", "v": "new"}, if_absent=False),
                    Put({"pk": "t", "sk": "b", "v": "fresh"}, if_absent=False)])
    assert store.get("t", "a") == {"pk": "t", "sk": "a", "v": "new", "version": 1}
    assert store.get("t", "b") == {"pk": "t", "sk": "b", "v": "fresh", "version": 1}


def test_transaction_shape_is_validated(store: Store) -> None:
    store.transact([])  # nothing to do is fine
    with pytest.raises(ValueError):
        store.transact([Put({"pk": "t", "sk": "a"}), Delete("t", "a")])
    with pytest.raises(ValueError):
        store.transact([Check("t", f"k{i}") for i in range(101)])
    with pytest.raises(TypeError):
        store.transact([{"pk": "t", "sk": "a"}])  # type: ignore[list-item]
    assert store.get("t", "a") is None


# --- races -------------------------------------------------------------------------------


def test_racing_put_if_absent_has_one_winner(store: Store) -> None:
    results = run_threads(16, lambda i: store.put_if_absent(
        {"pk": "race", "sk": "one", "winner": i}))
    winners = [r for r in results if isinstance(r, dict)]
    losers = [r for r in results if isinstance(r, StoreConditionFailed)]
    assert len(winners) == 1 and len(losers) == 15, results
    assert store.get("race", "one") == winners[0]


def _retry(fn: Callable[[], Any], errors: tuple[type[Exception], ...]) -> int:
    """Call fn until it does not raise one of errors; the number of attempts."""
    for attempt in range(1, 1001):
        try:
            fn()
            return attempt
        except errors:
            continue
    raise AssertionError("no progress after 1000 attempts")


def test_racing_read_modify_write_loses_no_increment(store: Store) -> None:
    threads, per_thread = 8, 10
    store.put_if_absent({"pk": "race", "sk": "counter", "n": 0})

    def increment() -> None:
        item = store.get("race", "counter")
        store.update_if_version({**item, "n": item["n"] + 1}, item["version"])

    def worker(i: int) -> int:
        return sum(_retry(increment, (StoreConditionFailed,)) for _ in range(per_thread))

    attempts = run_threads(threads, worker)
    assert all(isinstance(a, int) for a in attempts), attempts
    final = store.get("race", "counter")
    assert final["n"] == threads * per_thread
    assert final["version"] == threads * per_thread + 1


def test_racing_transactions_lose_nothing(store: Store) -> None:
    threads, per_thread = 6, 6
    store.put_if_absent({"pk": "race", "sk": "counter", "n": 0})

    def worker(i: int) -> int:
        def step(j: int) -> Callable[[], None]:
            def attempt() -> None:
                item = store.get("race", "counter")
                store.transact([
                    Update({**item, "n": item["n"] + 1}, expected_version=item["version"]),
                    Put({"pk": "race", "sk": f"log#{i}-{j}", "n": item["n"] + 1}),
                ])
            return attempt
        return sum(_retry(step(j), (StoreTransactionCancelled,)) for j in range(per_thread))

    attempts = run_threads(threads, worker)
    assert all(isinstance(a, int) for a in attempts), attempts
    total = threads * per_thread
    assert store.get("race", "counter")["n"] == total
    log = query_all(store, "race", "log#", limit=10)
    assert len(log) == total
    # Each committed transaction saw a distinct counter value: none overwrote another.
    assert sorted(i["n"] for i in log) == list(range(1, total + 1))


# --- backend specifics -------------------------------------------------------------------


def test_sqlite_persists_across_reopen(tmp_path) -> None:
    from chalicelib.store.sqlite_store import SqliteStore

    path = tmp_path / "new" / "dir" / "store.sqlite3"
    first = SqliteStore(str(path))
    first.put_if_absent({"pk": "p", "sk": "s", **ALL_TYPES})
    first.update_if_version({"pk": "p", "sk": "s", **ALL_TYPES, "more": 1}, 1)
    first.close()

    again = SqliteStore(str(path))
    assert typed(again.get("p", "s")) == typed(
        {"pk": "p", "sk": "s", **ALL_TYPES, "more": 1, "version": 2})
    assert again._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.ping()


def test_sqlite_is_atomic_across_connections(tmp_path) -> None:
    """Two stores on one file stand in for two processes: conditions hold across them."""
    from chalicelib.store.sqlite_store import SqliteStore

    path = str(tmp_path / "shared.sqlite3")
    stores = [SqliteStore(path), SqliteStore(path)]
    stores[0].put_if_absent({"pk": "c", "sk": "n", "n": 0})

    def worker(i: int) -> None:
        store = stores[i % 2]
        for j in range(20):
            def inc(j: int = j) -> None:
                item = store.get("c", "n")
                store.transact([Update({**item, "n": item["n"] + 1}, item["version"]),
                                Put({"pk": "c", "sk": f"log#{i}-{j}"})])
            _retry(inc, (StoreTransactionCancelled,))

    assert run_threads(8, worker) == [None] * 8
    assert stores[1].get("c", "n")["n"] == 160
    assert len(query_all(stores[0], "c", "log#")) == 160


_PROCESS_WORKER = """
import sys, time
from pathlib import Path
from chalicelib.errors import StoreTransactionCancelled
from chalicelib.store import Put, Update
from chalicelib.store.sqlite_store import SqliteStore

path, tag, rounds, gate = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = SqliteStore(path)
(gate / f"ready-{tag}").touch()
while not (gate / "go").exists():
    time.sleep(0.001)
for j in range(rounds):
    while True:
        item = store.get("c", "n")
        try:
            store.transact([Update({**item, "n": item["n"] + 1}, item["version"]),
                            Put({"pk": "c", "sk": f"log#{tag}-{j}"})])
            break
        except StoreTransactionCancelled:
            pass
"""


def test_sqlite_is_atomic_across_processes(tmp_path) -> None:
    """Separate processes on one file: BEGIN IMMEDIATE + busy_timeout serialize them."""
    from chalicelib.store.sqlite_store import SqliteStore

    path = str(tmp_path / "shared.sqlite3")
    SqliteStore(path).put_if_absent({"pk": "c", "sk": "n", "n": 0})
    gate = tmp_path / "gate"
    gate.mkdir()
    procs, rounds = 3, 100
    children = [subprocess.Popen(
        [sys.executable, "-c", _PROCESS_WORKER, path, str(i), str(rounds), str(gate)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}) for i in range(procs)]
    try:
        deadline = time.monotonic() + 30
        while len(list(gate.glob("ready-*"))) < procs and time.monotonic() < deadline:
            time.sleep(0.005)
        (gate / "go").touch()  # all start together, so they really contend
        assert [c.wait(60) for c in children] == [0] * procs
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
    store = SqliteStore(path)
    assert store.get("c", "n")["n"] == procs * rounds
    assert len(query_all(store, "c", "log#")) == procs * rounds


def test_open_store_picks_each_backend(tmp_path, moto_endpoint: str) -> None:
    from chalicelib.store.dynamodb_store import DynamoStore, create_table
    from chalicelib.store.sqlite_store import SqliteStore

    local = open_store(Settings(store_backend="sqlite",
                                sqlite_path=str(tmp_path / "x" / "s.sqlite3")))
    assert isinstance(local, SqliteStore) and local.name == "sqlite"
    local.ping()

    table = f"kf-{uuid.uuid4().hex[:12]}"
    create_table(table, region="us-east-1", endpoint_url=moto_endpoint)
    remote = open_store(Settings(store_backend="dynamodb", dynamodb_table=table,
                                 dynamodb_endpoint=moto_endpoint, aws_region="us-east-1"))
    assert isinstance(remote, DynamoStore) and remote.name == "dynamodb"
    remote.ping()
    remote.put_if_absent({"pk": "p", "sk": "s"})
    assert remote.get("p", "s") == {"pk": "p", "sk": "s", "version": 1}

    with pytest.raises(ValueError):
        open_store(Settings(store_backend="postgres"))


def test_dynamodb_unreachable_is_unavailable_quickly() -> None:
    from chalicelib.store.dynamodb_store import DynamoStore

    store = DynamoStore("t", region="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(Unavailable):
        store.get("p", "s")
    with pytest.raises(Unavailable):
        store.ping()
    assert time.monotonic() - started < 10  # two calls, each with botocore's 3 attempts


def test_dynamodb_missing_table_is_unavailable(moto_endpoint: str) -> None:
    from chalicelib.store.dynamodb_store import DynamoStore

    store = DynamoStore("no-such-table", region="us-east-1", endpoint_url=moto_endpoint)
    with pytest.raises(Unavailable):
        store.ping()
    with pytest.raises(Unavailable):
        store.get("p", "s")


def test_create_table_is_idempotent_and_enables_ttl(moto_endpoint: str) -> None:
    from chalicelib.store.dynamodb_store import (
        TABLE_DEFINITION,
        TTL_ATTRIBUTE,
        create_table,
        make_client,
    )

    table = f"kf-{uuid.uuid4().hex[:12]}"
    create_table(table, region="us-east-1", endpoint_url=moto_endpoint)
    create_table(table, region="us-east-1", endpoint_url=moto_endpoint)
    client = make_client("dynamodb", "us-east-1", moto_endpoint)
    described = client.describe_table(TableName=table)["Table"]
    assert described["TableStatus"] == "ACTIVE"
    assert described["KeySchema"] == TABLE_DEFINITION["KeySchema"]
    ttl = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": TTL_ATTRIBUTE}


def test_cloudformation_template_matches_table_definition() -> None:
    from chalicelib.store.dynamodb_store import TABLE_DEFINITION, cloudformation_template

    template = cloudformation_template("keyfront-prod")
    resource = template["Resources"]["KeyfrontTable"]
    assert resource["Type"] == "AWS::DynamoDB::Table"
    assert resource["DeletionPolicy"] == "Retain"
    props = resource["Properties"]
    assert props["TableName"] == "keyfront-prod"
    for name, value in TABLE_DEFINITION.items():
        assert props[name] == value
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    json.dumps(template)  # plain JSON, mergeable by chalice package
    props["KeySchema"].clear()
    assert TABLE_DEFINITION["KeySchema"]  # the template is a copy


def test_read_secret_from_secrets_manager(moto_endpoint: str) -> None:
    from chalicelib.store.dynamodb_store import make_client
    from chalicelib.store.secrets import read_secret

    client = make_client("secretsmanager", "us-east-1", moto_endpoint)
    name = f"keyfront/pin-{uuid.uuid4().hex[:8]}"
    arn = client.create_secret(Name=name, SecretString="4321")["ARN"]
    assert read_secret(arn, "us-east-1", endpoint_url=moto_endpoint) == "4321"
    binary = client.create_secret(Name=name + "-bin", SecretBinary=b"8765")["ARN"]
    assert read_secret(binary, "us-east-1", endpoint_url=moto_endpoint) == "8765"

    with pytest.raises(Unavailable) as caught:
        read_secret(arn.replace(name, name + "-missing"), "us-east-1",
                    endpoint_url=moto_endpoint)
    assert "4321" not in str(caught.value)
    with pytest.raises(Unavailable):
        read_secret(arn, "us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}")
