#!/usr/bin/env bash
# Sourced by scripts/demo.sh and scripts/test.sh: make .venv and install the locked
# dependencies into it (fast when they are already there).
#   $1: the lock file to install (requirements.lock or requirements-dev.lock)
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv"
lock="${repo_root}/${1:-requirements.lock}"
stamp="${venv}/.installed-$(basename "$lock")-$(sha256sum "$lock" "${repo_root}/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "${venv}/bin/python" ]; then
    python3 -m venv "$venv"
fi
if [ ! -e "$stamp" ]; then
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --no-deps -r "$lock"
    # The distribution was renamed (migration-runner -> alembic-migration-runner): a .venv made
    # before still holds the old name, whose uninstall would later remove the shared console
    # script. Drop it first.
    if "${venv}/bin/python" -m pip show --quiet migration-runner >/dev/null 2>&1; then
        "${venv}/bin/python" -m pip uninstall --quiet --yes migration-runner
    fi
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        -e "$repo_root"
    touch "$stamp"
fi
export PATH="${venv}/bin:${PATH}"
