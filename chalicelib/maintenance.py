"""Scheduled upkeep: the steps the `maintenance` Lambda function runs on its schedule, and
that run locally through `keyfront maintenance run` and once when `keyfront serve` starts.

Each step is idempotent and resumable: it reads what is due from the store, does it with
conditional writes (two schedulers racing do each thing once) and returns a small summary.
A step that fails is reported and does not stop the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from chalicelib.core import rotation
from chalicelib.core.kinds import SIGNING, TRANSIT
from chalicelib.core.services import Services, get_services
from chalicelib.errors import InvalidInput, KeyfrontError

log = logging.getLogger(__name__)

PRINCIPAL = "scheduler"  # the audit principal of scheduled work

# (name, step): step(services, now) -> summary; `now` is epoch seconds
Step = Callable[[Services, float], dict[str, Any]]


def purge(services: Services, now: float) -> dict[str, Any]:
    """Destroy the deleted keys whose deletion window has passed (core/deleted.py)."""
    from chalicelib.admin import deleted_bin, deletion_adapters

    # entries that failed are listed (the run is then not ok) and resumed by the next run
    return deleted_bin(services).purge(deletion_adapters(services), principal=PRINCIPAL,
                                       now=now)


STEPS: list[tuple[str, Step]] = [("purge", purge)]


def run(services: Services | None = None, now: float | None = None,
        only: str | None = None) -> dict[str, Any]:
    """Run every step (or the one named `only`); {"ok": bool, "steps": {name: summary}}.
    A step whose summary lists `failed` items (some keys it could not handle) makes the run
    not ok, its summary kept; a step's KeyfrontError is its summary's `error`; anything else
    is logged and reported as a failure without its text."""
    if only is not None and only not in {name for name, _ in STEPS}:
        raise InvalidInput(f"no maintenance step {only!r}; steps: "
                           + ", ".join(name for name, _ in STEPS), field="only")
    svc = services or get_services()
    at = time.time() if now is None else now
    out: dict[str, Any] = {}
    ok = True
    for name, step in STEPS:
        if only is not None and name != only:
            continue
        try:
            out[name] = step(svc, at)
            ok = ok and not out[name].get("failed")
        except KeyfrontError as exc:
            ok = False
            out[name] = {"error": exc.code, "message": exc.message}
        except Exception:  # noqa: BLE001 - one broken step must not stop the others
            log.exception("maintenance step %s failed", name)
            ok = False
            out[name] = {"error": "internal", "message": "the step failed; see the logs"}
    return {"ok": ok, "steps": out}


def rotation_domains(services: Services) -> dict[str, rotation.Rotatable]:
    """The domains whose keys rotate on a schedule, by ring kind (the other kinds' keys do
    not rotate: see the admin function's set-rotation)."""
    from chalicelib.dialects.auth0.routes import signing_rings
    from chalicelib.dialects.storedsafe.routes import transit_keys

    return {TRANSIT: services.domain(transit_keys), SIGNING: services.domain(signing_rings)}


def rotate(services: Services, now: float) -> dict[str, Any]:
    """The `rotate` step: every key whose scheduled rotation is due, once (see
    core/rotation.py); audited under PRINCIPAL."""
    return rotation.run_due(services.store, rotation_domains(services), now,
                            principal=PRINCIPAL)


STEPS.append(("rotate", rotate))


class MaintenanceFailed(Exception):
    """Raised by the scheduled function when a step failed, so the invocation is counted as
    an error (and alarms on the function's Errors metric see it)."""


def invoke(context: Any = None) -> dict[str, Any]:
    """The scheduled Lambda function: `run`, raising MaintenanceFailed when a step failed.
    Its log lines carry the invocation's request id."""
    import json

    from chalicelib import logs

    logs.invocation(context)
    result = run()
    if not result["ok"]:
        raise MaintenanceFailed(json.dumps(result, sort_keys=True))
    return result
