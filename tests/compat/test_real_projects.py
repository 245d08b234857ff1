"""migration-runner leaves each real project's database exactly as plain Alembic does.

One test per (package, scenario, backend, warm or cold HOME); each installs the pinned package and
the runner from this checkout into a cached venv, runs plain Alembic and the runner side by
side in fresh databases, and fails with the differences (unified diff of the normalised
schema dumps, owners, version tables, row counts) and the runner's own error lines. See
tests/compat/harness.py for the scenarios and docs/compatibility.md for the last recorded run.

Opt-in: `MIGRATION_TEST_COMPAT=1`. It needs PyPI, a PostgreSQL server
(`MIGRATION_TEST_POSTGRES_URL`, with `pg_dump` on PATH) and optionally MariaDB
(`MIGRATION_TEST_MARIADB_URL`); the first run installs the venvs (several minutes).
"""

from __future__ import annotations

import os

import pytest

ENABLE = "MIGRATION_TEST_COMPAT"

if os.environ.get(ENABLE) != "1":
    pytest.skip(
        f"compatibility suite over real PyPI packages is opt-in: set {ENABLE}=1 "
        "(with MIGRATION_TEST_POSTGRES_URL; see docs/compatibility.md)",
        allow_module_level=True,
    )

from tests.compat.harness import Case, all_cases, run_case  # noqa: E402

pytestmark = [pytest.mark.compat, pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.mark.parametrize("case", all_cases(), ids=lambda case: case.id)
def test_runner_leaves_the_database_as_plain_alembic_does(case: Case) -> None:
    """Same schema, owners, version tables and row counts as plain Alembic; every runner run
    exits 0 with JSON-only stderr and one run_finished line (see the module docstring)."""
    outcome = run_case(case)
    if outcome.status == "skipped":
        pytest.skip("; ".join(outcome.notes))
    assert outcome.status == "same", outcome.describe()
