"""The termination message: the run's summary where `kubectl get pod` shows it after the logs."""

from __future__ import annotations

import json
from pathlib import Path

from runner.logs import captured
from runner.report import AppliedRevision, RunReport
from runner.termination import MAX_MESSAGE_BYTES, TerminationMessageObserver, termination_message
from tests.support import report_of


def _report(**kw: object) -> RunReport:
    return report_of(
        command="upgrade",
        from_revision="a1",
        to_revision="b2",
        duration_ms=1234,
        applied=[AppliedRevision("b2", "a1", "add users", 1000)],
        **kw,  # type: ignore[arg-type]
    )


def test_run_finished_writes_the_compact_summary_json(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    report = _report()
    TerminationMessageObserver(path).run_finished(report)
    text = path.read_text()
    assert json.loads(text) == report.summary()
    assert json.loads(text) == {
        "command": "upgrade",
        "exit_code": 0,
        "outcome": "success",
        "applied": 1,
        "from_revision": "a1",
        "to_revision": "b2",
        "duration_ms": 1234,
    }
    assert " " not in text and "\n" not in text  # compact: separators without spaces


def test_failed_run_summary_carries_exit_code_reason_and_revision(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    report = _report(
        exit_code=70,
        outcome="migration_failed",
        failed_revision="b2",
        reason='relation "users" already exists',
        sqlstate="42P07",
    )
    TerminationMessageObserver(path).run_finished(report)
    summary = json.loads(path.read_text())
    assert summary["exit_code"] == 70
    assert summary["outcome"] == "migration_failed"
    assert summary["reason"] == 'relation "users" already exists'
    assert summary["revision"] == "b2"
    assert summary["sqlstate"] == "42P07"


def test_a_huge_reason_is_shortened_to_fit_the_kubelet_limit() -> None:
    summary = _report(exit_code=70, reason='"quoted\\' * 2000).summary()
    text = termination_message(summary)
    assert len(text.encode()) <= MAX_MESSAGE_BYTES
    parsed = json.loads(text)
    assert parsed["exit_code"] == 70
    assert parsed["reason"].endswith("...")


def test_rewriting_replaces_the_previous_content(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("x" * 5000)
    TerminationMessageObserver(path).run_finished(_report())
    assert json.loads(path.read_text())["exit_code"] == 0


def test_an_unwritable_path_is_a_warning_not_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "termination-log"
    with captured() as logs:
        TerminationMessageObserver(path).run_finished(_report())
    assert [e["event"] for e in logs] == ["termination_message_unwritable"]
    assert logs[0]["level"] == "warning"
    assert logs[0]["path"] == str(path)
    assert not path.exists()
