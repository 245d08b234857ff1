"""Opt-in compatibility suite: real PyPI packages' Alembic migrations, run by plain Alembic and
by migration-runner side by side, compared database against database.

Run it with `MIGRATION_TEST_COMPAT=1 .venv/bin/python -m pytest tests/compat` or write the
result table with `MIGRATION_TEST_COMPAT=1 .venv/bin/python -m tests.compat.report`; see
docs/compatibility.md.
"""
