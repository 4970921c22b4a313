"""The KEK roll below the HTTP API: the HSM's rewrap of every key kind, the pure rules that
find blobs in items, and core/kek_roll.py on both stores (resumable, idempotent, a tampered
or copied blob reported and left, destroy refused while blobs remain, --check's counts).

Each test has KEK labels of its own (a prefix per test), created through the bootstrap, so
that destroying its version 1 leaves the session's KEK alone.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from chalicelib import admin, cli, errors
from chalicelib.core.audit import AuditLog
from chalicelib.core.kek_roll import (
    PROGRESS_PK,
    KekRoll,
    check_version,
    find_wrapped,
    place_problem,
    progress_sk,
    replaced,
)
from chalicelib.hsm import Hsm, SignScheme, WrappedKey
from chalicelib.hsm.bootstrap import ensure_keys
from chalicelib.store import Store, Update


def kek_settings(settings: Any, version: int = 1, prefix: str | None = None) -> Any:
    """Settings with KEK labels of their own, at `version`."""
    prefix = prefix or f"roll-{uuid.uuid4().hex[:8]}"
    return dataclasses.replace(settings, kek_label_prefix=f"{prefix}-kek",
                               bind_key_label_prefix=f"{prefix}-bind", kek_version=version)


def prefix_of(s: Any) -> str:
    return str(s.kek_label_prefix)[:-len("-kek")]


def every_blob(store: Store) -> list[tuple[str, str, dict[str, Any]]]:
    """(pk, sk, blob dict) of every WrappedKey in the store, read independently of the roll."""
    out, cursor = [], None
    while True:
        page = store.scan_all(cursor, limit=50)
        out += [(i["pk"], i["sk"], b) for i in page.items for _, b in find_wrapped(i)]
        if page.cursor is None:
            return out
        cursor = page.cursor


# ---- pure rules -------------------------------------------------------------------------------

def test_find_wrapped_and_replaced_reach_nested_blobs():
    blob = {f: None for f in WrappedKey.__dataclass_fields__}
    item = {"pk": "p", "a": blob, "b": [1, {"c": blob, "d": [blob]}], "e": {"blob": b"x"},
            "f": {**blob, "extra": 1}}  # not exactly the fields: not a blob
    assert [p for p, _ in find_wrapped(item)] == [("a",), ("b", 1, "c"), ("b", 1, "d", 0)]
    new = replaced(item, ("b", 1, "d", 0), "NEW")
    assert new["b"][1]["d"] == ["NEW"] and item["b"][1]["d"] == [blob]  # a copy
    assert new["a"] is blob and new["e"] is item["e"]


@pytest.mark.parametrize(("pk", "context", "problem"), [
    ("ss#179#k#1", "storedsafe/179/k/1/1", None),
    ("auth0#t1#signing", "auth0/t1/signing/kid", None),
    ("auth0#t1#conkeys#c1", "auth0/t1/connections/c1/keys/kid", None),
    ("apz#My#Proj#keys", "apinizer/My#Proj/keys/k/environments/e", None),  # '#' in a ring
    ("miarec#t2", "miarec/t1/keys/k", "holds a key blob of another ring"),
    ("miarec#t1x", "miarec/t1/keys/k", "holds a key blob of another ring"),
    ("ss#179", "miarec/179/keys/k", "holds a key blob of another ring kind"),
    ("tokens", "nobody/x/y", "holds a key blob bound to no ring kind"),
    ("ss#1", None, "holds a key blob without a context"),
])
def test_a_blob_belongs_to_the_ring_of_its_partition(pk, context, problem):
    assert place_problem(pk, context) == problem


@pytest.mark.parametrize("bad", [0, -1, True, "2", 2.0, None, 10**9])
def test_kek_versions_are_checked(bad):
    with pytest.raises(errors.InvalidInput):
        check_version(bad)
    assert check_version(7) == 7


# ---- the HSM ----------------------------------------------------------------------------------

def test_hsm_rewrap_keeps_every_kind_of_key_and_its_context(settings):
    s1 = kek_settings(settings, 1)
    s2 = kek_settings(settings, 2, prefix_of(s1))
    assert len(ensure_keys(s1)) == 2
    old, new = Hsm(s1), Hsm(s2)
    assert old.kek_exists(1) and not old.kek_exists(2)
    assert len(ensure_keys(s2)) == 2 and ensure_keys(s2) == []
    assert new.kek_exists(2)
    ctx = "t/ring/key"
    aes = old.generate_aes(256, ctx + "/aes")
    secret = old.import_secret(b"s" * 40, ctx + "/secret", exportable=True)
    rsa_key = old.generate_rsa(2048, ctx + "/rsa")
    ec_key = old.generate_ec("P-256", ctx + "/ec")
    sealed = old.encrypt_gcm(aes, aes.context, b"before the roll", b"aad")
    wrapped_out = old.wrap_secret_under(secret, secret.context, b"k" * 32)

    rolled = {k.kind: new.rewrap(k, k.context, 2) for k in (aes, secret, rsa_key, ec_key)}
    for key in (aes, secret, rsa_key, ec_key):
        got = rolled[key.kind]
        assert got.kek_label == f"{prefix_of(s1)}-kek-v2" and key.kek_label.endswith("-v1")
        assert (got.kind, got.size, got.curve, got.exportable, got.context, got.public_der) \
            == (key.kind, key.size, key.curve, key.exportable, key.context, key.public_der)
        assert got.blob != key.blob and got.tag != key.tag
        assert new.rewrap(got, got.context, 2) is got  # already there: unchanged
    # the old KEK goes; the rolled keys are the same keys
    assert new.destroy_kek(1) == [f"{prefix_of(s1)}-kek-v1", f"{prefix_of(s1)}-bind-v1"]
    assert not new.kek_exists(1) and new.destroy_kek(1) == []
    assert new.decrypt_gcm(rolled["aes"], aes.context, sealed, b"aad") == b"before the roll"
    assert new.wrap_secret_under(rolled["secret"], secret.context, b"k" * 32) == wrapped_out
    data = b"signed after the roll"
    rsa_public = serialization.load_der_public_key(rsa_key.public_der)
    rsa_public.verify(new.sign(rolled["rsa"], rsa_key.context, data,
                               SignScheme.RSA_PKCS1_SHA256), data, padding.PKCS1v15(),
                      hashes.SHA256())
    assert new.verify(ec_key.public_der, data, new.sign(rolled["ec"], ec_key.context, data,
                                                        SignScheme.ECDSA_SHA256),
                      SignScheme.ECDSA_SHA256, ecdsa_encoding="raw")
    assert isinstance(serialization.load_der_public_key(ec_key.public_der),
                      ec.EllipticCurvePublicKey)
    # a blob under the destroyed KEK is unusable: the reason the roll must finish first;
    # the service cannot use it (Unavailable), it is not a copied record (BindingError)
    with pytest.raises(errors.Unavailable, match="KEK version 1 is not on the token"):
        new.rewrap(aes, aes.context, 2)

    with pytest.raises(errors.InvalidState):
        new.destroy_kek(2)  # the configured version


def test_hsm_rewrap_checks_the_tag_against_the_context_first(settings):
    s1 = kek_settings(settings, 1)
    s2 = kek_settings(settings, 2, prefix_of(s1))
    ensure_keys(s1)
    ensure_keys(s2)
    hsm = Hsm(s2)
    key = Hsm(s1).generate_aes(128, "t/a/1")
    for bad, context in [(key, "t/b/1"),  # bound elsewhere: never re-tagged to b
                         (dataclasses.replace(key, context="t/b/1"), "t/b/1"),
                         (dataclasses.replace(key, tag=bytes(32)), "t/a/1"),
                         (dataclasses.replace(key, exportable=True), "t/a/1")]:
        with pytest.raises(errors.BindingError):
            hsm.rewrap(bad, context, 2)
    with pytest.raises(errors.Unavailable):
        hsm.rewrap(key, "t/a/1", 3)  # no KEK version 3 on the token


# ---- the roll on both stores ------------------------------------------------------------------

class Seeded:
    """A store with blobs of every kind under KEK version 1 of a prefix of its own."""

    def __init__(self, settings: Any, store: Store) -> None:
        self.s1 = kek_settings(settings, 1)
        self.s2 = kek_settings(settings, 2, prefix_of(self.s1))
        ensure_keys(self.s1)
        self.store = store
        self.now = [1_800_000_000.0]  # the roll's clock, moved by the tests
        hsm1 = Hsm(self.s1)
        self.aes = hsm1.generate_aes(256, "storedsafe/7/k/100/1")
        self.ct = hsm1.encrypt_gcm(self.aes, self.aes.context, b"old ciphertext")
        self.rsa = hsm1.generate_rsa(2048, "miarec/t/keys/k1")
        self.ec = hsm1.generate_ec("P-384", "auth0/t/signing/kid1")
        self.secret = hsm1.import_secret(b"z" * 24, "apinizer/p/keys/k/environments/e", True)
        store.put_if_absent({"pk": "ss#7#k#100", "sk": "v#0000000001",
                             "wrapped": self.aes.to_dict()})
        store.put_if_absent({"pk": "miarec#t", "sk": "key#k1", "name": "one",
                             "wrapped": self.rsa.to_dict()})
        store.put_if_absent({"pk": "auth0#t#signing", "sk": "key#kid1",
                             "wrapped": self.ec.to_dict()})
        store.put_if_absent({"pk": "apz#p#keys", "sk": "key#k", "environments": [
            {"name": "e", "sealed": {"key": self.secret.to_dict(), "ct": b"\x01" * 40}}]})
        for i in range(5):  # items without blobs
            store.put_if_absent({"pk": f"plain#{i}", "sk": "x", "n": i})

    def roll(self) -> KekRoll:
        """The roll as a process configured for version 2 runs it (KEK 2 created first)."""
        ensure_keys(self.s2)
        return KekRoll(self.store, Hsm(self.s2), AuditLog(self.store), self.s2,
                       clock=lambda: self.now[0])


def test_the_roll_refuses_a_missing_or_unconfigured_kek(settings, store):
    seeded = Seeded(settings, store)
    early = KekRoll(store, Hsm(seeded.s2), AuditLog(store), seeded.s2)
    with pytest.raises(errors.InvalidState, match="does not exist"):
        early.run(2, principal="t")  # KEK 2 not created yet
    roll = seeded.roll()
    with pytest.raises(errors.InvalidInput):
        roll.run(3, principal="t")  # not the configured version
    with pytest.raises(errors.InvalidInput):
        roll.run(2, max_items=0, principal="t")
    assert store.get(PROGRESS_PK, progress_sk(2)) is None
    assert all(b["kek_label"].endswith("-v1") for _, _, b in every_blob(store))


def test_a_stopped_roll_resumes_and_a_second_pass_changes_nothing(settings, store):
    seeded = Seeded(settings, store)
    roll = seeded.roll()
    before = roll.check(2)
    assert before["other_kek"] == 4 and before["done"] is False
    assert before["blobs"] == {seeded.s1.kek_label_prefix + "-v1": 4}

    first = roll.run(2, max_items=1, principal="t")  # one batch of one item
    assert not first.done and first.counts.items == 1
    stored = store.get(PROGRESS_PK, progress_sk(2))
    assert stored is not None and stored["cursor"] and stored["counts"]["items"] == 1
    runs = 1
    while True:  # bounded runs, as the admin function is invoked, until the pass is done
        status = roll.run(2, max_items=3, principal="t")
        runs += 1
        assert status.counts.items <= 1 + 3 * (runs - 1)
        if status.done:
            break
    assert status.counts.rewrapped == 4 and status.counts.rewritten == 4
    assert status.counts.failed == 0 and status.problems == []
    after = roll.check(2)
    assert after["done"] and after["other_kek"] == 0
    assert after["blobs"] == {seeded.s2.kek_label_prefix + "-v2": 4}
    # the plain items were not written (still version 1)
    assert all(store.get(f"plain#{i}", "x")["version"] == 1 for i in range(5))
    # a second full pass changes nothing
    again = roll.run(2, principal="t")
    assert again.done and again.counts.rewrapped == 0 and again.counts.rewritten == 0
    assert again.counts.current == 4
    assert store.get("miarec#t", "key#k1")["version"] == 2
    # the destroy: first the retirement (nothing destroyed), then, the wait past, the destroy
    wait = seeded.s2.kek_destroy_after_seconds
    assert roll.destroy(1, principal="t") == {
        "destroyed": [], "retired": True, "destroy_after": int(seeded.now[0]) + wait}
    assert Hsm(seeded.s2).kek_exists(1) and Hsm(seeded.s2).kek_retired(1)
    seeded.now[0] += wait - 1
    with pytest.raises(errors.InvalidState, match="may be destroyed from"):
        roll.destroy(1, principal="t")
    seeded.now[0] += 1
    # the same keys: the old ciphertext decrypts with the rolled blob after KEK 1 is gone
    assert roll.destroy(1, principal="t")["destroyed"] == [f"{prefix_of(seeded.s1)}-kek-v1",
                                                          f"{prefix_of(seeded.s1)}-bind-v1"]
    aes = WrappedKey.from_dict(store.get("ss#7#k#100", "v#0000000001")["wrapped"])
    assert Hsm(seeded.s2).decrypt_gcm(aes, aes.context, seeded.ct) == b"old ciphertext"
    # audited: start, batches with counts, finish (twice: two passes), destroy; no material
    audit = AuditLog(store)
    batches = audit.find(action="kek.rewrap.batch")
    assert len(audit.find(action="kek.rewrap.start")) == 2
    assert len(audit.find(action="kek.rewrap.finish")) == 2 and batches
    assert sum(r["details"]["rewrapped"] for r in batches
               + audit.find(action="kek.rewrap.finish")) == 4
    assert sorted((r["outcome"], r["details"]["forced"])
                  for r in audit.find(action="kek.destroy")) == [
        ("failure", False), ("success", False)]
    assert [r["details"]["kek_version"] for r in audit.find(action="kek.retire")] == [1]
    # each item's re-wrap has its own record, naming the item (written with the item)
    items = audit.find(action="kek.rewrap.item")
    assert sorted(r["object"] for r in items) == [
        "store/apz#p#keys/key#k", "store/auth0#t#signing/key#kid1", "store/miarec#t/key#k1",
        "store/ss#7#k#100/v#0000000001"]
    assert all(r["details"] == {"to_version": 2, "count": 1} for r in items)
    dumped = repr(audit.find()).encode()
    assert seeded.aes.blob not in dumped and aes.blob not in dumped


def test_a_tampered_or_copied_blob_is_reported_and_left(settings, store):
    seeded = Seeded(settings, store)
    # the MiaRec key's blob copied into another tenant's record; a blob edited in place
    store.put_if_absent({"pk": "miarec#other", "sk": "key#k9", "wrapped": seeded.rsa.to_dict()})
    edited = {**seeded.ec.to_dict(), "exportable": True}
    store.put_if_absent({"pk": "auth0#t#signing", "sk": "key#kid2", "wrapped": edited})
    roll = seeded.roll()
    assert roll.check(2)["other_kek"] == 6
    status = roll.run(2, principal="t")
    assert status.done and status.counts.rewrapped == 4 and status.counts.failed == 2
    assert sorted((p["pk"], p["sk"], p["path"], p["problem"]) for p in status.problems) == [
        ("auth0#t#signing", "key#kid2", "wrapped",
         "holds a key blob that fails its binding check"),
        ("miarec#other", "key#k9", "wrapped", "holds a key blob of another ring")]
    # left exactly as they were, never re-tagged
    assert store.get("miarec#other", "key#k9")["wrapped"] == seeded.rsa.to_dict()
    assert store.get("auth0#t#signing", "key#kid2")["wrapped"] == edited
    assert store.get("miarec#other", "key#k9")["version"] == 1
    failures = AuditLog(store).find(action="kek.rewrap.blob")
    assert {(r["object"], r["outcome"]) for r in failures} == {
        ("store/miarec#other/key#k9", "failure"), ("store/auth0#t#signing/key#kid2", "failure")}
    # the check counts them; destroying KEK 1 is refused while they remain
    check = roll.check(2)
    assert check["other_kek"] == 2 and not check["done"]
    assert {(p["pk"], p["sk"]) for p in check["places"]} == {
        ("miarec#other", "key#k9"), ("auth0#t#signing", "key#kid2")}
    with pytest.raises(errors.InvalidState, match="2 stored key blobs"):
        roll.destroy(1, principal="t", force=True)  # force skips the waits, not the check
    assert Hsm(seeded.s2).kek_exists(1)
    # once an operator removed them, KEK 1 goes
    store.delete_if("miarec#other", "key#k9")
    store.delete_if("auth0#t#signing", "key#kid2")
    assert roll.check(2)["done"]
    assert len(roll.destroy(1, principal="t", force=True)["destroyed"]) == 2
    with pytest.raises(errors.NotFound):
        roll.destroy(1, principal="t", force=True)


def test_admin_events_and_cli(settings, store, monkeypatch, capsys):
    """The admin events answer ok/false with a code; the CLI runs them to the end."""
    from chalicelib.core.services import Services
    from chalicelib.core.tokens import TokenService

    seeded = Seeded(settings, store)
    audit = AuditLog(store)
    svc = Services(seeded.s2, store, Hsm(seeded.s2), TokenService(store), audit,
                   None)  # type: ignore[arg-type]  # the rate limit is not used here
    for bad in ({"action": "rewrap"}, {"action": "rewrap", "to_version": "2"},
                {"action": "rewrap", "to_version": 2, "max_items": -5},
                {"action": "destroy-kek", "version": 2}, {"action": "destroy-kek"},
                {"action": "destroy-kek", "version": 1, "force": "yes"},
                {"action": "rewrap-check", "to_version": 0}):
        out = admin.handle(bad, svc)
        assert out["ok"] is False and out["error"] in ("invalid_input", "invalid_state"), out
    out = admin.handle({"action": "rewrap", "to_version": 2}, svc)
    assert out == {"ok": False, "error": "invalid_state", "message": out["message"]}
    assert "does not exist" in out["message"]  # KEK 2 not created yet
    ensure_keys(seeded.s2)
    out = admin.handle({"action": "destroy-kek", "version": 1, "force": True}, svc)
    assert out["ok"] is False and "4 stored key blobs" in out["message"]
    out = admin.handle({"action": "rewrap", "to_version": 2, "max_items": 2}, svc)
    assert out["ok"] and out["done"] is False and out["status"]["counts"]["items"] == 2
    assert "cursor" not in out["status"]

    # the CLI: the rest of the pass in runs of 2 items, then --check and destroy-kek
    monkeypatch.setattr(admin, "get_services", lambda: svc)
    assert cli.main(["hsm", "rewrap", "--to-version", "2", "--max-items", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) > 1 and '"done": true' in lines[-1] and '"done": false' in lines[0]
    assert cli.main(["hsm", "rewrap", "--to-version", "2", "--check"]) == 0
    assert '"other_kek": 0' in capsys.readouterr().out
    assert cli.main(["hsm", "destroy-kek", "--version", "2"]) == 1
    assert "never destroyed" in capsys.readouterr().err
    assert cli.main(["hsm", "destroy-kek", "--version", "1"]) == 1  # retired just now
    assert "may be destroyed from" in capsys.readouterr().err
    assert cli.main(["hsm", "destroy-kek", "--version", "1", "--force"]) == 0
    out = capsys.readouterr().out
    assert '"destroyed": ["' in out and "-kek-v1" in out


def test_the_version_cache_keeps_a_blob_under_an_older_kek_for_the_cache_bound_only():
    from chalicelib.core.keys import VersionCache

    now = [100.0]
    cache = VersionCache(current_kek="kek-v2", seconds=1.0, clock=lambda: now[0])
    blob = {f: None for f in WrappedKey.__dataclass_fields__}
    old = WrappedKey(**{**blob, "kek_label": "kek-v1"})  # type: ignore[arg-type]
    new = WrappedKey(**{**blob, "kek_label": "kek-v2"})  # type: ignore[arg-type]
    cache.put("p", "v#1", old)
    cache.put("p", "v#2", new)
    assert cache.get("p", "v#1") is old and cache.get("p", "v#2") is new
    now[0] += 1.0  # the bound passed: the rolled blob is read again from the store
    assert cache.get("p", "v#1") is None and cache.get("p", "v#2") is new
    off = VersionCache(current_kek="kek-v2", seconds=0)
    off.put("p", "v#1", old)
    assert off.get("p", "v#1") is None


class Interfering:
    """The real store, with a live writer that changes an item just before the roll's first
    conditional write of it (the race the roll must redo, made deterministic)."""

    def __init__(self, store: Store, pk: str, sk: str) -> None:
        self._store, self._key, self.interfered = store, (pk, sk), 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def transact(self, ops: list[Any]) -> Any:
        if not self.interfered and any(
                isinstance(op, Update) and (op.item["pk"], op.item["sk"]) == self._key
                for op in ops):
            self.interfered += 1
            live = self._store.get(*self._key)
            self._store.update_if_version({**live, "name": "renamed meanwhile"},
                                          live["version"])
        return self._store.transact(ops)


def test_a_live_write_between_read_and_write_is_kept_and_the_item_redone(settings, store):
    seeded = Seeded(settings, store)
    ensure_keys(seeded.s2)
    racing = Interfering(store, "miarec#t", "key#k1")
    roll = KekRoll(racing, Hsm(seeded.s2), AuditLog(racing),  # type: ignore[arg-type]
                   seeded.s2)
    status = roll.run(2, principal="t")
    assert racing.interfered == 1 and status.done and status.counts.rewrapped == 4
    item = store.get("miarec#t", "key#k1")
    assert item["name"] == "renamed meanwhile" and item["version"] == 3  # both writes kept
    assert item["wrapped"]["kek_label"] == seeded.s2.kek_label_prefix + "-v2"
    assert WrappedKey.from_dict(item["wrapped"]).public_der == seeded.rsa.public_der


# ---- the barrier before a destroy, the target keys' protection, odd blobs ---------------------

def test_a_retired_kek_refuses_every_wrap_for_every_process_but_still_unwraps(settings):
    s1 = kek_settings(settings, 1)
    s2 = kek_settings(settings, 2, prefix_of(s1))
    ensure_keys(s1)
    ensure_keys(s2)
    stale, new = Hsm(s1), Hsm(s2)  # a process still configured for KEK 1, and the new one
    aes = stale.generate_aes(256, "t/a/1")
    sealed = stale.encrypt_gcm(aes, aes.context, b"kept", b"")
    with pytest.raises(errors.InvalidState):
        new.retire_kek(2)  # the configured version
    assert not new.kek_retired(1) and new.retire_kek(1) and new.kek_retired(1)
    assert new.retire_kek(7) is False  # no such KEK on the token
    # the stale process can no longer wrap (nor re-store a blob) under KEK 1: refused
    with pytest.raises(errors.Unavailable, match="retired"):
        stale.generate_aes(128, "t/a/2")
    with pytest.raises(errors.Unavailable, match="retired"):
        stale.import_secret(b"s" * 32, "t/a/3")
    with pytest.raises(errors.Unavailable, match="retired"):
        stale.rebind(aes, "t/a/1", "t/b/1")
    with pytest.raises(errors.Unavailable, match="retired"):
        stale.ping()
    # its blobs still open and roll away; a blob re-stored by the new process lands under 2
    assert new.decrypt_gcm(aes, aes.context, sealed, b"") == b"kept"
    assert new.rewrap(aes, aes.context, 2).kek_label.endswith("-kek-v2")
    moved = new.rebind(aes, "t/a/1", "t/b/1")
    assert moved.kek_label.endswith("-kek-v2") and moved.context == "t/b/1"
    new.check_binding(moved, "t/b/1")
    new.ping()


def test_rebind_re_wraps_under_the_configured_kek(settings):
    s1 = kek_settings(settings, 1)
    s2 = kek_settings(settings, 2, prefix_of(s1))
    ensure_keys(s1)
    ensure_keys(s2)
    old = Hsm(s1).generate_aes(256, "t/a/1")
    sealed = Hsm(s1).encrypt_gcm(old, old.context, b"x", b"")
    moved = Hsm(s2).rebind(old, "t/a/1", "t/backup/1")
    assert moved.kek_label == s2.kek_label_prefix + "-v2" and moved.blob != old.blob
    back = Hsm(s2).rebind(moved, "t/backup/1", "t/a/1")
    assert Hsm(s2).decrypt_gcm(back, "t/a/1", sealed, b"") == b"x"


def test_the_roll_refuses_target_keys_that_could_leave_the_hsm(settings, store):
    from pkcs11 import Attribute, KeyType, Mechanism

    from chalicelib.hsm.bootstrap import bind_key_template, kek_template

    seeded = Seeded(settings, store)
    s2 = seeded.s2
    kek2, bind2 = s2.kek_label_prefix + "-v2", s2.bind_key_label_prefix + "-v2"

    def create(state: Any) -> None:  # an operator's KEK 2 made extractable, not sensitive
        state.session.generate_key(
            KeyType.AES, 256, label=kek2, store=True, mechanism=Mechanism.AES_KEY_GEN,
            template={**kek_template(kek2), Attribute.EXTRACTABLE: True,
                      Attribute.SENSITIVE: False})
        state.session.generate_key(
            KeyType.GENERIC_SECRET, 256, label=bind2, store=True,
            mechanism=Mechanism.GENERIC_SECRET_KEY_GEN, template=bind_key_template(bind2))

    hsm = Hsm(s2)
    hsm._ts.run(create)
    roll = KekRoll(store, hsm, AuditLog(store), s2)
    with pytest.raises(errors.Unavailable, match="not sensitive and non-extractable"):
        roll.run(2, principal="t")
    with pytest.raises(errors.Unavailable, match="not sensitive and non-extractable"):
        hsm.ping()
    assert store.get(PROGRESS_PK, progress_sk(2)) is None
    assert all(b["kek_label"].endswith("-v1") for _, _, b in every_blob(store))


def test_destroy_counts_any_dict_naming_the_kek_and_reports_a_blob_under_a_missing_kek(
        settings, store):
    seeded = Seeded(settings, store)
    roll = seeded.roll()
    assert roll.run(2, principal="t").done
    # a blob with a field more than WrappedKey has: not a blob to the roll, but it names KEK 1
    odd = {**seeded.aes.to_dict(), "note": "kept by hand"}
    store.put_if_absent({"pk": "ss#7#k#100", "sk": "v#0000000009", "wrapped": odd})
    assert roll.check(2)["other_kek"] == 1
    with pytest.raises(errors.InvalidState, match="1 stored key blobs"):
        roll.destroy(1, principal="t", force=True)
    assert Hsm(seeded.s2).kek_exists(1)
    store.delete_if("ss#7#k#100", "v#0000000009")
    assert roll.destroy(1, principal="t", force=True)["destroyed"]
    # a blob restored under KEK 1 after it is gone: reported by the roll, which goes on
    store.put_if_absent({"pk": "ss#7#k#100", "sk": "v#0000000002",
                         "wrapped": seeded.aes.to_dict()})
    status = roll.run(2, principal="t")
    assert status.done and status.counts.failed == 1
    assert [p["problem"] for p in status.problems] == [
        "holds a key blob under a KEK the token does not hold"]


def test_a_deleted_keys_entry_is_rolled_and_a_copy_in_one_is_reported(settings, store):
    """A deleted key's entry keeps its records verbatim, each with its own pk: their blobs
    are judged against that partition, so a key waiting in its deletion window is rolled
    (and restorable after the old KEK is gone); a blob in an entry record whose pk is not
    its context's ring is a copy, reported and left."""
    seeded = Seeded(settings, store)
    hsm1 = Hsm(seeded.s1)
    waiting = hsm1.generate_rsa(2048, "miarec/t2/keys/k2")
    store.put_if_absent({"pk": "deleted", "sk": "miarec#t2#k2#00ff", "kind": "miarec",
                         "records": [{"pk": "miarec#t2", "sk": "key#k2",
                                      "wrapped": waiting.to_dict()}]})
    store.put_if_absent({"pk": "deleted", "sk": "miarec#t3#k3#00ff", "kind": "miarec",
                         "records": [{"pk": "miarec#t3", "sk": "key#k3",
                                      "wrapped": waiting.to_dict()}]})  # t2's blob, copied
    roll = seeded.roll()
    status = roll.run(2, principal="t")
    while not status.done:
        status = roll.run(2, principal="t")
    assert status.counts.rewrapped == 5 and status.counts.failed == 1
    [problem] = status.problems
    assert (problem["pk"], problem["sk"]) == ("deleted", "miarec#t3#k3#00ff")
    assert "another ring" in str(problem)
    rolled = store.get("deleted", "miarec#t2#k2#00ff")["records"][0]["wrapped"]
    assert rolled["kek_label"].endswith("-v2") and rolled["context"] == "miarec/t2/keys/k2"
    assert store.get("deleted", "miarec#t3#k3#00ff")["records"][0]["wrapped"]["kek_label"] \
        .endswith("-v1")
