#!/usr/bin/env bash
# Runs the browser test (e2e/chat.e2e.mjs) against a local stack without Docker:
# the fake LLM (e2e/fake_llm.mjs), the backend under uvicorn from backend/.venv on a
# temporary SQLite file, and e2e/serve.mjs serving out/ with /api/ proxied to the
# backend, as nginx does in the Docker stack. Everything listens on 127.0.0.1 only and
# is stopped on exit. Exits non-zero if anything fails.
#
#   frontend/e2e/run-local.sh                 builds out/ first (npm run build)
#   E2E_SKIP_BUILD=1 frontend/e2e/run-local.sh   uses the out/ already built
#   E2E_SCREENSHOT_DIR=/tmp/shots ...         where the screenshots go (default: a temp dir)
#   CHROMIUM=/path/to/chromium ...            browser (default /usr/bin/chromium)
set -euo pipefail
frontend=$(cd "$(dirname "$0")/.." && pwd)
backend=$(cd "$frontend/../backend" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/chat-e2e.XXXXXX")
shots=${E2E_SCREENSHOT_DIR:-$work/screenshots}
pids=()

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

say() { printf 'e2e: %s\n' "$*" >&2; }

# Waits until FILE has a line with a URL in it (what the servers print once listening).
url_from() {
    local file=$1 i
    for i in $(seq 1 100); do
        if grep -qo 'http://[^ ]*' "$file" 2>/dev/null; then
            grep -o 'http://[^ ]*' "$file" | head -n1
            return 0
        fi
        sleep 0.1
    done
    say "no address in $file after 10 s:"; cat "$file" >&2
    return 1
}

cd "$frontend"
[ -d node_modules ] || npm ci --no-audit --no-fund
if [ "${E2E_SKIP_BUILD:-}" != 1 ] || [ ! -f out/index.html ]; then
    say "building the static export"
    npm run build >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
fi

if [ ! -x "$backend/.venv/bin/python" ]; then
    say "creating backend/.venv"
    python3 -m venv "$backend/.venv"
    "$backend/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$backend/requirements-dev.txt"
fi

node e2e/fake_llm.mjs --host 127.0.0.1 --port 0 >"$work/fake_llm.log" 2>&1 &
pids+=($!)
llm_url=$(url_from "$work/fake_llm.log")
say "fake LLM at $llm_url"

backend_port=$("$backend/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(
    cd "$backend"
    DATABASE_URL="sqlite:///$work/chat.db" \
    JWT_SECRET="$("$backend/.venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')" \
    DATA_DIR="$work" \
    BCRYPT_ROUNDS=4 \
    LLM_API_BASE="$llm_url" \
    LLM_API_KEY=sk-e2e-fake \
    LLM_MODEL=fake-model \
    LLM_TIMEOUT=10 \
    exec .venv/bin/python -m uvicorn app.main:app --host 127.0.0.1 --port "$backend_port" --log-level warning
) >"$work/backend.log" 2>&1 &
pids+=($!)
for i in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$backend_port/api/health" >/dev/null 2>&1; then break; fi
    if [ "$i" = 100 ]; then say "the backend did not start:"; cat "$work/backend.log" >&2; exit 1; fi
    sleep 0.1
done
say "backend at http://127.0.0.1:$backend_port"

node e2e/serve.mjs --root out --backend "http://127.0.0.1:$backend_port" --host 127.0.0.1 --port 0 >"$work/serve.log" 2>&1 &
pids+=($!)
base_url=$(url_from "$work/serve.log")
say "site at $base_url"

status=0
node e2e/chat.e2e.mjs --base-url "$base_url" --screenshot-dir "$shots" || status=$?
if [ "$status" != 0 ]; then
    say "backend log (last 40 lines):"; tail -n 40 "$work/backend.log" >&2
fi
exit "$status"
