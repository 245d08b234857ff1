"""Connection cuts between the runner and PostgreSQL, through a TCP proxy that fails on demand
(tests/faults/proxy.py): refused, blackholed, reset — during connect, lock wait, mid-revision and
right after a COMMIT. The runner notices within its bounds and never claims uncommitted work.

(A port that refuses or never answers from the start: tests/test_safety.py
`test_refused_port_exits_69_after_the_connect_timeout`, `test_never_answering_port_is_bounded`.)
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from runner.lock import derive_key
from runner.urls import parse_database_url
from tests.faults.checks import assert_clean_outcome, scalar, with_sentinel
from tests.faults.live import LiveCli, wait_for_statement
from tests.faults.projects import ORDER3, sleepy_project
from tests.faults.proxy import FaultProxy, proxy_fixture, tcp_pg_url_fixture  # noqa: F401
from tests.support import Rev, chain, run_cli, write_project


@pytest.mark.timeout(60)
def test_database_not_accepting_yet_is_waited_for_then_migrated(
    tmp_path: Path, tcp_pg_url: str, proxy: FaultProxy
) -> None:
    ini = sleepy_project(tmp_path)
    url = proxy.url_for(with_sentinel(tcp_pg_url))
    proxy.stop_accepting()
    run = LiveCli(["upgrade", "--config", str(ini)], url, MIGRATION_CONNECT_TIMEOUT="30")
    run.wait_for("database_waiting", 20)
    time.sleep(1)
    proxy.restore()
    result = run.finish(40)
    assert result.named("database_ready")
    assert_clean_outcome(result, tcp_pg_url, 0, applied={"r0002"}, revision_order=ORDER3)


@pytest.mark.timeout(60)
def test_blackhole_during_connect_exits_69_within_the_connect_timeout(
    tmp_path: Path, tcp_pg_url: str, proxy: FaultProxy
) -> None:
    ini = sleepy_project(tmp_path)
    url = proxy.url_for(with_sentinel(tcp_pg_url))
    proxy.blackhole()
    started = time.monotonic()
    result = run_cli(
        ["upgrade", "--config", str(ini)], url, MIGRATION_CONNECT_TIMEOUT="3", timeout=60
    )
    took = time.monotonic() - started
    assert took < 20, f"connect into a blackhole took {took:.1f}s"
    assert result.finished["outcome"] == "database_unavailable"
    assert_clean_outcome(
        result,
        tcp_pg_url,
        69,
        applied=set(),
        revision_order=ORDER3,
        remove_fault=proxy.restore,
        config=ini,
        rerun_url=url,
    )


@pytest.mark.timeout(60)
def test_reset_while_waiting_for_the_lock_exits_69_and_changes_nothing(
    tmp_path: Path, tcp_pg_url: str, proxy: FaultProxy
) -> None:
    ini = sleepy_project(tmp_path)
    url = proxy.url_for(with_sentinel(tcp_pg_url))
    key = derive_key(parse_database_url(tcp_pg_url, source="t").database, None, "alembic_version")
    engine = create_engine(tcp_pg_url, poolclass=NullPool)
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        holder.commit()
        run = LiveCli(["upgrade", "--config", str(ini)], url)
        run.wait_for("lock_waiting", 20)
        proxy.reset()
        result = run.finish(30)
    engine.dispose()
    assert result.finished["outcome"] == "database_unavailable", result.stderr
    assert_clean_outcome(
        result, tcp_pg_url, 69, applied=set(), revision_order=ORDER3, config=ini, rerun_url=url
    )


@pytest.mark.timeout(60)
def test_reset_mid_revision_exits_69_keeping_only_committed_revisions(
    tmp_path: Path, tcp_pg_url: str, proxy: FaultProxy
) -> None:
    ini = sleepy_project(tmp_path)
    url = proxy.url_for(with_sentinel(tcp_pg_url))
    run = LiveCli(["upgrade", "--config", str(ini)], url, FAULT_SLEEP="30")
    wait_for_statement(tcp_pg_url, "SELECT pg_sleep(30)%", run)
    proxy.reset()
    result = run.finish(30)
    assert result.finished["outcome"] == "database_unavailable", result.stderr
    assert result.finished["applied"] == 1
    assert [e["revision"] for e in result.named("revision_applied")] == ["r0000"]
    # The server notices the vanished client (client_connection_check_interval) and rolls back.
    assert_clean_outcome(
        result, tcp_pg_url, 69, applied={"r0000"}, revision_order=ORDER3, config=ini, rerun_url=url
    )


@pytest.mark.timeout(90)
def test_blackhole_mid_revision_then_sigterm_exits_within_the_grace_period(
    tmp_path: Path, tcp_pg_url: str, proxy: FaultProxy
) -> None:
    """The peer goes silent while a statement runs: no reply, no RST. A SIGTERM must still end
    the run within the shutdown grace period, although even the cancel request gets no answer."""
    ini = sleepy_project(tmp_path)
    url = proxy.url_for(with_sentinel(tcp_pg_url))
    run = LiveCli(["upgrade", "--config", str(ini)], url, FAULT_SLEEP="30")
    wait_for_statement(tcp_pg_url, "SELECT pg_sleep(30)%", run)
    proxy.blackhole()
    time.sleep(0.5)
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    result = run.finish(40)
    took = time.monotonic() - sent
    assert took < 15, f"SIGTERM took {took:.1f}s to end a run whose peer went silent"
    assert result.named("shutdown_grace_exceeded")
    # While the link is silent the server cannot know the client left (a real partition lasts
    # until the server's TCP keepalive gives up). End the fault: the proxy closes both sides,
    # and the server drops the backend and its lock within client_connection_check_interval.
    proxy.reset()
    proxy.restore()
    assert_clean_outcome(
        result, tcp_pg_url, 143, applied={"r0000"}, revision_order=ORDER3, config=ini, rerun_url=url
    )


# The last revision cuts the connection right after its COMMIT went through: the test's proxy
# is told (through a marker file) while the runner thread is held just after the commit.
AFTER_COMMIT = Rev(
    "r0002",
    "r0001",
    message="cut right after commit",
    header="""
