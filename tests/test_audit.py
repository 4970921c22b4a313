"""Audit records: the fields, an allow-list for details, on both stores."""

from __future__ import annotations

import json
import threading
import time

import pytest

from chalicelib.core.audit import AuditLog
from chalicelib.core.tokens import Caller, Principal, Scope
from chalicelib.errors import InvalidInput, Unavailable


def _caller() -> Caller:
    p = Principal("tid123", "alice", (Scope("storedsafe", "1", frozenset({"read"})),), 0,
                  raw_token="kf_secret-token")
    return Caller(p, "req-1")


def test_record_has_the_required_fields(store):
    audit = AuditLog(store, clock=lambda: 1_800_000_000.5)
    audit.record(_caller(), "key.rotate", "storedsafe/1/k", key_version=3)
    [rec] = audit.day("2027-01-15").items
    assert rec["time"] == "2027-01-15T08:00:00.500000Z"
    assert (rec["principal"], rec["token_id"], rec["action"], rec["object"], rec["outcome"],
            rec["request_id"]) == ("alice", "tid123", "key.rotate", "storedsafe/1/k",
                                   "success", "req-1")
    assert rec["details"] == {"key_version": 3}


def test_details_outside_the_allow_list_are_dropped(store):
    audit = AuditLog(store)
    audit.record(_caller(), "key.encrypt", "storedsafe/1/k", outcome="failure",
                 plaintext="attack at dawn", key=b"\x00" * 32, token="kf_x", reason="tag")
    [rec] = audit.find(action="key.encrypt")
    text = json.dumps(rec, default=str)
    assert "attack at dawn" not in text and "kf_secret-token" not in text and "kf_x" not in text
    assert rec["details"] == {"reason": "tag"} and rec["outcome"] == "failure"


def test_short_lists_of_names_are_kept_as_details(store):
    from chalicelib.core.audit import MAX_DETAIL_ITEMS, allow_details

    allow_details("deployed", "undeployed")
    audit = AuditLog(store)
    audit.record(_caller(), "key.listed", "x/1/k", deployed=["a", "b"],
                 undeployed=["n"] * (MAX_DETAIL_ITEMS + 1), reason=["a", 1])
    [rec] = audit.find(action="key.listed")
    assert rec["details"] == {"deployed": ["a", "b"]}


def test_records_order_and_filter(store):
    t = [1_800_000_000.0]
    audit = AuditLog(store, clock=lambda: t[0])
    for i in range(5):
        t[0] += 1
        audit.record(None, f"a{i % 2}", f"obj{i}", principal="admin-function",
                     request_id=f"r{i}")
    assert [r["object"] for r in audit.find()] == [f"obj{i}" for i in range(5)]
    assert [r["request_id"] for r in audit.find(action="a1")] == ["r1", "r3"]


def test_time_strings_are_those_of_strftime_and_isoformat():
    import random
    from datetime import UTC, datetime

    from chalicelib.core.audit import _stamps

    rnd = random.Random(0)
    samples = [1_800_000_000.0, 1_800_000_000.5, 0.0, 1e-7, 59.9999995, 86_399.9999996,
               253_402_300_799.0, -62_135_596_800.0, -50_000_000_000.25]
    samples += [rnd.uniform(0, 4e9) for _ in range(3000)] + [float(rnd.randint(0, 4 * 10**9))
                                                            for _ in range(300)]
    for now in samples:
        stamp = datetime.fromtimestamp(now, UTC)
        assert _stamps(now) == (f"{stamp:%Y-%m-%d}", f"{stamp:%Y-%m-%dT%H:%M:%S.%fZ}",
                                stamp.isoformat().replace("+00:00", "Z")), now


def test_record_on_a_whole_second_and_its_log_line(store):
    import logging

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    # A handler on the logger itself: the app's "keyfront" logger does not propagate.
    logger, handler = logging.getLogger("keyfront.audit"), Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        audit = AuditLog(store, clock=lambda: 1_800_000_000.0)
        item = audit.record(_caller(), "key.read", "storedsafe/1/k", token="kf_x")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert item["pk"] == "audit#2027-01-15" and item["time"] == "2027-01-15T08:00:00Z"
    assert item["sk"].startswith("2027-01-15T08:00:00.000000Z#") and len(item["sk"]) == 40
    assert item["expires_at"] == 1_800_000_000 + 400 * 24 * 3600
    [line] = handler.lines
    assert json.loads(line) == {"audit": {
        "time": "2027-01-15T08:00:00Z", "principal": "alice", "action": "key.read",
        "object": "storedsafe/1/k", "outcome": "success", "request_id": "req-1"}}
    assert "kf_x" not in line and "kf_secret-token" not in line


