"""The commands that run on every target of a fleet (`upgrade`, `check`, `wait`, `current`,
`plan`): each target runs the command of runner/commands.py as a run of its own would, and
this module prints what the fleet found and sums it up in the run's report.

stdout, as for one database, carries only command results: `check` lists every target not at
head (and every one that failed or was never checked), `current` and `plan` one line per
target and revision; with `--json`, one JSON document at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from runner import fleet
from runner.cancel import CancelToken
from runner.commands import COMMANDS, target_states
from runner.drive import Run
from runner.errors import ExitCode, FleetTargetsUnread, RunnerError, UsageError
from runner.fleet import FleetTarget, TargetResult, TargetRunner
from runner.logs import log
from runner.report import FleetSummary, RunReport
from runner.revisions import PendingRevision
from runner.settings import Settings

#: The commands that make sense per target. (`lint` reviews the revisions once, over what is
#: pending anywhere in the fleet: `lint_fleet`.)
FLEET_COMMANDS = ("upgrade", "check", "wait", "current", "plan", "lint")
#: Commands that act on one database: refused while a fleet is configured, rather than run on
#: the main database alone. Any other command (`history`) runs as it does without a fleet.
ONE_DATABASE = ("downgrade", "stamp", "log")
#: Those whose result is what they found on each target.
_READERS = ("check", "current", "plan")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to do its share (sent to it once, when it starts)."""

    command: str
    args: argparse.Namespace
    settings: Settings
    #: `wait`: when the whole fleet must be at head (wall clock, shared by the processes).
    deadline: float | None = None
    #: The project, loaded once by the parent (a worker is forked with it).
    project: Run | None = None


@dataclass
class TargetCommand:
    """One command, as each target runs it (`fleet.TargetWork`)."""

    command: str
    args: argparse.Namespace
    deadline: float | None = None

    def settings(self, settings: Settings) -> Settings:
        if self.deadline is None:
            return settings
        return replace(settings, wait_timeout=max(0.0, self.deadline - time.time()))

    def __call__(self, run: Run) -> tuple[int, list[dict[str, Any]]]:
        code = COMMANDS[self.command](run, self.args, io.StringIO())
        return code, states(run) if self.command in _READERS else []


def states(run: Run) -> list[dict[str, Any]]:
    """A target's reader results, each database of it named `database` (the fleet's
    `target` is the tenant or database the run was for)."""
    return [{"database": state.pop("target"), **state} for state in target_states(run)]


def on_fleet(command: str, args: argparse.Namespace) -> bool:
    """Whether `command` runs on every target of the configured fleet; a UsageError when it
    can only run on one database."""
    if command in ONE_DATABASE or (command == "plan" and getattr(args, "sql", False)):
        spec_for(command, args, Settings())  # raises, saying why
    return command in FLEET_COMMANDS


def spec_for(command: str, args: argparse.Namespace, settings: Settings) -> WorkerSpec:
    if command not in FLEET_COMMANDS:
        raise UsageError(
            f"{command} runs on one database, not on a fleet: unset MIGRATION_TENANTS, "
            "MIGRATION_TENANTS_FILE, MIGRATION_TENANTS_QUERY and MIGRATION_DATABASE_URLS_FILE "
            f"and name the target (-x tenant=NAME, or MIGRATION_DATABASE_URL); fleets run "
            f"{', '.join(FLEET_COMMANDS)}"
        )
    if getattr(args, "sql", False):
        raise UsageError("plan --sql prints one database's SQL: run it without a fleet")
    deadline = time.time() + settings.wait_timeout if command == "wait" else None
    return WorkerSpec(command, args, settings, deadline)


def work_of(spec: WorkerSpec) -> TargetCommand:
    return TargetCommand(spec.command, spec.args, spec.deadline)


