"""Who else hears about a run besides the log: GitHub Actions, the Kubernetes API, the pod.

The migration layer reports progress through `RunObserver`; the CLI decides which observers
exist for this process (see `runner.cli.observers_for`). An observer must never fail a
migration: `notify` catches and logs anything an observer raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from runner.logs import log
from runner.report import AppliedRevision, RunReport


class RunObserver(Protocol):
    def run_started(self, command: str) -> None: ...

    def lock_waiting(self, key: str, waited_s: float) -> None:
        """Called once when the lock is found taken by another runner, before waiting."""

    def revision_applied(self, revision: AppliedRevision) -> None: ...

    def run_finished(self, report: RunReport) -> None: ...


class NullObserver:
    """Base with no-op hooks, so an observer implements only what it cares about."""

    def run_started(self, command: str) -> None:
        return None

    def lock_waiting(self, key: str, waited_s: float) -> None:
        return None

    def revision_applied(self, revision: AppliedRevision) -> None:
        return None

    def run_finished(self, report: RunReport) -> None:
        return None


def notify(observers: Sequence[RunObserver], call: Callable[[RunObserver], None]) -> None:
    for observer in observers:
        try:
            call(observer)
        except Exception as exc:  # an observer is best effort by contract
            log.warning(
                "observer_failed",
                observer=type(observer).__name__,
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
