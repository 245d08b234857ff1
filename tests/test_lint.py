"""`migration-runner lint` on real PostgreSQL with real revisions: one project per rule, each
with a safe form (first) and a dangerous form (last) of the same change on twin tables; the
dangerous one must be found with its lock, table, statement and line, the safe one must give no
warning. Also: a revision that inspects the live database, a target part-way up the chain, the
throwaway database dropped after success, failure and SIGTERM (and after SIGKILL by the next
lint), suppression comments, the graph
check, and the shadow-only connection guard.
"""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from tests.parity import dump_schema
from tests.support import CliResult, Rev, chain, finish, run_cli, start_cli, write_project

pytestmark = pytest.mark.postgres


@pytest.fixture
def shadow(pg_server_url: URL) -> str:
    """The suite's PostgreSQL server as the shadow server (the runner creates and drops its
    throwaway database there)."""
    return pg_server_url.render_as_string(hide_password=False)


def lint(ini: Path, shadow: str, *args: str, url: str | None = None, **env: str) -> CliResult:
    return run_cli(
        ["lint", "--format", "json", *args, "--config", str(ini)],
        url,
        MIGRATION_SHADOW_URL=shadow,
        **env,
    )


def document(result: CliResult) -> dict[str, Any]:
    assert result.stdout.strip(), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def databases_named(admin: URL, name: str) -> int:
    engine = create_engine(admin, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            count = conn.exec_driver_sql(
                f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"
            ).scalar()
    finally:
        engine.dispose()
    return int(count or 0)


def shadow_database_of(result: CliResult) -> str:
    created = result.named("shadow_database_created")
    assert len(created) == 1, result.stderr
    return str(created[0]["database"])


# -- one project per rule ---------------------------------------------------------------------

BASE = Rev(
    "setup",
    None,
    message="twin tables, each with an index and an enum column",
    upgrade="""
    op.create_table("owners", sa.Column("id", sa.Integer, primary_key=True))
    for side in ("a", "b"):
        op.create_table(
            f"hot_{side}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("owner_id", sa.Integer),
            sa.Column("n", sa.Integer),
            sa.Column("email", sa.String(50)),
            sa.Column("note", sa.Text),
            sa.Column("m", sa.Enum("ok", "bad", name=f"mood_{side}")),
        )
        op.create_index(f"ix_{side}_note", f"hot_{side}", ["note"])
        op.create_table(f"bare_{side}", sa.Column("id", sa.Integer, nullable=False))
    """,
)

AUTOCOMMIT = "with op.get_context().autocommit_block():\n"


def block(body: str) -> str:
    return AUTOCOMMIT + textwrap.indent(textwrap.dedent(body).strip(), "    ")


#: rule -> (safe revisions' bodies on hot_b, dangerous revisions' bodies on hot_a, severity)
CASES: dict[str, tuple[list[str], list[str], str]] = {
    "index-not-concurrent": (
        [block('op.create_index("ix_b_n", "hot_b", ["n"], postgresql_concurrently=True)')],
        ['op.create_index("ix_a_n", "hot_a", ["n"])'],
        "error",
    ),
    "concurrently-in-transaction": (
        [block('op.create_index("ix_b_n", "hot_b", ["n"], postgresql_concurrently=True)')],
        ['op.create_index("ix_a_n", "hot_a", ["n"], postgresql_concurrently=True)'],
        "error",
    ),
    "drop-index-not-concurrent": (
        [block('op.drop_index("ix_b_note", table_name="hot_b", postgresql_concurrently=True)')],
        ['op.drop_index("ix_a_note", table_name="hot_a")'],
        "warning",
    ),
    "reindex-not-concurrent": (
        [block('op.execute("REINDEX INDEX CONCURRENTLY ix_b_note")')],
        ['op.execute("REINDEX INDEX ix_a_note")'],
        "error",
    ),
    "add-column-rewrite": (
        ['op.add_column("hot_b", sa.Column("token", sa.Text, server_default="x"))'],
        [
            'op.add_column("hot_a", sa.Column("token", sa.Text,\n'
            '              server_default=sa.text("md5(random()::text)")))',
            'op.add_column("hot_a", sa.Column("n2", sa.Integer, sa.Computed("n * 2", '
            "persisted=True)))",
        ],
        "error",
    ),
    "column-type-rewrite": (
        ['op.alter_column("hot_b", "email", type_=sa.String(100))'],
        ['op.alter_column("hot_a", "n", type_=sa.BigInteger)'],
        "error",
    ),
    "constraint-not-valid": (
        [
            'op.execute("ALTER TABLE hot_b ADD CONSTRAINT fk_b_owner FOREIGN KEY (owner_id) '
            'REFERENCES owners (id) NOT VALID")\n'
            'op.execute("ALTER TABLE hot_b ADD CONSTRAINT ck_b_n CHECK (n > 0) NOT VALID")',
            'op.execute("ALTER TABLE hot_b VALIDATE CONSTRAINT fk_b_owner")\n'
            'op.execute("ALTER TABLE hot_b VALIDATE CONSTRAINT ck_b_n")',
        ],
        [
            'op.create_foreign_key("fk_a_owner", "hot_a", "owners", ["owner_id"], ["id"])',
            'op.create_check_constraint("ck_a_n", "hot_a", "n > 0")',
        ],
        "error",
    ),
    "set-not-null": (
        [
            'op.execute("ALTER TABLE hot_b ADD CONSTRAINT ck_b_nn CHECK (n IS NOT NULL) '
            'NOT VALID")',
            'op.execute("ALTER TABLE hot_b VALIDATE CONSTRAINT ck_b_nn")',
            'op.alter_column("hot_b", "n", nullable=False)\nop.drop_constraint("ck_b_nn", "hot_b")',
        ],
        ['op.alter_column("hot_a", "n", nullable=False)'],
        "error",
    ),
    "add-not-null-column": (
        [
            'op.add_column("hot_b", sa.Column("flag", sa.Integer, nullable=False, '
            'server_default="0"))'
        ],
        ['op.add_column("hot_a", sa.Column("flag", sa.Integer, nullable=False))'],
        "warning",
    ),
    "unique-without-index": (
        [
            block(
                'op.create_index("uq_b_email_idx", "hot_b", ["email"], unique=True, '
                "postgresql_concurrently=True)"
            ),
            'op.execute("ALTER TABLE hot_b ADD CONSTRAINT uq_b_email UNIQUE USING INDEX '
            'uq_b_email_idx")',
        ],
        ['op.create_unique_constraint("uq_a_email", "hot_a", ["email"])'],
        "error",
    ),
    "unique-without-index/primary-key": (
        [
            block(
                'op.create_index("pk_b_idx", "bare_b", ["id"], unique=True, '
                "postgresql_concurrently=True)"
            ),
            'op.execute("ALTER TABLE bare_b ADD CONSTRAINT pk_b PRIMARY KEY USING INDEX pk_b_idx")',
        ],
        ['op.create_primary_key("pk_a", "bare_a", ["id"])'],
        "error",
    ),
    "ddl-with-backfill": (
        [
            'op.add_column("hot_b", sa.Column("score", sa.Integer))',
            'op.execute("UPDATE hot_b SET score = n")',
        ],
        [
            'op.add_column("hot_a", sa.Column("score", sa.Integer))\n'
            'op.execute("UPDATE hot_a SET score = n")'
        ],
        "error",
    ),
    "drop-column": (
        ['op.add_column("hot_b", sa.Column("note2", sa.Text))'],
        ['op.drop_column("hot_a", "note")'],
        "warning",
    ),
    "rename-column": (
        ['op.add_column("hot_b", sa.Column("remark", sa.Text))'],
        ['op.alter_column("hot_a", "note", new_column_name="remark")'],
        "warning",
    ),
    "drop-table": (
        ['op.create_table("fresh", sa.Column("id", sa.Integer, primary_key=True))'],
        ['op.drop_table("hot_a")'],
        "warning",
    ),
    "rename-table": (
        ['op.create_table("fresh", sa.Column("id", sa.Integer, primary_key=True))'],
        ['op.rename_table("hot_a", "hot_a_old")'],
        "warning",
    ),
    "enum-value-used-in-transaction": (
        [
            block("op.execute(\"ALTER TYPE mood_b ADD VALUE 'meh'\")")
            + "\nop.execute(\"UPDATE hot_b SET m = 'meh' WHERE m = 'bad'\")"
        ],
        [
            "op.execute(\"ALTER TYPE mood_a ADD VALUE 'meh'\")\n"
            "op.execute(\"UPDATE hot_a SET m = 'meh' WHERE m = 'bad'\")"
        ],
        "error",
    ),
}


def rule_project(root: Path, rule: str) -> tuple[Path, list[str], list[str]]:
    safe, dangerous, _ = CASES[rule]
    revisions = [BASE]
    safe_ids, dangerous_ids = [], []
    for index, body in enumerate(safe):
        safe_ids.append(f"safe{index}")
        revisions.append(Rev(safe_ids[-1], revisions[-1].revision, upgrade=body, message="safe"))
    for index, body in enumerate(dangerous):
        dangerous_ids.append(f"danger{index}")
        revisions.append(
            Rev(dangerous_ids[-1], revisions[-1].revision, upgrade=body, message="dangerous")
        )
    return write_project(root, revisions), safe_ids, dangerous_ids


def op_lines(path: Path) -> set[int]:
    """Lines of upgrade()'s body (where a finding must point)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines, 1) if line.startswith("def upgrade"))
    end = next(i for i, line in enumerate(lines, 1) if line.startswith("def downgrade"))
    return set(range(start + 1, end))


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_rule_finds_the_dangerous_form_and_not_the_safe_one(
    tmp_path: Path, shadow: str, pg_server_url: URL, rule: str
) -> None:
    ini, safe_ids, dangerous_ids = rule_project(tmp_path, rule)
    severity = CASES[rule][2]
    result = lint(ini, shadow)
    data = document(result)
    findings = data["findings"]
    loud = [f for f in findings if f["severity"] in ("warning", "error")]
    innocent = [f for f in loud if f["revision"] in ("setup", *safe_ids)]
    assert innocent == [], f"false alarm on the safe form: {innocent}"
    rule, _, variant = rule.partition("/")
    table = "bare_a" if variant == "primary-key" else "hot_a"
    for rev in dangerous_ids:
        found = [f for f in findings if f["revision"] == rev and f["rule"] == rule]
        assert found, f"{rule} not found in {rev}: {findings}"
        item = found[0]
        assert item["severity"] == severity
        assert item["file"].endswith(f"_{rev}.py")
        assert item["line"] in op_lines(tmp_path / item["file"]), item
        assert item["statement"], item
        assert item["message"] and item["safe"]
        if rule not in ("concurrently-in-transaction", "enum-value-used-in-transaction"):
            assert item["table"] == table, item
            assert item["lock"], item
    for each in findings:
        assert each["statement"] and each["line"], f"a finding that points at no code: {each}"
    assert result.returncode == (4 if severity == "error" else 0), result.stderr
    assert databases_named(pg_server_url, shadow_database_of(result)) == 0


def test_lock_level_and_observation_are_reported_for_each_revision(
    tmp_path: Path, shadow: str
) -> None:
    ini, _, _ = rule_project(tmp_path, "constraint-not-valid")
    data = document(lint(ini, shadow))
    by_rev = {r["revision"]: r for r in data["revisions"]}
    assert set(by_rev) == {"setup", "safe0", "safe1", "danger0", "danger1"}
    fk = next(f for f in data["findings"] if f["revision"] == "danger0")
    assert fk["lock"] == "SHARE ROW EXCLUSIVE" and fk["table"] == "hot_a"
    check = next(f for f in data["findings"] if f["revision"] == "danger1")
    assert check["lock"] == "ACCESS EXCLUSIVE"
    added = by_rev["safe0"]["constraints"]
    assert {(c["name"], c["state"], c["validated"]) for c in added} == {
        ("fk_b_owner", "added", False),
        ("ck_b_n", "added", False),
    }
    validated = by_rev["safe1"]["constraints"]
    assert {(c["name"], c["state"]) for c in validated} == {
        ("fk_b_owner", "validated"),
        ("ck_b_n", "validated"),
    }
    locks = {(lk["table"], lk["lock"]) for lk in by_rev["safe1"]["locks"]}
    assert ("hot_b", "SHARE UPDATE EXCLUSIVE") in locks
    assert by_rev["setup"]["locks"] == [], "a new table: nothing that existed before is locked"
    assert by_rev["danger0"]["statements"][0]["sql"].startswith("ALTER TABLE hot_a ADD CONSTRAINT")


def test_rewrites_are_observed_as_changed_file_nodes(tmp_path: Path, shadow: str) -> None:
    ini, _, _ = rule_project(tmp_path, "column-type-rewrite")
    data = document(lint(ini, shadow))
    by_rev = {r["revision"]: r for r in data["revisions"]}
    assert "hot_a" in by_rev["danger0"]["rewritten"]
    assert by_rev["safe0"]["rewritten"] == [], "varchar(50) -> varchar(100) rewrites nothing"
    info = [f for f in data["findings"] if f["revision"] == "safe0"]
    assert [(f["rule"], f["severity"], f["lock"]) for f in info if f["rule"] == "catalog-lock"] == [
        ("catalog-lock", "info", "ACCESS EXCLUSIVE")
    ]


CUSTOMERS = Rev(
    "customers",
    None,
    message="a table with a UNIQUE constraint on a VARCHAR(255) column",
    upgrade="""
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer),
        sa.Column("email", sa.String(255), unique=True),
        sa.Column("phone", sa.String(50)),
    )
    """,
)


def test_a_type_change_that_rebuilds_a_unique_index_adds_no_unique_constraint(
    tmp_path: Path, shadow: str
) -> None:
    """VARCHAR(255) -> TEXT under a UNIQUE constraint: PostgreSQL re-creates the constraint and
    its index under new oids (the index keeps its file: no rewrite). That is neither a new
    UNIQUE nor a rewrite; a UNIQUE really added still is, and int -> bigint still rewrites."""
    revisions = [
        CUSTOMERS,
        Rev(
            "to_text", "customers", upgrade='op.alter_column("customers", "email", type_=sa.Text())'
        ),
        Rev(
            "add_unique",
            "to_text",
            upgrade='op.create_unique_constraint("uq_customers_phone", "customers", ["phone"])',
        ),
        Rev(
            "to_bigint",
            "add_unique",
            upgrade='op.alter_column("customers", "n", type_=sa.BigInteger)',
        ),
    ]
    ini = write_project(tmp_path, revisions)
    data = document(lint(ini, shadow))
    by_rev = {r["revision"]: r for r in data["revisions"]}
    rules = {(f["revision"], f["rule"], f["severity"]) for f in data["findings"]}

    assert by_rev["to_text"]["rewritten"] == [], "varchar -> text is binary-coercible"
    assert [(rule, severity) for rev, rule, severity in rules if rev == "to_text"] == [
        ("catalog-lock", "info")
    ]
    assert ("add_unique", "unique-without-index", "error") in rules
    assert ("to_bigint", "column-type-rewrite", "error") in rules
    assert not any(rule == "unique-without-index" for rev, rule, _ in rules if rev != "add_unique")
    for item in data["findings"]:
        assert item["statement"] and item["line"], f"a finding that points at no code: {item}"
    (catalog,) = [f for f in data["findings"] if f["revision"] == "to_text"]
    assert catalog["statement"] == "ALTER TABLE customers ALTER COLUMN email TYPE TEXT"


# -- the project as a whole ------------------------------------------------------------------

INSPECTS = Rev(
    "inspects",
    "r0001",
    message="drops t_r0000 only when it is there",
    upgrade='if "t_r0000" in sa.inspect(op.get_bind()).get_table_names():\n'
    '    op.drop_table("t_r0000")',
)


def test_a_revision_that_inspects_the_database_lints_and_renders_from_the_shadow(
    tmp_path: Path, shadow: str, pg_url: str
) -> None:
    ini = write_project(tmp_path, [*chain(2), INSPECTS])
    offline = run_cli(["plan", "--sql", "r0001:inspects", "--config", str(ini)], pg_url)
    assert offline.returncode == 70 and "offline" in offline.finished["reason"]

    result = lint(ini, shadow)
    data = document(result)
    inspected = next(r for r in data["revisions"] if r["revision"] == "inspects")
    assert inspected["status"] == "observed"
    assert any(s["sql"].startswith("DROP TABLE t_r0000") for s in inspected["statements"])
    assert [f["rule"] for f in data["findings"] if f["revision"] == "inspects"] == ["drop-table"]

    rendered = run_cli(
        ["plan", "--sql", "r0001:inspects", "--config", str(ini)],
        pg_url,
        MIGRATION_SHADOW_URL=shadow,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "rendered from a shadow run" in rendered.stdout
    assert "DROP TABLE t_r0000;" in rendered.stdout
    assert "UPDATE alembic_version SET version_num='inspects'" in rendered.stdout
    assert "CREATE TABLE t_r0001" not in rendered.stdout, "revisions before FROM: unobserved"


def test_plan_sql_says_when_it_falls_back_to_offline_mode(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(2))
    result = run_cli(["plan", "--sql", "r0000:r0001", "--config", str(ini)], pg_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("-- rendered by Alembic's offline mode")
    assert result.named("plan_sql_offline")


def test_only_the_revisions_pending_on_the_target_are_linted_and_the_target_is_untouched(
    tmp_path: Path, shadow: str, pg_url: str, pg_server_url: URL
) -> None:
    revisions = [
        *chain(2),
        Rev("idx1", "r0001", upgrade='op.create_index("ix1", "t_r0000", ["id"])'),
        Rev("idx2", "idx1", upgrade='op.create_index("ix2", "t_r0001", ["id"])'),
    ]
    ini = write_project(tmp_path, revisions)
    assert run_cli(["upgrade", "idx1", "--config", str(ini)], pg_url).returncode == 0
    before = dump_schema(pg_url)
    result = lint(ini, shadow, url=pg_url)
    data = document(result)
    assert [r["revision"] for r in data["revisions"]] == ["idx2"]
    assert [(f["revision"], f["rule"]) for f in data["findings"]] == [
        ("idx2", "index-not-concurrent")
    ]
    assert "pending on" in data["scope"]
    assert dump_schema(pg_url) == before, "the target is read, never changed"
    assert result.returncode == 4
    assert databases_named(pg_server_url, shadow_database_of(result)) == 0

    up_to_date = write_project(tmp_path / "done", chain(2))
    assert run_cli(["upgrade", "--config", str(up_to_date)], pg_url).returncode == 0
    nothing = lint(up_to_date, shadow, url=pg_url)
    assert nothing.returncode == 0, nothing.stderr
    assert document(nothing)["revisions"] == []
    assert nothing.named("shadow_database_created") == [], "nothing pending: no shadow run"


def test_from_lints_that_revision_and_the_ones_after_it(tmp_path: Path, shadow: str) -> None:
    ini = write_project(tmp_path, chain(4))
    data = document(lint(ini, shadow, "--from", "r0002"))
    assert [r["revision"] for r in data["revisions"]] == ["r0002", "r0003"]


def test_a_failing_revision_is_reported_and_the_database_is_dropped(
    tmp_path: Path, shadow: str, pg_server_url: URL
) -> None:
    broken = Rev("broken", "r0000", upgrade='raise RuntimeError("nope")')
    after = Rev("after", "broken", upgrade='op.create_table("x", sa.Column("id", sa.Integer))')
    ini = write_project(tmp_path, [*chain(1), broken, after])
    result = lint(ini, shadow)
    data = document(result)
    assert result.returncode == 4
    failed = next(f for f in data["findings"] if f["rule"] == "revision-failed")
    assert failed["revision"] == "broken" and "nope" in failed["message"]
    states = {r["revision"]: r["status"] for r in data["revisions"]}
    assert states == {"r0000": "observed", "broken": "failed", "after": "not_reached"}
    assert databases_named(pg_server_url, shadow_database_of(result)) == 0


def slow_lint(tmp_path: Path, shadow: str, pg_server_url: URL) -> tuple[Popen[str], str]:
    """A lint whose second revision sleeps for a minute, started and waited for until that
    revision runs; returns the process and its throwaway database's name."""
    slow = Rev("slow", "r0000", upgrade='op.execute("SELECT pg_sleep(60)")')
    ini = write_project(tmp_path, [*chain(1), slow])
    proc = start_cli(
        ["lint", "--format", "json", "--config", str(ini)], None, MIGRATION_SHADOW_URL=shadow
    )
    engine = create_engine(pg_server_url, poolclass=NullPool)
    name = None
    try:
        deadline = time.monotonic() + 60
        while name is None and time.monotonic() < deadline:
            with engine.connect() as conn:
                name = conn.execute(
                    text(
                        "SELECT datname FROM pg_stat_activity WHERE query = :query "
                        "AND datname LIKE :name"
                    ),
                    {"query": "SELECT pg_sleep(60)", "name": f"mr_shadow_{proc.pid}_%"},
                ).scalar()
            if name is None:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.2)
    finally:
        engine.dispose()
    assert name is not None, "the slow revision never started"
    return proc, name


