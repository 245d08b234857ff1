"""Faults on the server side: a terminated backend, a read-only database, statement and
idle-in-transaction timeouts, and non-transactional DDL that fails halfway (an INVALID index)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from runner.lock import derive_key
from tests.faults.checks import (
    assert_clean_outcome,
    invalid_indexes,
    query,
    scalar,
    version_heads,
    with_sentinel,
)
from tests.faults.live import LiveCli
from tests.faults.projects import ORDER3, sleepy_project
from tests.support import Rev, chain, run_cli, write_project


def _runner_pid(admin_url: str, like: str, run: LiveCli, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while True:
        rows = query(
            admin_url,
            "SELECT pid FROM pg_stat_activity WHERE query LIKE :q "
            "AND application_name = 'migration-runner' AND datname = current_database()",
            q=like,
        )
        if rows:
            return int(rows[0][0])  # type: ignore[call-overload]
        assert time.monotonic() < deadline, "".join(run.lines)
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_backend_terminated_mid_revision_exits_69_and_keeps_committed_revisions(
    tmp_path: Path, pg_url: str
) -> None:
    ini = sleepy_project(tmp_path)
    url = with_sentinel(pg_url)
    run = LiveCli(["upgrade", "--config", str(ini)], url, FAULT_SLEEP="30")
    pid = _runner_pid(pg_url, "SELECT pg_sleep(30)%", run)
    scalar(pg_url, "SELECT pg_terminate_backend(:p)", p=pid)
    result = run.finish(30)
    assert result.finished["outcome"] == "database_unavailable", result.stderr
    assert [e["revision"] for e in result.named("revision_applied")] == ["r0000"]
    assert_clean_outcome(
        result, pg_url, 69, applied={"r0000"}, revision_order=ORDER3, config=ini, rerun_url=url
    )


@pytest.mark.timeout(60)
def test_backend_terminated_while_waiting_for_the_lock_exits_69_changing_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    ini = sleepy_project(tmp_path)
    url = with_sentinel(pg_url)
    key = derive_key(make_url(pg_url).database or "", None, "alembic_version")
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        holder.commit()
        run = LiveCli(["upgrade", "--config", str(ini)], url)
        run.wait_for("lock_waiting", 20)
        scalar(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'migration-runner' AND datname = current_database()",
        )
        result = run.finish(30)
    engine.dispose()
    assert result.finished["outcome"] == "database_unavailable", result.stderr
    assert_clean_outcome(
        result, pg_url, 69, applied=set(), revision_order=ORDER3, config=ini, rerun_url=url
    )


@pytest.mark.timeout(60)
def test_read_only_database_is_a_clear_configuration_error_and_changes_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    ini = write_project(tmp_path, chain(3))
    url = with_sentinel(pg_url)
    database = make_url(pg_url).database
    engine = create_engine(pg_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    engine.dispose()
    result = run_cli(["upgrade", "--config", str(ini)], url)
    assert "read-only" in result.finished["reason"], result.stderr
    assert result.finished["sqlstate"] == "25006"

    def writable() -> None:
        engine = create_engine(pg_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("SET default_transaction_read_only = off")
            conn.exec_driver_sql(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        engine.dispose()

    assert_clean_outcome(
        result,
        pg_url,
        78,
        applied=set(),
        revision_order=ORDER3,
        remove_fault=writable,
        config=ini,
        rerun_url=url,
    )


@pytest.mark.timeout(60)
def test_statement_timeout_exits_70_naming_the_revision(tmp_path: Path, pg_url: str) -> None:
    ini = sleepy_project(tmp_path)
    url = with_sentinel(pg_url)
    result = run_cli(
        ["upgrade", "--config", str(ini)], url, MIGRATION_STATEMENT_TIMEOUT="1", FAULT_SLEEP="5"
    )
    assert result.finished["outcome"] == "migration_failed"
    assert result.finished["revision"] == "r0001" and result.finished["sqlstate"] == "57014"
    assert "statement timeout" in result.finished["reason"]
    assert_clean_outcome(
        result, pg_url, 70, applied={"r0000"}, revision_order=ORDER3, config=ini, rerun_url=url
    )


@pytest.mark.timeout(60)
def test_revision_idle_in_transaction_past_the_timeout_exits_69_and_rolls_back(
    tmp_path: Path, pg_url: str
) -> None:
    """The revision sleeps in Python with its transaction open: the server ends the session
    after MIGRATION_IDLE_IN_TRANSACTION_TIMEOUT, taking the lock and the partial work with it."""
    idle = Rev(
        "r0001",
        "r0000",
        message="sleeps inside its transaction",
        upgrade="""
