"""MiaRec key creation per key_length, against raw HSM key generation, in one run.

Three ways of making one RSA key pair, side by side in the same run, on one throw-away
SoftHSM token and SQLite store (the server runs with KEYFRONT_GENERATION_RATE=0):

  pkcs11  C_GenerateKeyPair alone (session objects, destroyed again): the floor
  hsm     Hsm.generate_rsa: key pair + wrap under the KEK + binding tag
  http    POST /api/v2/encrypt_keys.json {"key_length": bits} to `keyfront serve` on
          127.0.0.1 over a keep-alive connection: the above + HTTP, auth, the ring
          transaction (head, key, creator's grant) and the audit record

Each round runs every (size, way) once, the order of the ways rotating per round. RSA key
generation time varies a lot (random prime search): read the p50 of many rounds.

    .venv/bin/python bench/miarec_keygen.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Client, keyfront_env, mint_token, start_keyfront, stop  # noqa: E402

LABEL = "keyfront-bench-miarec"
SIZES = [1024, 2048, 4096]
WAYS = ["pkcs11", "hsm", "http"]


class Ways:
    """The three ways of making one key pair of a given size."""

    def __init__(self, port: int, token: str, user: str) -> None:
        # imported here: SOFTHSM2_CONF must be in os.environ before the PKCS#11 module loads
        from chalicelib.config import Settings
        from chalicelib.hsm import get_hsm

        self.hsm = get_hsm(Settings.from_env())
        self.http = Client("127.0.0.1", port, timeout=120)
        basic = base64.b64encode(f"{user}:{token}".encode()).decode()
        self.headers = {"Authorization": f"Basic {basic}"}
        self.n = 0

    def pkcs11(self, bits: int) -> None:
        """Raw C_GenerateKeyPair on the service's own session, no wrap."""
        from pkcs11 import Attribute, KeyType, Mechanism

        def op(state: Any) -> None:
            pub, priv = state.session.generate_keypair(
                KeyType.RSA, bits, store=False, capabilities=0,
                mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
                public_template={Attribute.TOKEN: False, Attribute.ENCRYPT: True,
                                 Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
                private_template={Attribute.TOKEN: False, Attribute.DECRYPT: True,
                                  Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True,
                                  Attribute.PRIVATE: True})
            pub.destroy()
            priv.destroy()

        self.hsm._ts.run(op)  # noqa: SLF001 - the raw floor needs the raw session

    def hsm_(self, bits: int) -> None:
        """Hsm.generate_rsa: generate, wrap, tag."""
        self.n += 1
        self.hsm.generate_rsa(bits, f"bench/{bits}/{self.n}")

    def http_(self, bits: int) -> None:
        """One key created over HTTP."""
        r = self.http.post("/api/v2/encrypt_keys.json",
                           {"encrypt_key": {"name": "bench", "key_length": bits}},
                           headers=self.headers)
        if r.status != 201 or r.json["encrypt_key"]["key_length"] != bits:
            raise SystemExit(f"create {bits}: {r.status} {r.text[:300]}")

    def run(self, way: str, bits: int) -> float:
        """Seconds one key took this way."""
        fn = {"pkcs11": self.pkcs11, "hsm": self.hsm_, "http": self.http_}[way]
        t0 = time.perf_counter()
        fn(bits)
        return time.perf_counter() - t0


def main() -> int:
    """Set up, measure, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="measured keys per (size, way)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 200:
        raise SystemExit("--rounds is 1..200")
    tmp = Path(tempfile.mkdtemp(prefix="keyfront-bench-miarec-"))
    env = keyfront_env(tmp, LABEL)
    os.environ.update({k: env[k] for k in ("SOFTHSM2_CONF", "KEYFRONT_TOKEN_LABEL",
                                           "KEYFRONT_PIN", "KEYFRONT_STORE",
                                           "KEYFRONT_SQLITE_PATH",
                                           "KEYFRONT_GENERATION_RATE")})
    proc, port = start_keyfront(tmp, env)
    user = str(uuid.uuid4())
    try:
        # a token of one tenant (a * token must name tenant_id in every request)
        token = mint_token(env, f"miarec:{uuid.uuid4()}:read,manage,grant", principal=user)
        ways = Ways(port, token, user)
        lat: dict[int, dict[str, list[float]]] = {b: {w: [] for w in WAYS} for b in SIZES}
        t_start = time.perf_counter()
        for r in range(args.rounds + 1):  # round 0 warms up
            order = WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]
            for bits in SIZES:
                for way in order:
                    s = ways.run(way, bits)
                    if r:
                        lat[bits][way].append(s)
        elapsed = time.perf_counter() - t_start
    finally:
        stop(proc)
    print(f"keyfront MiaRec key creation vs raw HSM key generation "
          f"(SoftHSM, SQLite, 127.0.0.1; {args.rounds} keys per cell, {elapsed:.0f} s)")
    print("ms per key, p50 / mean")
    head = f"{'bits':6}" + "".join(f"{w:>18}" for w in WAYS) + f"{'http/pkcs11':>13}" \
        f"{'hsm/pkcs11':>12}"
    print(head)
    print("-" * len(head))
    for bits in SIZES:
        p50 = {w: statistics.median(lat[bits][w]) * 1e3 for w in WAYS}
        mean = {w: statistics.fmean(lat[bits][w]) * 1e3 for w in WAYS}
        cells = "".join(f"{p50[w]:>10.1f} /{mean[w]:>6.1f}" for w in WAYS)
        print(f"{bits:<6}{cells}{p50['http'] / p50['pkcs11']:>12.2f}x"
              f"{p50['hsm'] / p50['pkcs11']:>11.2f}x")
    print("ratios of p50s; RSA generation time is dominated by the random prime search")
    return 0


if __name__ == "__main__":
    sys.exit(main())