def test_sigterm_during_the_shadow_run_still_drops_the_database(
    tmp_path: Path, shadow: str, pg_server_url: URL
) -> None:
    proc, name = slow_lint(tmp_path, shadow, pg_server_url)
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=30)
    assert result.returncode == 143, result.stderr
    assert result.named("shadow_database_dropped"), result.stderr
    assert databases_named(pg_server_url, name) == 0


def test_the_next_lint_drops_a_killed_runs_database_and_leaves_a_running_ones(
    tmp_path: Path, shadow: str, pg_server_url: URL
) -> None:
    running, live = slow_lint(tmp_path / "running", shadow, pg_server_url)
    try:
        killed, orphan = slow_lint(tmp_path / "killed", shadow, pg_server_url)
        killed.kill()  # SIGKILL: no finally runs, the throwaway database stays
        killed.wait(timeout=30)
        assert databases_named(pg_server_url, orphan) == 1
        result = lint(write_project(tmp_path / "quick", chain(1)), shadow)
        assert result.returncode == 0, result.stderr
        swept = [e["database"] for e in result.named("shadow_database_swept")]
        assert orphan in swept and live not in swept, result.stderr
        assert databases_named(pg_server_url, orphan) == 0
        assert databases_named(pg_server_url, live) == 1, "a running lint's database was dropped"
    finally:
        running.send_signal(signal.SIGTERM)
        finished = finish(running, timeout=30)
    assert finished.returncode == 143, finished.stderr
    assert databases_named(pg_server_url, live) == 0