import os, time
op.create_table("t_r0001", sa.Column("id", sa.Integer))
time.sleep(float(os.environ.get("FAULT_SLEEP", "0")))
op.execute("SELECT 1")
""",
    )
    ini = write_project(tmp_path, [chain(1)[0], idle, chain(3)[2]])
    url = with_sentinel(pg_url)
    result = run_cli(
        ["upgrade", "--config", str(ini)],
        url,
        MIGRATION_IDLE_IN_TRANSACTION_TIMEOUT="1",
        FAULT_SLEEP="3",
    )
    assert result.finished["outcome"] == "database_unavailable", result.stderr
    assert result.finished.get("revision") == "r0001"
    assert_clean_outcome(
        result, pg_url, 69, applied={"r0000"}, revision_order=ORDER3, config=ini, rerun_url=url
    )


UNIQUE_CIC = Rev(
    "r0001",
    "r0000",
    message="unique index, built concurrently",
    upgrade="""
with op.get_context().autocommit_block():
    op.create_index("ux_t_r0000_code", "t_r0000", ["code"], unique=True,
                    postgresql_concurrently=True)
op.create_table("t_r0001", sa.Column("id", sa.Integer))
""",
)
WITH_CODE = Rev(
    "r0000",
    None,
    message="table with duplicate codes",
    upgrade="""
op.create_table("t_r0000", sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("code", sa.Text))
op.execute("INSERT INTO t_r0000 (code) VALUES ('a'), ('a'), ('b')")
""",
)


@pytest.mark.timeout(60)
def test_failed_concurrent_unique_index_is_reported_invalid_and_rerun_after_fix_succeeds(
    tmp_path: Path, pg_url: str
) -> None:
    ini = write_project(tmp_path, [WITH_CODE, UNIQUE_CIC, chain(3)[2]])
    url = with_sentinel(pg_url)
    result = run_cli(["upgrade", "--config", str(ini)], url)
    assert result.finished["outcome"] == "migration_failed"
    assert result.finished["revision"] == "r0001" and result.finished["sqlstate"] == "23505"
    found = result.named("invalid_index_found")
    assert [(e["index"], e["table"]) for e in found] == [("ux_t_r0000_code", "t_r0000")]
    assert "DROP INDEX CONCURRENTLY" in found[0]["action"]

    assert result.finished["dirty"] is True, "the index outlived the failure: dirty"
    refused = run_cli(["upgrade", "--config", str(ini)], url)
    assert refused.returncode == 65 and "stamp r0000" in refused.finished["reason"]

    def fix() -> None:
        # What the events tell the operator to do: drop the index, fix the data, and say so.
        engine = create_engine(pg_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql('DROP INDEX CONCURRENTLY "public"."ux_t_r0000_code"')
            conn.exec_driver_sql(
                "DELETE FROM t_r0000 WHERE id = (SELECT max(id) FROM t_r0000 WHERE code = 'a')"
            )
        engine.dispose()
        stamped = run_cli(["stamp", "r0000", "--config", str(ini)], url)
        assert stamped.returncode == 0, stamped.stderr

    assert_clean_outcome(
        result,
        pg_url,
        70,
        applied={"r0000"},
        revision_order=ORDER3,
        expect_invalid={"ux_t_r0000_code"},
        expect_dirty=["r0001"],
        remove_fault=fix,
        config=ini,
        rerun_url=url,
    )
    assert not invalid_indexes(pg_url)
    assert version_heads(pg_url) == {"r0002"}