def test_a_record_write_retried_after_a_lost_response_is_one_record(sqlite_store):
    """A store client that retries a write whose response was lost finds its own record there
    (alone: DynamoDB answers ConditionalCheckFailed) or writes the same records again (a
    batch: unconditional puts at unique places): one record each, success."""

    class LostResponse:
        def __init__(self, store):
            self._store = store

        def put_if_absent(self, item):
            self._store.put_if_absent(item)  # written, then the response is lost: retried
            return self._store.put_if_absent(item)

        def transact(self, ops):
            self._store.transact(ops)  # written, then the response is lost: retried
            return self._store.transact(ops)

        def __getattr__(self, name):
            return getattr(self._store, name)

    audit = AuditLog(LostResponse(sqlite_store))  # type: ignore[arg-type]
    rec = audit.record(None, "test.retried", "obj", request_id="rid-lost")
    assert [r["sk"] for r in audit.find(action="test.retried")] == [rec["sk"]]
    items = [audit.item(None, "test.batch", f"o{i}") for i in range(3)]
    audit._batches._write(items)
    assert sorted(r["sk"] for r in audit.find(action="test.batch")) == \
        sorted(i["sk"] for i in items)


class _Gated:
    """A store whose first transact waits for a gate: callers arriving meanwhile queue up."""

    def __init__(self, store, fail: bool = False):
        self._store = store
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail = fail

    def _call(self, size, write):
        self.calls.append(size)
        if len(self.calls) == 1:
            self.entered.set()
            assert self.gate.wait(10)
        if self.fail:
            raise Unavailable("store down")
        return write()

    def transact(self, ops):
        return self._call(len(ops), lambda: self._store.transact(ops))

    def put_if_absent(self, item):
        return self._call(1, lambda: self._store.put_if_absent(item))

    def __getattr__(self, name):
        return getattr(self._store, name)


def _record_in_threads(audit, n):
    results: list[object] = [None] * n

    def run(i):
        try:
            results[i] = audit.record(None, "test.batched", f"obj{i}")
        except Exception as exc:  # noqa: BLE001 - compared below
            results[i] = exc
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    return threads, results


def test_concurrent_records_are_written_in_batches_and_each_returns_once_stored(sqlite_store):
    store = _Gated(sqlite_store)
    audit = AuditLog(store, batch_max=5)  # type: ignore[arg-type]
    threads, results = _record_in_threads(audit, 12)
    threads[0].start()
    assert store.entered.wait(10)  # the first write is under way ...
    for t in threads[1:]:
        t.start()  # ... and 11 more records arrive meanwhile
    deadline = time.monotonic() + 10
    while len(audit._batches._pending) < 11 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(isinstance(r, dict) for r in results[1:])  # nobody returned early
    store.gate.set()
    for t in threads:
        t.join(10)
    assert store.calls == [1, 5, 5, 1]  # group commit, at most batch_max per call
    stored = {r["object"] for r in audit.find(action="test.batched")}
    assert stored == {f"obj{i}" for i in range(12)}
    assert all(isinstance(r, dict) for r in results)


def test_a_failed_batch_fails_every_record_in_it(sqlite_store):
    store = _Gated(sqlite_store, fail=True)
    audit = AuditLog(store, batch_max=25)  # type: ignore[arg-type]
    threads, results = _record_in_threads(audit, 6)
    threads[0].start()
    assert store.entered.wait(10)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 10
    while len(audit._batches._pending) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    store.gate.set()
    for t in threads:
        t.join(10)
    assert all(isinstance(r, Unavailable) for r in results), results
    assert audit.find(action="test.batched") == []


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
def test_sharded_days_are_read_merged_in_order_across_pages(backend, request):
    store = request.getfixturevalue(f"{backend}_store")
    t = [1_900_000_000.0]
    old = AuditLog(store, clock=lambda: t[0])  # one partition: records before sharding
    old.record(None, "test.shards", "before")
    audit = AuditLog(store, clock=lambda: t[0], shards=4)
    written = []
    for i in range(30):
        t[0] += 0.001
        written.append(audit.record(None, "test.shards", f"o{i}"))
    assert len({r["pk"] for r in written}) > 1  # spread over the shards
    assert all(r["pk"].startswith("audit#2030-03-17#") for r in written)
    day = "2030-03-17"
    got, cursor, pages = [], None, 0
    while True:
        page = audit.day(day, limit=7, cursor=cursor)
        got += page.items
        pages += 1
        if not page.cursor:
            break
        cursor = page.cursor
    assert [r["object"] for r in got] == ["before"] + [f"o{i}" for i in range(30)]
    assert pages == 5
    with pytest.raises(InvalidInput):
        audit.day(day, cursor="!!")
