#!/usr/bin/env bash
# The one release command: export the offline bundle, verify it, optionally rehearse the
# offline rebuild from it, pack it in parts under the release-asset limit, verify the parts
# as they will arrive, and print the digest.
# CI runs it on a published release (.github/workflows/offline-bundle.yml, .gitlab-ci.yml);
# the test suite runs it too (xtask/tests/it/pack.rs, with --skip-export on a synthetic
# bundle), so the workflows cannot drift from what is tested.
#
# Usage: scripts/release-bundle.sh [--output DIR] [--split SIZE] [--bundle DIR] [--skip-export] [--rehearse]
#   --output DIR     where the release assets go (default: dist/; must not hold an earlier pack)
#   --split SIZE     the largest part (default: 1900M, under GitHub's 2 GiB per asset)
#   --bundle DIR     the bundle folder (default: docker-build-cache/ beside the compose file)
#   --skip-export    pack the bundle already in --bundle (the tests use this; CI does not)
#   --rehearse       before packing, `cache-rehearse --strict`: rebuild every service from the
#                    bundle on a throwaway engine with no network (needs root, or sudo without
#                    a password; dockerd, ip, nsenter); a failed rehearsal publishes nothing.
#                    Its report goes to DIR/rehearsal.json
# Writes into DIR: NAME.tar.part-001..., NAME.pack-index, import-NAME.sh (imports the parts on
# a server with sh and Docker alone), pack.json (what cache-pack wrote:
# paths, sizes, sha256s, the digest) and bundle-digest.txt. The last line on stdout is the
# bundle digest (sha256 of the bundle's SHA256SUMS); everything else goes to stderr.
# XTASK names the xtask binary to run (default: `cargo xtask`).
set -euo pipefail

output=dist
split=1900M
bundle=
export_bundle=1
rehearse=0
while [ $# -gt 0 ]; do
    case "$1" in
        --output) output=$2; shift 2 ;;
        --split) split=$2; shift 2 ;;
        --bundle) bundle=$2; shift 2 ;;
        --skip-export) export_bundle=0; shift ;;
        --rehearse) rehearse=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "release-bundle.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

xtask() {
    if [ -n "${XTASK:-}" ]; then
        "$XTASK" "$@"
    else
        cargo xtask "$@"
    fi
}

bundle_args=()
if [ -n "$bundle" ]; then
    bundle_args=(--bundle "$bundle")
fi

step() { printf '\n==> %s\n' "$*" >&2; }

if [ "$export_bundle" = 1 ]; then
    step "cache-export"
    if [ -n "$bundle" ]; then
        xtask cache-export --output "$bundle" >&2
    else
        xtask cache-export >&2
    fi
fi

step "cache-verify"
xtask cache-verify "${bundle_args[@]}" >&2

mkdir -p "$output"
if [ "$rehearse" = 1 ]; then
    step "cache-rehearse --strict (a throwaway engine with no network rebuilds from the bundle)"
    if [ "$(id -u)" = 0 ]; then
        xtask cache-rehearse "${bundle_args[@]}" --strict --json > "$output/rehearsal.json"
    else
        # Root for the namespace and the engine: the built binary under sudo, so that
        # cargo does not run as root (it would leave root-owned files in target/).
        bin=${XTASK:-}
        if [ -z "$bin" ]; then
            cargo build --quiet -p xtask
            bin="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/xtask"
        fi
        sudo "$bin" cache-rehearse "${bundle_args[@]}" --strict --json > "$output/rehearsal.json"
    fi
fi

step "cache-pack --split $split into $output/"
xtask cache-pack "${bundle_args[@]}" --split "$split" --output "$output/" --json > "$output/pack.json"

index=$(find "$output" -maxdepth 1 -name '*.pack-index' | head -n 1)
if [ -z "$index" ]; then
    echo "release-bundle.sh: cache-pack wrote no index into $output" >&2
    exit 1
fi

step "cache-verify --pack $index (the parts as a download will get them)"
xtask cache-verify --pack "$index" >&2

digest=$(sed -n 's/^bundle-digest: //p' "$index")
printf '%s  %s\n' "$digest" "$(basename "$index" .pack-index)" > "$output/bundle-digest.txt"
step "bundle digest (sha256 of SHA256SUMS): $digest"
echo "$digest"
