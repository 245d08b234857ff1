"""The fast path: a cache of Alembic's own answers lets `upgrade`/`wait` skip Alembic when the
database is at head, and hand a locked connection to Alembic when it is not. The cache may only
make a run faster: any change to the project must send the run down the full path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runner import cache
from tests.conftest import _create_database
from tests.support import Rev, chain, cli_env, run_cli, table_rev, write_project, write_revision
from tests.test_upgrade import LOCK_CHECK, scalar

PROBE = """
import json, sys
from runner import cli
code = cli.run(sys.argv[1:])
print(json.dumps({"code": code, "alembic_loaded": "alembic" in sys.modules,
                  "sqlalchemy_loaded": "sqlalchemy" in sys.modules}))
"""


def run_in_process(args: list[str], url: str, cwd: Path) -> dict[str, object]:
    """Run the CLI and report which heavy modules the run imported."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=cli_env(url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_noop_upgrade_at_head_never_imports_alembic_or_sqlalchemy(
    tmp_path: Path, pg_url: str
) -> None:
    ini = write_project(tmp_path, chain(3))
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    second = run_in_process(["upgrade", "--config", str(ini)], pg_url, tmp_path)
    assert second == {"code": 0, "alembic_loaded": False, "sqlalchemy_loaded": False}
    waited = run_in_process(["wait", "--config", str(ini)], pg_url, tmp_path)
    assert waited == {"code": 0, "alembic_loaded": False, "sqlalchemy_loaded": False}


def test_fast_path_reads_the_version_table_env_py_configured(tmp_path: Path, pg_url: str) -> None:
    scalar(pg_url, "SELECT 1")
    ini = write_project(tmp_path, chain(2), configure_kw='version_table="history_of_schema"')
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    again = run_in_process(["upgrade", "--config", str(ini)], pg_url, tmp_path)
    assert again == {"code": 0, "alembic_loaded": False, "sqlalchemy_loaded": False}


def test_a_new_revision_file_sends_the_run_down_the_full_path(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(2))
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    write_revision(tmp_path / "migrations" / "versions", table_rev("added", "r0001", "added"), 9)
    result = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert result.returncode == 0 and result.finished["applied"] == 1
    assert result.finished["to_revision"] == "added"


def test_an_edited_env_py_invalidates_the_cache(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(1))
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    env_py = tmp_path / "migrations" / "env.py"
    env_py.write_text(env_py.read_text() + "\n# edited: env.py may now configure anything\n")
    again = run_in_process(["upgrade", "--config", str(ini)], pg_url, tmp_path)
    assert again == {"code": 0, "alembic_loaded": True, "sqlalchemy_loaded": True}


def test_warm_cache_on_a_fresh_database_hands_the_locked_connection_to_alembic(
    tmp_path: Path, pg_server_url: object, pg_url: str
) -> None:
    proof = Rev(
        "proof",
        "r0001",
        upgrade=f'''
held = op.get_bind().exec_driver_sql("{LOCK_CHECK["postgresql"]}").scalar()
assert held == 1, f"revision ran on a connection without the lock ({{held}})"
''',
    )
    ini = write_project(tmp_path, [*chain(2), proof])
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    other, _ = _create_database(pg_server_url, "mr_test_fp", '"')  # type: ignore[arg-type]
    other_url = other.render_as_string(hide_password=False)
    try:
        result = run_cli(["upgrade", "--config", str(ini)], other_url)
        assert result.returncode == 0, result.stderr
        assert result.finished["applied"] == 3
        assert len(result.named("lock_acquired")) == 1
    finally:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(
            pg_server_url,
            poolclass=NullPool,  # type: ignore[call-overload]
            isolation_level="AUTOCOMMIT",
        )
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{other.database}" WITH (FORCE)')
        engine.dispose()


def test_cache_entry_is_reused_only_while_the_files_are_identical(tmp_path: Path) -> None:
    write_project(tmp_path, chain(2))
    facts = cache.ProjectFacts(
        ["r0001"],
        "alembic_version",
        None,
        [str(tmp_path / "migrations"), str(tmp_path / "migrations" / "versions")],
        False,
        [str(tmp_path / "alembic.ini")],
    )
    entry = cache.entry_path(tmp_path / "cache", tmp_path / "alembic.ini", None, "env")
    assert cache.store(entry, facts)
    assert cache.lookup(entry) == facts
    (tmp_path / "migrations" / "versions" / "0001_r0001.py").write_text("# edited\n")
    assert cache.lookup(entry) is None


def test_an_unwritable_cache_directory_is_no_cache_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    facts = cache.ProjectFacts(["a"], "alembic_version", None, [], False, [])
    assert cache.store(cache.entry_path(blocker, tmp_path / "x.ini", None, "e"), facts) is False
    assert cache.lookup(cache.entry_path(blocker, tmp_path / "x.ini", None, "e")) is None


def test_fast_path_off_always_takes_the_full_path(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(1))
    assert run_cli(["upgrade", "--config", str(ini)], pg_url).returncode == 0
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "upgrade", "--config", str(ini)],
        env=cli_env(pg_url, MIGRATION_FAST_PATH="false"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1])["alembic_loaded"] is True
