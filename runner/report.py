"""The outcome of one run, as handed to every reporter (log line, GitHub summary, Kubernetes).

Reporters receive a finished `RunReport`; they never see settings objects or exceptions, so
each stays a small function that is easy to test on its own.

A run drives one or more *targets*: each connection env.py hands to `context.configure()` (one
for the usual env.py, one per database for Alembic's multidb template). Each target has its
own lock and its own revisions; `RunReport` sums them up and `summary()` lists them when there
is more than one.
"""

from __future__ import annotations

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
            "applied": len(self.applied),
            "from_revision": self.from_revision,
            "to_revision": self.to_revision,
            "duration_ms": self.duration_ms,
        }
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