def test_a_suppression_comment_is_reported_not_silent(tmp_path: Path, shadow: str) -> None:
    dropping = Rev(
        "dropping",
        "r0000",
        upgrade="# migration-runner: ignore drop-table -- unused since release 42\n"
        'op.drop_table("t_r0000")',
    )
    ini = write_project(tmp_path, [*chain(1), dropping])
    result = lint(ini, shadow, "--fail-on", "warning")
    data = document(result)
    item = next(f for f in data["findings"] if f["rule"] == "drop-table")
    assert item["suppressed"] is True
    assert item["suppression_reason"] == "unused since release 42"
    assert data["counts"]["suppressed"] == 1 and data["counts"]["warning"] == 0
    assert result.returncode == 0, "suppressed findings never fail the run"

    text = run_cli(
        ["lint", "--format", "text", "--config", str(ini)], None, MIGRATION_SHADOW_URL=shadow
    )
    assert "suppressed: drop-table" in text.stdout
    assert "suppressed: unused since release 42" in text.stdout

    (tmp_path / "migrations" / "versions" / "0001_dropping.py").write_text(
        (tmp_path / "migrations" / "versions" / "0001_dropping.py")
        .read_text()
        .replace("# migration-runner: ignore drop-table -- unused since release 42\n", "")
    )
    loud = lint(ini, shadow, "--fail-on", "warning")
    assert loud.returncode == 4
    assert document(loud)["counts"]["warning"] == 1


