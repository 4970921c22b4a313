"""StoredSafe transparent encryption (keyfront) against OpenBao's transit engine, one run.

Both servers run on 127.0.0.1 and are driven by the same keep-alive client (tests/client.py):
encrypt, decrypt and rewrap of a 1 KiB plaintext, first sequentially on one connection, then
from 8 concurrent clients (one connection each). keyfront: `keyfront serve` on a SQLite store
and a throw-away SoftHSM token, an aes256-gcm96 key. OpenBao: `bao server -dev` (in-memory), the
transit engine, an aes256-gcm96 key. Both keys are rotated once before measuring, so decrypt
opens version-1 ciphertext and rewrap moves it to version 2.

    .venv/bin/python bench/storedsafe_vs_openbao.py [--n 2000] [--clients 8] [--profile]
                                                    [--bao-audit]

--profile then runs the sequential keyfront encrypt loop again against an instrumented server
(its own process): wall-clock timers around the hot path, then cProfile, to show where a
request's time goes. --bao-audit gives OpenBao a file audit device (keyfront writes an audit
record per operation; a dev server audits nothing), for a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    ROOT,
    VENV,
    Client,
    free_port,
    keyfront_env,
    mint_token,
    stop,
    wait_http,
)
from bench.harness import (
    start_keyfront as harness_start_keyfront,
)
from tests.client import Resp  # noqa: E402

PLAINTEXT = base64.b64encode(os.urandom(1024)).decode()  # 1 KiB
VAULT = "1"
KEY = "bench"
WARMUP = 100
LABEL = "keyfront-bench"


@dataclass
class Result:
    """One measured series."""

    ops: int
    seconds: float
    latencies: list[float]  # seconds per op

    @property
    def rate(self) -> float:
        """Operations per second over the whole series."""
        return self.ops / self.seconds

    def pct(self, p: float) -> float:
        """Latency percentile in ms."""
        lat = sorted(self.latencies)
        if p == 50:
            return statistics.median(lat) * 1e3
        return lat[min(len(lat) - 1, max(0, int(len(lat) * p / 100) - 1))] * 1e3


# ---- the two targets: how to call encrypt / decrypt / rewrap -----------------------------

class Target:
    """A server under test: name, port, and its three operations on one client."""

    name = ""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    def client(self) -> Client:
        """A fresh keep-alive connection."""
        return Client("127.0.0.1", self.port, timeout=30)

    def encrypt(self, c: Client) -> str:
        """Encrypt the 1 KiB plaintext; returns the ciphertext."""
        raise NotImplementedError

    def decrypt(self, c: Client, ct: str) -> None:
        """Decrypt ct and check the plaintext."""
        raise NotImplementedError

    def rewrap(self, c: Client, ct: str) -> None:
        """Rewrap ct to the latest version."""
        raise NotImplementedError


def _ok(r: Resp, what: str) -> Any:
    if r.status != 200:
        raise SystemExit(f"{what}: HTTP {r.status}: {r.text[:300]}")
    return r.json


class Keyfront(Target):
    """keyfront's StoredSafe dialect."""

    name = "keyfront"

    def _post(self, c: Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = c.post(f"/api/1.0/transparent{path}", body, headers={"X-Http-Token": self.token})
        return _ok(r, path)["CALLINFO"]

    def encrypt(self, c: Client) -> str:
        """POST /:vaultid/encrypt/:name."""
        return self._post(c, f"/{VAULT}/encrypt/{KEY}", {"plaintext": PLAINTEXT})["ciphertext"]

    def decrypt(self, c: Client, ct: str) -> None:
        """POST /:vaultid/decrypt/:name."""
        pt = self._post(c, f"/{VAULT}/decrypt/{KEY}", {"ciphertext": ct})["plaintext"]
        assert pt == PLAINTEXT

    def rewrap(self, c: Client, ct: str) -> None:
        """POST /rewrap/:vaultid/:name."""
        out = self._post(c, f"/rewrap/{VAULT}/{KEY}", {"ciphertext": ct})["ciphertext"]
        assert out.startswith("storedsafe:v2:")


class OpenBao(Target):
    """OpenBao's transit engine."""

    name = "openbao"

    def _post(self, c: Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = c.post(f"/v1/transit{path}", body, headers={"X-Vault-Token": self.token})
        return _ok(r, path)["data"]

    def encrypt(self, c: Client) -> str:
        """POST /v1/transit/encrypt/:name."""
        return self._post(c, f"/encrypt/{KEY}", {"plaintext": PLAINTEXT})["ciphertext"]

    def decrypt(self, c: Client, ct: str) -> None:
        """POST /v1/transit/decrypt/:name."""
        assert self._post(c, f"/decrypt/{KEY}", {"ciphertext": ct})["plaintext"] == PLAINTEXT

    def rewrap(self, c: Client, ct: str) -> None:
        """POST /v1/transit/rewrap/:name."""
        out = self._post(c, f"/rewrap/{KEY}", {"ciphertext": ct})["ciphertext"]
        assert out.startswith("vault:v2:")


# ---- measuring -----------------------------------------------------------------------------

def _op(t: Target, op: str, ct: str) -> Callable[[Client], Any]:
    if op == "encrypt":
        return t.encrypt
    if op == "decrypt":
        return lambda c: t.decrypt(c, ct)
    return lambda c: t.rewrap(c, ct)


def sequential(t: Target, op: str, ct: str, n: int) -> Result:
    """n ops, one after another, on one kept-alive connection."""
    c = t.client()
    fn = _op(t, op, ct)
    for _ in range(WARMUP):
        fn(c)
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        fn(c)
        lat.append(time.perf_counter() - s)
    total = time.perf_counter() - t0
    c.close()
    return Result(n, total, lat)


def concurrent(t: Target, op: str, ct: str, clients: int, per_client: int) -> Result:
    """clients threads x per_client ops, each on its own connection, released together."""
    fn = _op(t, op, ct)
    conns = [t.client() for _ in range(clients)]
    for c in conns:  # connect and warm up outside the timing
        for _ in range(max(1, WARMUP // clients)):
            fn(c)
    barrier = threading.Barrier(clients + 1)
    lats: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            for _ in range(per_client):
                s = time.perf_counter()
                fn(conns[i])
                lats[i].append(time.perf_counter() - s)
        except BaseException as exc:  # noqa: BLE001 - reported after join
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    barrier.wait(timeout=60)
    t0 = time.perf_counter()
    for th in threads:
        th.join(timeout=600)
    total = time.perf_counter() - t0
    for c in conns:
        c.close()
    if errors or any(th.is_alive() for th in threads):
        raise SystemExit(f"{t.name} {op}: concurrent run failed: {errors[:3]}")
    return Result(clients * per_client, total, [x for lat in lats for x in lat])


# ---- starting and stopping the servers -----------------------------------------------------

def start_keyfront(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Keyfront]:
    """`keyfront serve`, a token for vault 1, an aes256-gcm96 key rotated once."""
    proc, port = harness_start_keyfront(tmp, env)
    try:
        target = Keyfront(port, mint_token(env, f"storedsafe:{VAULT}:read,write"))
        c = target.client()
        for path, body in ((f"/{VAULT}/keys/{KEY}", {"type": "aes256-gcm96"}),
                           (f"/{VAULT}/keys/{KEY}/rotate", {})):
            r = c.post(f"/api/1.0/transparent{path}", body,
                       headers={"X-Http-Token": target.token})
            if r.status != 201:
                raise SystemExit(f"keyfront set-up {path}: {r.status} {r.text[:300]}")
        c.close()
    except BaseException:
        stop(proc)  # the caller never gets the handle: stop it here
        raise
    return proc, target


def start_openbao(tmp: Path, audit: bool = False) -> tuple[subprocess.Popen[bytes], OpenBao]:
    """`bao server -dev`, transit mounted, an aes256-gcm96 key rotated once; with audit, a
    file audit device too (keyfront always audits; a dev server has no audit device)."""
    port = free_port()
    log = tmp / "openbao.log"
    env = {**os.environ, "HOME": str(tmp), "BAO_ADDR": f"http://127.0.0.1:{port}"}
    cmd = [str(VENV / "bao"), "server", "-dev", "-dev-root-token-id=root",
           f"-dev-listen-address=127.0.0.1:{port}"]
    if audit:  # OpenBao 2.x creates audit devices only declaratively, from its config
        conf = tmp / "openbao-audit.hcl"
        conf.write_text(f'audit "file" "bench" {{\n  options {{\n    file_path = '
                        f'"{tmp / "openbao-audit.log"}"\n  }}\n}}\n')
        cmd.append(f"-config={conf}")
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    try:
        wait_http(port, "/v1/sys/health", proc, log)
        target = OpenBao(port, "root")
        c = target.client()
        h = {"X-Vault-Token": "root"}
        steps: list[tuple[str, dict[str, Any]]] = [
            ("/v1/sys/mounts/transit", {"type": "transit"}),
            (f"/v1/transit/keys/{KEY}", {"type": "aes256-gcm96"}),
            (f"/v1/transit/keys/{KEY}/rotate", {})]
        for path, body in steps:
            r = c.post(path, body, headers=h)
            if r.status not in (200, 204):
                raise SystemExit(f"openbao set-up {path}: {r.status} {r.text[:300]}")
        if audit:
            r = c.get("/v1/sys/audit", headers=h)
            if "bench/" not in (_ok(r, "audit list") or {}):
                raise SystemExit(f"openbao audit device missing: {r.text[:300]}")
        c.close()
    except BaseException:
        stop(proc)  # the caller never gets the handle: stop it here
        raise
    return proc, target


def _v1_ciphertext(t: Target) -> str:
    """A ciphertext under version 1 (so that rewrap really changes version)."""
    c = t.client()
    if isinstance(t, Keyfront):
        r = c.post(f"/api/1.0/transparent/{VAULT}/encrypt/{KEY}",
                   {"plaintext": PLAINTEXT, "key_version": "1"},
                   headers={"X-Http-Token": t.token})
        ct = _ok(r, "encrypt v1")["CALLINFO"]["ciphertext"]
    else:
        r = c.post(f"/v1/transit/encrypt/{KEY}", {"plaintext": PLAINTEXT, "key_version": 1},
                   headers={"X-Vault-Token": t.token})
        ct = _ok(r, "encrypt v1")["data"]["ciphertext"]
    c.close()
    return ct


# ---- profile -------------------------------------------------------------------------------

def serve_profiled(mode: str, port: int, report: Path) -> None:
    """Child process of --profile: `keyfront serve` (gunicorn, one worker) instrumented; when
    the worker stops (SIGTERM to this process) it writes what it measured to `report`.

    mode "timers": wall-clock timers around the hot-path functions (about 1 us each), the
    first WARMUP encrypts excluded. mode "cprofile": cProfile of the request threads
    (relative only: the profiler's per-call overhead inflates small, frequent calls).
    The instruments are installed before gunicorn forks its worker, which inherits them.
    """
    import cProfile
    import functools
    import logging
    import pstats
    from collections import defaultdict

    from chalice.local import LocalGateway

    from chalicelib.core.audit import AuditLog
    from chalicelib.core.tokens import TokenService
    from chalicelib.core.transit import TransitKeys
    from chalicelib.dialects.storedsafe import envelope
    from chalicelib.hsm import Hsm
    from chalicelib.serving import GatewayApp, serve

    acc: dict[str, float] = defaultdict(float)
    snap: dict[str, float] = {}
    count = [0]
    profiles: dict[int, cProfile.Profile] = {}

    def timer(fn: Callable[..., Any], bucket: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            s = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[bucket] += time.perf_counter() - s
                if bucket == "app":  # one request served: exclude the warm-up ones
                    count[0] += 1
                    if count[0] == WARMUP:
                        snap.update(acc)
        return run

    if mode == "timers":
        for owner, attr, bucket in (
                (GatewayApp, "__call__", "app"),
                (LocalGateway, "handle_request", "gateway"),
                (TokenService, "authenticate", "auth"),
                (TransitKeys, "_use", "find"),
                (TransitKeys, "_version_key", "version"),
                (Hsm, "encrypt_gcm", "hsm"),
                (AuditLog, "record", "audit"),
                (envelope, "success", "envelope")):
            setattr(owner, attr, timer(getattr(owner, attr), bucket))
    else:
        original = GatewayApp.__call__

        def call(self: Any, environ: Any, start_response: Any) -> Any:
            prof = profiles.setdefault(threading.get_ident(), cProfile.Profile())
            prof.enable()
            try:
                return original(self, environ, start_response)
            finally:
                prof.disable()

        GatewayApp.__call__ = call  # type: ignore[method-assign]

    def instrument_view(worker: Any) -> None:  # in the worker, once the app is loaded
        import app as app_module

        null = open(os.devnull, "w")  # noqa: SIM115 - audit lines still formatted, not shown
        for h in logging.getLogger("keyfront").handlers:
            if isinstance(h, logging.StreamHandler):
                h.setStream(null)
        if mode == "timers":
            routes = app_module.app.routes[
                "/api/{version}/transparent/{vaultid}/encrypt/{name}"]
            routes["POST"].view_function = timer(routes["POST"].view_function, "view")

    def write_report(_server: Any, _worker: Any) -> None:
        with report.open("w") as out:
            if mode == "cprofile":
                print("cProfile of the worker's request threads (relative only), top 15 by "
                      "own time:", file=out)
                pstats.Stats(*[p for p in profiles.values() if p.getstats()], stream=out) \
                    .sort_stats("tottime").print_stats(15)
                return
            n = count[0] - WARMUP
            us = {k: (acc[k] - snap.get(k, 0.0)) / max(n, 1) * 1e6 for k in acc}
            parts = ("auth", "find", "version", "hsm", "audit", "envelope")
            rows = [
                ("WSGI adapter: environ, body, response", us["app"] - us["gateway"]),
                ("chalice local gateway: event, route match, response",
                 us["gateway"] - us["view"]),
                ("token lookup (TokenService.authenticate)", us["auth"]),
                ("key record (TransitKeys._use, cached)", us["find"]),
                ("version blob (immutable, cached in-process)", us["version"]),
                ("HSM AES-GCM 1 KiB (Hsm.encrypt_gcm)", us["hsm"]),
                ("audit record (AuditLog.record: store + log line)", us["audit"]),
                ("response envelope (envelope.success)", us["envelope"]),
                ("dialect rest: JSON body, pydantic, base64, checks",
                 us["view"] - sum(us[k] for k in parts)),
            ]
            print(f"APP_US {us['app']:.1f}", file=out)
            print(f"{'part':52} {'us/req':>7}", file=out)
            for label, v in rows:
                print(f"{label:52} {v:7.0f}", file=out)

    serve("127.0.0.1", port, workers=1, threads=8, access_log=False,
          hooks={"post_worker_init": instrument_view, "worker_exit": write_report})


def profile(env: dict[str, str], token: str, n: int, tmp: Path) -> None:
    """Run the sequential encrypt loop against an instrumented server child, per mode."""
    import signal

    for mode in ("timers", "cprofile"):
        port = free_port()
        report = tmp / f"profile-{mode}.txt"
        log = tmp / f"profile-{mode}.log"
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                 "--serve-profiled", mode, "--port", str(port),
                                 "--report", str(report)], cwd=ROOT, env=env,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            wait_http(port, "/health", proc, log)
            target = Keyfront(port, token)
            c = target.client()
            for _ in range(WARMUP):
                target.encrypt(c)
            started = time.perf_counter()
            for _ in range(n):
                target.encrypt(c)
            client_us = (time.perf_counter() - started) / n * 1e6
            c.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        finally:
            stop(proc)
        print()
        if not report.exists():
            print(log.read_text()[-2000:])
        elif mode == "timers":
            lines = report.read_text().splitlines()
            app_us = float(lines[0].split()[1])
            print(f"Where a sequential encrypt's time goes ({n} requests after {WARMUP}; "
                  f"{client_us:.0f} us per request seen by the client, {app_us:.0f} us of "
                  "it in the app; wall-clock timers in the gunicorn worker):")
            print(lines[1] + "  share")
            for line in lines[2:]:
                print(f"{line}  {float(line.split()[-1]) / client_us * 100:4.0f}%")
            rest = client_us - app_us
            print(f"{'client + loopback + gunicorn (HTTP, thread hand-off)':52} {rest:7.0f}  "
                  f"{rest / client_us * 100:4.0f}%")
        else:
            print(report.read_text())


# ---- main ----------------------------------------------------------------------------------

def _table(rows: list[tuple[str, str, Result, Result]]) -> str:
    head = (f"{'op':8} {'mode':12} | {'keyfront ops/s':>14} {'p50 ms':>7} {'p99 ms':>7} | "
            f"{'openbao ops/s':>13} {'p50 ms':>7} {'p99 ms':>7} | {'kf/bao':>6}")
    lines = [head, "-" * len(head)]
    for op, mode, kf, bao in rows:
        lines.append(f"{op:8} {mode:12} | {kf.rate:14.0f} {kf.pct(50):7.2f} {kf.pct(99):7.2f} | "
                     f"{bao.rate:13.0f} {bao.pct(50):7.2f} {bao.pct(99):7.2f} | "
                     f"{kf.rate / bao.rate:5.2f}x")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="sequential ops per operation")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--profile", action="store_true", help="also profile keyfront encrypt")
    ap.add_argument("--bao-audit", action="store_true",
                    help="enable a file audit device in OpenBao (keyfront always audits)")
    ap.add_argument("--serve-profiled", choices=("timers", "cprofile"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_profiled:  # the --profile child
        serve_profiled(args.serve_profiled, args.port, args.report)
        return
    n = max(10, min(args.n, 1_000_000))
    clients = max(1, min(args.clients, 64))
    per_client = max(1, n // clients)
    tmp = Path(tempfile.mkdtemp(prefix="kf-bench-"))
    kf_proc = bao_proc = None
    try:
        env = keyfront_env(tmp, LABEL)
        kf_proc, kf = start_keyfront(tmp, env)
        bao_proc, bao = start_openbao(tmp, audit=args.bao_audit)
        cts = {t.name: _v1_ciphertext(t) for t in (kf, bao)}
        rows = []
        for mode in ("sequential", f"{clients} clients"):
            for op in ("encrypt", "decrypt", "rewrap"):
                res = {}
                for t in (kf, bao):
                    if mode == "sequential":
                        res[t.name] = sequential(t, op, cts[t.name], n)
                    else:
                        res[t.name] = concurrent(t, op, cts[t.name], clients, per_client)
                rows.append((op, mode, res["keyfront"], res["openbao"]))
        bao_version = subprocess.run([str(VENV / "bao"), "version"], capture_output=True,
                                     text=True).stdout.strip()
        print(f"1 KiB plaintext, 127.0.0.1, keep-alive client (tests/client.py); sequential "
              f"n={n}, concurrent {clients}x{per_client}; {os.cpu_count()} CPUs")
        print(f"keyfront: keyfront serve, SQLite, SoftHSM2, aes256-gcm96, audit record per op | "
              f"{bao_version}, -dev (in-memory), transit aes256-gcm96, "
              f"{'file audit device' if args.bao_audit else 'no audit device'}")
        print(_table(rows))
        if args.profile:
            stop(kf_proc)
            kf_proc = None
            profile(env, kf.token, n, tmp)
    finally:
        stop(kf_proc)
        stop(bao_proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
