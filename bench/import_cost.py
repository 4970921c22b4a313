"""Cold-start cost of `import app` and of the structured-logging set-up, against
`import boto3` measured in the same run (fresh interpreters, median of N).

    .venv/bin/python bench/import_cost.py [N]

Prints each case's time above a bare interpreter, and its ratio to boto3's, with every
module's bytecode compiled beforehand (what a bundle built after `keyfront deploy bytecode`
carries, and what pip gives the dependencies); then `import app` once more with our own
modules compiled at every import (a bundle without their bytecode: Lambda's code directory
is read-only, so nothing is cached between cold starts).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = {
    "python (bare)": "pass",
    "import boto3": "import boto3",
    "import app": "import app",
    "import app + logs.setup() (Powertools Logger)":
        "import app; from chalicelib import logs; logs.setup()",
    "import app + first EMF metric line": (
        "import app; from chalicelib import logs; logs.setup(metrics=True);"
        " logs._emit_metrics('x', 'y', 200, 1.0)"),
    "import aws_lambda_powertools Logger alone":
        "from aws_lambda_powertools import Logger",
}


def compiled_env(prefix: str) -> dict[str, str]:
    """An environment whose interpreters read (and write) bytecode under `prefix`, warmed by
    one run importing every case's modules."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = prefix
    subprocess.run([sys.executable, "-c", "; ".join(CASES.values())], cwd=REPO, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return env


def uncompiled_env() -> dict[str, str]:
    """An environment where our modules are compiled at every import (no bytecode written;
    the dependencies keep the bytecode pip wrote when installing them)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def median_seconds(stmt: str, n: int, env: dict[str, str]) -> float:
    """Median wall time of `python -c stmt` over n fresh processes."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", stmt], cwd=REPO, check=True, env=env,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def importtime_us(stmt: str, module: str, n: int, env: dict[str, str]) -> int:
    """Median cumulative import time (-X importtime, microseconds) of top-level `module`
    while running stmt: what that import itself costs, whatever else is loaded already."""
    values = []
    for _ in range(n):
        res = subprocess.run([sys.executable, "-X", "importtime", "-c", stmt], cwd=REPO,
                             check=True, capture_output=True, text=True, env=env)
        for line in res.stderr.splitlines():
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[2] == module:
                values.append(int(parts[1]))
    return int(statistics.median(values)) if values else 0


def main() -> None:
    """Measure every case and print it against boto3."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    with tempfile.TemporaryDirectory(prefix="keyfront-pyc-") as prefix:
        env = compiled_env(prefix)
        measure(n, env)
        raw = uncompiled_env()
        # its own boto3 and bare interpreter: the other figures' environment differs
        bare, boto3, app = (median_seconds(stmt, n, raw)
                            for stmt in ("pass", "import boto3", "import app"))
        print(f"{'import app, our modules compiled at import':48s} {app * 1000:7.0f} ms"
              f"  +{(app - bare) * 1000:6.0f} ms  {(app - bare) / (boto3 - bare):5.2f} x boto3")


def measure(n: int, env: dict[str, str]) -> None:
    """Every case, with bytecode, against boto3."""
    results = {name: median_seconds(stmt, n, env) for name, stmt in CASES.items()}
    bare = results["python (bare)"]
    boto3 = results["import boto3"] - bare
    for name, seconds in results.items():
        extra = seconds - bare
        print(f"{name:48s} {seconds * 1000:7.0f} ms  +{extra * 1000:6.0f} ms"
              f"  {extra / boto3:5.2f} x boto3")
    # Less noisy on a shared machine: the interpreter's own account of each import.
    boto3_us = importtime_us("import boto3", "boto3", n, env)
    logs_us = importtime_us("import app; from chalicelib import logs; logs.setup()",
                            "aws_lambda_powertools", n, env)
    app_us = importtime_us("import app", "app", n, env)
    print(f"-X importtime: boto3 {boto3_us / 1000:.0f} ms, app {app_us / 1000:.0f} ms "
          f"({app_us / boto3_us:.2f} x boto3), aws_lambda_powertools after app "
          f"{logs_us / 1000:.0f} ms ({logs_us / boto3_us:.2f} x boto3)")


if __name__ == "__main__":
    main()
