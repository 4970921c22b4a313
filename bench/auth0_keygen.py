"""Auth0 key creation latency per signing_alg, against raw HSM key generation, in one run.

Four ways of making one signing key, measured side by side in the same process run, on one
throw-away SoftHSM token and SQLite store:

  pkcs11  C_GenerateKeyPair alone (session objects, destroyed again): the floor
  hsm     Hsm.generate_rsa / generate_ec: key pair + wrap under the KEK + binding tag
  core    Auth0.rotate_connection_keys in-process: the above + a self-signed certificate
          signed in the HSM + the ring transaction in the store + an audit record
  http    POST /api/v2/connections/{id}/keys/rotate {"signing_alg": alg} to `keyfront serve`
          on 127.0.0.1 over a keep-alive connection: the above + HTTP, auth, JSON

Each round runs every (alg, way) once, the order of the ways rotating per round, so drift
(e.g. the SoftHSM token files growing) hits all alike. RSA key generation time varies a lot
(random prime search), so look at p50 and at many rounds rather than at a single number.

    .venv/bin/python bench/auth0_keygen.py [--rounds 15] [--out bench/results/auth0.json]
"""

from __future__ import annotations

import argparse
import json
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
    Client,
    keyfront_env,
    mint_token,
    start_keyfront,
    stop,
)

LABEL = "keyfront-bench-auth0"
TENANT = "bench"
ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384"]
WAYS = ["pkcs11", "hsm", "core", "http"]
SCOPES = ("read:connections,create:connections,read:connections_keys,"
          "create:connections_keys,update:connections_keys")


def start_server(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int, str]:
    """`keyfront serve` on 127.0.0.1 and a bearer token for the bench tenant."""
    proc, port = start_keyfront(tmp, env)
    return proc, port, mint_token(env, f"auth0:{TENANT}:{SCOPES}")


