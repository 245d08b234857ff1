"""The outcome of one run, as handed to every reporter (log line, GitHub summary, Kubernetes).

Reporters receive a finished `RunReport`; they never see settings objects or exceptions, so
each stays a small function that is easy to test on its own.

A run drives one or more *targets*: each connection env.py hands to `context.configure()` (one
for the usual env.py, one per database for Alembic's multidb template). Each target has its
own lock and its own revisions; `RunReport` sums them up and `summary()` lists them when there
is more than one.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AppliedRevision:
    revision: str
    down_revision: str | None
    message: str
    duration_ms: int
    #: The target (database, or database and schema) it was applied to.
    target: str = ""


@dataclass
class TargetReport:
    """What happened to one database (one connection env.py configured)."""

    target: str
    backend: str
    outcome: str = "up_to_date"
    from_revision: str | None = None
    to_revision: str | None = None
    applied: list[AppliedRevision] = field(default_factory=list)
    downgraded: list[AppliedRevision] = field(default_factory=list)
    stamped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "outcome": self.outcome,
            "applied": len(self.applied),
            "from_revision": self.from_revision,
            "to_revision": self.to_revision,
        }
        if self.downgraded:
            out["downgraded"] = len(self.downgraded)
        return out


@dataclass
class FleetSummary:
    """A fleet run summed up as its targets finish: counts, and a few names worth reading
    (the failed ones with their reasons, the slowest). Its size does not grow with the fleet,
    so every sink (the termination message's 4 KiB included) can carry it."""

    #: How many failed (and how many slowest) targets are named in the summary.
    NAMED = 5

    #: `i/n` when this run is one shard of the fleet.
    shard: str | None = None
    targets: int = 0
    applied: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    failed_count: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    behind_count: int = 0
    not_started: int = 0
    #: Why targets were left unstarted: `canary_failed`, `max_failed`, `interrupted`.
    stopped: str | None = None
    _slowest: list[tuple[int, str]] = field(default_factory=list)

    def add(
        self,
        target: str,
        outcome: str,
        exit_code: int,
        applied: int,
        duration_ms: int,
        reason: str | None = None,
        behind: bool = False,
    ) -> None:
        """One finished target (`reason`: already masked)."""
        self.targets += 1
        self.applied += applied
        self.by_outcome[outcome] += 1
        self.behind_count += behind
        if exit_code not in (0, 3):
            self.failed_count += 1
            if len(self.failed) < self.NAMED:
                short = reason if reason is None or len(reason) <= 160 else reason[:157] + "..."
                self.failed.append(
                    {"target": target, "exit_code": exit_code, "outcome": outcome, "reason": short}
                )
        entry = (duration_ms, target)
        if len(self._slowest) < self.NAMED:
            heapq.heappush(self._slowest, entry)
        else:
            heapq.heappushpop(self._slowest, entry)

    def skipped(self, count: int, why: str) -> None:
        """Targets never started (a failed canary, the failure limit, a signal)."""
        self.not_started += count
        self.stopped = self.stopped or why

    @property
    def slowest(self) -> list[dict[str, Any]]:
        return [{"target": target, "duration_ms": ms} for ms, target in sorted(self._slowest)[::-1]]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"targets": self.targets + self.not_started}
        if self.shard:
            out["shard"] = self.shard
        out["by_outcome"] = dict(sorted(self.by_outcome.items()))
        if self.behind_count:
            out["behind"] = self.behind_count
        if self.failed_count:
            out["failed"] = self.failed_count
            out["failed_targets"] = self.failed
        if self.not_started:
            out["not_started"] = self.not_started
            out["stopped"] = self.stopped
        out["slowest"] = self.slowest
        return out


@dataclass
class RunReport:
    command: str
    exit_code: int = 0
    outcome: str = "success"
    targets: list[TargetReport] = field(default_factory=list)
    duration_ms: int = 0
    #: One-line reason when the run failed; never holds a secret (it passed redaction).
    reason: str | None = None
    #: The revision that was running when the failure happened, if any.
    failed_revision: str | None = None
    sqlstate: str | None = None
    #: The failed revision may be partly applied: the history marks the database dirty.
    dirty: bool = False
    #: A fleet run: its targets summed up (their own reports are not kept).
    fleet: FleetSummary | None = None

    @property
    def applied(self) -> list[AppliedRevision]:
        return [rev for target in self.targets for rev in target.applied]

    @property
    def downgraded(self) -> list[AppliedRevision]:
        return [rev for target in self.targets for rev in target.downgraded]

    @property
    def from_revision(self) -> str | None:
        return self.targets[0].from_revision if len(self.targets) == 1 else None

    @property
    def to_revision(self) -> str | None:
        return self.targets[0].to_revision if len(self.targets) == 1 else None

    def settle_outcome(self) -> None:
        """The run's outcome from its targets', once every target is done."""
        outcomes = {target.outcome for target in self.targets}
        if "database_ahead" in outcomes:
            self.outcome = "database_ahead"
        elif any(t.applied or t.downgraded or t.stamped for t in self.targets):
            self.outcome = "success"
        elif outcomes == {"pending"}:
            self.outcome = "pending"
        else:
            self.outcome = "up_to_date" if self.targets else self.outcome

    def summary(self) -> dict[str, Any]:
        """The compact form used by `run_finished`, the termination message and step summary."""
        out: dict[str, Any] = {
            "command": self.command,
            "exit_code": self.exit_code,
            "outcome": self.outcome,
            "applied": self.fleet.applied if self.fleet else len(self.applied),
            "from_revision": self.from_revision,
            "to_revision": self.to_revision,
            "duration_ms": self.duration_ms,
        }
        if self.fleet is not None:
            out["fleet"] = self.fleet.summary()
        if self.downgraded:
            out["downgraded"] = len(self.downgraded)
        if len(self.targets) > 1:
            out["targets"] = [target.summary() for target in self.targets]
        if self.reason:
            out["reason"] = self.reason
        if self.failed_revision:
            out["revision"] = self.failed_revision
        if self.sqlstate:
            out["sqlstate"] = self.sqlstate
        if self.dirty:
            out["dirty"] = True
        return out
