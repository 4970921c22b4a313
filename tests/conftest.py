"""Shared fixtures: a throw-away SoftHSM token, both store backends, the local HTTP server.

The SoftHSM config is set up in pytest_configure, before anything loads the PKCS#11 module,
because SoftHSM reads SOFTHSM2_CONF once at C_Initialize.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TEST_PIN = "4321"
TEST_SO_PIN = "87654321"
TEST_TOKEN = "keyfront-test"

_tmp_root = Path(tempfile.mkdtemp(prefix="keyfront-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    """Create a fresh SoftHSM token for this run and point the settings at it."""
    tokendir = _tmp_root / "tokens"
    tokendir.mkdir(parents=True, exist_ok=True)
    conf = _tmp_root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TEST_TOKEN,
         "--pin", TEST_PIN, "--so-pin", TEST_SO_PIN],
        check=True, capture_output=True,
    )
    os.environ.update({
        "KEYFRONT_TOKEN_LABEL": TEST_TOKEN,
        "KEYFRONT_PIN": TEST_PIN,
        "KEYFRONT_STORE": "sqlite",
        "KEYFRONT_SQLITE_PATH": str(_tmp_root / "default.sqlite3"),
        # moto serialises every call behind one lock: under load a call can wait longer than
        # DynamoDB ever would, and a retried transaction is not idempotent there
        "KEYFRONT_DYNAMODB_READ_TIMEOUT": "60",
        # keys handed out under a password: scrypt at its lowest accepted cost (a sixth of
        # the default's), as the suite creates many; test_aivault_file checks the default
        "KEYFRONT_PASSWORD_WRAP_SCRYPT": "16384,8,1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    })
    from chalicelib.config import Settings
    from chalicelib.hsm.bootstrap import ensure_keys

    ensure_keys(Settings.from_env())


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_tmp_root, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def settings():
    """Settings of this test run (SQLite default; see the store fixtures for DynamoDB)."""
    from chalicelib.config import Settings

    return Settings.from_env()


@pytest.fixture(scope="session")
def hsm(settings):
    """The process-wide HSM handle on the test token."""
    from chalicelib.hsm import get_hsm

    return get_hsm(settings)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's DynamoDB server, spoken to over real HTTP."""
    from moto.dynamodb.responses import DynamoHandler
    from moto.server import ThreadedMotoServer

    # DynamoDB applies each request atomically; moto does not (put_item checks then writes
    # unlocked, and a cancelled transact_write_items restores a deep copy of the whole
    # table, wiping other threads' commits). Serialise moto's DynamoDB handler so races
    # test our conditions, not moto's internals. It is still moto's real HTTP server.
    original, lock = DynamoHandler.call_action, threading.RLock()

    def serial_call_action(self):  # type: ignore[no-untyped-def]
        with lock:
            return original(self)

    DynamoHandler.call_action = serial_call_action
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    DynamoHandler.call_action = original


@pytest.fixture
def sqlite_store(tmp_path):
    """A SQLite store on a real file of its own."""
    from chalicelib.store.sqlite_store import SqliteStore

    return SqliteStore(str(tmp_path / "store.sqlite3"))


@pytest.fixture
def dynamodb_store(moto_endpoint):
    """A DynamoDB store on a fresh table in moto's server."""
    from chalicelib.store.dynamodb_store import DynamoStore, client_config, create_table

    table = f"kf-{uuid.uuid4().hex[:12]}"
    create_table(table, region="us-east-1", endpoint_url=moto_endpoint)
    return DynamoStore(table, region="us-east-1", endpoint_url=moto_endpoint,
                       config=client_config(60))


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request):
    """Each store backend in turn: the contract suite runs unchanged against both."""
    return request.getfixturevalue(f"{request.param}_store")


# ---------------------------------------------------------------------------------------------
# The live server: `keyfront serve` in a subprocess, as a user runs it, on either store.

REPO = Path(__file__).resolve().parent.parent


