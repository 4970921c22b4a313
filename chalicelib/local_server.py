"""A thin runner around Chalice's local gateway, with TCP_NODELAY.

`chalice local` writes the headers and the body of a response in two sends; with Nagle on,
a keep-alive client waits for the delayed ACK (~40 ms) before the body arrives. Setting
TCP_NODELAY on each accepted socket removes that stall.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from chalice.config import Config
from chalice.deploy.validate import validate_routes
from chalice.local import ChaliceRequestHandler, LocalDevServer, ThreadedHTTPServer

from chalicelib.config import REPO_ROOT


class NoDelayHandler(ChaliceRequestHandler):
    """Chalice's request handler with Nagle's algorithm disabled (StreamRequestHandler flag)."""

    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if os.environ.get("KEYFRONT_ACCESS_LOG", "1") != "0":
            super().log_message(format, *args)


class QuietThreadedHTTPServer(ThreadedHTTPServer):
    """Threaded server whose listen backlog fits benchmarks with many clients."""

    request_queue_size = 128


def stage_environment(stage: str) -> dict[str, str]:
    """The environment_variables of a stage in .chalice/config.json (global, then stage)."""
    cfg = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())
    env = dict(cfg.get("environment_variables", {}))
    env.update(cfg.get("stages", {}).get(stage, {}).get("environment_variables", {}))
    return env


def apply_stage_environment(stage: str) -> None:
    """Set the stage's variables that the environment does not set already.

    SOFTHSM2_CONF and the token directory inside it are relative to the repository root,
    so the relative config path is made absolute here.
    """
    for k, v in stage_environment(stage).items():
        if k == "SOFTHSM2_CONF" and not os.path.isabs(v):
            v = str(REPO_ROOT / v)
        os.environ.setdefault(k, v)


def build_server(host: str, port: int, stage: str = "dev") -> LocalDevServer:
    """Load app.py with the stage's environment (variables already set win) and bind."""
    apply_stage_environment(stage)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from chalice.local import LocalChalice

    import app as app_module

    app = app_module.app
    validate_routes(app.routes)
    config = Config.create(chalice_stage=stage, app_name=app.app_name, chalice_app=app,
                           project_dir=str(REPO_ROOT))

    # What chalice.local.create_local_server does: give the app thread-local current_request.
    class _Local(LocalChalice, app.__class__):  # type: ignore[misc,valid-type]
        pass

    app.__class__ = _Local
    return LocalDevServer(app, config, host, port, handler_cls=NoDelayHandler,
                          server_cls=QuietThreadedHTTPServer)
