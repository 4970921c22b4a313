"""The project-keys domain under interleaved writers, in-process on both stores: a hook runs
a concurrent change at the worst moment of another, and what the store ends with is checked."""

from __future__ import annotations

import os
from typing import Any

import pytest

from chalicelib.core.access import check
from chalicelib.core.audit import AuditLog
from chalicelib.core.limits import GenerationRate
from chalicelib.core.project_keys import EnvironmentContent, ProjectKeys
from chalicelib.core.services import Services
from chalicelib.core.tokens import Caller, Principal, Scope, TokenService
from chalicelib.dialects.apinizer.routes import project_keys


def _domain(settings: Any, hsm: Any, store: Any) -> tuple[ProjectKeys, str, Caller]:
    dom = project_keys(Services(settings, store, hsm, TokenService(store), AuditLog(store),
                                GenerationRate(store, settings)))
    project = f"p-{os.urandom(4).hex()}"
    for env in ("e1", "e2"):
        dom.create_environment(project, env, "TEST", principal="test")
    caller = Caller(Principal("t1", "user", (Scope.parse(f"apinizer:{project}:manage,deploy"),),
                              2**40), "rid")
    return dom, project, caller


def test_an_update_computed_before_a_concurrent_undeploy_does_not_undo_it(settings, hsm, store,
                                                                         monkeypatch):
    """A changes the description (keeping the deployment), B undeploys e2 after A has read
    the key and while A seals: A's write is redone on B's result, e2 stays undeployed."""
    dom, project, caller = _domain(settings, hsm, store)
    create = check(caller, dom.kind, project, dom.action("key.create"), "deploy")
    dom.create(create, name="k", description=None, key_type="secret", algorithm="aes",
               environments=[EnvironmentContent(e, None, os.urandom(16)) for e in ("e1", "e2")])
    update = check(caller, dom.kind, project, dom.action("key.update"))
    real = ProjectKeys._sealed
    calls: list[int] = []

    def sealed(self: ProjectKeys, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append(1)
        if len(calls) == 1:  # A, having read the key: B commits its undeploy now
            dom.update(update, "k", environments=[EnvironmentContent("e1")])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ProjectKeys, "_sealed", sealed)
    key, done = dom.update(update, "k", description="changed")
    assert [e.environment for e in key.environments] == ["e1"]
    assert done.environments == ("e1",)
    monkeypatch.setattr(ProjectKeys, "_sealed", real)
    stored = dom.get(check(caller, dom.kind, project, dom.action("key.read")), "k")
    assert stored.description == "changed"
    assert [e.environment for e in stored.environments] == ["e1"]
    assert len(calls) == 3  # A, B, A again


@pytest.fixture(autouse=True)
def _no_rate(monkeypatch):
    """These tests are about ordering, not the rate."""
    monkeypatch.setattr(GenerationRate, "spend", lambda *a, **k: None)
