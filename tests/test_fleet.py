"""Fleets on a real PostgreSQL: many tenant schemas (Alembic's cookbook env.py, unchanged) or
many databases (a URLs file) in one run, each target migrated as a run of its own would
migrate it, failures isolated and reported, shards and concurrent runs that never apply a
revision twice, and SIGTERM mid-fleet.

Every test creates its databases and schemas (the `databases` fixture drops them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from runner import cli, fleet_commands, logs, revisions
from runner.cancel import CancelToken
from runner.fleet import shard_of
from runner.report import RunReport
from runner.settings import Secret, Settings
from tests.conftest import FreshDatabases
from tests.faults.checks import (
    SENTINEL_PASSWORD,
    leaked,
    query,
    runner_locks,
    scalar,
    wait_no_runner_lock,
)
from tests.faults.live import LiveCli
from tests.faults.private_pg import free_port
from tests.parity import dump_schema, run_alembic
from tests.support import CliResult, Rev, chain, finish, run_cli, start_cli, table_rev
from tests.test_alembic_parity import COOKBOOK_TENANT, GENERIC, execute, write

pytestmark = pytest.mark.postgres


def tenants(n: int, prefix: str = "tenant") -> list[str]:
    return [f"{prefix}_{i:03d}" for i in range(n)]


def create_schemas(url: str, names: list[str]) -> None:
    execute(url, *(f'CREATE SCHEMA "{name}"' for name in names))


def tenants_file(tmp_path: Path, names: list[str]) -> str:
    path = tmp_path / "tenants.txt"
    path.write_text("# one tenant per line\n" + "\n".join(names) + "\n\n")
    return str(path)


def tables(url: str) -> dict[str, set[str]]:
    """The tables of every schema (the runner's history table left out)."""
    found: dict[str, set[str]] = {}
    for schema, table in query(
        url,
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
        "('pg_catalog', 'information_schema') AND tablename <> 'migration_runner_history'",
    ):
        found.setdefault(str(schema), set()).add(str(table))
    return found


def version_of(url: str, schema: str) -> str | None:
    if scalar(url, "SELECT to_regclass(:t) IS NOT NULL", t=f'"{schema}".alembic_version'):
        return scalar(url, f'SELECT version_num FROM "{schema}".alembic_version')  # type: ignore[return-value]
    return None


def finished_targets(result: CliResult) -> dict[str, dict[str, object]]:
    events = result.named("target_finished")
    by_target = {str(e["target"]): e for e in events}
    assert len(by_target) == len(events), "a target finished twice"
    return by_target


def fleet(args: list[str], url: str | None, ini: Path, **env: str) -> CliResult:
    return run_cli([*args, "--config", str(ini)], url, timeout=300, **env)


def broken_for(ini: Path, url: str, schema: str) -> None:
    """Make revision r0001 fail in `schema` only: its table is already there."""
    execute(url, f'CREATE TABLE "{schema}".t_r0001 (id int)')


# -- schema per tenant ---------------------------------------------------------------------


@pytest.mark.slow
def test_two_hundred_cookbook_tenants_migrate_into_their_own_schemas_in_one_run(
    tmp_path: Path, pg_url: str
) -> None:
    """Alembic's cookbook env.py, unchanged: each tenant's tables and version table land in
    its schema, nothing in public; a rerun finds every tenant at head; `check` agrees."""
    names = tenants(200)
    create_schemas(pg_url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, chain(2))
    env = {"MIGRATION_TENANTS_FILE": tenants_file(tmp_path, names), "MIGRATION_PARALLEL": "3"}

    result = fleet(["upgrade"], pg_url, ini, **env)

    assert result.returncode == 0, result.stderr[-3000:]
    done = finished_targets(result)
    assert set(done) == set(names)
    assert {(e["exit_code"], e["applied"], e["to_revision"]) for e in done.values()} == {
        (0, 2, "r0001")
    }
    assert len(result.named("target_started")) == 200
    found = tables(pg_url)
    assert "public" not in found
    for name in names:
        assert found[name] == {"alembic_version", "t_r0000", "t_r0001"}, name
        assert version_of(pg_url, name) == "r0001"
    summary = result.finished
    assert summary["exit_code"] == 0 and summary["outcome"] == "success"
    assert summary["applied"] == 400
    assert summary["fleet"]["targets"] == 200
    assert summary["fleet"]["by_outcome"] == {"success": 200}
    assert len(summary["fleet"]["slowest"]) == 5

    again = fleet(["upgrade"], pg_url, ini, **env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.finished["outcome"] == "up_to_date"
    assert again.finished["fleet"]["by_outcome"] == {"up_to_date": 200}
    assert not again.named("lock_acquired"), "a tenant at head takes no lock"

    check = fleet(["check"], pg_url, ini, **env)
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.strip().splitlines() == ["200 of 200 targets at head"]


def test_a_fleet_gives_each_tenant_what_alembic_gives_it(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    """The oracle: `alembic -x tenant=NAME upgrade head` for each tenant into one database,
    one fleet run into another; the two databases are the same, schema by schema."""
    names = tenants(3)
    plain, ours = databases.new("postgresql"), databases.new("postgresql")
    for url in (plain, ours):
        create_schemas(url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, chain(3))
    for name in names:
        done = run_alembic(ini, plain, ["-x", f"tenant={name}", "upgrade", "head"])
        assert done.returncode == 0, done.stderr
    result = fleet(["upgrade"], ours, ini, MIGRATION_TENANTS=",".join(names))
    assert result.returncode == 0, result.stderr
    assert dump_schema(ours) == dump_schema(plain)


def test_a_tenant_at_head_costs_one_read_of_its_version_table_and_takes_no_lock(
    tmp_path: Path, pg_url: str
) -> None:
    """The project loads once for the fleet; each tenant at head is env.py's connection plus
    one read of its version table and one of its history table (a dirty tenant is refused
    even at head): no lock, nothing written, no second read."""
    names = tenants(5)
    create_schemas(pg_url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, chain(2))
    assert fleet(["upgrade"], pg_url, ini, MIGRATION_TENANTS=",".join(names)).returncode == 0
    settings = Settings(database_url=Secret(pg_url), config=ini, tenants=tuple(names), parallel=1)
    spec = fleet_commands.spec_for("upgrade", argparse.Namespace(revision="head"), settings)
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    loads: list[str] = []
    real_open = revisions.open_script_directory

    def counting_open(config: Any) -> Any:
        loads.append("load")
        return real_open(config)

    event.listen(Engine, "before_cursor_execute", seen)
    revisions.open_script_directory = counting_open  # type: ignore[assignment]
    try:
        with logs.captured() as events:
            code = fleet_commands.run(
                spec,
                CancelToken(),
                RunReport("upgrade"),
                io.StringIO(),
                cli.fleet_worker,
            )
    finally:
        revisions.open_script_directory = real_open  # type: ignore[assignment]
        event.remove(Engine, "before_cursor_execute", seen)
    assert code == 0
    assert loads == ["load"], "the script directory is loaded once for the whole fleet"
    assert [e["outcome"] for e in events if e["event"] == "target_finished"] == ["up_to_date"] * 5
    assert len([s for s in statements if "alembic_version.version_num" in s]) == 5
    assert not [s for s in statements if "advisory" in s]
    history = [s for s in statements if "migration_runner_history" in s]
    assert len(history) == 5 and all(s.lstrip().startswith("SELECT state") for s in history)


def test_tenants_from_a_query_on_the_main_database(tmp_path: Path, pg_url: str) -> None:
    names = tenants(4, "acct")
    create_schemas(pg_url, [*names, "not_a_tenant"])
    ini = write(tmp_path, COOKBOOK_TENANT, chain(1))
    sql = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'acct%' ORDER BY nspname"
    result = fleet(["upgrade"], pg_url, ini, MIGRATION_TENANTS_QUERY=sql)
    assert result.returncode == 0, result.stderr
    assert set(finished_targets(result)) == set(names)
    assert version_of(pg_url, "not_a_tenant") is None


def test_a_broken_tenant_fails_alone_and_check_names_it(tmp_path: Path, pg_url: str) -> None:
    names = tenants(12)
    create_schemas(pg_url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, chain(3))
    broken_for(ini, pg_url, names[4])
    env = {"MIGRATION_TENANTS": ",".join(names), "MIGRATION_PARALLEL": "2"}

    result = fleet(["upgrade"], pg_url, ini, **env)

    assert result.returncode == 70, result.stderr[-3000:]
    done = finished_targets(result)
    assert set(done) == set(names), "one failure does not stop the others"
    bad = done[names[4]]
    assert (bad["exit_code"], bad["outcome"], bad["revision"]) == (70, "migration_failed", "r0001")
    assert "t_r0001" in str(bad["reason"]) and "already exists" in str(bad["reason"])
    assert bad["applied"] == 1 and bad["to_revision"] == "r0000"
    for name in names:
        assert version_of(pg_url, name) == ("r0000" if name == names[4] else "r0002"), name
    assert tables(pg_url)[names[4]] == {"alembic_version", "t_r0000", "t_r0001"}
    summary = result.finished
    assert summary["outcome"] == "targets_failed"
    assert summary["fleet"]["failed"] == 1
    assert summary["fleet"]["failed_targets"][0]["target"] == names[4]
    assert summary["fleet"]["by_outcome"] == {"migration_failed": 1, "success": 11}
    assert f"first failure: {names[4]}: revision r0001" in summary["reason"]

    check = fleet(["check"], pg_url, ini, **env)
    assert check.returncode == 3, check.stderr[-3000:]
    assert check.stdout.splitlines() == [
        f"{names[4]}: behind: at r0000, 2 pending: r0001 r0002",
        "11 of 12 targets at head",
    ]
    as_json = fleet(["check", "--json"], pg_url, ini, **env)
    assert as_json.returncode == 3
    document = json.loads(as_json.stdout)
    assert document["up_to_date"] is False and document["at_head"] == 11
    (behind,) = document["not_at_head"]
    assert behind["target"] == names[4] and behind["current"] == ["r0000"]
    assert [p["revision"] for p in behind["pending"]] == ["r0001", "r0002"]


def test_max_failed_stops_starting_targets(tmp_path: Path, pg_url: str) -> None:
    names = tenants(8)
    create_schemas(pg_url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, chain(2))
    for name in names[:3]:
        broken_for(ini, pg_url, name)
    result = fleet(
        ["upgrade"],
        pg_url,
        ini,
        MIGRATION_TENANTS=",".join(names),
        MIGRATION_PARALLEL="1",
        MIGRATION_MAX_FAILED="2",
    )
    assert result.returncode == 70, result.stderr[-3000:]
    assert list(finished_targets(result)) == names[:2]
    assert result.named("max_failed_reached")[0]["failed"] == 2
    fleet_summary = result.finished["fleet"]
    assert (fleet_summary["failed"], fleet_summary["not_started"]) == (2, 6)
    assert fleet_summary["stopped"] == "max_failed"
    assert result.finished["outcome"] == "max_failed"
    for name in names[2:]:
        assert version_of(pg_url, name) is None, "no target after the limit was started"


def test_a_failing_canary_stops_the_rollout_and_a_good_one_lets_it_go_on(
    tmp_path: Path, pg_url: str
) -> None:
    names = tenants(6)
    create_schemas(pg_url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, chain(2))
    broken_for(ini, pg_url, names[1])
    env = {"MIGRATION_TENANTS": ",".join(names), "MIGRATION_CANARY": "2", "MIGRATION_PARALLEL": "3"}

    stopped = fleet(["upgrade"], pg_url, ini, **env)

    assert stopped.returncode == 70, stopped.stderr[-3000:]
    assert set(finished_targets(stopped)) == set(names[:2])
    assert stopped.finished["outcome"] == "canary_failed"
    assert stopped.finished["fleet"]["not_started"] == 4
    assert stopped.named("canary_failed")[0]["target"] == names[1]
    assert all(version_of(pg_url, name) is None for name in names[2:])

    execute(pg_url, f'DROP TABLE "{names[1]}".t_r0001')
    rollout = fleet(["upgrade"], pg_url, ini, **env)
    assert rollout.returncode == 0, rollout.stderr[-3000:]
    done = list(finished_targets(rollout))
    assert set(done[:2]) == set(names[:2]), "the canary finishes before the rest starts"
    assert set(done) == set(names)


# -- database per tenant -------------------------------------------------------------------


def test_database_per_tenant_one_database_down_is_isolated_reported_and_retryable(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    urls = [databases.new("postgresql") for _ in range(3)]
    down = f"postgresql://app:{quote(SENTINEL_PASSWORD, safe='')}@127.0.0.1:{free_port()}/gone"
    urls_file = tmp_path / "database-urls"
    urls_file.write_text("\n".join([urls[0], down, *urls[1:]]) + "\n")
    ini = write(tmp_path, GENERIC, chain(2))

    result = fleet(
        ["upgrade"],
        None,
        ini,
        MIGRATION_DATABASE_URLS_FILE=str(urls_file),
        MIGRATION_CONNECT_TIMEOUT="1",
        MIGRATION_PARALLEL="2",
    )

    assert result.returncode == 69, result.stderr[-3000:]
    assert not leaked(SENTINEL_PASSWORD, result.stdout + result.stderr)
    done = finished_targets(result)
    port = down.rsplit(":", 1)[1].split("/")[0]
    gone = done[f"127.0.0.1:{port}/gone"]
    assert (gone["exit_code"], gone["outcome"]) == (69, "database_unavailable")
    assert "not reachable" in str(gone["reason"])
    assert sorted(e["exit_code"] for e in done.values()) == [0, 0, 0, 69]
    for url in urls:
        assert scalar(url, "SELECT version_num FROM alembic_version") == "r0001"
    assert result.finished["fleet"]["failed_targets"][0]["outcome"] == "database_unavailable"


# -- shards and concurrent runs ------------------------------------------------------------


def test_shards_of_an_indexed_job_cover_the_fleet_once(tmp_path: Path, pg_url: str) -> None:
    """Three pods of an Indexed Job (JOB_COMPLETION_INDEX 0..2) at once: together they
    migrate every tenant, none twice."""
    names = tenants(30)
    create_schemas(pg_url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, chain(2))
    pods = [
        start_cli(
            ["upgrade", "--config", str(ini)],
            pg_url,
            MIGRATION_TENANTS=",".join(names),
            MIGRATION_SHARD_COUNT="3",
            JOB_COMPLETION_INDEX=str(index),
            MIGRATION_PARALLEL="1",
        )
        for index in range(3)
    ]
    results = [finish(pod, 300) for pod in pods]
    shards = []
    for index, result in enumerate(results):
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.finished["fleet"]["shard"] == f"{index}/3"
        shard = set(finished_targets(result))
        assert shard == {n for n in names if shard_of(n, 3) == index}
        shards.append(shard)
    assert set().union(*shards) == set(names)
    assert sum(len(s) for s in shards) == len(names), "no tenant in two shards"
    assert all(version_of(pg_url, name) == "r0001" for name in names)


def test_two_fleet_runs_at_once_apply_each_revision_once(tmp_path: Path, pg_url: str) -> None:
    names = tenants(24)
    create_schemas(pg_url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, chain(2))
    env = {"MIGRATION_TENANTS": ",".join(names), "MIGRATION_PARALLEL": "2"}
    runs = [start_cli(["upgrade", "--config", str(ini)], pg_url, **env) for _ in range(2)]
    results = [finish(run, 300) for run in runs]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    assert sum(int(r.finished["applied"]) for r in results) == 2 * len(names)
    for name in names:
        rows = query(
            pg_url,
            f'SELECT revision, count(*) FROM "{name}".migration_runner_history '
            "WHERE state = 'applied' GROUP BY revision ORDER BY revision",
        )
        assert rows == [("r0000", 1), ("r0001", 1)], name


# -- signals -------------------------------------------------------------------------------

SLOW = Rev(
    "r0001",
    "r0000",
    upgrade='op.create_table("t_r0001", sa.Column("id", sa.Integer, primary_key=True))\n'
    'op.execute("SELECT pg_sleep(60)")',
    downgrade='op.drop_table("t_r0001")',
    message="slow",
)


@pytest.mark.timeout(120)
def test_sigterm_mid_fleet_rolls_back_the_running_targets_and_starts_no_other(
    tmp_path: Path, pg_url: str
) -> None:
    names = tenants(6)
    create_schemas(pg_url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, [table_rev("r0000", None, "t_r0000"), SLOW])
    run = LiveCli(
        ["upgrade", "--config", str(ini)],
        pg_url,
        MIGRATION_TENANTS=",".join(names),
        MIGRATION_PARALLEL="2",
    )
    deadline = time.monotonic() + 60
    while (
        scalar(
            pg_url,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%'"
            " AND pid <> pg_backend_pid()",
        )
        != 2
    ):
        assert time.monotonic() < deadline, "".join(run.lines)
        time.sleep(0.05)
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    result = run.finish(30)
    assert time.monotonic() - sent < 10, "the fleet stops within the grace period"

    assert result.returncode == 143, result.stderr[-3000:]
    assert result.finished["outcome"] == "interrupted"
    done = finished_targets(result)
    assert len(done) == 2, "no target starts after the signal"
    for stopped in done.values():
        assert (stopped["exit_code"], stopped["outcome"]) == (143, "interrupted")
        assert stopped["to_revision"] == "r0000"
    assert result.finished["fleet"]["not_started"] == 4
    wait_no_runner_lock(pg_url)
    assert not runner_locks(pg_url)
    found = tables(pg_url)
    for name in names:
        # Never half-applied: the slow revision rolled back whole where it ran.
        if name in done:
            assert version_of(pg_url, name) == "r0000"
            assert found[name] == {"alembic_version", "t_r0000"}, name
        else:
            assert version_of(pg_url, name) is None and name not in found, name


def test_a_worker_killed_mid_target_fails_that_target_alone_and_is_replaced(
    tmp_path: Path, pg_url: str
) -> None:
    names = tenants(6)
    create_schemas(pg_url, names)
    pid_file = tmp_path / "worker.pid"
    slow_for_first = Rev(
        "r0001",
        "r0000",
        upgrade=f"""
        op.create_table("t_r0001", sa.Column("id", sa.Integer, primary_key=True))
        if context.get_x_argument(as_dictionary=True)["tenant"] == "{names[0]}":
            import os
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            op.execute("SELECT pg_sleep(60)")
        """,
        downgrade='op.drop_table("t_r0001")',
        header="from alembic import context",
    )
    ini = write(tmp_path, COOKBOOK_TENANT, [table_rev("r0000", None, "t_r0000"), slow_for_first])
    run = LiveCli(
        ["upgrade", "--config", str(ini)],
        pg_url,
        MIGRATION_TENANTS=",".join(names),
        MIGRATION_PARALLEL="2",
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "".join(run.lines)
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    assert worker != run.proc.pid, "the target runs in a worker process"
    os.kill(worker, signal.SIGKILL)
    result = run.finish(60)

    assert result.returncode == 1, result.stderr[-3000:]
    done = finished_targets(result)
    assert set(done) == set(names)
    lost = done[names[0]]
    assert (lost["exit_code"], lost["outcome"]) == (1, "worker_lost")
    assert "killed by signal 9" in str(lost["reason"])
    assert [done[n]["exit_code"] for n in names[1:]] == [0] * 5, "a new worker took over"
    wait_no_runner_lock(pg_url)
    assert version_of(pg_url, names[0]) == "r0000", "the server rolled the revision back"
    assert tables(pg_url)[names[0]] == {"alembic_version", "t_r0000"}


# -- the other commands --------------------------------------------------------------------


def test_plan_current_and_wait_run_on_every_target(tmp_path: Path, pg_url: str) -> None:
    names = tenants(3)
    create_schemas(pg_url, names)
    ini = write(tmp_path, COOKBOOK_TENANT, chain(2))
    env = {"MIGRATION_TENANTS": ",".join(names)}
    assert fleet(["upgrade", "r0000"], pg_url, ini, **env).returncode == 0

    plan = fleet(["plan"], pg_url, ini, **env)
    assert plan.returncode == 0, plan.stderr
    assert sorted(plan.stdout.splitlines()) == sorted(
        f"{name}: r0001  r0000 -> r0001  create t_r0001" for name in names
    )
    current = fleet(["current"], pg_url, ini, **env)
    assert sorted(current.stdout.splitlines()) == sorted(f"{name}: r0000" for name in names)
    waited = fleet(["wait", "--timeout", "1"], pg_url, ini, **env)
    assert waited.returncode == 75, waited.stderr
    assert waited.finished["fleet"]["by_outcome"] == {"wait_timeout": 3}

    assert fleet(["upgrade"], pg_url, ini, **env).returncode == 0
    assert fleet(["wait", "--timeout", "5"], pg_url, ini, **env).returncode == 0
    current = fleet(["current", "--json"], pg_url, ini, **env)
    assert {(row["target"], tuple(row["current"])) for row in json.loads(current.stdout)} == {
        (name, ("r0001",)) for name in names
    }


def test_commands_for_one_database_refuse_a_fleet(tmp_path: Path) -> None:
    ini = write(tmp_path, COOKBOOK_TENANT, chain(1))
    for args in (["downgrade", "base", "--yes"], ["stamp", "head"], ["log"], ["plan", "--sql"]):
        result = fleet(args, "postgresql://u@127.0.0.1:1/x", ini, MIGRATION_TENANTS="a,b")
        assert result.returncode == 2, args
        assert "fleet" in result.finished["reason"], args
    history = fleet(["history"], None, ini, MIGRATION_TENANTS="a,b")
    assert history.returncode == 0 and "r0000" in history.stdout


def test_lint_over_a_fleet_reviews_every_revision_pending_on_any_target_once(
    tmp_path: Path, databases: FreshDatabases, pg_server_url: Any
) -> None:
    """The targets run the same revisions: one shadow run reviews what is pending anywhere
    (here r0001 on one database, r0001 and the index on another; none on the third), and the
    targets themselves are only read."""
    index = Rev("ix", "r0001", upgrade='op.create_index("ix_t", "t_r0000", ["id"])')
    ini = write(tmp_path, GENERIC, [*chain(2), index])
    urls = [databases.new("postgresql") for _ in range(3)]
    for url, at in zip(urls, ["r0000", "r0001", "ix"], strict=True):
        assert run_cli(["upgrade", at, "--config", str(ini)], url).returncode == 0
    urls_file = tmp_path / "database-urls"
    urls_file.write_text("\n".join(urls) + "\n")
    result = fleet(
        ["lint", "--format", "json"],
        None,
        ini,
        MIGRATION_DATABASE_URLS_FILE=str(urls_file),
        MIGRATION_SHADOW_URL=pg_server_url.render_as_string(hide_password=False),
    )
    assert result.returncode == 4, result.stderr[-3000:]
    reviewed = json.loads(result.stdout)
    observed = [r["revision"] for r in reviewed["revisions"] if r["status"] == "observed"]
    assert observed == ["r0001", "ix"]
    assert reviewed["scope"] == "2 revision(s) pending on 2 target(s) of the fleet"
    assert [f["rule"] for f in reviewed["findings"] if f["severity"] == "error"] == [
        "index-not-concurrent"
    ]
    assert [scalar(url, "SELECT version_num FROM alembic_version") for url in urls] == [
        "r0000",
        "r0001",
        "ix",
    ], "linting a fleet changes none of its databases"