def test_a_suppression_comment_reaches_only_the_operation_it_sits_next_to(
    tmp_path: Path, shadow: str
) -> None:
    """A comment trailing one statement suppresses that statement, not the one below it; a
    comment alone on the line above suppresses the statement that follows."""
    dropping = Rev(
        "dropping",
        "r0001",
        upgrade='op.add_column("t_r0000", sa.Column("a", sa.Integer))\n'
        'op.add_column("t_r0001", sa.Column("b", sa.Integer))\n'
        'op.add_column("t_r0001", sa.Column("c", sa.Integer))',
    )
    columns = Rev(
        "columns",
        "dropping",
        upgrade='op.drop_column("t_r0000", "a")  # migration-runner: ignore drop-column -- gone\n'
        'op.drop_column("t_r0001", "b")\n'
        "# migration-runner: ignore drop-column -- unused since 4.2\n"
        'op.drop_column("t_r0001", "c")',
    )
    ini = write_project(tmp_path, [*chain(2), dropping, columns])
    data = document(lint(ini, shadow, "--from", "columns"))
    drops = [f for f in data["findings"] if f["rule"] == "drop-column"]
    assert [(f["message"].rpartition("(")[2], f["suppression_reason"]) for f in drops] == [
        ("a)", "gone"),
        ("b)", None),
        ("c)", "unused since 4.2"),
    ]


