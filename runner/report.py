"""The outcome of one run, as handed to every reporter (log line, GitHub summary, Kubernetes).

Reporters receive a finished `RunReport`; they never see settings objects or exceptions, so
each stays a small function that is easy to test on its own.
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


@dataclass
class RunReport:
    command: str
    exit_code: int = 0
    outcome: str = "success"
    from_revision: str | None = None
    to_revision: str | None = None
    applied: list[AppliedRevision] = field(default_factory=list)
    duration_ms: int = 0
    #: One-line reason when the run failed; never holds a secret (it passed redaction).
    reason: str | None = None
    #: The revision that was running when the failure happened, if any.
    failed_revision: str | None = None
    sqlstate: str | None = None

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
        if self.reason:
            out["reason"] = self.reason
        if self.failed_revision:
            out["revision"] = self.failed_revision
        if self.sqlstate:
            out["sqlstate"] = self.sqlstate
        return out
