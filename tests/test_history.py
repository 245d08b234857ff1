"""The history table and the dirty state: a revision that stopped part-way is never lost
silently; every later run refuses, naming the revision and the way out (`stamp`)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from tests.support import (
    Rev,
    chain,
    run_cli,
    start_cli,
    table_rev,
    write_project,
    write_revision,
)

HISTORY = "migration_runner_history"


def rows(url: str, table: str = HISTORY) -> list[tuple[str, str, str]]:
    """(revision, action, state) of every history row, oldest first."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [
                (str(r[0]), str(r[1]), str(r[2]))
                for r in conn.exec_driver_sql(
                    f"SELECT revision, action, state FROM {table} ORDER BY id"
                )
            ]
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def version(url: str) -> str | None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    finally:
        engine.dispose()


#: Two DDL statements; the second fails. MySQL/MariaDB commits the first on its own.
HALF_FAILING_MARIADB = Rev(
    "half",
    "r0000",
    message="two tables, the second clashes",
    upgrade='op.create_table("first_half", sa.Column("id", sa.Integer, primary_key=True))\n'
    'op.create_table("t_r0000", sa.Column("id", sa.Integer, primary_key=True))',
    downgrade='op.drop_table("first_half")',
)
FIXED_MARIADB = Rev(
    "half",
    "r0000",
    message="two tables, fixed",
    upgrade='op.create_table("first_half", sa.Column("id", sa.Integer, primary_key=True))\n'
    'op.create_table("second_half", sa.Column("id", sa.Integer, primary_key=True))',
)

#: PostgreSQL: the part inside autocommit_block() commits on its own, then the revision fails.
HALF_FAILING_PG = Rev(
    "half",
    "r0000",
    message="concurrent index, then a failure",
    upgrade="with op.get_context().autocommit_block():\n"
    '    op.execute("CREATE INDEX CONCURRENTLY ix_half ON t_r0000 (id)")\n'
    'op.execute("SELECT * FROM no_such_table")',
)
FIXED_PG = Rev(
    "half",
    "r0000",
    message="concurrent index",
    upgrade="with op.get_context().autocommit_block():\n"
    '    op.execute("CREATE INDEX CONCURRENTLY ix_half ON t_r0000 (id)")',
)


@pytest.mark.parametrize(
    ("fixture", "broken", "fixed", "undo"),
    [
        ("mariadb_url", HALF_FAILING_MARIADB, FIXED_MARIADB, "DROP TABLE first_half"),
        ("pg_url", HALF_FAILING_PG, FIXED_PG, "DROP INDEX ix_half"),
    ],
)
def test_a_revision_that_fails_part_way_leaves_the_database_dirty_until_stamped(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    fixture: str,
    broken: Rev,
    fixed: Rev,
    undo: str,
) -> None:
    url = str(request.getfixturevalue(fixture))
    ini = write_project(tmp_path, [*chain(1), broken, table_rev("r0002", "half", "t_r0002")])
    config = ["--config", str(ini)]

    failed = run_cli(["upgrade", *config], url)
    assert failed.returncode == 70, failed.stderr
    finished = failed.finished
    assert finished["revision"] == "half" and finished["to_revision"] == "r0000"
    assert "partly applied" in finished["reason"] and "dirty" in finished["reason"]
    assert rows(url) == [("r0000", "upgrade", "applied"), ("half", "upgrade", "dirty")]

    # Every later run refuses with 65, naming the revision and the way out.
    again = run_cli(["upgrade", *config], url)
    assert again.returncode == 65, again.stderr
    assert again.finished["outcome"] == "dirty"
    reason = again.finished["reason"]
    assert "half" in reason and "stamp r0000" in reason and "stamp half" in reason
    assert reason.count("partly applied") == 1, reason
    assert run_cli(["downgrade", "base", "--yes", *config], url).returncode == 65
    # Nothing to run is no exception: an older image whose head is the revision before the
    # dirty one must not start its app on the half-applied schema.
    for noop in (["upgrade", "r0000"], ["downgrade", "r0000", "--yes"]):
        refused = run_cli([*noop, *config], url)
        assert refused.returncode == 65 and refused.finished["outcome"] == "dirty", noop
    check = run_cli(["check", "--json", *config], url)
    assert check.returncode == 65 and json.loads(check.stdout)["dirty"] == "half"
    started = time.monotonic()
    waited = run_cli(["wait", *config], url, MIGRATION_WAIT_TIMEOUT="60")
    assert waited.returncode == 65 and time.monotonic() - started < 20, "wait does not wait"

    # The way out: undo by hand, say so with stamp, fix the revision, migrate.
    execute(url, undo)
    stamped = run_cli(["stamp", "r0000", *config], url, MIGRATION_POD_NAME="ops-shell")
    assert stamped.returncode == 0, stamped.stderr
    assert rows(url)[-1] == ("r0000", "stamp", "stamped")
    write_revision(tmp_path / "migrations" / "versions", fixed, 1)
    done = run_cli(["upgrade", *config], url)
    assert done.returncode == 0, done.stderr
    assert version(url) == "r0002"
    assert rows(url)[-2:] == [("half", "upgrade", "applied"), ("r0002", "upgrade", "applied")]

    log = run_cli(["log", "--json", *config], url)
    assert log.returncode == 0, log.stderr
    entries = json.loads(log.stdout)
    assert [e["state"] for e in entries][:4] == ["applied", "applied", "stamped", "dirty"]
    assert all(e["run_id"] and e["runner_version"] and e["host"] for e in entries)
    assert all(e["started_at"].endswith("+00:00") for e in entries), "UTC on every backend"
    assert entries[0]["checksum"] and len(entries[0]["checksum"]) == 64
    human = run_cli(["log", *config], url)
    assert "dirty" in human.stdout and "half" in human.stdout


