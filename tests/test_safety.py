"""The promises that make the runner safe to run at deploy time on PostgreSQL: bounded table
locks with retries, clean interruption, and failures that say one clear line."""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import FreshDatabases
from tests.support import (
    Rev,
    chain,
    enable_hint,
    finish,
    run_cli,
    start_cli,
    with_credentials,
    write_project,
)
from tests.test_upgrade import ADVISORY_LOCKS_HERE, execute, scalar

ALTER = Rev(
    "alter",
    "r0000",
    message="add a column to a busy table",
    upgrade='op.add_column("t_r0000", sa.Column("note", sa.Text))',
)


def _hold_share_lock(url: str, seconds: float) -> threading.Thread:
    """A long application transaction reading t_r0000 (ACCESS SHARE) for `seconds`."""
    ready = threading.Event()

    def hold() -> None:
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as conn:
            conn.execute(text("SELECT * FROM t_r0000"))
            ready.set()
            time.sleep(seconds)
            conn.rollback()
        engine.dispose()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert ready.wait(10)
    return thread


@pytest.mark.slow
def test_ddl_behind_a_long_transaction_retries_and_succeeds_when_it_ends(
    tmp_path: Path, pg_url: str
) -> None:
    ini = write_project(tmp_path, [*chain(1), ALTER])
    assert run_cli(["upgrade", "r0000", "--config", str(ini)], pg_url).returncode == 0
    blocker = _hold_share_lock(pg_url, 4)
    result = run_cli(
        ["upgrade", "--config", str(ini)],
        pg_url,
        MIGRATION_DDL_LOCK_TIMEOUT="0.5",
        MIGRATION_DDL_RETRY_BUDGET="30",
    )
    blocker.join()
    assert result.returncode == 0, result.stderr
    retries = result.named("ddl_lock_timeout")
    assert retries and retries[0]["revision"] == "alter" and retries[0]["sqlstate"] == "55P03"
    assert result.finished["applied"] == 1