class Ways:
    """The four ways of making one key of a given algorithm."""

    def __init__(self, port: int, token: str) -> None:
        # imported here: SOFTHSM2_CONF must be in os.environ before the PKCS#11 module loads
        from chalicelib.config import Settings
        from chalicelib.core.access import check
        from chalicelib.core.services import Services
        from chalicelib.core.tokens import Caller, Principal, Scope
        from chalicelib.dialects.auth0.routes import signing_rings

        self.services = Services.build(Settings.from_env())
        self.auth0 = self.services.domain(signing_rings)
        principal = Principal("bench", "bench-inprocess",
                              (Scope.parse(f"auth0:{TENANT}:{SCOPES}"),), 2**40)
        caller = Caller(principal, "bench")
        self.rotate_grant = check(caller, self.auth0.kind, TENANT,
                                  self.auth0.action("connection_key.rotate"))
        self.http = Client("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.con_http = self._connection("bench-http")
        self.con_core = self._connection("bench-core")
        self.n = 0
        self.keygen_s = 0.0  # time spent in Hsm.generate_* during the last call
        hsm = self.services.hsm
        for name in ("generate_rsa", "generate_ec"):
            setattr(hsm, name, self._timed(getattr(hsm, name)))

    def _timed(self, fn: Any) -> Any:
        """Wrap an Hsm method on the instance so a core call's own keygen time is known."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.keygen_s += time.perf_counter() - t0
        return wrapper

    def _connection(self, name: str) -> str:
        r = self.http.post("/api/v2/connections", {"name": name, "strategy": "oidc"},
                           headers=self.headers)
        if r.status != 201:
            raise SystemExit(f"create connection: {r.status} {r.text[:300]}")
        cid = r.json["id"]
        r = self.http.post(f"/api/v2/connections/{cid}/keys", {}, headers=self.headers)
        if r.status != 201:
            raise SystemExit(f"create keys: {r.status} {r.text[:300]}")
        return cid

    def pkcs11(self, alg: str) -> None:
        """Raw C_GenerateKeyPair on the service's own session, same templates, no wrap."""
        from pkcs11 import Attribute, KeyType, Mechanism

        ec_params = {"ES256": bytes.fromhex("06082a8648ce3d030107"),
                     "ES384": bytes.fromhex("06052b81040022")}

        def op(state: Any) -> None:
            if alg.startswith("ES"):
                pub, priv = state.session.generate_keypair(
                    KeyType.EC, store=False, capabilities=0,
                    mechanism=Mechanism.EC_KEY_PAIR_GEN,
                    public_template={Attribute.TOKEN: False, Attribute.VERIFY: True,
                                     Attribute.EC_PARAMS: ec_params[alg]},
                    private_template={Attribute.TOKEN: False, Attribute.SIGN: True,
                                      Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True,
                                      Attribute.PRIVATE: True})
            else:
                pub, priv = state.session.generate_keypair(
                    KeyType.RSA, 2048, store=False, capabilities=0,
                    mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
                    public_template={Attribute.TOKEN: False, Attribute.VERIFY: True,
                                     Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
                    private_template={Attribute.TOKEN: False, Attribute.SIGN: True,
                                      Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True,
                                      Attribute.PRIVATE: True})
            pub.destroy()
            priv.destroy()

        self.services.hsm._ts.run(op)  # noqa: SLF001 - the raw floor needs the raw session

    def hsm(self, alg: str) -> None:
        """Hsm.generate_rsa / generate_ec: generate, wrap, tag."""
        self.n += 1
        context = f"bench/{alg}/{self.n}"
        if alg.startswith("ES"):
            self.services.hsm.generate_ec("P-256" if alg == "ES256" else "P-384", context)
        else:
            self.services.hsm.generate_rsa(2048, context)

    def core(self, alg: str) -> None:
        """One connection-key rotation through the core, in-process."""
        key = self.auth0.rotate_connection_keys(self.rotate_grant, self.con_core, alg)
        assert key.algorithm == alg

    def http_(self, alg: str) -> None:
        """One connection-key rotation over HTTP."""
        r = self.http.post(f"/api/v2/connections/{self.con_http}/keys/rotate",
                           {"signing_alg": alg}, headers=self.headers)
        if r.status != 201 or r.json["algorithm"] != alg:
            raise SystemExit(f"rotate {alg}: {r.status} {r.text[:300]}")

    def run(self, way: str, alg: str) -> tuple[float, float]:
        """(seconds one key took this way, seconds of it inside Hsm.generate_*)."""
        fn = {"pkcs11": self.pkcs11, "hsm": self.hsm, "core": self.core, "http": self.http_}[way]
        self.keygen_s = 0.0
        t0 = time.perf_counter()
        fn(alg)
        return time.perf_counter() - t0, self.keygen_s


def main() -> int:
    """Set up, measure, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="measured keys per (alg, way)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--out", help="also write the raw latencies as JSON here")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 200:
        raise SystemExit("--rounds is 1..200")

    tmp = Path(tempfile.mkdtemp(prefix="keyfront-bench-auth0-"))
    env = keyfront_env(tmp, LABEL)
    os.environ.update({k: env[k] for k in ("SOFTHSM2_CONF", "KEYFRONT_TOKEN_LABEL",
                                           "KEYFRONT_PIN", "KEYFRONT_STORE",
                                           "KEYFRONT_SQLITE_PATH",
                                           "KEYFRONT_GENERATION_RATE")})
    proc, port, token = start_server(tmp, env)
    try:
        ways = Ways(port, token)
        lat: dict[str, dict[str, list[float]]] = {a: {w: [] for w in WAYS} for a in ALGS}
        # the core's own time minus its key generation: what the service adds per key
        extra: dict[str, list[float]] = {a: [] for a in ALGS}
        t_start = time.perf_counter()
        for r in range(args.warmup + args.rounds):
            order = WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]
            for alg in ALGS:
                for way in order:
                    s, keygen = ways.run(way, alg)
                    if r >= args.warmup:
                        lat[alg][way].append(s)
                        if way == "core":
                            extra[alg].append(s - keygen)
        elapsed = time.perf_counter() - t_start
    finally:
        stop(proc)

    print(f"keyfront Auth0 key creation vs raw HSM key generation "
          f"(SoftHSM, SQLite, 127.0.0.1; {args.rounds} keys per cell, {elapsed:.0f} s)")
    print("ms per key, p50 / mean")
    head = f"{'alg':9}" + "".join(f"{w:>16}" for w in WAYS) + f"{'http/pkcs11':>13}" \
        f"{'core/hsm':>10}{'added':>8}"
    print(head)
    print("-" * len(head))
    summary: dict[str, Any] = {}
    rsa = [a for a in ALGS if not a.startswith("ES")]
    rows = [(a, lat[a], extra[a]) for a in ALGS]
    # RSA-2048 generation is the same for every RS*/PS* alg: pooled, its noisy median settles
    rows.append(("RSA pool", {w: [x for a in rsa for x in lat[a][w]] for w in WAYS},
                 [x for a in rsa for x in extra[a]]))
    for name, series, added in rows:
        p50 = {w: statistics.median(series[w]) * 1e3 for w in WAYS}
        mean = {w: statistics.fmean(series[w]) * 1e3 for w in WAYS}
        add = statistics.median(added) * 1e3
        cells = "".join(f"{p50[w]:>8.1f} /{mean[w]:>6.1f}" for w in WAYS)
        print(f"{name:9}{cells}{p50['http'] / p50['pkcs11']:>12.2f}x"
              f"{p50['core'] / p50['hsm']:>9.2f}x{add:>8.1f}")
        summary[name] = {"p50_ms": p50, "mean_ms": mean, "added_p50_ms": add,
                         "raw_ms": {w: [x * 1e3 for x in series[w]] for w in WAYS}}
    print("http/pkcs11, core/hsm: ratios of p50s. added: p50 ms of a core key creation outside "
          "Hsm.generate_* (certificate signed in the HSM, store transaction, audit), measured "
          "inside the same calls. RSA pool: all RS*/PS* keys together.")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rounds": args.rounds, "results": summary},
                                             indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
