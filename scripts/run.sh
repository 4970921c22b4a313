#!/usr/bin/env bash
# The run command: set everything up, then serve on 127.0.0.1:8000 (Ctrl-C stops).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export SOFTHSM2_CONF="$(pwd)/softhsm/softhsm2.conf"
exec .venv/bin/keyfront serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
