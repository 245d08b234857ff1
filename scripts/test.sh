#!/usr/bin/env bash
# Newcomer command 2: run the whole test suite. Installs the locked dev dependencies into
# .venv first (once). PostgreSQL: MIGRATION_TEST_POSTGRES_URL, else the suite starts its own
# throwaway server. MariaDB: MIGRATION_TEST_MARIADB_URL, else those tests skip.
# Image/chart/compose tests need scripts/install-system-tools.sh (as root) and skip without it.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${repo_root}/scripts/dev-env.sh" requirements-dev.lock
cd "$repo_root"
exec python -m pytest "$@"
