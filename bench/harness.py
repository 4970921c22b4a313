"""What every benchmark shares: a throw-away SoftHSM token and store, starting, polling and
stopping servers on 127.0.0.1, minting a token through the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.client import Client  # noqa: E402
from tests.conftest import free_port  # noqa: E402

PIN, SO_PIN = "1234", "12345678"

__all__ = ["ROOT", "VENV", "Client", "free_port", "keyfront_env", "mint_token",
           "start_keyfront", "stop", "wait_http"]


def keyfront_env(tmp: Path, label: str) -> dict[str, str]:
    """Environment for a throw-away SoftHSM token (KEK and bind key created) and SQLite store."""
    tokens = tmp / "tokens"
    tokens.mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "KEYFRONT_TOKEN_LABEL": label,
           "KEYFRONT_PIN": PIN, "KEYFRONT_STORE": "sqlite",
           "KEYFRONT_SQLITE_PATH": str(tmp / "bench.sqlite3"), "KEYFRONT_ACCESS_LOG": "0",
           # a benchmark generates keys as fast as it can: no per-token generation rate
           "KEYFRONT_GENERATION_RATE": "0"}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN,
                    "--so-pin", SO_PIN], env=env, check=True, capture_output=True)
    subprocess.run([str(VENV / "keyfront"), "hsm", "init"], env=env, check=True, cwd=ROOT,
                   capture_output=True)
    return env


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], log: Path | None,
              ok: tuple[int, ...] = (200,)) -> None:
    """Poll a starting server until `path` answers one of `ok` (60 s at most)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log else ""
            raise SystemExit(f"server on {port} exited:\n{tail}")
        try:
            c = Client("127.0.0.1", port, timeout=2)
            status = c.get(path).status
            c.close()
            if status in ok:
                return
        except OSError:
            pass
        time.sleep(0.1)  # polling a starting server, not synchronising a measurement
    tail = log.read_text()[-2000:] if log else ""
    raise SystemExit(f"server on {port} never became ready:\n{tail}")


def start_keyfront(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """`keyfront serve` on a free port, healthy; output goes to tmp/keyfront.log."""
    port = free_port()
    log = tmp / "keyfront.log"
    proc = subprocess.Popen([str(VENV / "keyfront"), "serve", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_http(port, "/health", proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc, port


def mint_token(env: dict[str, str], scope: str, principal: str = "bench") -> str:
    """A token from `keyfront token create --json` (the admin function's code)."""
    out = subprocess.run([str(VENV / "keyfront"), "token", "create", "--principal", principal,
                          "--scope", scope, "--json"], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return str(json.loads(out.stdout)["token"])


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate a server process (kill it if it lingers)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
