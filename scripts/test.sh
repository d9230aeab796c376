#!/usr/bin/env bash
# The project's one test command: installs what a fresh machine of this kind lacks, then
# runs every test: the xtask crate (unit tests, and the Docker suite on private engines
# that the tests start and stop themselves), the backend's pytest suite, and the
# frontend's lint, unit tests, production build and browser test (headless chromium
# against the built export, the backend and a fake LLM, all on 127.0.0.1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing test dependencies (Docker engine, buildx, compose v2, debootstrap, chromium)"
bash scripts/install-test-deps.sh

step "cargo fmt --check, cargo clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "release workflows: check-jsonschema (GitHub, GitLab schemas), actionlint"
bash scripts/lint-workflows.sh

step "backend: pytest"
if [ ! -x backend/.venv/bin/python ]; then
    python3 -m venv backend/.venv
fi
backend/.venv/bin/python -m pip install --quiet --disable-pip-version-check -r backend/requirements-dev.txt
(cd backend && .venv/bin/python -m pytest -q)

step "frontend: npm ci, lint, test, build, browser test"
(
    cd frontend
    export NEXT_TELEMETRY_DISABLED=1
    npm ci --no-audit --no-fund
    npm run lint
    npm test
    npm run build
    # the out/ just built; uses backend/.venv from the step above
    E2E_SKIP_BUILD=1 bash e2e/run-local.sh
)
# After the frontend: the application's Docker test runs the browser test (playwright-core
# from frontend/node_modules) against the stack built from the bundle's cache.
step "xtask tests, with the Docker suite and the package-registry tests (XTASK_DOCKER_TESTS=1, XTASK_NETWORK_TESTS=1)"
XTASK_DOCKER_TESTS=1 XTASK_NETWORK_TESTS=1 cargo test --workspace

step "benchmark, short run (every figure it can produce must be produced; the figures are in docs/benchmarks.md)"
cargo xtask bench --quick

step "all tests passed"
