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
