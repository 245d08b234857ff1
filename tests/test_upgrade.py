"""`upgrade` end to end: the real CLI as a subprocess against real databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from tests.support import EXAMPLES, Rev, chain, run_cli, table_rev, write_project

LOCK_CHECK = {
    "postgresql": "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
    "AND pid = pg_backend_pid() AND granted",
    "mysql": "SELECT count(*) FROM performance_schema.metadata_locks "
    "WHERE OBJECT_TYPE = 'USER LEVEL LOCK' AND OWNER_THREAD_ID = PS_CURRENT_THREAD_ID()",
}


#: Advisory locks held in the test's own database (pg_locks is cluster-wide).
ADVISORY_LOCKS_HERE = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)


def scalar(url: str, sql: str) -> object:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def execute(url: str, sql: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_example_project_applies_on_each_backend_and_reports_every_revision(
    any_db_url: str,
) -> None:
    result = run_cli(["upgrade", "--config", str(EXAMPLES / "alembic.ini")], any_db_url)
    assert result.returncode == 0, result.stderr
    applied = result.named("revision_applied")
    assert [e["revision"] for e in applied] == [
        "0001_customers",
        "0002_orders",
        "0003_orders_idx",
        "0004_is_open",
    ]
    assert all(isinstance(e["duration_ms"], int) and e["message"] for e in applied)
    assert applied[1]["down_revision"] == "0001_customers"
    done = result.finished
    assert done["exit_code"] == 0 and done["outcome"] == "success" and done["applied"] == 4
    assert done["from_revision"] is None and done["to_revision"] == "0004_is_open"
    assert isinstance(done["duration_ms"], int)
    acquired = result.named("lock_acquired")
    assert len(acquired) == 1 and "key" in acquired[0] and "waited_s" in acquired[0]
    assert {"customers", "orders", "alembic_version"} <= tables(any_db_url)

    again = run_cli(["upgrade", "--config", str(EXAMPLES / "alembic.ini")], any_db_url)
    assert again.returncode == 0
    assert again.finished["outcome"] == "up_to_date" and again.finished["applied"] == 0
    assert again.named("lock_acquired") == [], "an up-to-date database needs no lock"


def test_every_log_line_is_json_with_timestamp_level_and_event(pg_url: str) -> None:
    result = run_cli(["upgrade", "--config", str(EXAMPLES / "alembic.ini")], pg_url)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and len(lines) == len(result.events), result.stderr
    for event in result.events:
        assert event["timestamp"].endswith("Z") and "T" in event["timestamp"]
        assert event["level"] in ("debug", "info", "warning", "error")
        assert event["event"]
    assert any(e.get("logger", "").startswith("alembic") for e in result.events), (
        "alembic's own records go through the same pipeline"
    )
    assert result.stdout == ""


def test_debug_shows_each_statement_and_never_its_parameters(tmp_path: Path, pg_url: str) -> None:
    """Alembic's template env.py calls fileConfig(), which silences SQLAlchemy's echo; the
    runner's own `sql` events still show every statement, and bind values never appear."""
    secret = Rev(
        "secret",
        "r0000",
        upgrade='op.get_bind().execute(sa.text("SELECT :token"), {"token": "tok-4f9e-private"})',
    )
    ini = write_project(tmp_path, [*chain(1), secret])
    result = run_cli(["upgrade", "--config", str(ini)], pg_url, MIGRATION_LOG_LEVEL="debug")
    assert result.returncode == 0, result.stderr
    statements = [e["statement"] for e in result.named("sql")]
    assert "SELECT %(token)s" in statements, statements
    assert any(s.startswith("CREATE TABLE t_r0000") for s in statements), statements
    assert "tok-4f9e-private" not in result.stderr


def test_run_finished_is_written_at_every_log_level(sqlite_url: str) -> None:
    """A pipeline that keeps only warnings still learns how the run ended, and nothing else
    at info level reaches it."""
    config = ["--config", str(EXAMPLES / "alembic.ini")]
    result = run_cli(["upgrade", *config], sqlite_url, MIGRATION_LOG_LEVEL="warning")
    assert result.returncode == 0, result.stderr
    assert [e["event"] for e in result.events] == ["run_finished"]
    assert result.finished["level"] == "info" and result.finished["applied"] > 0


@pytest.mark.parametrize("style", ["generic", "cookbook", "async"])
def test_revisions_run_on_the_locked_connection_for_each_env_style(
    tmp_path: Path, pg_url: str, style: str
) -> None:
    proof = Rev(
        "proof",
        "r0001",
        message="assert my backend holds the migration lock",
        upgrade=f'''
held = op.get_bind().exec_driver_sql("{LOCK_CHECK["postgresql"]}").scalar()
assert held == 1, f"revision ran on a connection without the lock ({{held}})"
''',
    )
    ini = write_project(tmp_path, [*chain(2), proof], env_style=style)
    result = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert result.returncode == 0, result.stderr
    assert result.finished["applied"] == 3


