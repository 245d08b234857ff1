"""GitHub Actions: a Markdown step summary of the run, and failures as `::error` annotations.

The CLI adds a `GitHubObserver` when it runs inside GitHub Actions (`GITHUB_ACTIONS=true`),
passing `$GITHUB_STEP_SUMMARY` and stdout. What it writes is best effort: an unwritable
summary file is logged as a warning and never changes the run's outcome or exit code.

Workflow commands: https://docs.github.com/actions/reference/workflow-commands-for-github-actions
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from runner.errors import ExitCode
from runner.logs import log
from runner.observers import NullObserver
from runner.report import FleetSummary, RunReport

ANNOTATION_TITLE = "migration-runner"


def escape_data(text: str) -> str:
    """Escape the message part of a workflow command (`%`, CR and LF), as the runner expects."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a property value (`title=...`): the data escapes plus `:` and `,`."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, message: str, title: str = ANNOTATION_TITLE) -> str:
    """One workflow-command line, e.g. `::error title=migration-runner::lock timeout`."""
    return f"::{level} title={escape_property(title)}::{escape_data(message)}\n"


def _cell(text: str | None) -> str:
    """A value safe inside a Markdown table cell: one line, pipes escaped."""
    if not text:
        return "-"
    return " ".join(text.split()).replace("|", "\\|")


def _rev(revision: str | None) -> str:
    return f"`{revision}`" if revision else "_base_"


def _seconds(duration_ms: int) -> str:
    return f"{duration_ms / 1000:.2f} s"


def failure_reason(report: RunReport) -> str:
    """The one-line reason shown in the annotation (never empty)."""
    if report.reason:
        return report.reason
    return f"`{report.command}` ended with exit code {report.exit_code} ({report.outcome})"


def render_summary(report: RunReport) -> str:
    """The Markdown block appended to `$GITHUB_STEP_SUMMARY` for one run."""
    ok = report.exit_code == ExitCode.OK
    icon = "✅" if ok else ("⚠️" if report.exit_code == ExitCode.PENDING else "❌")
    lines = [
        f"### {icon} migration-runner `{report.command}`: {_cell(report.outcome)}",
        "",
        "| | |",
        "|---|---|",
        f"| Outcome | {_cell(report.outcome)} |",
        f"| Exit code | {report.exit_code} |",
        f"| Revision | {_rev(report.from_revision)} → {_rev(report.to_revision)} |",
        f"| Applied | {len(report.applied)} |",
        f"| Duration | {_seconds(report.duration_ms)} |",
    ]
    if report.fleet is not None:  # no single revision: the targets, and what they applied
        applied = f"| Applied | {report.fleet.applied} |"
        lines = [*lines[:6], *fleet_rows(report.fleet), applied, *lines[8:]]
    if not ok:
        lines.append(f"| Reason | {_cell(failure_reason(report))} |")
    if report.failed_revision:
        lines.append(f"| Failed revision | `{_cell(report.failed_revision)}` |")
    if report.sqlstate:
        lines.append(f"| SQLSTATE | `{_cell(report.sqlstate)}` |")
    if report.applied:
        lines += [
            "",
            "| Revision | Down revision | Message | Duration |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{_cell(rev.revision)}` | {_rev(rev.down_revision)} | {_cell(rev.message)} "
            f"| {_seconds(rev.duration_ms)} |"
            for rev in report.applied
        ]
    if report.fleet is not None:
        lines += fleet_tables(report.fleet)
    return "\n".join(lines) + "\n\n"


def fleet_rows(fleet: FleetSummary) -> list[str]:
    """A fleet's rows of the summary table (in place of the one database's revisions)."""
    total = fleet.targets + fleet.not_started
    rows = [f"| Targets | {total}" + (f" (shard {fleet.shard})" if fleet.shard else "") + " |"]
    rows += [
        f"| {_cell(outcome)} | {count} |" for outcome, count in sorted(fleet.by_outcome.items())
    ]
    if fleet.not_started:
        rows.append(f"| Not started | {fleet.not_started} ({_cell(fleet.stopped)}) |")
    return rows


def fleet_tables(fleet: FleetSummary) -> list[str]:
    """The failed targets (the first few, with why) and the slowest."""
    lines: list[str] = []
    if fleet.failed:
        more = fleet.failed_count - len(fleet.failed)
        lines += ["", "| Failed target | Exit code | Reason |", "|---|---|---|"]
        lines += [
            f"| `{_cell(f['target'])}` | {f['exit_code']} | {_cell(f['reason'] or f['outcome'])} |"
            for f in fleet.failed
        ]
        if more:
            lines.append(f"| ... {more} more (see the `target_finished` events) | | |")
    if fleet.slowest:
        lines += ["", "| Slowest target | Duration |", "|---|---|"]
        lines += [
            f"| `{_cell(s['target'])}` | {_seconds(s['duration_ms'])} |" for s in fleet.slowest
        ]
    return lines


class GitHubObserver(NullObserver):
    """Writes the step summary and the failure annotation at the end of a run."""

    def __init__(self, step_summary: Path | None, stream: TextIO) -> None:
        self.step_summary = step_summary
        self.stream = stream

    def run_finished(self, report: RunReport) -> None:
        self._append_summary(render_summary(report))
        if report.exit_code == ExitCode.OK:
            return
        # `check` finding pending revisions is an answer, not an error: a warning annotation.
        level = "warning" if report.exit_code == ExitCode.PENDING else "error"
        try:
            self.stream.write(annotation(level, failure_reason(report)))
            self.stream.flush()
        except (OSError, ValueError) as exc:  # closed or broken stdout
            log.warning("github_annotation_failed", error=str(exc) or type(exc).__name__)

    def _append_summary(self, markdown: str) -> None:
        if self.step_summary is None:
            return
        try:
            with self.step_summary.open("a", encoding="utf-8") as fh:
                fh.write(markdown)
        except OSError as exc:
            log.warning(
                "github_step_summary_unwritable",
                path=str(self.step_summary),
                error=exc.strerror or type(exc).__name__,
            )
