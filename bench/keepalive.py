"""Keep-alive latency of GET /health: `keyfront serve` (gunicorn) against `chalice local`
as shipped, measured in the same run on 127.0.0.1 with one reused connection each.

Run after scripts/setup.sh (both servers use the dev stage: the local token and store):
    .venv/bin/python bench/keepalive.py [--n 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, VENV, Client, free_port, stop, wait_http  # noqa: E402


def _measure(port: int, n: int) -> tuple[float, float, float]:
    c = Client("127.0.0.1", port)
    c.get("/health")  # open the connection outside the timing
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        r = c.get("/health")
        lat.append(time.perf_counter() - s)
        assert r.status == 200, r.text
    total = time.perf_counter() - t0
    lat.sort()
    return n / total, statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99) - 1] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300, help="requests per server (bounded)")
    args = ap.parse_args()
    env = {**os.environ, "SOFTHSM2_CONF": str(ROOT / "softhsm" / "softhsm2.conf"),
           "KEYFRONT_ACCESS_LOG": "0"}
    p_kf, p_ch = free_port(), free_port()
    servers = {
        "keyfront serve (gunicorn)": (p_kf, subprocess.Popen(
            [str(VENV / "keyfront"), "serve", "--port", str(p_kf)], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)),
        "chalice local (as shipped)": (p_ch, subprocess.Popen(
            [str(VENV / "chalice"), "local", "--port", str(p_ch), "--no-autoreload"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)),
    }
    try:
        results = {}
        for name, (port, proc) in servers.items():
            wait_http(port, "/health", proc, None)
            results[name] = _measure(port, args.n)
    finally:
        for _, proc in servers.values():
            stop(proc)
    print(f"GET /health on one kept-alive connection, n={args.n}")
    print(f"{'server':32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (rps, p50, p99) in results.items():
        print(f"{name:32} {rps:9.1f} {p50:8.2f} {p99:8.2f}")
    (kf, _, _), (ch, _, _) = results.values()
    print(f"ratio keyfront/chalice-local: {kf / ch:.1f}x")


if __name__ == "__main__":
    main()
