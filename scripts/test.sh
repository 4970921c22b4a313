#!/usr/bin/env bash
# The test command: the same set-up, then lint and the whole suite (no skips allowed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
# Two workers, one per CPU: much of a test's time is waiting on the HSM, moto or a server.
exec .venv/bin/pytest -q -p no:cacheprovider -n 2 "$@"
