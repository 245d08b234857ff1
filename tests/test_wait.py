"""`wait` says what it is waiting for: no runner yet, a runner migrating (who, from where, for
how long), or that runner blocked by another session (who, how long, which query). The
runner's own `ddl_lock_timeout` names the blocking session the same way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from tests.support import CliResult, Rev, chain, run_cli, start_cli, write_project


@contextmanager
def open_transaction(url: str, sql: str) -> Iterator[int]:
    """A session sitting in a transaction after `sql` (holding its locks); yields its pid."""
    engine = create_engine(url, poolclass=NullPool)
    conn: Connection = engine.connect()
    try:
        pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() or 0)
        conn.exec_driver_sql(sql)
        yield pid
    finally:
        conn.rollback()
        conn.close()
        engine.dispose()


def wait_until(predicate: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting for the setup"
        time.sleep(0.2)


def held(url: str) -> bool:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return bool(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                    "database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).scalar()
            )
    finally:
        engine.dispose()


def test_wait_with_no_runner_says_so_and_times_out_with_it(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(2))
    result = run_cli(["wait", "--config", str(ini), "--timeout", "2"], pg_url)
    assert result.returncode == 75
    statuses = result.named("wait_status")
    assert statuses and statuses[0]["state"] == "no_runner"
    assert statuses[0]["pending"] == 2 and statuses[0]["current"] == []
    assert "no runner has started" in result.finished["reason"]


def test_wait_names_the_runner_that_holds_the_lock(tmp_path: Path, pg_url: str) -> None:
    slow = Rev("slow", "r0000", upgrade='op.execute("SELECT pg_sleep(8)")')
    ini = write_project(tmp_path, [*chain(1), slow])
    runner = start_cli(["upgrade", "--config", str(ini)], pg_url)
    try:
        wait_until(lambda: held(pg_url))
        result = run_cli(["wait", "--config", str(ini), "--timeout", "2"], pg_url)
    finally:
        assert runner.wait(timeout=60) == 0
    assert result.returncode == 75
    assert result.finished["to_revision"] == "r0000", "where the database is, not where it was"
    status = result.named("wait_status")[-1]
    assert status["state"] == "runner_migrating"
    holder = status["holder"]
    assert holder["application"] == "migration-runner" and holder["client"] == "127.0.0.1"
    assert holder["open_s"] >= 0 and isinstance(holder["pid"], int)
    assert f"pid {holder['pid']}" in result.finished["reason"]

    done = run_cli(["wait", "--config", str(ini), "--timeout", "5"], pg_url)
    assert done.returncode == 0 and done.named("wait_status") == [], "at head: no wait"


def test_wait_ends_reporting_the_revision_the_runner_reached(tmp_path: Path, pg_url: str) -> None:
    slow = Rev("slow", "r0000", upgrade='op.execute("SELECT pg_sleep(3)")')
    ini = write_project(tmp_path, [*chain(1), slow])
    assert run_cli(["upgrade", "r0000", "--config", str(ini)], pg_url).returncode == 0
    runner = start_cli(["upgrade", "--config", str(ini)], pg_url)
    try:
        wait_until(lambda: held(pg_url))
        result = run_cli(["wait", "--config", str(ini), "--timeout", "60"], pg_url)
    finally:
        assert runner.wait(timeout=60) == 0
    assert result.returncode == 0, result.stderr
    assert result.named("wait_status")[0]["state"] == "runner_migrating"
    assert (result.finished["from_revision"], result.finished["to_revision"]) == ("r0000", "slow")


def wait_behind_a_blocker(
    tmp_path: Path, pg_url: str, ddl_lock_timeout: str, retry_budget: str, wait_timeout: str
) -> tuple[CliResult, int]:
    """`wait` while a runner's ALTER TABLE waits for a session sitting in a transaction that
    read the table; returns wait's result and the blocking session's pid."""
    alter = Rev("alter", "r0000", upgrade='op.add_column("t_r0000", sa.Column("x", sa.Integer))')
    ini = write_project(tmp_path, [*chain(1), alter])
    assert run_cli(["upgrade", "r0000", "--config", str(ini)], pg_url).returncode == 0
    with open_transaction(pg_url, "SELECT * FROM t_r0000") as blocker:
        runner = start_cli(
            ["upgrade", "--config", str(ini)],
            pg_url,
            MIGRATION_DDL_LOCK_TIMEOUT=ddl_lock_timeout,
            MIGRATION_DDL_RETRY_BUDGET=retry_budget,
        )
        try:
            wait_until(lambda: held(pg_url))
            result = run_cli(["wait", "--config", str(ini), "--timeout", wait_timeout], pg_url)
        finally:
            runner.terminate()
            runner.wait(timeout=30)
    return result, blocker


def test_wait_names_the_session_that_blocks_the_runner(tmp_path: Path, pg_url: str) -> None:
    result, blocker = wait_behind_a_blocker(tmp_path, pg_url, "30", "0", "3")
    status = result.named("wait_status")[-1]
    assert status["state"] == "runner_blocked", result.stderr
    [blocking] = status["blockers"]
    assert blocking["pid"] == blocker and blocking["state"] == "idle in transaction"
    assert blocking["query"] == "SELECT * FROM t_r0000" and blocking["open_s"] >= 0
    assert f"blocked by pid {blocker}" in result.finished["reason"]


def test_a_runner_retrying_behind_a_blocker_reads_as_blocked_not_flapping(
    tmp_path: Path, pg_url: str
) -> None:
    """Between its lock-timeout retries the runner sits idle; `wait` keeps calling it blocked
    and logs a line every few seconds, not one per retry."""
    result, blocker = wait_behind_a_blocker(tmp_path, pg_url, "1", "60", "12")
    assert result.returncode == 75, result.stderr
    states = [s["state"] for s in result.named("wait_status")]
    assert states[1:] and set(states[1:]) == {"runner_blocked"}, states
    assert len(states) <= 5, f"one line per retry, not every 5 s: {states}"
    assert f"blocked by pid {blocker}" in result.finished["reason"]


def test_ddl_lock_timeout_names_the_blocking_session(tmp_path: Path, pg_url: str) -> None:
    alter = Rev("alter", "r0000", upgrade='op.add_column("t_r0000", sa.Column("x", sa.Integer))')
    ini = write_project(tmp_path, [*chain(1), alter])
    assert run_cli(["upgrade", "r0000", "--config", str(ini)], pg_url).returncode == 0
    with open_transaction(pg_url, "SELECT * FROM t_r0000 /* the report job */") as blocker:
        result = run_cli(
            ["upgrade", "--config", str(ini)],
            pg_url,
            MIGRATION_DDL_LOCK_TIMEOUT="1.5",
            MIGRATION_DDL_RETRY_BUDGET="6",
        )
    assert result.returncode == 75
    [event, *_] = result.named("ddl_lock_timeout")
    assert event["blockers"][0]["pid"] == blocker
    assert f"pid {blocker}" in event["blocked_by"] and "the report job" in event["blocked_by"]
    assert f"held by pid {blocker}" in result.finished["reason"]
