"""Audit records: the fields, an allow-list for details, on both stores."""

from __future__ import annotations

import json

from chalicelib.core.audit import AuditLog
from chalicelib.core.tokens import Caller, Principal, Scope


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
    """A store client that retries a put whose response was lost finds its own record there
    (DynamoDB answers ConditionalCheckFailed): that is success, not a failed request."""

    class LostResponse:
        def __init__(self, store):
            self._store = store

        def put_if_absent(self, item):
            self._store.put_if_absent(item)  # written, then the response is lost: retried
            return self._store.put_if_absent(item)

        def __getattr__(self, name):
            return getattr(self._store, name)

    audit = AuditLog(LostResponse(sqlite_store))  # type: ignore[arg-type]
    rec = audit.record(None, "test.retried", "obj", request_id="rid-lost")
    assert [r["sk"] for r in audit.find(action="test.retried")] == [rec["sk"]]
