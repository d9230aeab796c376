#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine of this project's kind:
# a modern Docker engine with buildx and compose v2 (from Debian trixie, pinned per
# package), debootstrap and busybox-static for the stand-in base images, Debian's
# chromium for the frontend's browser test, and docker-registry (CNCF Distribution, what
# `registry:2` runs) and curl for the fleet test's private registry.
# Idempotent: does nothing that is already done.
set -euo pipefail

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io/trixie)
[ -x /usr/libexec/docker/cli-plugins/docker-buildx ] || need_apt+=(docker-buildx/trixie)
[ -x /usr/libexec/docker/cli-plugins/docker-compose ] || need_apt+=(docker-compose/trixie)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)

if [ ${#need_apt[@]} -gt 0 ]; then
    if [ ! -f /etc/apt/sources.list.d/trixie.sources ]; then
        # derive a trixie source from the bookworm one, so no host name is written here
        awk 'BEGIN{RS="";ORS="\n\n"} /Suites: bookworm bookworm-updates/' \
            /etc/apt/sources.list.d/debian.sources | sed 's/^Suites: .*/Suites: trixie/' \
            > /etc/apt/sources.list.d/trixie.sources
        printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' \
            > /etc/apt/preferences.d/trixie
    fi
    echo "install-test-deps: apt-get install ${need_apt[*]}" >&2
    apt-get update -qq
    # docker-cli from trixie too, so the plugins and the client agree
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_apt[@]}" docker-cli/trixie >/dev/null
fi