def serve(channel: Any, spec: WorkerSpec, cancel: CancelToken) -> None:
    """A worker process's share of the fleet (called by the CLI's worker entry)."""
    runner = TargetRunner(spec.settings, cancel, work_of(spec), spec.project)
    fleet.serve(channel, runner, cancel)


def run(
    spec: WorkerSpec,
    cancel: CancelToken,
    report: RunReport,
    out: TextIO,
    worker_entry: Callable[[Any, Any], None],
    collect: Callable[[TargetResult], None] = lambda _: None,
) -> int:
    """The command over this shard of the fleet; returns the fleet's exit code. `collect`
    sees each target's result as it finishes."""
    if spec.command == "lint":
        return lint_fleet(spec, cancel, report, out, worker_entry)
    settings = spec.settings
    summary = FleetSummary(shard=fleet.shard_label(settings))
    report.fleet = summary
    todo = fleet.targets(settings, cancel)
    if not todo:
        log.warning(
            "fleet_empty",
            shard=summary.shard,
            reason="no target in this shard" if summary.shard else "the fleet has no target",
        )
    printer = _Printer(spec.command, spec.args, out)

    def finished(result: TargetResult) -> None:
        summary.add(
            result.target,
            result.outcome,
            result.exit_code,
            result.applied,
            result.duration_ms,
            result.reason,
            result.behind,
        )
        printer.result(result)
        collect(result)

    runner = TargetRunner(settings, cancel, work_of(spec))
    if todo:
        try:
            spec = replace(spec, project=runner.load_project(todo[0]))
        except RunnerError:
            summary.skipped(len(todo), "project_not_loaded")  # the same for every target
            raise
    outcome = fleet.run_fleet(
        todo, settings, cancel, runner, (worker_entry, spec), finished, printer.skipped
    )
    if outcome.stopped:
        summary.skipped(len(printer.not_started), outcome.stopped)
    printer.done(outcome.exit_code)
    _settle(report, summary, outcome)
    return outcome.exit_code


def lint_fleet(
    spec: WorkerSpec,
    cancel: CancelToken,
    report: RunReport,
    out: TextIO,
    worker_entry: Callable[[Any, Any], None],
) -> int:
    """`lint` over a fleet. Every target runs the same revisions, so one shadow run reviews
    them once: every revision pending on any target of this shard (found by `plan` on each),
    or what `--since`/`--from` select. A target that cannot be read fails the lint with its
    code: what it has pending is unknown."""
    from runner import lint as linting
    from runner import lint_output

    args = spec.args
    options = linting.LintOptions(
        since=args.since, from_revision=args.from_revision, use_squawk=not args.no_squawk
    )
    pending: dict[str, PendingRevision] = {}
    label = None
    if options.since is None and options.from_revision is None:
        behind = 0

        def gather(result: TargetResult) -> None:
            nonlocal behind
            # `plan` exits 0 whatever is pending (its exit code is not `check`'s): a target
            # is behind when what it found says so.
            behind += any(state["pending"] for state in result.states)
            for state in result.states:
                for step in state["pending"]:
                    pending.setdefault(
                        step["revision"],
                        PendingRevision(step["revision"], step["down_revision"], step["message"]),
                    )

        plan = argparse.Namespace(revision="head", sql=False, json=True)
        found = run(
            replace(spec, command="plan", args=plan),
            cancel,
            RunReport("plan"),
            io.StringIO(),
            worker_entry,
            gather,
        )
        if found not in (ExitCode.OK, ExitCode.PENDING):
            raise FleetTargetsUnread(found)
        label = f"{behind} target(s) of the fleet"
    project = Run(spec.settings, cancel, (), report)
    result = linting.lint(
        project, options, list(pending.values()) if label is not None else None, label
    )
    return lint_output.finish(result, args, out, spec.settings, report)


