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


def test_a_deployment_racing_an_environment_delete_is_not_left_for_its_successor(
        settings, hsm, store, monkeypatch):
    """A key is deployed to e1 while e1 is being deleted (after the delete's check for
    keys, before its delete): the environment is gone and no key stays deployed to its name,
    so a recreated e1 holds no deployment it never got."""
    from chalicelib.core import project_keys as module
    from chalicelib.errors import NotFound

    dom, project, caller = _domain(settings, hsm, store)
    create = check(caller, dom.kind, project, dom.action("key.create"), "deploy")
    real = module.scan
    armed = [True]
    raced: list[BaseException] = []

    def scan(st: Any, pk: str, prefix: str = "", **kw: Any) -> Any:
        yield from real(st, pk, prefix, **kw)
        if armed and pk == dom.pk(project) and prefix == module.KEY_PREFIX:
            armed.clear()  # the delete has looked for keys, found none: deploy one now
            try:
                dom.create(create, name="k", description=None, key_type="secret",
                           algorithm="aes",
                           environments=[EnvironmentContent("e1", None, os.urandom(16))])
            except NotFound as exc:
                raced.append(exc)

    monkeypatch.setattr(module, "scan", scan)
    try:
        dom.delete_environment(project, "e1", principal="test")
        deleted = True
    except Exception:  # noqa: BLE001 - refusing the delete (in use) is as good
        deleted = False
    monkeypatch.setattr(module, "scan", real)
    assert not armed
    keys = dom.list(check(caller, dom.kind, project, dom.action("key.list")))
    deployed_e1 = [k.name for k in keys if any(e.environment == "e1" for e in k.environments)]
    if deleted:
        assert deployed_e1 == [] and raced
        dom.create_environment(project, "e1", "TEST", principal="test")
        keys = dom.list(check(caller, dom.kind, project, dom.action("key.list")))
        assert not any(e.environment == "e1" for k in keys for e in k.environments)
    else:
        assert deployed_e1 == ["k"]
        assert "e1" in [e.name for e in dom.all_environments(project)]


@pytest.fixture(autouse=True)
def _no_rate(monkeypatch):
    """These tests are about ordering, not the rate."""
    monkeypatch.setattr(GenerationRate, "spend", lambda *a, **k: None)
