#!/usr/bin/env bash
# Newcomer command 2: run the whole test suite, no root needed. Installs the locked dev
# dependencies into .venv and helm into .tools/ first (once). PostgreSQL:
# MIGRATION_TEST_POSTGRES_URL, else the suite starts its own throwaway server on 127.0.0.1.
# MariaDB: MIGRATION_TEST_MARIADB_URL, else those tests skip. The image and compose tests need
# `sudo bash scripts/install-system-tools.sh` and skip without it. The run's last line before
# pytest's count says how many tests were skipped, why, and the command that enables them.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${repo_root}/scripts/dev-env.sh" requirements-dev.lock
# Never fails: without network it says why, and the chart tests skip naming it.
bash "${repo_root}/scripts/fetch-helm.sh"
cd "$repo_root"
exec python -m pytest "$@"