@pytest.mark.slow
def test_app_queries_wait_at_most_about_one_lock_timeout_while_ddl_is_queued(
    tmp_path: Path, pg_url: str
) -> None:
    ini = write_project(tmp_path, [*chain(1), ALTER])
    run_cli(["upgrade", "r0000", "--config", str(ini)], pg_url)
    blocker = _hold_share_lock(pg_url, 6)
    runner = start_cli(
        ["upgrade", "--config", str(ini)],
        pg_url,
        MIGRATION_DDL_LOCK_TIMEOUT="1",
        MIGRATION_DDL_RETRY_BUDGET="3",
    )
    time.sleep(0.5)
    worst = 0.0
    engine = create_engine(pg_url, poolclass=NullPool)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        started = time.monotonic()
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM t_r0000"))
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    engine.dispose()
    result = finish(runner)
    blocker.join()
    assert worst < 1.8, f"an app query waited {worst:.2f}s behind the queued DDL"
    assert result.returncode == 75 and result.finished["outcome"] == "ddl_lock_budget_exhausted"
    assert result.finished["revision"] == "alter"
    assert scalar(pg_url, "SELECT version_num FROM alembic_version") == "r0000"
    assert scalar(pg_url, ADVISORY_LOCKS_HERE) == 0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_revision_rolls_back_releases_lock_and_exits_fast(
    tmp_path: Path, pg_url: str, sig: signal.Signals, code: int
) -> None:
    sleepy = Rev(
        "sleepy",
        "r0000",
        message="long statement",
        upgrade="""
op.create_table("partial", sa.Column("id", sa.Integer))
op.execute("SELECT pg_sleep(60)")
""",
    )
    ini = write_project(tmp_path, [*chain(1), sleepy])
    proc = start_cli(["upgrade", "--config", str(ini)], pg_url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if scalar(
            pg_url,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
            "'SELECT pg_sleep(60)%' AND datname = current_database()",
        ):
            break
        time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(sig)
    result = finish(proc, timeout=30)
    assert time.monotonic() - sent < 5
    assert result.returncode == code, result.stderr
    assert result.finished["outcome"] == "interrupted"
    assert result.named("lock_released")
    assert scalar(pg_url, "SELECT version_num FROM alembic_version") == "r0000"
    assert scalar(pg_url, "SELECT to_regclass('partial') IS NULL") is True
    assert scalar(pg_url, ADVISORY_LOCKS_HERE) == 0
    rerun = run_cli(["upgrade", "--config", str(ini)], pg_url, MIGRATION_STATEMENT_TIMEOUT="1")
    assert rerun.returncode == 70 and "statement timeout" in rerun.finished["reason"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_refused_port_exits_69_after_the_connect_timeout(tmp_path: Path) -> None:
    ini = write_project(tmp_path, chain(1))
    started = time.monotonic()
    result = run_cli(
        ["upgrade", "--config", str(ini)],
        f"postgresql://u:pw@127.0.0.1:{_free_port()}/db",
        MIGRATION_CONNECT_TIMEOUT="2",
    )
    assert result.returncode == 69 and result.finished["outcome"] == "database_unavailable"
    assert 1.5 < time.monotonic() - started < 15
    assert result.named("database_waiting")


def test_never_answering_port_is_bounded(tmp_path: Path) -> None:
    ini = write_project(tmp_path, chain(1))
    with socket.socket() as silent:  # accepts TCP, never speaks: a hung proxy
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = run_cli(
            ["upgrade", "--config", str(ini)],
            f"postgresql://u:pw@127.0.0.1:{port}/db",
            MIGRATION_CONNECT_TIMEOUT="3",
        )
    assert result.returncode == 69
    assert time.monotonic() - started < 20


def test_wrong_password_exits_77_and_never_prints_it(tmp_path: Path, pg_url: str) -> None:
    role = f"pw_{uuid.uuid4().hex[:8]}"
    execute(pg_url, f"CREATE ROLE {role} LOGIN PASSWORD 'right-one'")
    ini = write_project(tmp_path, chain(1))
    password = "Wr0ng p@ss:/%#?word"
    try:
        url = with_credentials(pg_url, role, password)
        result = run_cli(["upgrade", "--config", str(ini)], url, MIGRATION_CONNECT_TIMEOUT="3")
    finally:
        execute(pg_url, f"DROP ROLE {role}")
    if result.returncode == 0:
        pytest.skip(
            "this server trusts every login (no password check)"
            + enable_hint(
                "export MIGRATION_TEST_POSTGRES_URL=postgresql://USER:PASSWORD@HOST:5432/postgres"
                " (a server with password authentication)"
            )
        )
    assert result.returncode == 77, result.stderr
    assert result.finished["outcome"] == "permission_denied"
    for form in (password, "Wr0ng%20p%40ss", "Wr0ng+p%40ss"):
        assert form not in result.output


def test_missing_database_is_a_configuration_error(tmp_path: Path, pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    ini = write_project(tmp_path, chain(1))
    url = make_url(pg_url).set(database="no_such_db_here").render_as_string(hide_password=False)
    result = run_cli(["upgrade", "--config", str(ini)], url)
    assert result.returncode == 78 and "no_such_db_here" in result.finished["reason"]


def test_password_with_every_url_special_character_works_end_to_end(
    tmp_path: Path, pg_url: str
) -> None:
    role = f"sp_{uuid.uuid4().hex[:8]}"
    password = "p@ss:w/o%rd#?& x=1"
    execute(pg_url, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        execute(pg_url, f"GRANT ALL ON SCHEMA public TO {role}")
        ini = write_project(tmp_path, chain(2))
        result = run_cli(
            ["upgrade", "--config", str(ini)], with_credentials(pg_url, role, password)
        )
        assert result.returncode == 0, result.stderr
        assert password not in result.output and "p%40ss" not in result.output
    finally:
        execute(pg_url, f"DROP OWNED BY {role}")
        execute(pg_url, f"DROP ROLE {role}")


def test_no_url_exits_78_without_creating_anything(tmp_path: Path) -> None:
    ini = write_project(tmp_path, chain(1))
    result = run_cli(["upgrade", "--config", str(ini)], None, cwd=tmp_path)
    assert result.returncode == 78 and "MIGRATION_DATABASE_URL" in result.finished["reason"]
    assert not list(tmp_path.glob("*.db"))


def test_missing_ini_exits_78(tmp_path: Path, sqlite_url: str) -> None:
    result = run_cli(["upgrade"], sqlite_url, cwd=tmp_path)
    assert result.returncode == 78 and "alembic.ini not found" in result.finished["reason"]


SETTINGS_PROOF = """
bind = op.get_bind()
if bind.dialect.name == "postgresql":
    seen = bind.exec_driver_sql(
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
    ).one()
    assert tuple(seen) == ("1500ms", "7s"), seen
else:
    seen = bind.exec_driver_sql(
        "SELECT @@SESSION.lock_wait_timeout, @@SESSION.max_statement_time"
    ).one()
    assert (int(seen[0]), float(seen[1])) == (1, 7.0), seen
"""


@pytest.mark.parametrize("backend_name", ["postgresql", "mariadb"])
def test_revisions_run_under_the_runners_lock_and_statement_timeouts(
    tmp_path: Path, databases: FreshDatabases, backend_name: str
) -> None:
    """Every session setting reaches env.py's connection at once, statement timeout included
    (two settings in one statement on each server)."""
    ini = write_project(tmp_path, [*chain(1), Rev("settings", "r0000", upgrade=SETTINGS_PROOF)])
    result = run_cli(
        ["upgrade", "--config", str(ini)],
        databases.new(backend_name),
        MIGRATION_DDL_LOCK_TIMEOUT="1.5",
        MIGRATION_STATEMENT_TIMEOUT="7",
    )
    assert result.returncode == 0, result.stderr
    assert result.finished["applied"] == 2
