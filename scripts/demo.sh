#!/usr/bin/env bash
# Newcomer command 1: run migration-runner on the example project against a SQLite file.
# Installs the locked runtime dependencies into .venv first (once).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${repo_root}/scripts/dev-env.sh" requirements.lock
demo_dir="${repo_root}/.demo"
mkdir -p "$demo_dir"
export MIGRATION_DATABASE_URL="${MIGRATION_DATABASE_URL:-sqlite:///${demo_dir}/app.db}"
export MIGRATION_CONFIG="${repo_root}/examples/alembic.ini"
export MIGRATION_LOG_FORMAT="${MIGRATION_LOG_FORMAT:-console}"
echo "== migration-runner upgrade (examples/ -> ${MIGRATION_DATABASE_URL})"
migration-runner upgrade
echo "== migration-runner check"
migration-runner check
