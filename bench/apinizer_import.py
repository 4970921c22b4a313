"""Apinizer key import and an environment's material read, against the raw HSM work, in one run.

On one throw-away SoftHSM token and SQLite store, side by side per round:

  seal    material.seal of the material once per environment (an AES-256 key generated in
          the HSM and wrapped, AES-GCM in the HSM): the HSM work an import does
  create  POST /apiops/projects/bench/keys/ over HTTP (keep-alive, 127.0.0.1) deploying the
          material to 1 and to 4 environments: the above + HTTP, auth, parsing the material
          with `cryptography`, the claim/key/head transaction and the audit record
  open    material.open of one sealed material: the HSM work of a read
  read    GET .../environments/e0/keys/{name}/material/ with the environment's token

for an AES-256 secret (32 raw bytes) and an RSA-2048 private key (PKCS#8 PEM). Each round runs
every cell once, the order of the ways rotating per round; the p50 of the rounds is printed
with the ratio of HTTP to the raw HSM work.

    .venv/bin/python bench/apinizer_import.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    ROOT,
    VENV,
    Client,
    keyfront_env,
    mint_token,
    start_keyfront,
    stop,
)

LABEL = "keyfront-bench-apinizer"
PROJECT = "bench"
ENVS = [f"e{i}" for i in range(4)]


def _materials() -> dict[str, tuple[str, dict[str, Any], bytes]]:
    """name -> (keyType, extra fields, material)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return {"AES-256": ("SECRET_KEY", {"algorithm": "AES"}, os.urandom(32)),
            "RSA-2048 PEM": ("PRIVATE_KEY", {}, pem)}


def main() -> int:
    """Set up, measure, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="measured rounds per cell")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 500:
        raise SystemExit("--rounds is 1..500")
    tmp = Path(tempfile.mkdtemp(prefix="keyfront-bench-apinizer-"))
    env = keyfront_env(tmp, LABEL)
    os.environ.update({k: env[k] for k in ("SOFTHSM2_CONF", "KEYFRONT_TOKEN_LABEL",
                                           "KEYFRONT_PIN", "KEYFRONT_STORE",
                                           "KEYFRONT_SQLITE_PATH")})
    for name in ENVS:
        subprocess.run([str(VENV / "keyfront"), "apinizer", "environment", "create",
                        "--project", PROJECT, "--name", name, "--type", "TEST"],
                       env=env, cwd=ROOT, check=True, capture_output=True)
    from chalicelib.config import Settings
    from chalicelib.core import material
    from chalicelib.hsm import get_hsm

    hsm = get_hsm(Settings.from_env())
    proc, port = start_keyfront(tmp, env)
    try:
        token = mint_token(env, f"apinizer:{PROJECT}:read,manage,deploy")
        reader = mint_token(env, f"apinizer:{PROJECT}/e0:consume", principal="gateway")
        http = Client("127.0.0.1", port, timeout=60)
        keys = _materials()
        cells = [(m, n) for m in keys for n in (1, 4)]
        ways = ["seal", "create", "open", "read"]
        lat: dict[tuple[str, int, str], list[float]] = {}
        count = 0
        t_start = time.perf_counter()
        for r in range(args.rounds + 1):  # round 0 warms up
            # the raw way first in even rounds, HTTP first in odd ones; seal before open
            # and create before read either way
            order = ways if r % 2 == 0 else ["create", "seal", "read", "open"]
            for mat, n in cells:
                key_type, extra, data = keys[mat]
                count += 1
                name = f"k{count}"
                sealed: dict[str, Any] = {}
                for way in order:
                    t0 = time.perf_counter()
                    if way == "seal":
                        for e in ENVS[:n]:
                            sealed = material.seal(hsm, f"bench/{name}/{e}", data)
                    elif way == "open":
                        if material.open(hsm, f"bench/{name}/e{n - 1}", sealed) != data:
                            raise SystemExit("open: not the material sealed")
                    elif way == "create":
                        resp = http.post(f"/apiops/projects/{PROJECT}/keys/", {
                            "name": name, "keyType": key_type, **extra,
                            "cryptoKeyInfoEnvironmentList": [
                                {"environmentName": e, "content": base64.b64encode(data)
                                 .decode()} for e in ENVS[:n]]},
                            headers={"Authorization": f"Bearer {token}"})
                        if resp.status != 200:
                            raise SystemExit(f"create: {resp.status} {resp.text[:300]}")
                    else:
                        resp = http.get(f"/apiops/projects/{PROJECT}/environments/e0/keys/"
                                        f"{name}/material/",
                                        headers={"Authorization": f"Bearer {reader}"})
                        got = resp.json["resultList"][0]["cryptoKeyInfoEnvironmentList"][0]
                        if resp.status != 200 or base64.b64decode(got["content"]) != data:
                            raise SystemExit(f"read: {resp.status} {resp.text[:300]}")
                    if r:
                        lat.setdefault((mat, n, way), []).append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - t_start
    finally:
        stop(proc)
    print(f"keyfront Apinizer import and material read vs the raw HSM seal/open "
          f"(SoftHSM, SQLite, 127.0.0.1; {args.rounds} rounds, {elapsed:.0f} s)")
    print("ms p50")
    head = f"{'material':14}{'envs':>5}" + "".join(f"{w:>9}" for w in ways) + \
        f"{'create/seal':>13}{'read/open':>11}"
    print(head)
    print("-" * len(head))
    for mat, n in cells:
        p50 = {w: statistics.median(lat[(mat, n, w)]) * 1e3 for w in ways}
        print(f"{mat:14}{n:>5}" + "".join(f"{p50[w]:>9.2f}" for w in ways)
              + f"{p50['create'] / p50['seal']:>12.1f}x{p50['read'] / p50['open']:>10.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
