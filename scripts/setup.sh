#!/usr/bin/env bash
# Idempotent set-up shared by run.sh and test.sh: virtualenv, dependencies, SoftHSM2,
# the local token, the KEK and the SQLite store. Safe to run again; reuses what exists.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3 python3.13 python3.12 python3.11; do
    if command -v "$c" >/dev/null 2>&1 \
        && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$c; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }

# 1. virtualenv + dependencies (reinstalled only when pyproject.toml changes)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.keyfront-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet -e '.[dev,serve]'
  echo "$want" > "$stamp"
fi

# 2. SoftHSM2 (Debian package); installed when missing and we are allowed to
MODULE=${KEYFRONT_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
if [ ! -f "$MODULE" ] || ! command -v softhsm2-util >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing softhsm2 with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null
  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
    echo "setup: installing softhsm2 with sudo apt-get"
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null
  else
    echo "setup: SoftHSM2 is missing and cannot be installed here." >&2
    echo "       Install it (Debian/Ubuntu: apt-get install softhsm2; macOS: brew install softhsm)" >&2
    echo "       and set KEYFRONT_PKCS11_MODULE to the library path if it is not $MODULE." >&2
    exit 1
  fi
fi

# 3. the local token under softhsm/ (config in git, token files ignored)
export SOFTHSM2_CONF="$ROOT/softhsm/softhsm2.conf"
LABEL=${KEYFRONT_TOKEN_LABEL:-keyfront}
mkdir -p softhsm/tokens data
if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:[[:space:]]*$LABEL[[:space:]]*$"; then
  softhsm2-util --init-token --free --label "$LABEL" \
    --pin "${KEYFRONT_PIN:-1234}" --so-pin "${KEYFRONT_SO_PIN:-12345678}" >/dev/null
  echo "setup: initialised SoftHSM token '$LABEL' under softhsm/tokens"
fi

# 4. KEK + bind key (never created by a request), and the store
export KEYFRONT_TOKEN_LABEL="$LABEL" KEYFRONT_PIN="${KEYFRONT_PIN:-1234}"
.venv/bin/keyfront hsm init >/dev/null
.venv/bin/keyfront store init >/dev/null
echo "setup: ready (venv .venv, token '$LABEL', store ${KEYFRONT_STORE:-sqlite})"
