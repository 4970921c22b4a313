"""AI-VAULT createMK: its latency, and how much of it is the password KDF, in one run.

Three measurements side by side, on one throw-away SoftHSM token and SQLite store (the server
runs with KEYFRONT_GENERATION_RATE=0 and the default scrypt cost, n=2^15, r=8, p=3):

  kdf   material.derive_password_key alone: scrypt of a 43-character password (what every
        createMK and createPSK spends before anything else)
  hsm   Hsm.generate_aes(256) + Hsm.wrap_secret_under (the key made and wrapped out under a
        fixed 32-byte key): the HSM's share
  http  POST /AIVAULT/v1/createMK to `keyfront serve` on 127.0.0.1 over a keep-alive
        connection: the above + HTTP, auth, the ring transaction and the audit record
        (each key is deleted again, untimed, so the domain never reaches its cap)

Each round runs every way once, the order rotating per round; read the p50s.

    .venv/bin/python bench/aivault_createmk.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Client, keyfront_env, mint_token, start_keyfront, stop  # noqa: E402

LABEL = "keyfront-bench-aivault"
WAYS = ["kdf", "hsm", "http"]
PASSWORD = "Bench-password-with-four-classes-0123456789"
DOMAIN = "17"


class Ways:
    """The three measurements."""

    def __init__(self, port: int, token: str) -> None:
        # imported here: SOFTHSM2_CONF must be in os.environ before the PKCS#11 module loads
        from chalicelib.config import Settings
        from chalicelib.hsm import get_hsm

        self.settings = Settings.from_env()
        self.hsm = get_hsm(self.settings)
        self.http = Client("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "DomainID": DOMAIN}
        self.n = 0

    def kdf(self) -> None:
        """scrypt alone, with the parameters createMK uses."""
        from chalicelib.core.material import derive_password_key

        derive_password_key(PASSWORD.encode(), os.urandom(16),
                            *self.settings.password_wrap_scrypt)

    def hsm_(self) -> None:
        """Generate an AES-256 key in the HSM and wrap it out (RFC 5649) in the HSM."""
        self.n += 1
        context = f"bench/{self.n}"
        key = self.hsm.generate_aes(256, context, exportable=True)
        self.hsm.wrap_secret_under(key, context, bytes(32))

    def http_(self) -> None:
        """One createMK over HTTP."""
        self.n += 1
        name = f"bench-{self.n}"
        r = self.http.post("/AIVAULT/v1/createMK", {"MKName": name, "MKUsage": "bench",
                                                    "Password": PASSWORD},
                           headers=self.headers)
        if r.status != 200 or "CipherMasterKey" not in (r.json or {}):
            raise SystemExit(f"createMK: {r.status} {r.text[:300]}")
        self.pending = name

    def run(self, way: str) -> float:
        """Seconds one operation took this way (the clean-up after createMK untimed)."""
        fn = {"kdf": self.kdf, "hsm": self.hsm_, "http": self.http_}[way]
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        if way == "http":
            r = self.http.delete(f"/AIVAULT/v1/deleteMK/{self.pending}", headers=self.headers)
            if r.status != 200 or r.json["status"] != "00000000":
                raise SystemExit(f"deleteMK: {r.status} {r.text[:300]}")
        return took


def main() -> int:
    """Set up, measure, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="measured operations per way")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 500:
        raise SystemExit("--rounds is 1..500")
    tmp = Path(tempfile.mkdtemp(prefix="keyfront-bench-aivault-"))
    env = keyfront_env(tmp, LABEL)
    env.pop("KEYFRONT_PASSWORD_WRAP_SCRYPT", None)  # the default (OWASP) cost
    os.environ.update({k: env[k] for k in ("SOFTHSM2_CONF", "KEYFRONT_TOKEN_LABEL",
                                           "KEYFRONT_PIN", "KEYFRONT_STORE",
                                           "KEYFRONT_SQLITE_PATH",
                                           "KEYFRONT_GENERATION_RATE")})
    os.environ.pop("KEYFRONT_PASSWORD_WRAP_SCRYPT", None)
    proc, port = start_keyfront(tmp, env)
    try:
        ways = Ways(port, mint_token(env, f"aivault:{DOMAIN}:read,manage"))
        lat: dict[str, list[float]] = {w: [] for w in WAYS}
        t_start = time.perf_counter()
        for r in range(args.rounds + 1):  # round 0 warms up
            for way in WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]:
                s = ways.run(way)
                if r:
                    lat[way].append(s)
        elapsed = time.perf_counter() - t_start
    finally:
        stop(proc)
    n, r_, p = ways.settings.password_wrap_scrypt
    p50 = {w: statistics.median(lat[w]) * 1e3 for w in WAYS}
    mean = {w: statistics.fmean(lat[w]) * 1e3 for w in WAYS}
    print(f"keyfront AI-VAULT createMK vs its parts (SoftHSM, SQLite, 127.0.0.1; scrypt "
          f"n={n}, r={r_}, p={p}; {args.rounds} per way, {elapsed:.0f} s)")
    print(f"{'way':6}{'p50 ms':>10}{'mean ms':>10}{'share of http p50':>20}")
    for w in WAYS:
        print(f"{w:6}{p50[w]:>10.1f}{mean[w]:>10.1f}{p50[w] / p50['http']:>19.0%}")
    print(f"createMK, one client in sequence: {1e3 / p50['http']:.2f} ops/s "
          f"(scrypt alone: {1e3 / p50['kdf']:.2f}/s)")
    print(f"the rest (HTTP, auth, store, audit) = http - kdf - hsm: "
          f"{p50['http'] - p50['kdf'] - p50['hsm']:+.1f} ms at p50, "
          f"{mean['http'] - mean['kdf'] - mean['hsm']:+.1f} ms in the mean (the kdf runs in "
          "this process, createMK's in the server's: within noise, it can come out negative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
