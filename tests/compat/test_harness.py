"""The compatibility harness's own pure parts (no database server, no install; SQLite files in
tmp_path at most): they run in the default suite so that a broken comparison cannot pass the
opt-in suite silently."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from tests.compat import databases, harness
from tests.compat.harness import (
    HOMES,
    Case,
    Outcome,
    Run,
    _set_option,
    all_cases,
    check_contract,
    comparable,
    project_lines,
)
from tests.compat.projects import PROJECTS
from tests.parity import HISTORY


def _event(event: str, **fields: object) -> str:
    return json.dumps({"timestamp": "t", "level": "info", "event": event, **fields})


def _outcome() -> Outcome:
    return Outcome(all_cases()[0])


def test_set_option_replaces_only_in_the_alembic_section_and_adds_when_missing() -> None:
    ini = "[alembic]\nscript_location = alembic\n[other]\nsqlalchemy.url = keep\n"
    changed = _set_option(_set_option(ini, "script_location", "/abs"), "sqlalchemy.url", "x://")
    assert "script_location = /abs" in changed
    assert "[alembic]\nsqlalchemy.url = x://" in changed
    assert "sqlalchemy.url = keep" in changed


def test_pg_dump_normalisation_drops_comments_blank_lines_and_restrict_keys() -> None:
    dump = (
        "--\n-- Name: t\n--\n\\restrict abc123\n\nCREATE TABLE public.t ();\n\\unrestrict abc123\n"
    )
    assert databases._normalise_pg_dump(dump) == "CREATE TABLE public.t ();"


def test_contract_accepts_json_lines_with_one_run_finished() -> None:
    stderr = "\n".join([_event("lock_acquired"), _event("run_finished", exit_code=0, applied=3)])
    outcome = _outcome()
    check_contract(Run("runner", [], 0, "", stderr, 0.0), outcome)
    assert outcome.status == "same", outcome.problems


def test_contract_flags_text_lines_missing_summary_exit_mismatch_and_stdout() -> None:
    outcome = _outcome()
    check_contract(Run("runner", [], 0, "", "INFO  [alembic] Running upgrade", 0.0), outcome)
    assert outcome.status == "different"
    assert any("not JSON" in p for p in outcome.problems)
    assert any("0 run_finished" in p for p in outcome.problems)

    outcome = _outcome()
    stderr = _event("run_finished", exit_code=0)
    check_contract(Run("runner", [], 70, "printed", stderr, 0.0), outcome)
    assert any("process exited 70" in p for p in outcome.problems)
    assert any("stdout not empty" in p for p in outcome.problems)


def test_every_case_has_a_unique_id_and_a_downgrade_target_for_its_backend() -> None:
    cases: list[Case] = all_cases()
    assert len({c.id for c in cases}) == len(cases)
    for project in PROJECTS:
        assert set(project.backends) <= set(project.downgrade_to), project.key


def test_sqlite_table_constraints_compare_in_any_order_but_columns_keep_theirs() -> None:
    head = 'CREATE TABLE "t" (\n\ta INTEGER, b TEXT, PRIMARY KEY (a), '
    one = head + "UNIQUE (a, b), FOREIGN KEY(b) REFERENCES u (b)\n)"
    two = head + "FOREIGN KEY(b) REFERENCES u (b), UNIQUE (a, b)\n)"
    swapped_columns = 'CREATE TABLE "t" (b TEXT, a INTEGER, PRIMARY KEY (a))'
    norm = databases._normalise_sqlite_sql
    assert norm(one) == norm(two)
    assert norm(swapped_columns) != norm('CREATE TABLE "t" (a INTEGER, b TEXT, PRIMARY KEY (a))')
    assert norm("CREATE INDEX ix ON t (a)") == "CREATE INDEX ix ON t (a)"


def test_mariadb_keys_compare_in_any_order_and_auto_increment_counters_are_ignored() -> None:
    def create(keys: list[str], counter: int) -> str:
        body = ",\n".join(["  `id` int(11) NOT NULL", "  `a` int(11)", *keys])
        return f"CREATE TABLE `t` (\n{body}\n) ENGINE=InnoDB AUTO_INCREMENT={counter}"

    one = create(["  PRIMARY KEY (`id`)", "  KEY `ix_a` (`a`)", "  KEY `ix_b` (`a`,`id`)"], 3)
    two = create(["  PRIMARY KEY (`id`)", "  KEY `ix_b` (`a`,`id`)", "  KEY `ix_a` (`a`)"], 9)
    assert databases._normalise_maria_create(one) == databases._normalise_maria_create(two)
    moved = one.replace(
        "  `id` int(11) NOT NULL,\n  `a` int(11)", "  `a` int(11),\n  `id` int(11) NOT NULL"
    )
    assert databases._normalise_maria_create(moved) != databases._normalise_maria_create(one)


def test_snapshot_leaves_out_the_runners_history_table_and_nothing_else(tmp_path: Path) -> None:
    """The runner's history table (and its index) is not in a snapshot; a project table whose
    name only starts with the history table's still is."""
    path = tmp_path / "db.sqlite"
    db = databases.Database("sqlite", "db", make_url(f"sqlite:///{path}"))
    engine = create_engine(db.url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32))")
    before = databases.snapshot(db)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {HISTORY} (id INTEGER PRIMARY KEY, revision TEXT)")
        conn.exec_driver_sql(f"CREATE INDEX ix_history_revision ON {HISTORY} (revision)")
        conn.exec_driver_sql(f"INSERT INTO {HISTORY} (revision) VALUES ('r1')")
    assert databases.snapshot(db) == before
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {HISTORY}_copy (id INTEGER PRIMARY KEY)")
    assert f"{HISTORY}_copy" in databases.snapshot(db)
    engine.dispose()