def _settle(report: RunReport, summary: FleetSummary, outcome: fleet.FleetOutcome) -> None:
    """The run's outcome and reason, from its targets'."""
    total = summary.targets + summary.not_started
    if outcome.stopped == "interrupted":
        report.outcome = "interrupted"
    elif outcome.stopped:
        report.outcome = outcome.stopped
    elif outcome.failed:
        report.outcome = "targets_failed"
    elif outcome.behind:
        report.outcome = "pending"
    else:
        report.outcome = "success" if summary.applied else "up_to_date"
    parts = []
    if outcome.failed:
        parts.append(f"{outcome.failed} of {total} targets failed")
    if summary.not_started:
        parts.append(f"{summary.not_started} not started ({summary.stopped})")
    if outcome.behind:
        parts.append(f"{outcome.behind} of {total} targets behind head")
    if summary.failed:
        first = summary.failed[0]
        parts.append(f"first failure: {first['target']}: {first['reason']}")
    report.reason = "; ".join(parts) or None


@dataclass
class _Printer:
    """stdout of a fleet command: lines as targets finish, or one JSON document at the end."""

    command: str
    args: argparse.Namespace
    out: TextIO
    rows: list[dict[str, Any]] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"at_head": 0, "total": 0})

    @property
    def as_json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def result(self, result: TargetResult) -> None:
        if self.command not in _READERS:
            return
        self.counts["total"] += 1
        at_head = not result.failed and all(s["up_to_date"] for s in result.states)
        self.counts["at_head"] += at_head
        if self.as_json:
            self._collect(result, at_head)
            return
        if result.failed:
            self._line(
                f"{result.target}: failed ({result.exit_code}, {result.outcome}): "
                f"{result.reason or ''}"
            )
            return
        several = len(result.states) > 1
        for state in result.states:
            name = f"{result.target} ({state['database']})" if several else result.target
            getattr(self, f"_{self.command}_lines")(name, state)

    def _check_lines(self, name: str, state: dict[str, Any]) -> None:
        if state["unknown"]:
            self._line(f"{name}: ahead of the code at {', '.join(state['unknown'])}")
        elif state["pending"]:
            revisions = " ".join(p["revision"] for p in state["pending"])
            current = ", ".join(state["current"]) or "(base)"
            self._line(
                f"{name}: behind: at {current}, {len(state['pending'])} pending: {revisions}"
            )

    def _current_lines(self, name: str, state: dict[str, Any]) -> None:
        for revision in state["current"] or ["(base)"]:
            self._line(f"{name}: {revision}{' (head)' if revision in state['head'] else ''}")

    def _plan_lines(self, name: str, state: dict[str, Any]) -> None:
        for rev in state["pending"]:
            self._line(
                f"{name}: {rev['revision']}  {rev['down_revision'] or '(base)'} -> "
                f"{rev['revision']}  {rev['message']}"
            )

    def _collect(self, result: TargetResult, at_head: bool) -> None:
        if result.failed:
            self.rows.append(
                {
                    "target": result.target,
                    "failed": True,
                    "exit_code": result.exit_code,
                    "outcome": result.outcome,
                    "reason": result.reason,
                }
            )
        elif self.command != "check" or not at_head:
            for state in result.states:
                self.rows.append({"target": result.target, **state})

    def skipped(self, target: FleetTarget) -> None:
        self.not_started.append(target.name)
        if self.command in _READERS and not self.as_json:
            self._line(f"{target.name}: not checked (the fleet stopped early)")

    def done(self, exit_code: int) -> None:
        if self.command not in _READERS:
            return
        total = self.counts["total"] + len(self.not_started)
        if self.as_json:
            if self.command == "check":
                document: Any = {
                    "up_to_date": exit_code == ExitCode.OK,
                    "targets": total,
                    "at_head": self.counts["at_head"],
                    "not_at_head": self.rows,
                    "not_started": self.not_started,
                }
            else:
                document = self.rows
            self.out.write(json.dumps(document) + "\n")
        elif self.command == "check":
            self._line(f"{self.counts['at_head']} of {total} targets at head")
        self.out.flush()

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