def test_a_failed_transactional_revision_is_rolled_back_whole_and_not_dirty(
    tmp_path: Path, pg_url: str
) -> None:
    broken = Rev("broken", "r0000", upgrade='op.execute("SELECT * FROM no_such_table")')
    ini = write_project(tmp_path, [*chain(1), broken])
    first = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert first.returncode == 70
    assert "partly" not in first.finished["reason"]
    assert rows(pg_url) == [("r0000", "upgrade", "applied"), ("broken", "upgrade", "failed")]
    second = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert second.returncode == 70, "a clean failure may simply be run again"


def test_history_lives_next_to_a_version_table_in_its_own_schema(
    tmp_path: Path, pg_url: str
) -> None:
    execute(pg_url, "CREATE SCHEMA meta")
    ini = write_project(
        tmp_path,
        chain(2),
        configure_kw='version_table="schema_history", version_table_schema="meta"',
    )
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    assert rows(pg_url, f"meta.{HISTORY}") == [
        ("r0000", "upgrade", "applied"),
        ("r0001", "upgrade", "applied"),
    ]
    down = run_cli(["downgrade", "-1", "--yes", "--config", str(ini)], pg_url)
    assert down.returncode == 0
    assert rows(pg_url, f"meta.{HISTORY}")[-1] == ("r0001", "downgrade", "applied")


def test_history_can_be_switched_off(tmp_path: Path, sqlite_url: str) -> None:
    ini = write_project(tmp_path, chain(1))
    result = run_cli(["upgrade", "--config", str(ini)], sqlite_url, MIGRATION_HISTORY_TABLE="off")
    assert result.returncode == 0
    engine = create_engine(sqlite_url, poolclass=NullPool)
    with engine.connect() as conn:
        names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master")}
    engine.dispose()
    assert HISTORY not in names and "alembic_version" in names
    off = run_cli(["log", "--config", str(ini)], sqlite_url, MIGRATION_HISTORY_TABLE="off")
    assert off.returncode == 2


def test_concurrent_runners_with_history_apply_and_record_each_revision_once(
    tmp_path: Path, any_db_url: str
) -> None:
    ini = write_project(tmp_path, chain(5))
    procs = [start_cli(["upgrade", "--config", str(ini)], any_db_url) for _ in range(5)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    assert rows(any_db_url) == [(f"r{i:04d}", "upgrade", "applied") for i in range(5)]


def test_a_started_row_of_a_runner_still_migrating_is_not_called_dirty(
    tmp_path: Path, mariadb_url: str
) -> None:
    """While a runner holds the lock its `started` row is work in progress: `check` says
    pending, not dirty."""
    slow = Rev(
        "slow",
        "r0000",
        upgrade='op.create_table("slow", sa.Column("id", sa.Integer))\n'
        'op.execute("SELECT SLEEP(6)")',
    )
    ini = write_project(tmp_path, [*chain(1), slow])
    assert run_cli(["upgrade", "r0000", "--config", str(ini)], mariadb_url).returncode == 0
    proc = start_cli(["upgrade", "--config", str(ini)], mariadb_url)
    try:
        deadline = time.monotonic() + 20
        while ("slow", "upgrade", "started") not in rows(mariadb_url):
            assert time.monotonic() < deadline, "the slow revision never started"
            time.sleep(0.2)
        check = run_cli(["check", "--json", "--config", str(ini)], mariadb_url)
        assert check.returncode == 3, check.stderr
        assert json.loads(check.stdout)["dirty"] is None
    finally:
        assert proc.wait(timeout=60) == 0


def test_a_rows_times_span_its_revision(tmp_path: Path, pg_url: str) -> None:
    """started_at is when the revision began, also for a row written once it committed."""
    slow = Rev("slow", "r0000", upgrade='op.execute("SELECT pg_sleep(0.6)")')
    ini = write_project(tmp_path, [*chain(1), slow])
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    log = run_cli(["log", "--json", "--config", str(ini)], pg_url)
    newest = json.loads(log.stdout)[0]
    assert newest["revision"] == "slow" and newest["duration_ms"] >= 600
    span = datetime.fromisoformat(newest["finished_at"]) - datetime.fromisoformat(
        newest["started_at"]
    )
    assert abs(span.total_seconds() * 1000 - newest["duration_ms"]) < 50, newest
