"""Store calls per StoredSafe operation, counted at the store interface, on SQLite and on
DynamoDB (moto's server over HTTP).

    .venv/bin/python bench/store_calls.py [--n 200] [--cache-seconds 1]

The app runs in-process behind `chalicelib.serving.GatewayApp` (what `keyfront serve` runs in
each worker), on a throw-away SoftHSM token, with a store wrapper that counts every call by
method. After a warm-up (the first use of a token and a key reads them), it runs `--n`
sequential encrypts, decrypts and rewraps and prints the calls per operation. Reads should be
0 in the steady state (token and key records from the in-process cache, version blobs cached
as immutable) and writes one (the batched audit record); with `--cache-seconds 0` the reads
come back.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import free_port, keyfront_env  # noqa: E402


class CountingStore:
    """A store that counts its calls by method name."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted


def _call(app: Any, method: str, path: str, token: str, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "RAW_URI": path,
               "QUERY_STRING": "", "CONTENT_LENGTH": str(len(raw)),
               "CONTENT_TYPE": "application/json", "HTTP_X_HTTP_TOKEN": token,
               "wsgi.input": io.BytesIO(raw)}
    status: list[str] = []
    out = b"".join(app(environ, lambda s, h: status.append(s)))
    if not status[0].startswith(("200", "201")):
        raise SystemExit(f"{method} {path}: {status[0]} {out[:300]!r}")
    return json.loads(out)


def measure(backend: str, n: int, env: dict[str, str]) -> dict[str, dict[str, float]]:
    """Store calls per operation on one backend."""
    from chalicelib.config import Settings
    from chalicelib.core import services as services_module
    from chalicelib.core.tokens import Scope
    from chalicelib.serving import load_app

    os.environ.update(env)
    settings = Settings.from_env()
    from chalicelib.store import open_store

    counting = CountingStore(open_store(settings))
    svc = services_module.Services.build(settings, store=counting)  # type: ignore[arg-type]
    services_module.set_services(svc)
    app = load_app("dev")
    token, _ = svc.tokens.create("bench", [Scope.parse("storedsafe:1:read,write")], 3600)
    logging.getLogger("keyfront").setLevel(logging.WARNING)  # no audit lines on the terminal
    base = "/api/1.0/transparent"
    api = f"{base}/1"
    _call(app, "POST", f"{api}/keys/k-{backend}", token, {"type": "aes256-gcm96"})
    plaintext = base64.b64encode(os.urandom(1024)).decode()
    ct = _call(app, "POST", f"{api}/encrypt/k-{backend}", token,
               {"plaintext": plaintext})["CALLINFO"]["ciphertext"]
    out: dict[str, dict[str, float]] = {}
    for op, path, body in (
            ("encrypt", f"{api}/encrypt/k-{backend}", {"plaintext": plaintext}),
            ("decrypt", f"{api}/decrypt/k-{backend}", {"ciphertext": ct}),
            ("rewrap", f"{base}/rewrap/1/k-{backend}", {"ciphertext": ct})):
        _call(app, "POST", path, token, body)  # warm
        counting.calls.clear()
        for _ in range(n):
            _call(app, "POST", path, token, body)
        out[op] = {m: c / n for m, c in sorted(counting.calls.items())}
    services_module.set_services(None)
    return out


def main() -> None:
    """Measure both backends and print calls per operation."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--cache-seconds", default="1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = keyfront_env(Path(tmp), "bench-calls")
        env["KEYFRONT_CACHE_SECONDS"] = args.cache_seconds
        results = {"sqlite": measure("sqlite", args.n, env)}

        from moto.server import ThreadedMotoServer

        from chalicelib.store.dynamodb_store import create_table

        port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        moto.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            os.environ.update({"AWS_ACCESS_KEY_ID": "testing",
                               "AWS_SECRET_ACCESS_KEY": "testing"})
            create_table("bench-calls", region="us-east-1", endpoint_url=endpoint)
            results["dynamodb"] = measure("dynamodb", args.n, {
                **env, "KEYFRONT_STORE": "dynamodb", "KEYFRONT_DYNAMODB_TABLE": "bench-calls",
                "KEYFRONT_DYNAMODB_ENDPOINT": endpoint, "AWS_DEFAULT_REGION": "us-east-1"})
        finally:
            moto.stop()
    print(f"store calls per operation, steady state, n={args.n}, "
          f"KEYFRONT_CACHE_SECONDS={args.cache_seconds}")
    print(f"{'backend':9} {'op':8} calls by method")
    for backend, ops in results.items():
        for op, calls in ops.items():
            text = ", ".join(f"{m} {c:g}" for m, c in calls.items()) or "none"
            print(f"{backend:9} {op:8} {text}")


if __name__ == "__main__":
    main()
