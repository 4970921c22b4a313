"""Cold-start cost of `import app` and of the structured-logging set-up, against
`import boto3` measured in the same run (fresh interpreters, median of N).

    .venv/bin/python bench/import_cost.py [N]

Prints each case's time above a bare interpreter, and its ratio to boto3's.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
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


def median_seconds(stmt: str, n: int) -> float:
    """Median wall time of `python -c stmt` over n fresh processes."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", stmt], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def importtime_us(stmt: str, module: str, n: int) -> int:
    """Median cumulative import time (-X importtime, microseconds) of top-level `module`
    while running stmt: what that import itself costs, whatever else is loaded already."""
    values = []
    for _ in range(n):
        res = subprocess.run([sys.executable, "-X", "importtime", "-c", stmt], cwd=REPO,
                             check=True, capture_output=True, text=True)
        for line in res.stderr.splitlines():
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[2] == module:
                values.append(int(parts[1]))
    return int(statistics.median(values)) if values else 0


def main() -> None:
    """Measure every case and print it against boto3."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    results = {name: median_seconds(stmt, n) for name, stmt in CASES.items()}
    bare = results["python (bare)"]
    boto3 = results["import boto3"] - bare
    for name, seconds in results.items():
        extra = seconds - bare
        print(f"{name:48s} {seconds * 1000:7.0f} ms  +{extra * 1000:6.0f} ms"
              f"  {extra / boto3:5.2f} x boto3")
    # Less noisy on a shared machine: the interpreter's own account of each import.
    boto3_us = importtime_us("import boto3", "boto3", n)
    logs_us = importtime_us("import app; from chalicelib import logs; logs.setup()",
                            "aws_lambda_powertools", n)
    app_us = importtime_us("import app", "app", n)
    print(f"-X importtime: boto3 {boto3_us / 1000:.0f} ms, app {app_us / 1000:.0f} ms "
          f"({app_us / boto3_us:.2f} x boto3), aws_lambda_powertools after app "
          f"{logs_us / 1000:.0f} ms ({logs_us / boto3_us:.2f} x boto3)")


if __name__ == "__main__":
    main()