class LiveServer:
    """A running `keyfront serve`, plus in-process services on the same store and token."""

    def __init__(self, backend: str, env: dict[str, str], port: int, log_path: Path,
                 workers: int = 1) -> None:
        from chalicelib.config import Settings
        from chalicelib.core.services import Services

        self.backend = backend
        self.env = env
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        # One worker: a change made over one connection is seen at once over every other
        # (the in-process caches' bound applies between workers; tests/test_serving.py runs
        # two).
        self.workers = workers
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.settings = Settings.from_env()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.services = Services.build(self.settings)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server process and wait until /health answers 200."""
        import time

        from tests.client import Client

        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists()
             else "python3", "-m", "chalicelib.cli", "serve", "--port", str(self.port),
             "--workers", str(self.workers)],
            cwd=REPO, env={**os.environ, **self.env}, stdout=log, stderr=log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_tail()}")
            try:
                c = Client("127.0.0.1", self.port, timeout=2)
                if c.get("/health").status == 200:
                    c.close()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become healthy: {self.log_tail()}")

    def stop(self) -> None:
        """Terminate the server process."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log_tail(self, n: int = 4000) -> str:
        """The end of the server's output (for failure messages)."""
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def client(self):
        """A fresh keep-alive client to this server."""
        from tests.client import Client

        return Client("127.0.0.1", self.port)

    def mint(self, *scopes: str, principal: str = "tester", ttl: int = 3600) -> str:
        """A token with scopes given as KIND:RING:PERM[,PERM...] strings."""
        from chalicelib.core.tokens import Scope

        raw, _ = self.services.tokens.create(principal, [Scope.parse(s) for s in scopes], ttl)
        return raw


def _start_server(backend: str, tmp: Path, moto: str | None, workers: int = 1) -> LiveServer:
    env = {"KEYFRONT_STORE": backend, "KEYFRONT_ACCESS_LOG": "0"}
    if backend == "sqlite":
        env["KEYFRONT_SQLITE_PATH"] = str(tmp / "server.sqlite3")
    else:
        from chalicelib.store.dynamodb_store import create_table

        table = f"kf-srv-{uuid.uuid4().hex[:8]}"
        create_table(table, region="us-east-1", endpoint_url=moto)
        env.update({"KEYFRONT_DYNAMODB_TABLE": table, "KEYFRONT_DYNAMODB_ENDPOINT": moto or ""})
    srv = LiveServer(backend, env, free_port(), tmp / f"server-{backend}.log", workers)
    srv.start()
    return srv


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory) -> Iterator[LiveServer]:
    """The live server on a SQLite file."""
    srv = _start_server("sqlite", tmp_path_factory.mktemp("srv-sqlite"), None)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def dynamodb_server(tmp_path_factory, moto_endpoint) -> Iterator[LiveServer]:
    """The live server on a DynamoDB table in moto's server."""
    srv = _start_server("dynamodb", tmp_path_factory.mktemp("srv-ddb"), moto_endpoint)
    yield srv
    srv.stop()


def own_live_servers(label: str) -> tuple[Any, Any, Any]:
    """Module-scoped live servers of a test module's own, and a `live_server` over them that
    overrides the session one: for modules whose volume (audit records, moto's table
    copies on cancelled transactions) would slow every later test on the shared servers.

        _x_sqlite, _x_dynamodb, live_server = own_live_servers("x")
    """
    @pytest.fixture(scope="module", name=f"_{label}_sqlite")
    def sqlite(tmp_path_factory) -> Iterator[LiveServer]:
        srv = _start_server("sqlite", tmp_path_factory.mktemp(f"{label}-sqlite"), None)
        yield srv
        srv.stop()

    @pytest.fixture(scope="module", name=f"_{label}_dynamodb")
    def dynamodb(tmp_path_factory, moto_endpoint) -> Iterator[LiveServer]:
        srv = _start_server("dynamodb", tmp_path_factory.mktemp(f"{label}-ddb"), moto_endpoint)
        yield srv
        srv.stop()
        # moto keeps every table in this worker's memory for the session, and every later
        # transaction there deep-copies whole tables (and the garbage collector walks all
        # of them): a module's own table goes with its server
        from chalicelib.store.dynamodb_store import make_client

        client = make_client("dynamodb", "us-east-1", moto_endpoint)
        table = srv.env["KEYFRONT_DYNAMODB_TABLE"]
        # the one table definition protects tables from deletion: lifted for a test table
        client.update_table(TableName=table, DeletionProtectionEnabled=False)
        client.delete_table(TableName=table)

    @pytest.fixture(params=["sqlite", "dynamodb"], name="live_server")
    def live(request) -> LiveServer:
        return request.getfixturevalue(f"_{label}_{request.param}")  # type: ignore[no-any-return]

    return sqlite, dynamodb, live


@pytest.fixture(params=["sqlite", "dynamodb"])
def live_server(request) -> LiveServer:
    """Each live server in turn: end-to-end tests run against both stores."""
    return request.getfixturevalue(f"{request.param}_server")


# A skipped test is not a passed test: the suite fails if anything was skipped.
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and exitstatus == 0:
        print(f"\n{len(_skipped)} test(s) skipped; skips are failures here: {_skipped[:5]}")
        session.exitstatus = 1