def test_more_than_one_head_is_an_error_and_both_branches_are_linted(
    tmp_path: Path, shadow: str
) -> None:
    branch = Rev("side", "r0000", upgrade='op.create_table("side", sa.Column("id", sa.Integer))')
    ini = write_project(tmp_path, [*chain(2), branch])
    result = lint(ini, shadow)
    data = document(result)
    heads = [f for f in data["findings"] if f["rule"] == "multiple-heads"]
    assert len(heads) == 1 and "r0001" in heads[0]["message"] and "side" in heads[0]["message"]
    assert {r["revision"] for r in data["revisions"]} == {"r0000", "r0001", "side"}
    assert result.returncode == 4


def test_squawk_adds_static_advice_as_info_with_the_runners_rules_switched_off(
    tmp_path: Path, shadow: str
) -> None:
    rev = Rev("trunc", "r0000", upgrade='op.execute("TRUNCATE t_r0000 CASCADE")')
    ini = write_project(tmp_path, [*chain(1), rev])
    data = document(lint(ini, shadow))
    rules = {f["rule"]: f for f in data["findings"]}
    assert rules["squawk:ban-truncate-cascade"]["severity"] == "info"
    assert rules["squawk:ban-truncate-cascade"]["revision"] == "trunc"
    assert not [r for r in rules if "timeout" in r or r == "squawk:prefer-robust-stmts"]
    skipped = document(lint(ini, shadow, "--no-squawk"))
    assert not [f for f in skipped["findings"] if f["rule"].startswith("squawk:")]