def test_case_ids_name_the_home_variant_and_every_case_has_both() -> None:
    cases = all_cases()
    assert {c.home for c in cases} == set(HOMES)
    assert all(c.id.endswith(f"-{c.home}") for c in cases)
    warm = {c.id.removesuffix("-warm") for c in cases if c.home == "warm"}
    cold = {c.id.removesuffix("-cold") for c in cases if c.home == "cold"}
    assert warm == cold


def test_contract_passes_the_projects_own_lines_through_and_notes_them() -> None:
    """A plain stderr line is the project's (not a break of the contract) only when plain
    Alembic printed it too; the case's notes say so."""
    stderr = "\n".join(["processing batch 1", _event("run_finished", exit_code=0, applied=1)])
    outcome = _outcome()
    check_contract(
        Run("runner", [], 0, "", stderr, 0.0),
        outcome,
        projects_own=frozenset({"processing batch 1"}),
    )
    assert outcome.status == "same", outcome.problems
    assert any("project's own output" in n and "processing batch 1" in n for n in outcome.notes)

    outcome = _outcome()
    check_contract(Run("runner", [], 0, "", stderr, 0.0), outcome, projects_own=frozenset())
    assert any("not JSON" in p for p in outcome.problems)


def test_the_projects_own_lines_match_plain_alembics_whatever_their_timestamps() -> None:
    ours = "2026-12-01T11:12:49.255476Z [info     ] Checking primary key [rev_0101] table=deadline"
    theirs = (
        "2026-12-01T11:12:45.289343Z [info     ] Checking primary key [rev_0101] table=deadline"
    )
    assert comparable(ours) == comparable(theirs)
    assert comparable("2026-12-01 11:12:45,289 INFO x") == comparable(
        "2026-12-02 01:00:00,001 INFO x"
    )
    assert comparable("took 12 ms") != comparable("took 13 ms")


def test_alembic_and_sqlalchemy_records_and_warnings_are_never_the_projects_own_lines() -> None:
    """The runner promises these as JSON events: printed plain, they break the contract even
    though plain Alembic prints them too."""
    project = PROJECTS[0]
    harness._ALEMBIC_LINES[(project.key, "test-backend")] = {
        "INFO  [alembic.runtime.migration] Running upgrade  -> a1",
        "WARNI [sqlalchemy.engine.Engine] something",
        "/venv/site-packages/mlflow/server/fastapi_app.py:23: StarletteDeprecationWarning: x",
        "processing batch 1",
    }
    try:
        assert project_lines(project, "test-backend") == {"processing batch 1"}
    finally:
        del harness._ALEMBIC_LINES[(project.key, "test-backend")]


def test_processes_started_together_are_drained_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first process waits for the second, which first writes more than a pipe holds: read
    one after the other, the first would never finish."""
    monkeypatch.setattr(harness, "RUN_TIMEOUT_S", 20.0)
    flag = tmp_path / "done"
    waiter = f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.01)"
    writer = f"import sys\nsys.stderr.write('x' * 300_000)\nopen({str(flag)!r}, 'w').close()"
    started = []
    for label, code in (("waiter", waiter), ("writer", writer)):
        args = [sys.executable, "-c", code]
        proc, t0 = harness._spawn(args, dict(os.environ), tmp_path)
        started.append((label, args, proc, t0))
    runs = harness._collect_together(started)
    assert [r.returncode for r in runs] == [0, 0]
    assert len(runs[1].stderr) == 300_000
    assert all(r.duration_s < 15 for r in runs)
