"""The database restarts under the runner (fast and immediate shutdown) and is not up yet when
the runner starts. A private PostgreSQL (tests/faults/private_pg.py) takes the restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.checks import assert_clean_outcome, version_heads
from tests.faults.live import LiveCli, wait_for_statement
from tests.faults.private_pg import PrivateServer, private_pg_fixture  # noqa: F401
from tests.faults.projects import ORDER3, sleepy_project
from tests.support import chain, write_project


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_database_restart_mid_revision_exits_69_and_the_rerun_completes(
    tmp_path: Path, private_pg: PrivateServer, mode: str
) -> None:
    private_pg.ensure_running()
    url = private_pg.create_database()
    ini = sleepy_project(tmp_path)
    run = LiveCli(
        ["upgrade", "--config", str(ini)], url, FAULT_SLEEP="30", MIGRATION_CONNECT_TIMEOUT="5"
    )
    wait_for_statement(url, "SELECT pg_sleep(30)%", run)
    private_pg.stop(mode)
    result = run.finish(30)
    private_pg.start()
    assert result.finished["outcome"] == "database_unavailable", result.stderr
    assert [e["revision"] for e in result.named("revision_applied")] == ["r0000"]
    # After a crash (immediate) the runner's commits are durable only up to the last WAL
    # flush: the session runs with synchronous_commit = off (runner/db.py), so r0000 may be
    # lost, together with its version row. What survives is always a prefix of the chain,
    # version table and schema in step (checked through revision_order).
    survived = version_heads(url)
    assert survived == {"r0000"} or (mode == "immediate" and survived == set()), survived
    assert_clean_outcome(
        result, url, 69, applied=survived, revision_order=ORDER3, password=None, config=ini
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_database_not_up_yet_is_waited_for_then_migrated(
    tmp_path: Path, private_pg: PrivateServer
) -> None:
    private_pg.ensure_running()
    url = private_pg.create_database()
    ini = write_project(tmp_path, chain(3))
    private_pg.stop("fast")
    run = LiveCli(["upgrade", "--config", str(ini)], url, MIGRATION_CONNECT_TIMEOUT="40")
    run.wait_for("database_waiting", 20)
    private_pg.start(wait=False)  # the runner sees "starting up", then "ready"
    result = run.finish(60)
    assert result.named("database_ready")
    assert_clean_outcome(result, url, 0, applied={"r0002"}, revision_order=ORDER3, password=None)
