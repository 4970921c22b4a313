"""The scheduled upkeep runner: steps run in order, a failing step is reported and does not
stop the others, and it is reachable through the admin event, the CLI and Lambda's entry."""

from __future__ import annotations

import dataclasses

import pytest

from chalicelib import admin, maintenance
from chalicelib.core.services import Services
from chalicelib.errors import Conflict, InvalidInput


@pytest.fixture
def services(tmp_path, settings):
    return Services.build(dataclasses.replace(settings, sqlite_path=str(tmp_path / "m.db")))


@pytest.fixture
def steps(monkeypatch):
    ran: list[tuple[str, float]] = []

    def first(svc: Services, now: float) -> dict:
        ran.append(("first", now))
        return {"done": 1}

    def broken(svc: Services, now: float) -> dict:
        ran.append(("broken", now))
        raise RuntimeError("secret detail")

    def refused(svc: Services, now: float) -> dict:
        ran.append(("refused", now))
        raise Conflict("busy elsewhere", reason="busy")

    def last(svc: Services, now: float) -> dict:
        ran.append(("last", now))
        return {"done": 2}

    def partly(svc: Services, now: float) -> dict:
        ran.append(("partly", now))
        return {"done": 3, "failed": ["k1"]}

    monkeypatch.setattr(maintenance, "STEPS", [("first", first), ("broken", broken),
                                               ("refused", refused), ("last", last),
                                               ("partly", partly)])
    return ran


def test_every_step_runs_and_failures_are_reported(services, steps):
    out = maintenance.run(services, now=1000.0)
    assert [name for name, _ in steps] == ["first", "broken", "refused", "last", "partly"]
    assert {at for _, at in steps} == {1000.0}
    assert out["ok"] is False
    assert out["steps"]["first"] == {"done": 1} and out["steps"]["last"] == {"done": 2}
    assert out["steps"]["broken"]["error"] == "internal"
    assert "secret detail" not in str(out)
    assert out["steps"]["refused"]["error"] == Conflict.code
    # some of a step's keys failed: the run is not ok, and the step's summary says which
    assert out["steps"]["partly"] == {"done": 3, "failed": ["k1"]}
    assert maintenance.run(services, only="partly")["ok"] is False
    assert maintenance.run(services, only="last")["ok"] is True


def test_only_one_step_or_a_clear_refusal(services, steps):
    assert maintenance.run(services, only="last")["steps"] == {"last": {"done": 2}}
    assert [name for name, _ in steps] == ["last"]
    with pytest.raises(InvalidInput, match="no maintenance step"):
        maintenance.run(services, only="nope")


def test_admin_event_runs_it(services, steps):
    assert admin.handle({"action": "maintenance", "only": "first"}, services) == \
        {"ok": True, "steps": {"first": {"done": 1}}}
    refused = admin.handle({"action": "maintenance", "only": "nope"}, services)
    assert refused["ok"] is False and refused["error"] == InvalidInput.code


def test_lambda_entry_fails_the_invocation_on_a_failed_step(services, steps, monkeypatch):
    from chalicelib.core import services as container

    monkeypatch.setattr(container, "_services", services)
    monkeypatch.setattr(container, "_pid", __import__("os").getpid())
    with pytest.raises(maintenance.MaintenanceFailed):
        maintenance.invoke()
    monkeypatch.setattr(maintenance, "STEPS", maintenance.STEPS[:1])
    assert maintenance.invoke()["ok"] is True
