"""check, wait, plan, current, history, downgrade and stamp: what they print and exit with."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from tests.support import chain, finish, run_cli, start_cli, with_credentials, write_project
from tests.test_upgrade import execute, scalar


def test_check_exits_3_with_pending_list_then_0_at_head(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(3))
    pending = run_cli(["check", "--json", "--config", str(ini)], pg_url)
    assert pending.returncode == 3
    data = json.loads(pending.stdout)
    assert data["current"] == [] and data["head"] == ["r0002"] and not data["up_to_date"]
    assert [p["revision"] for p in data["pending"]] == ["r0000", "r0001", "r0002"]
    assert pending.finished["exit_code"] == 3
    human = run_cli(["check", "--config", str(ini)], pg_url)
    assert "pending: 3" in human.stdout and "r0001" in human.stdout
    run_cli(["upgrade", "--config", str(ini)], pg_url)
    at_head = run_cli(["check", "--json", "--config", str(ini)], pg_url)
    assert at_head.returncode == 0 and json.loads(at_head.stdout)["up_to_date"] is True


def test_plan_lists_pending_without_applying(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(2))
    result = run_cli(["plan", "--json", "--config", str(ini)], pg_url)
    assert result.returncode == 0
    assert [p["revision"] for p in json.loads(result.stdout)] == ["r0000", "r0001"]
    assert run_cli(["check", "--config", str(ini)], pg_url).returncode == 3, "nothing applied"


def test_plan_sql_prints_the_ddl_from_the_current_revision(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(3))
    run_cli(["upgrade", "r0000", "--config", str(ini)], pg_url)
    result = run_cli(["plan", "--sql", "--config", str(ini)], pg_url)
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE t_r0001" in result.stdout and "CREATE TABLE t_r0002" in result.stdout
    assert "CREATE TABLE t_r0000" not in result.stdout
    assert "UPDATE alembic_version SET version_num='r0002'" in result.stdout
    assert all(line.startswith("{") for line in result.stderr.splitlines() if line), (
        "stderr keeps only JSON log lines"
    )
    assert run_cli(["check", "--config", str(ini)], pg_url).returncode == 3


def test_current_and_history_print_what_alembic_shows(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(2))
    run_cli(["upgrade", "--config", str(ini)], pg_url)
    current = run_cli(["current", "--config", str(ini)], pg_url)
    assert current.stdout.strip() == "r0001 (head)"
    history = run_cli(["history", "--json", "--config", str(ini)], None)
    assert [r["revision"] for r in json.loads(history.stdout)] == ["r0001", "r0000"]
    assert history.returncode == 0, "history needs no database"


def test_downgrade_needs_yes_and_is_reported_as_a_downgrade(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(3))
    run_cli(["upgrade", "--config", str(ini)], pg_url)
    refused = run_cli(["downgrade", "r0000", "--config", str(ini)], pg_url)
    assert refused.returncode == 2 and "--yes" in refused.finished["reason"]
    done = run_cli(["downgrade", "r0000", "--yes", "--config", str(ini)], pg_url)
    assert done.returncode == 0, done.stderr
    assert [e["revision"] for e in done.named("revision_downgraded")] == ["r0002", "r0001"]
    assert [e["to_revision"] for e in done.named("revision_downgraded")] == ["r0001", "r0000"]
    assert done.named("revision_applied") == [], "a downgrade is not an applied revision"
    assert done.finished["applied"] == 0 and done.finished["downgraded"] == 2
    assert done.finished["to_revision"] == "r0000"
    assert scalar(pg_url, "SELECT version_num FROM alembic_version") == "r0000"
    assert done.named("lock_acquired")


def test_stamp_sets_the_version_without_running_revisions(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(2))
    result = run_cli(["stamp", "r0001", "--config", str(ini)], pg_url)
    assert result.returncode == 0, result.stderr
    assert scalar(pg_url, "SELECT version_num FROM alembic_version") == "r0001"
    assert scalar(pg_url, "SELECT to_regclass('t_r0000') IS NULL") is True


def test_wait_returns_once_another_runner_reaches_head(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(2))
    waiter = start_cli(["wait", "--config", str(ini)], pg_url, MIGRATION_WAIT_TIMEOUT="30")
    time.sleep(1.5)
    assert waiter.poll() is None, "wait must block while revisions are pending"
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    result = finish(waiter, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.finished["outcome"] == "up_to_date"


def test_wait_times_out_with_75(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(1))
    started = time.monotonic()
    result = run_cli(["wait", "--timeout", "1", "--config", str(ini)], pg_url)
    assert result.returncode == 75 and result.finished["outcome"] == "wait_timeout"
    assert time.monotonic() - started < 15


def test_no_subcommand_prints_help_and_exits_2() -> None:
    result = run_cli([], None)
    assert result.returncode == 2 and "usage: migration-runner" in result.stderr
    assert "upgrade" in result.stderr


def test_bad_arguments_exit_2_with_one_line_reason() -> None:
    result = run_cli(["upgrade", "--lock-timeout", "soon"], None)
    assert result.returncode == 2
    assert "invalid float value" in result.finished["reason"]
    assert "Traceback" not in result.stderr


def test_ini_sqlalchemy_url_with_percent_is_not_interpolated(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(1))
    role = f"pct_{uuid.uuid4().hex[:8]}"
    execute(pg_url, f"CREATE ROLE {role} LOGIN PASSWORD 'a%b%%c'")
    try:
        execute(pg_url, f"GRANT ALL ON SCHEMA public TO {role}")
        url = with_credentials(pg_url, role, "a%b%%c")
        assert "a%25b%25%25c" in url
        result = run_cli(["upgrade", "--config", str(ini)], url)
        assert result.returncode == 0, result.stderr
    finally:
        execute(pg_url, f"DROP OWNED BY {role}")
        execute(pg_url, f"DROP ROLE {role}")


def test_version_and_help_print_on_stdout_and_exit_0() -> None:
    version = run_cli(["--version"], None)
    assert version.returncode == 0
    assert version.stdout.startswith("migration-runner ") and version.stdout.strip()[-1].isdigit()
    helped = run_cli(["upgrade", "--help"], None)
    assert helped.returncode == 0 and "-x KEY=VALUE" in helped.stdout and "--tag" in helped.stdout
