"""Every failure the runner can report, and the one table that maps them to exit codes.

Errors carry their data as attributes so the CLI can log them as structured fields; the
message is one line a user can act on. Only `runner.cli` turns an error into an exit code.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """The runner's documented exit codes (README "Exit codes" mirrors this table)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    PENDING = 3
    LINT_FINDINGS = 4
    GRAPH = 65
    UNAVAILABLE = 69
    MIGRATION_FAILED = 70
    TEMPORARY = 75
    PERMISSION = 77
    CONFIG = 78
    SIGINT = 130
    SIGTERM = 143


#: code -> (meaning, whether an orchestrator should retry). Rendered into the README table.
EXIT_CODES: dict[ExitCode, tuple[str, str]] = {
    ExitCode.OK: ("success: applied, or nothing to do", "-"),
    ExitCode.INTERNAL: ("internal error (a bug)", "-"),
    ExitCode.USAGE: ("usage: bad command-line arguments", "no"),
    ExitCode.PENDING: ("`check`: revisions are pending", "-"),
    ExitCode.LINT_FINDINGS: (
        "`lint`: a finding at or above `--fail-on` (default `error`): a revision would block "
        "or rewrite a table, or the graph/git-base checks failed",
        "no",
    ),
    ExitCode.GRAPH: (
        "revision graph: multiple heads, duplicate revision, database ahead with `fail` "
        "policy, database dirty (a revision stopped part-way: fix it, then `stamp`)",
        "no",
    ),
    ExitCode.UNAVAILABLE: (
        "database unavailable: not reachable within the connect timeout, or connection lost",
        "yes",
    ),
    ExitCode.MIGRATION_FAILED: (
        "a migration failed (SQL error, exception in a revision, statement timeout)",
        "no",
    ),
    ExitCode.TEMPORARY: (
        "temporary: migration lock not acquired in time, DDL lock-timeout budget exhausted, "
        "lock lost, `wait` timed out",
        "yes",
    ),
    ExitCode.PERMISSION: ("permission: authentication failed, role lacks privileges", "no"),
    ExitCode.CONFIG: (
        "configuration: missing/invalid setting, bad URL, unknown driver, missing alembic.ini "
        "or scripts, read-only database, transaction-mode pooler",
        "no",
    ),
    ExitCode.SIGINT: ("interrupted by SIGINT", "yes"),
    ExitCode.SIGTERM: ("interrupted by SIGTERM", "yes"),
}

#: Exit codes after which retrying the same run cannot help (used by the Helm podFailurePolicy).
PERMANENT_EXIT_CODES = frozenset(
    {ExitCode.GRAPH, ExitCode.MIGRATION_FAILED, ExitCode.PERMISSION, ExitCode.CONFIG}
)


#: Exit codes of failures a rerun may cure (the database comes back, the lock frees up, the
#: run was interrupted). The chart retries them.
TRANSIENT_EXIT_CODES = frozenset(
    {ExitCode.UNAVAILABLE, ExitCode.TEMPORARY, ExitCode.SIGINT, ExitCode.SIGTERM}
)


def fleet_exit_code(failures: Iterable[int], behind: bool = False) -> ExitCode:
    """One exit code for a fleet (README "Fleets"), from the codes its failed targets ended
    with: the code they share when they agree; when they differ, 75 if every one of them is
    transient (a retry may help), else 70 (some target needs a person). No failure: 0, or 3
    when a target is behind (`check`)."""
    codes = {ExitCode(code) for code in failures}
    if not codes:
        return ExitCode.PENDING if behind else ExitCode.OK
    lasting = codes - TRANSIENT_EXIT_CODES
    decisive = lasting or codes
    if len(decisive) == 1:
        return next(iter(decisive))
    return ExitCode.MIGRATION_FAILED if lasting else ExitCode.TEMPORARY


class RunnerError(Exception):
    """Base of every expected failure. `reason` is one line; `fields` go into the log event."""

    exit_code: ExitCode = ExitCode.INTERNAL
    outcome: str = "error"

    def __init__(self, reason: str, **fields: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fields = fields


class UsageError(RunnerError):
    exit_code = ExitCode.USAGE
    outcome = "usage_error"


class ConfigError(RunnerError):
    exit_code = ExitCode.CONFIG
    outcome = "config_error"


class GraphError(RunnerError):
    exit_code = ExitCode.GRAPH
    outcome = "graph_error"


class MultipleHeads(GraphError):
    def __init__(self, heads: list[str]) -> None:
        super().__init__(
            f"the revision graph has {len(heads)} heads ({', '.join(heads)}); "
            "merge them with `alembic merge heads` or name a target revision",
            heads=heads,
        )
        self.heads = heads


class DatabaseAhead(GraphError):
    """The database is at a revision this code does not know (the app was rolled back)."""

    def __init__(self, revisions: list[str]) -> None:
        super().__init__(
            f"the database is at revision {', '.join(revisions)}, which this code does not "
            "know (database ahead of the code)",
            db_revisions=revisions,
        )
        self.revisions = revisions


class DirtyDatabase(GraphError):
    """A revision stopped part-way (the history table says so): nothing runs until a person
    fixed the schema and said so with `stamp`."""

    outcome = "dirty"


class DatabaseUnavailable(RunnerError):
    exit_code = ExitCode.UNAVAILABLE
    outcome = "database_unavailable"


class MigrationFailed(RunnerError):
    exit_code = ExitCode.MIGRATION_FAILED
    outcome = "migration_failed"


class TemporaryFailure(RunnerError):
    exit_code = ExitCode.TEMPORARY
    outcome = "temporary_failure"


class LockTimeout(TemporaryFailure):
    outcome = "lock_timeout"

    def __init__(self, key: str, waited_s: float) -> None:
        super().__init__(
            f"migration lock {key} not acquired within {waited_s:.1f}s: another runner holds it",
            key=key,
            waited_s=round(waited_s, 3),
        )


class LockLost(TemporaryFailure):
    outcome = "lock_lost"


class DdlLockTimeout(TemporaryFailure):
    """One statement hit `lock_timeout`; the orchestrator retries it within the budget."""

    outcome = "ddl_lock_timeout"


class DdlBudgetExhausted(TemporaryFailure):
    outcome = "ddl_lock_budget_exhausted"


class WaitTimeout(TemporaryFailure):
    outcome = "wait_timeout"


class PermissionDenied(RunnerError):
    exit_code = ExitCode.PERMISSION
    outcome = "permission_denied"


class Interrupted(RunnerError):
    """A signal asked the run to stop; the current revision was rolled back."""

    outcome = "interrupted"

    def __init__(self, signal_name: str, exit_code: ExitCode) -> None:
        super().__init__(f"interrupted by {signal_name}", signal=signal_name)
        self.exit_code = exit_code


class FleetTargetsUnread(RunnerError):
    """`lint` over a fleet: some targets could not be read, so what they have pending (and so
    what to lint) is unknown. Exits with the code the fleet's reading ended with."""

    outcome = "targets_failed"

    def __init__(self, exit_code: int) -> None:
        super().__init__(
            "lint: some targets of the fleet could not be read (see the target_finished "
            "events); what they have pending is unknown, so nothing was linted"
        )
        self.exit_code = ExitCode(exit_code)
