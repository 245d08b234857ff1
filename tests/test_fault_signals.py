"""SIGTERM/SIGINT in every phase of a run, and SIGKILL mid-statement.

(SIGTERM/SIGINT while a SQL statement of a revision runs: tests/test_safety.py
`test_signal_mid_revision_rolls_back_releases_lock_and_exits_fast`.)
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from runner.lock import derive_key
from tests.faults.checks import (
    SENTINEL_PASSWORD,
    assert_clean_outcome,
    invalid_indexes,
    scalar,
    wait_no_runner_lock,
    with_sentinel,
)
from tests.faults.live import LiveCli, wait_for_statement
from tests.faults.private_pg import free_port
from tests.faults.projects import sleepy_project
from tests.support import Rev, chain, write_project

SIGNALS = [
    pytest.param(signal.SIGTERM, 143, id="SIGTERM"),
    pytest.param(signal.SIGINT, 130, id="SIGINT"),
]


def _order(n: int) -> list[str]:
    return [f"r{i:04d}" for i in range(n)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_signal_while_waiting_for_the_database_exits_at_once(
    tmp_path: Path, pg_url: str, sig: signal.Signals, code: int
) -> None:
    ini = write_project(tmp_path, chain(2))
    nowhere = f"postgresql://u:{quote(SENTINEL_PASSWORD, safe='')}@127.0.0.1:{free_port()}/db"
    run = LiveCli(["upgrade", "--config", str(ini)], nowhere, MIGRATION_CONNECT_TIMEOUT="60")
    run.wait_for("database_waiting", 20)
    sent = time.monotonic()
    run.proc.send_signal(sig)
    result = run.finish(30)
    assert time.monotonic() - sent < 3, "a runner waiting for the database must stop at once"
    assert result.finished["outcome"] == "interrupted"
    assert_clean_outcome(result, pg_url, code, applied=set(), config=ini, revision_order=_order(2))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_signal_while_waiting_for_the_lock_exits_without_touching_the_schema(
    tmp_path: Path, pg_url: str, sig: signal.Signals, code: int
) -> None:
    ini = write_project(tmp_path, chain(2))
    url = with_sentinel(pg_url)
    from runner.urls import parse_database_url

    key = derive_key(parse_database_url(pg_url, source="t").database, None, "alembic_version")
    engine = create_engine(pg_url, poolclass=NullPool)
    holder = engine.connect()
    try:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        holder.commit()
        run = LiveCli(["upgrade", "--config", str(ini)], url)
        run.wait_for("lock_waiting", 20)
        sent = time.monotonic()
        run.proc.send_signal(sig)
        result = run.finish(30)
        assert time.monotonic() - sent < 3
    finally:
        holder.close()
        engine.dispose()
    assert result.finished["outcome"] == "interrupted"
    assert_clean_outcome(
        result, pg_url, code, applied=set(), revision_order=_order(2), config=ini, rerun_url=url
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_signal_while_a_revision_runs_python_code_rolls_it_back(
    tmp_path: Path, pg_url: str, sig: signal.Signals, code: int
) -> None:
    """No statement in flight to cancel: the next statement must refuse to run."""
    napper = Rev(
        "r0001",
        "r0000",
        message="python sleeps between two statements",
        upgrade="""
op.create_table("t_r0001", sa.Column("id", sa.Integer))
import os, time; time.sleep(float(os.environ.get("FAULT_SLEEP", "0")))
op.execute("SELECT 1")
""",
    )
    ini = write_project(tmp_path, [chain(1)[0], napper, *chain(3)[2:]])
    url = with_sentinel(pg_url)
    run = LiveCli(["upgrade", "--config", str(ini)], url, FAULT_SLEEP="4")
    run.wait_for("revision_applied", 20)
    time.sleep(1)
    sent = time.monotonic()
    run.proc.send_signal(sig)
    result = run.finish(30)
    assert time.monotonic() - sent < 6
    assert result.finished["applied"] == 1
    assert_clean_outcome(
        result, pg_url, code, applied={"r0000"}, revision_order=_order(3), config=ini, rerun_url=url
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_signal_between_revisions_of_a_long_chain_keeps_version_and_schema_in_step(
    tmp_path: Path, pg_url: str, sig: signal.Signals, code: int
) -> None:
    order = _order(150)
    ini = write_project(tmp_path, chain(150))
    url = with_sentinel(pg_url)
    run = LiveCli(["upgrade", "--config", str(ini)], url)
    run.wait_for("revision_applied", 30)
    time.sleep(0.3)
    run.proc.send_signal(sig)
    result = run.finish(30)
    if result.returncode == 0:
        pytest.fail("the chain finished before the signal; make it longer")
    applied = [e["revision"] for e in result.named("revision_applied")]
    assert applied == order[: len(applied)]
    assert result.finished["applied"] == len(applied)
    assert_clean_outcome(
        result, pg_url, code, applied={applied[-1]}, revision_order=order, config=ini, rerun_url=url
    )


CIC = Rev(
    "r0001",
    "r0000",
    message="index built concurrently",
    upgrade="""
with op.get_context().autocommit_block():
    import os
    op.execute(f"SELECT pg_sleep({os.environ.get('FAULT_SLEEP', '0')})")
    op.create_index("ix_cic", "t_r0000", ["id"], postgresql_concurrently=True)
op.create_table("t_r0001", sa.Column("id", sa.Integer))
""",
)


@pytest.mark.timeout(90)
def test_sigterm_during_an_autocommit_block_exits_143_and_the_rerun_completes(
    tmp_path: Path, pg_url: str
) -> None:
    ini = write_project(tmp_path, [chain(1)[0], CIC])
    url = with_sentinel(pg_url)
    run = LiveCli(["upgrade", "--config", str(ini)], url, FAULT_SLEEP="30")
    wait_for_statement(pg_url, "SELECT pg_sleep(30)%", run)
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    result = run.finish(30)
    assert time.monotonic() - sent < 5
    assert_clean_outcome(
        result,
        pg_url,
        143,
        applied={"r0000"},
        revision_order=["r0000", "r0001"],
        config=ini,
        rerun_url=url,
        rerun_env={},
    )


@pytest.mark.timeout(90)
def test_sigkill_mid_statement_frees_the_lock_within_the_connection_check_interval(
    tmp_path: Path, pg_url: str
) -> None:
    """client_connection_check_interval (2 s) lets the server notice the dead client while
    pg_sleep(60) runs; without it the lock would stay held for the whole minute."""
    ini = sleepy_project(tmp_path)
    url = with_sentinel(pg_url)
    run = LiveCli(["upgrade", "--config", str(ini)], url, FAULT_SLEEP="60")
    wait_for_statement(pg_url, "SELECT pg_sleep(60)%", run)
    run.proc.kill()
    run.proc.wait(10)
    released_after = wait_no_runner_lock(pg_url, timeout=15)
    print(f"lock released {released_after:.2f}s after SIGKILL")
    assert released_after < 5, f"server kept the lock {released_after:.1f}s after SIGKILL"
    assert scalar(pg_url, "SELECT version_num FROM alembic_version") == "r0000"
    assert scalar(pg_url, "SELECT to_regclass('t_r0001') IS NULL") is True
    assert not invalid_indexes(pg_url)
    from tests.support import run_cli

    rerun = run_cli(["upgrade", "--config", str(ini)], url)
    assert rerun.returncode == 0, rerun.stderr