def test_without_a_shadow_server_lint_is_a_configuration_error(tmp_path: Path) -> None:
    ini = write_project(tmp_path, chain(1))
    result = run_cli(["lint", "--config", str(ini)], None)
    assert result.returncode == 78
    assert "MIGRATION_SHADOW_URL" in result.finished["reason"]


def test_an_env_py_that_connects_elsewhere_is_refused_before_it_connects(
    tmp_path: Path, shadow: str, pg_url: str
) -> None:
    """lint applies revisions only to the throwaway database: an env.py with a URL of its own
    (not exported by the runner) is refused, and that database stays empty."""
    ini = write_project(
        tmp_path,
        chain(1),
        env_extra=f"config.set_main_option('sqlalchemy.url', {pg_url!r})",
    )
    result = lint(ini, shadow)
    assert result.returncode == 78, result.stderr
    assert "throwaway database" in result.finished["reason"]
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tables = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).scalar()
    finally:
        engine.dispose()
    assert tables == 0


@pytest.mark.slow
def test_an_unreachable_shadow_server_is_retried_for_the_connect_timeout(
    tmp_path: Path,
) -> None:
    ini = write_project(tmp_path, chain(1))
    started = time.monotonic()
    result = run_cli(
        ["lint", "--connect-timeout", "2", "--config", str(ini)],
        None,
        MIGRATION_SHADOW_URL="postgresql://postgres@127.0.0.1:1/postgres",
    )
    assert result.returncode == 69 and time.monotonic() - started < 20, result.stderr
    assert "shadow server" in result.finished["reason"]
    assert "not reachable within 2s" in result.finished["reason"]