import os, time
from pathlib import Path
""",
    upgrade="""
marker = os.environ.get("FAULT_MARKER")
bind = op.get_bind()
if marker:
    dialect = bind.dialect
    original = dialect.do_commit

    def commit_then_pause(dbapi_connection):
        original(dbapi_connection)
        dialect.do_commit = original
        Path(marker).write_text("committed")
        deadline = time.monotonic() + 10
        while Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    dialect.do_commit = commit_then_pause
op.create_table("t_r0002", sa.Column("id", sa.Integer))
""",
)


@pytest.mark.timeout(60)
def test_reset_right_after_the_last_commit_never_claims_more_or_less_than_committed(
    tmp_path: Path, tcp_pg_url: str, proxy: FaultProxy
) -> None:
    ini = write_project(tmp_path, [*chain(2), AFTER_COMMIT])
    url = proxy.url_for(with_sentinel(tcp_pg_url))
    marker = tmp_path / "committed.marker"
    run = LiveCli(["upgrade", "--config", str(ini)], url, FAULT_MARKER=str(marker))

    def cut_when_committed() -> None:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.reset()
        marker.unlink(missing_ok=True)

    cutter = threading.Thread(target=cut_when_committed, daemon=True)
    cutter.start()
    result = run.finish(40)
    cutter.join(5)
    assert scalar(tcp_pg_url, "SELECT version_num FROM alembic_version") == "r0002"
    assert result.finished["outcome"] == "database_unavailable", result.stderr
    claimed = [e["revision"] for e in result.named("revision_applied")]
    assert claimed in (["r0000", "r0001"], ["r0000", "r0001", "r0002"]), claimed
    rerun = assert_clean_outcome(
        result, tcp_pg_url, 69, applied={"r0002"}, revision_order=ORDER3, config=ini, rerun_url=url
    )
    assert rerun is not None and rerun.finished["applied"] == 0
