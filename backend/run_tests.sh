#!/usr/bin/env bash
# Run the backend test suite in backend/.venv (created and filled on first use).
# Usage: backend/run_tests.sh [pytest args...]   PYTHON=python3.11 to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Reinstall only when requirements changed since the last successful install.
stamp=.venv/.requirements.sha256
want="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
    echo "$want" > "$stamp"
fi
exec .venv/bin/python -m pytest -q "$@"
