"""What each subcommand does with a `Migrator`, and what it prints on stdout.

stdout carries command results only (check/plan/current/history output, `plan --sql`);
every log line goes to stderr.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any, TextIO

import structlog

from runner import cache
from runner.cancel import CancelToken
from runner.errors import DatabaseAhead, ExitCode
from runner.fastpath import Handoff
from runner.migrate import CheckResult, Migrator
from runner.observers import RunObserver
from runner.report import RunReport
from runner.settings import Settings

log = structlog.get_logger("runner")


def run_command(
    args: argparse.Namespace,
    settings: Settings,
    cancel: CancelToken,
    observers: Sequence[RunObserver],
    report: RunReport,
    out: TextIO,
    handoff: Handoff | None = None,
) -> int:
    try:
        migrator = Migrator(settings, cancel, observers, report, handoff)
    except BaseException:
        if handoff is not None:
            handoff.connection.close()  # the server drops the lock with the connection
        raise
    try:
        code = _COMMANDS[args.command](migrator, args, report, out)
        _remember(migrator, settings)
        return code
    finally:
        migrator.close()


def _remember(migrator: Migrator, settings: Settings) -> None:
    """Cache Alembic's answers for the fast path of the next run (best effort)."""
    facts = migrator.project_facts()
    if facts is None or not settings.fast_path or settings.cache_dir is None:
        return
    entry = cache.entry_path(
        settings.cache_dir, settings.config, settings.script_location, settings.environment_digest
    )
    if not cache.store(entry, facts):
        log.debug("fast_path_cache_unwritable", path=str(entry))


def _upgrade(m: Migrator, args: argparse.Namespace, report: RunReport, out: TextIO) -> int:
    m.upgrade(args.revision)
    return ExitCode.OK


def _downgrade(m: Migrator, args: argparse.Namespace, report: RunReport, out: TextIO) -> int:
    m.downgrade(args.revision)
    return ExitCode.OK


def _stamp(m: Migrator, args: argparse.Namespace, report: RunReport, out: TextIO) -> int:
    m.stamp(args.revision)
    return ExitCode.OK


def _record_state(report: RunReport, result: CheckResult) -> None:
    report.from_revision = ",".join(result.current) or None
    report.to_revision = report.from_revision
    report.outcome = (
        "up_to_date" if result.up_to_date else ("database_ahead" if result.unknown else "pending")
    )


def _ahead(m: Migrator, result: CheckResult) -> None:
    if result.unknown:
        if m.settings.on_db_ahead == "fail":
            raise DatabaseAhead(result.unknown)
        log.warning("database_ahead", db_revisions=result.unknown, head=list(result.heads))


def _check(m: Migrator, args: argparse.Namespace, report: RunReport, out: TextIO) -> int:
    result = m.check()
    _record_state(report, result)
    if args.json:
        _json(result.as_dict(), out)
    else:
        out.write(f"current: {', '.join(result.current) or '(base)'}\n")
        out.write(f"head:    {', '.join(result.heads)}\n")
        if result.unknown:
            out.write(f"unknown: {', '.join(result.unknown)} (database ahead of the code)\n")
        out.write(f"pending: {len(result.pending)}\n")
        for rev in result.pending:
            out.write(f"  {rev.revision}  {rev.message}\n")
    _ahead(m, result)
    return ExitCode.PENDING if result.pending else ExitCode.OK


def _wait(m: Migrator, args: argparse.Namespace, report: RunReport, out: TextIO) -> int:
    result = m.wait()
    _record_state(report, result)
    _ahead(m, result)
    return ExitCode.OK


def _plan(m: Migrator, args: argparse.Namespace, report: RunReport, out: TextIO) -> int:
    if args.sql:
        m.plan_sql(args.revision, out)
        return ExitCode.OK
    result = m.check(args.revision)
    _record_state(report, result)
    _ahead(m, result)
    if args.json:
        _json([vars(p) for p in result.pending], out)
    else:
        for rev in result.pending:
            out.write(
                f"{rev.revision}  {rev.down_revision or '(base)'} -> {rev.revision}  "
                f"{rev.message}\n"
            )
    return ExitCode.OK


def _current(m: Migrator, args: argparse.Namespace, report: RunReport, out: TextIO) -> int:
    result = m.check()
    _record_state(report, result)
    if args.json:
        _json(
            {
                "current": list(result.current),
                "head": list(result.heads),
                "up_to_date": result.up_to_date,
            },
            out,
        )
    else:
        for rev in result.current or ("(base)",):
            suffix = " (head)" if rev in result.heads else ""
            out.write(f"{rev}{suffix}\n")
    return ExitCode.OK


def _history(m: Migrator, args: argparse.Namespace, report: RunReport, out: TextIO) -> int:
    revisions = m.graph.history()
    if args.json:
        _json([vars(r) for r in revisions], out)
    else:
        for rev in revisions:
            head = " (head)" if rev.revision in m.graph.heads else ""
            out.write(f"{rev.down_revision or '<base>'} -> {rev.revision}{head}, {rev.message}\n")
    return ExitCode.OK


def _json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data) + "\n")
    out.flush()


_COMMANDS = {
    "upgrade": _upgrade,
    "downgrade": _downgrade,
    "stamp": _stamp,
    "check": _check,
    "wait": _wait,
    "plan": _plan,
    "current": _current,
    "history": _history,
}