def test_revisions_run_on_the_locked_connection_on_mariadb(
    tmp_path: Path, mariadb_url: str
) -> None:
    proof = Rev(
        "proof",
        "r0000",
        upgrade="""
from runner.lock import MySqlNamedLock, derive_key
bind = op.get_bind()
name = MySqlNamedLock(bind, derive_key(bind.engine.url.database, None, "alembic_version")).key
held = bind.exec_driver_sql(f"SELECT IS_USED_LOCK('{name}') = CONNECTION_ID()").scalar()
assert held == 1, "revision ran on a connection without the lock"
""",
    )
    ini = write_project(tmp_path, [*chain(1), proof])
    result = run_cli(["upgrade", "--config", str(ini)], mariadb_url)
    assert result.returncode == 0, result.stderr


def test_custom_version_table_from_env_py_is_honoured_by_every_command(
    tmp_path: Path, pg_url: str
) -> None:
    execute(pg_url, "CREATE SCHEMA meta")
    ini = write_project(
        tmp_path,
        chain(2),
        configure_kw='version_table="schema_history", version_table_schema="meta"',
    )
    assert run_cli(["check", "--config", str(ini)], pg_url).returncode == 3
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    assert scalar(pg_url, "SELECT version_num FROM meta.schema_history") == "r0001"
    assert "alembic_version" not in tables(pg_url)
    check = run_cli(["check", "--config", str(ini)], pg_url)
    assert check.returncode == 0, check.output
    again = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert again.finished["outcome"] == "up_to_date"


def test_each_revision_commits_alone_so_a_failure_keeps_the_earlier_ones(
    tmp_path: Path, pg_url: str
) -> None:
    bad = Rev(
        "bad",
        "r0001",
        message="breaks halfway",
        upgrade="""
op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))
op.execute("SELECT * FROM no_such_table")
""",
    )
    ini = write_project(tmp_path, [*chain(2), bad])
    result = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert result.returncode == 70, result.stderr
    done = result.finished
    assert done["outcome"] == "migration_failed" and done["revision"] == "bad"
    assert done["sqlstate"] == "42P01" and done["applied"] == 2
    assert "no_such_table" in done["reason"] and "Traceback" not in result.stderr
    assert scalar(pg_url, "SELECT version_num FROM alembic_version") == "r0001"
    assert "half" not in tables(pg_url), "the failing revision was rolled back whole"
    assert scalar(pg_url, ADVISORY_LOCKS_HERE) == 0


def test_python_exception_in_a_revision_exits_70_naming_the_revision(
    tmp_path: Path, pg_url: str
) -> None:
    ini = write_project(tmp_path, [Rev("boom", None, upgrade='raise RuntimeError("no way")')])
    result = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert result.returncode == 70
    assert result.finished["revision"] == "boom"
    assert "RuntimeError: no way" in result.finished["reason"]


def test_autocommit_block_revision_creates_index_concurrently(tmp_path: Path, pg_url: str) -> None:
    cic = Rev(
        "cic",
        "r0000",
        upgrade="""
with op.get_context().autocommit_block():
    op.create_index("ix_cic", "t_r0000", ["id"], postgresql_concurrently=True)
""",
    )
    ini = write_project(tmp_path, [*chain(1), cic])
    result = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert result.returncode == 0, result.stderr
    assert (
        scalar(
            pg_url,
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON "
            "c.oid = i.indexrelid WHERE c.relname = 'ix_cic' AND i.indisvalid",
        )
        == 1
    )


def test_upgrade_to_a_named_revision_stops_there(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(3))
    result = run_cli(["upgrade", "r0001", "--config", str(ini)], pg_url)
    assert result.returncode == 0
    assert result.finished["to_revision"] == "r0001" and result.finished["applied"] == 2


def test_script_location_works_without_an_ini(tmp_path: Path, sqlite_url: str) -> None:
    write_project(tmp_path, chain(2))
    (tmp_path / "alembic.ini").unlink()
    result = run_cli(
        ["upgrade"],
        sqlite_url,
        cwd=tmp_path,
        MIGRATION_SCRIPT_LOCATION=str(tmp_path / "migrations"),
    )
    assert result.returncode == 0, result.stderr
    assert result.finished["applied"] == 2


def test_multiple_heads_refuse_with_65_naming_the_heads(tmp_path: Path, pg_url: str) -> None:
    revs = [table_rev("a", None, "a"), table_rev("b1", "a", "b1"), table_rev("b2", "a", "b2")]
    ini = write_project(tmp_path, revs)
    result = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert result.returncode == 65
    assert "b1" in result.finished["reason"] and "b2" in result.finished["reason"]
    assert "alembic_version" not in tables(pg_url)


def test_database_ahead_warns_and_exits_0_or_fails_with_65(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(2))
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    execute(pg_url, "UPDATE alembic_version SET version_num = 'from_the_future'")
    warn = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert warn.returncode == 0
    assert warn.named("database_ahead")[0]["level"] == "warning"
    assert warn.finished["outcome"] == "database_ahead"
    fail = run_cli(["upgrade", "--config", str(ini)], pg_url, MIGRATION_ON_DB_AHEAD="fail")
    assert fail.returncode == 65 and "from_the_future" in fail.finished["reason"]
