#!/usr/bin/env bash
# A shadow server for `migration-runner lint` on a laptop, no root needed: the same throwaway
# PostgreSQL the test suite starts (pgserver's binaries, or Debian's), on 127.0.0.1 with trust
# authentication, in a temporary directory removed when you stop it (Ctrl-C). It prints the
# line to paste into another shell:
#     export MIGRATION_SHADOW_URL=postgresql://postgres@127.0.0.1:PORT/postgres
# `--check`: start it, connect once, stop it (what the tests run).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${repo_root}/scripts/dev-env.sh" requirements-dev.lock
cd "$repo_root"
exec python -m tests.faults.shadow_server "$@"
