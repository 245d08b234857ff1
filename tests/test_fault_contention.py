"""Lock contention: the application's own advisory locks in the same database, and 20+
runners at once with a CREATE INDEX CONCURRENTLY revision.

(Another runner holding the lock past MIGRATION_LOCK_TIMEOUT: tests/test_lock.py
`test_lock_held_elsewhere_past_the_timeout_exits_75`; 10 runners on every backend:
`test_ten_runners_at_once_apply_exactly_once_and_all_exit_0`; the lock-queue hazard:
tests/test_safety.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.faults.checks import assert_clean_outcome, invalid_indexes, runner_locks, scalar
from tests.support import Rev, chain, finish, run_cli, start_cli, write_project


@pytest.mark.timeout(60)
def test_application_advisory_locks_in_the_same_database_neither_block_nor_get_released(
    tmp_path: Path, pg_url: str
) -> None:
    ini = write_project(tmp_path, chain(3))
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.connect() as app:
        # The app's locks: small bigint keys and the two-int form, session and transaction.
        app.execute(
            text(
                "SELECT pg_advisory_lock(1), pg_advisory_lock(42), "
                "pg_advisory_lock(0, 1), pg_advisory_lock(-1)"
            )
        )
        app.commit()
        app.execute(text("SELECT pg_advisory_xact_lock(7)"))  # held until this txn ends
        result = run_cli(["upgrade", "--config", str(ini)], pg_url, MIGRATION_LOCK_TIMEOUT="5")
        assert result.returncode == 0, result.stderr
        assert result.named("lock_acquired")[0]["waited_s"] < 1
        assert len(runner_locks(pg_url)) == 5, "the app's locks must survive the run"
        app.rollback()
        app.execute(text("SELECT pg_advisory_unlock_all()"))
        app.commit()
    engine.dispose()
    assert_clean_outcome(
        result,
        pg_url,
        0,
        applied={"r0002"},
        revision_order=["r0000", "r0001", "r0002"],
        password=None,
    )


CIC = Rev(
    "cic",
    "r0002",
    message="index built concurrently",
    upgrade="""
with op.get_context().autocommit_block():
    op.create_index("ix_t_r0000_id", "t_r0000", ["id"], postgresql_concurrently=True)
op.create_table("applied_count", sa.Column("n", sa.Integer))
op.execute("INSERT INTO applied_count VALUES (1)")
""",
)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_twenty_two_runners_with_a_concurrent_index_build_no_deadlock_no_invalid_index(
    tmp_path: Path, pg_url: str
) -> None:
    """Waiters poll outside any transaction, so the holder's CREATE INDEX CONCURRENTLY (which
    waits for every older transaction) never waits for them: no deadlock, no INVALID index."""
    ini = write_project(tmp_path, [*chain(3), CIC, *chain(2, prefix="z")[:0]])
    procs = [
        start_cli(["upgrade", "--config", str(ini)], pg_url, MIGRATION_LOCK_TIMEOUT="180")
        for _ in range(22)
    ]
    results = [finish(p, timeout=200) for p in procs]
    assert [r.returncode for r in results] == [0] * 22, [
        r.stderr[-600:] for r in results if r.returncode
    ]
    assert sum(r.finished["applied"] for r in results) == 4
    assert scalar(pg_url, "SELECT count(*) FROM applied_count") == 1
    assert not invalid_indexes(pg_url)
    assert (
        scalar(
            pg_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_t_r0000_id'::regclass"
        )
        is True
    )
    for result in results:
        assert_clean_outcome(result, pg_url, 0, applied={"cic"}, password=None)