def test_a_newcomer_lints_against_the_shadow_server_script(tmp_path: Path) -> None:
    """`scripts/shadow-server.sh` (the suite's throwaway PostgreSQL) prints the export line;
    lint works against it; the server goes away when stopped."""
    import subprocess
    import sys

    from tests.faults.private_pg import can_run_here, server_bindir
    from tests.support import REPO

    if server_bindir() is None or not can_run_here():
        pytest.skip("no PostgreSQL binaries usable here")
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.shadow_server", "--seconds", "120"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # bounded: the server stops itself after 120 s
        assert line.startswith("export MIGRATION_SHADOW_URL=postgresql://"), server.stderr
        url = line.strip().split("=", 1)[1]
        ini = write_project(
            tmp_path,
            [*chain(1), Rev("ix", "r0000", upgrade='op.create_index("i", "t_r0000", ["id"])')],
        )
        result = lint(ini, url)
        assert result.returncode == 4, result.stderr
        assert [f["rule"] for f in document(result)["findings"]] == ["index-not-concurrent"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert server.returncode == 0


def test_the_shadow_servers_password_never_appears_in_any_output(
    tmp_path: Path, pg_server_url: URL, pg_url: str
) -> None:
    """The suite's server trusts any password: the run succeeds, and the password (plain and
    URL-encoded) is nowhere in stdout or stderr, for lint and for plan --sql."""
    password = "Sh@d0w s3cret/%"
    shadow = pg_server_url.set(password=password).render_as_string(hide_password=False)
    ini = write_project(
        tmp_path, [*chain(1), Rev("ix", "r0000", upgrade='op.create_index("i", "t_r0000", ["id"])')]
    )
    outputs = [
        lint(ini, shadow),
        run_cli(
            ["lint", "--format", "text", "--config", str(ini)], None, MIGRATION_SHADOW_URL=shadow
        ),
        run_cli(
            ["lint", "--format", "sarif", "--config", str(ini)], None, MIGRATION_SHADOW_URL=shadow
        ),
        run_cli(["plan", "--sql", "--config", str(ini)], pg_url, MIGRATION_SHADOW_URL=shadow),
    ]
    assert [r.returncode for r in outputs] == [4, 4, 4, 0], [r.stderr for r in outputs]
    for result in outputs:
        for secret in (password, "Sh%40d0w", "s3cret"):
            assert secret not in result.stdout and secret not in result.stderr


def test_plan_sql_from_the_shadow_starts_at_the_targets_revision_and_leaves_it_alone(
    tmp_path: Path, shadow: str, pg_url: str
) -> None:
    ini = write_project(tmp_path, chain(3))
    assert run_cli(["upgrade", "r0000", "--config", str(ini)], pg_url).returncode == 0
    before = dump_schema(pg_url)
    result = run_cli(["plan", "--sql", "--config", str(ini)], pg_url, MIGRATION_SHADOW_URL=shadow)
    assert result.returncode == 0, result.stderr
    body = result.stdout
    assert "CREATE TABLE t_r0001" in body and "CREATE TABLE t_r0002" in body
    assert "CREATE TABLE t_r0000" not in body
    assert body.index("-- Running upgrade r0000 -> r0001") < body.index("CREATE TABLE t_r0001")
    assert "BEGIN;" in body and "COMMIT;" in body
    assert dump_schema(pg_url) == before


def test_a_target_that_is_not_postgresql_is_refused(tmp_path: Path, shadow: str) -> None:
    ini = write_project(tmp_path, chain(1))
    result = lint(ini, shadow, url=f"sqlite:///{tmp_path / 'app.db'}")
    assert result.returncode == 78
    assert "PostgreSQL" in result.finished["reason"]


@pytest.mark.parametrize("env_style", ["generic", "cookbook", "async"])
def test_each_env_py_style_is_observed_alike(tmp_path: Path, shadow: str, env_style: str) -> None:
    """env.py's own connection (psycopg2, or psycopg 3 under `alembic init -t async`):
    autocommit_block() is seen as such and bound values are inlined in the captured SQL."""
    body = (
        block('op.create_index("i1", "t_r0000", ["id"], postgresql_concurrently=True)')
        + '\nop.execute(sa.text("UPDATE t_r0000 SET id = :v WHERE id = 0").bindparams(v=5))'
    )
    ini = write_project(tmp_path, [*chain(1), Rev("mixed", "r0000", upgrade=body)], env_style)
    data = document(lint(ini, shadow))
    assert data["findings"] == [], "CONCURRENTLY in autocommit_block(), a plain UPDATE"
    statements = data["revisions"][1]["statements"]
    assert [(s["sql"], s["autocommit"]) for s in statements] == [
        ("CREATE INDEX CONCURRENTLY i1 ON t_r0000 (id)", True),
        ("UPDATE t_r0000 SET id = 5 WHERE id = 0", False),
    ]


def test_x_arguments_reach_env_py_in_the_shadow_run(tmp_path: Path, shadow: str) -> None:
    """The shadow run is env.py's run: `-x` (and MIGRATION_X_ARGS) pass through."""
    ini = write_project(
        tmp_path,
        chain(1),
        env_extra='if context.get_x_argument(as_dictionary=True).get("mode") != "lint":\n'
        '    raise SystemExit("missing -x mode=lint")',
    )
    refused = lint(ini, shadow)
    assert refused.returncode == 78 and "missing -x mode=lint" in refused.finished["reason"]
    assert lint(ini, shadow, "-x", "mode=lint").returncode == 0
    assert lint(ini, shadow, MIGRATION_X_ARGS="mode=lint").returncode == 0
