"""GitHub Actions observer: step summary Markdown and `::error` annotations (pure, no network)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from runner.github import GitHubObserver, annotation, escape_data, escape_property, render_summary
from runner.logs import captured
from runner.observers import NullObserver, notify
from runner.report import AppliedRevision, RunReport
from tests.support import report_of


def _success() -> RunReport:
    return report_of(
        command="upgrade",
        from_revision=None,
        to_revision="b2",
        applied=[
            AppliedRevision("a1", None, "create users", 120),
            AppliedRevision("b2", "a1", "add email | index", 2500),
        ],
        duration_ms=2700,
    )


def _failure() -> RunReport:
    return report_of(
        command="upgrade",
        exit_code=70,
        outcome="migration_failed",
        from_revision="a1",
        to_revision="a1",
        reason='relation "users" already exists\nCONTEXT: 100% sure',
        failed_revision="b2",
        sqlstate="42P07",
        duration_ms=80,
    )


def test_observer_is_a_null_observer_so_unused_hooks_are_no_ops() -> None:
    assert isinstance(GitHubObserver(None, io.StringIO()), NullObserver)


def test_success_appends_summary_with_revisions_table_and_writes_no_annotation(
    tmp_path: Path,
) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    out = io.StringIO()

    GitHubObserver(summary, out).run_finished(_success())

    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n"), "the summary file is appended to, not replaced"
    assert "| Outcome | success |" in text
    assert "| Exit code | 0 |" in text
    assert "_base_ → `b2`" in text
    assert "| Duration | 2.70 s |" in text
    assert "| `a1` | _base_ | create users | 0.12 s |" in text
    assert "| `b2` | `a1` | add email \\| index | 2.50 s |" in text, "pipes escaped in cells"
    assert out.getvalue() == ""


def test_failure_writes_error_annotation_with_escaped_newlines_and_percent(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    out = io.StringIO()

    GitHubObserver(summary, out).run_finished(_failure())

    assert out.getvalue() == (
        '::error title=migration-runner::relation "users" already exists%0ACONTEXT: 100%25 sure\n'
    )
    text = summary.read_text(encoding="utf-8")
    assert "| Exit code | 70 |" in text
    assert "| Failed revision | `b2` |" in text
    assert "| SQLSTATE | `42P07` |" in text
    assert "CONTEXT: 100% sure" in text, "the reason is one line in the summary table"


def test_failure_without_reason_still_names_command_and_exit_code() -> None:
    out = io.StringIO()
    GitHubObserver(None, out).run_finished(
        report_of(command="upgrade", exit_code=69, outcome="database_unavailable")
    )
    assert out.getvalue().startswith("::error title=migration-runner::")
    assert "exit code 69" in out.getvalue()


def test_check_pending_is_a_warning_not_an_error() -> None:
    out = io.StringIO()
    GitHubObserver(None, out).run_finished(
        report_of(command="check", exit_code=3, outcome="pending", reason="2 revisions pending")
    )
    assert out.getvalue() == "::warning title=migration-runner::2 revisions pending\n"


def test_no_step_summary_path_only_annotates() -> None:
    out = io.StringIO()
    GitHubObserver(None, out).run_finished(_failure())
    assert out.getvalue().startswith("::error ")


@pytest.mark.parametrize("kind", ["directory", "missing_parent"])
def test_unwritable_summary_logs_warning_and_never_raises(tmp_path: Path, kind: str) -> None:
    target = tmp_path if kind == "directory" else tmp_path / "no" / "such" / "summary.md"
    out = io.StringIO()
    with captured() as logs:
        GitHubObserver(target, out).run_finished(_failure())
    assert [e["event"] for e in logs] == ["github_step_summary_unwritable"]
    assert logs[0]["level"] == "warning"
    assert out.getvalue().startswith("::error "), "the annotation is still written"


def test_closed_stream_logs_warning_and_never_raises(tmp_path: Path) -> None:
    out = io.StringIO()
    out.close()
    with captured() as logs:
        GitHubObserver(tmp_path / "s.md", out).run_finished(_failure())
    assert [e["event"] for e in logs] == ["github_annotation_failed"]


def test_notify_runs_observer_through_the_observer_protocol(tmp_path: Path) -> None:
    summary = tmp_path / "s.md"
    report = _success()
    notify([GitHubObserver(summary, io.StringIO())], lambda o: o.run_finished(report))
    assert "success" in summary.read_text(encoding="utf-8")


def test_escaping_follows_github_workflow_command_rules() -> None:
    assert escape_data("a%b\r\nc") == "a%25b%0D%0Ac"
    assert escape_property("x: y, z%") == "x%3A y%2C z%25"
    assert annotation("error", "a\nb", title="t:1") == "::error title=t%3A1::a%0Ab\n"


def test_summary_of_run_with_nothing_applied_has_no_revision_table() -> None:
    text = render_summary(report_of(command="upgrade", from_revision="b2", to_revision="b2"))
    assert "| Applied | 0 |" in text
    assert "| Revision | Down revision |" not in text
