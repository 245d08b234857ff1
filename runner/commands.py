"""What each subcommand does, in the shape of Alembic's own `alembic/command.py`: build the
migration function Alembic's command would build, hand it to env.py through `drive.Run`, and
print the result.

stdout carries command results only (check/plan/current/history output, `plan --sql`);
every log line goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from alembic.runtime.migration import MigrationContext

from runner.activity import SessionInfo
from runner.drive import Run, Work
from runner.errors import ConfigError, DatabaseAhead, ExitCode, UsageError, WaitTimeout
from runner.logs import log
from runner.revisions import describe_step, downgrade_steps, stamp_steps, upgrade_steps
from runner.steps import Target, joined


def _no_range(revision: str, command: str) -> None:
    if ":" in revision:
        raise UsageError(
            f"{command} takes one revision, not a range ({revision!r}); "
            "ranges are for `plan --sql FROM:TO`"
        )


def upgrade(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    revision: str = args.revision
    _no_range(revision, "upgrade")
    script = run.script

    def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        return upgrade_steps(script, revision, heads)

    run.drive(Work("upgrade", fn, writes=True, destination_rev=revision, target=revision))
    run.report.settle_outcome()
    return ExitCode.OK


def downgrade(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    revision: str = args.revision
    _no_range(revision, "downgrade")
    script = run.script

    def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        return downgrade_steps(script, revision, heads)

    run.drive(
        Work(
            "downgrade",
            fn,
            writes=True,
            destination_rev=revision,
            on_unknown="fail",
            target=revision,
        )
    )
    run.report.settle_outcome()
    return ExitCode.OK


def stamp(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    revisions = tuple(args.revision)
    for revision in revisions:
        _no_range(revision, "stamp")
    script = run.script

    def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        return stamp_steps(script, revisions, heads)

    run.drive(
        Work(
            "stamp",
            fn,
            writes=True,
            destination_rev=revisions,
            purge=args.purge,
            on_unknown="ignore",
            target=",".join(revisions),
        )
    )
    run.report.settle_outcome()
    return ExitCode.OK


def _observe(run: Run, revision: str) -> Work:
    """Read-only work, as `alembic current` does it: env.py runs, nothing is changed, and each
    target records its revision and what `upgrade revision` would apply."""
    script = run.script

    def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        target = _current(run)
        target.heads = tuple(heads)
        with run.graph.asking(revision):
            target.pending = [describe_step(s) for s in upgrade_steps(script, revision, heads)]
        target.dirty = run.dirty_state(target)
        target.report.outcome = "pending" if target.pending else "up_to_date"
        return []

    return Work("observe", fn, target=revision)


def _current(run: Run) -> Target:
    assert run.current is not None
    return run.current


def target_states(run: Run) -> list[dict[str, Any]]:
    """What a reader found on each target (check, current, plan), as `--json` prints it."""
    return [
        {
            "target": t.label,
            "current": list(t.heads),
            "head": list(run.graph.heads),
            "up_to_date": not t.pending and not t.unknown,
            "pending": [p.public() for p in t.pending],
            "unknown": t.unknown,
            "dirty": t.dirty.fields.get("dirty_revision") if t.dirty else None,
        }
        for t in run.targets
    ]


def _as_json(states: list[dict[str, Any]]) -> Any:
    if len(states) == 1:
        return states[0]
    return {"up_to_date": all(s["up_to_date"] for s in states), "targets": states}


def check(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    run.drive(_observe(run, "head"))
    run.report.settle_outcome()
    states = target_states(run)
    if args.json:
        _json(_as_json(states), out)
    else:
        for state in states:
            if len(states) > 1:
                out.write(f"target:  {state['target']}\n")
            out.write(f"current: {', '.join(state['current']) or '(base)'}\n")
            out.write(f"head:    {', '.join(state['head'])}\n")
            if state["unknown"]:
                out.write(f"unknown: {', '.join(state['unknown'])} (database ahead of the code)\n")
            if state["dirty"]:
                out.write(f"dirty:   {state['dirty']} (a revision stopped part-way)\n")
            out.write(f"pending: {len(state['pending'])}\n")
            for rev in state["pending"]:
                out.write(f"  {rev['revision']}  {rev['message']}\n")
    for target in run.targets:
        if target.dirty is not None:
            raise target.dirty
    return ExitCode.PENDING if any(s["pending"] for s in states) else ExitCode.OK


#: How often a waiting `wait` says what it is waiting for (and whenever that changes).
WAIT_STATUS_EVERY_S = 5.0


def wait(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    """Block until every target is at head, bounded by MIGRATION_WAIT_TIMEOUT, saying what it
    waits for: no runner yet, a runner migrating (who, from where, how long), or that runner
    blocked by another session (who, how long, what query)."""
    script = run.script
    timeout = run.settings.wait_timeout
    started = time.monotonic()

    def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        target = _current(run)
        conn = target.adopted.conn
        last: tuple[WaitStatus, float] | None = None  # the last line logged, and when
        telling: WaitStatus | None = None  # the most telling status since that line
        while True:
            target.heads = tuple(heads)
            # Where the database is now: what run_finished says, at head or at the timeout.
            target.report.to_revision = joined(target.heads)
            target.unknown = run.graph.unknown(target.heads)
            if target.unknown:
                break  # a newer deploy already migrated past this code: nothing to wait for
            dirty = run.dirty_state(target)
            if dirty is not None:
                raise dirty  # nothing will change until a person fixes it: do not wait
            pending = [describe_step(s) for s in upgrade_steps(script, "head", heads)]
            if not pending:
                break
            waited = time.monotonic() - started
            status = WaitStatus.of(run, target, heads, pending)
            if not target.adopted.external and conn.in_transaction():
                # Never sit in a transaction while waiting: it would hold back the
                # runner's CREATE INDEX CONCURRENTLY, and idle-in-transaction timeouts.
                conn.rollback()
            if telling is None or status.rank >= telling.rank:
                telling = status
            now = time.monotonic()
            # Between its lock-timeout retries a blocked runner sits idle and looks like one
            # migrating: that is not news. The periodic line says the most telling state seen
            # since the last one, so a blocked runner reads as blocked, not as flapping.
            flapping = last is not None and (last[0].state, status.state) == (
                "runner_blocked",
                "runner_migrating",
            )
            changed = last is None or (last[0].state != status.state and not flapping)
            if changed or (last is not None and now - last[1] >= WAIT_STATUS_EVERY_S):
                shown = status if changed else telling
                log.info("wait_status", **shown.fields(), waited_s=round(waited, 1))
                last, telling = (shown, now), None
            if waited >= timeout:
                seen = max(
                    (s for s in (telling, last[0] if last else None, status) if s is not None),
                    key=lambda s: s.rank,
                )
                raise WaitTimeout(
                    f"{target.label}: database not at head after {waited:.1f}s "
                    f"(at {','.join(heads) or 'base'}, {len(pending)} pending); "
                    f"last seen: {seen.describe()}",
                    waited_s=round(waited, 3),
                    state=seen.state,
                )
            run.cancel.sleep(min(1.0, timeout - waited))
            heads = run.read_heads(target)
        target.report.outcome = "database_ahead" if target.unknown else "up_to_date"
        return []

    run.drive(Work("wait", fn, target="head"))
    run.report.settle_outcome()
    return ExitCode.OK


@dataclass(frozen=True)
class WaitStatus:
    """Why the database is not at head yet, as a waiting pod's log should say it."""

    target: str
    #: `no_runner` (nobody holds the migration lock), `runner_migrating`, `runner_blocked`.
    state: str
    current: tuple[str, ...]
    pending: int
    holder: SessionInfo | None
    blockers: list[SessionInfo]

    @property
    def rank(self) -> int:
        """How much a waiting pod's log learns from this state: blocked > migrating > none."""
        return ("no_runner", "runner_migrating", "runner_blocked").index(self.state)

    @classmethod
    def of(cls, run: Run, target: Target, heads: tuple[str, ...], pending: list[Any]) -> WaitStatus:
        holder = target.adopted.lock_holder(run.settings.lock_key)
        blockers = target.adopted.blockers_of(holder) if holder is not None else []
        if holder is None:
            state = "no_runner"
        else:
            state = "runner_blocked" if blockers else "runner_migrating"
        return cls(target.label, state, heads, len(pending), holder, blockers)

    def describe(self) -> str:
        if self.holder is None:
            return "no runner has started (nobody holds the migration lock)"
        text = f"a runner is migrating ({self.holder.describe()})"
        if self.blockers:
            text += "; it is blocked by " + "; ".join(b.describe() for b in self.blockers)
        return text

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "state": self.state,
            "current": list(self.current),
            "pending": self.pending,
            "reason": self.describe(),
        }
        if self.holder is not None:
            out["holder"] = self.holder.as_dict()
        if self.blockers:
            out["blockers"] = [b.as_dict() for b in self.blockers]
        return out


def plan(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    if args.sql:
        return _plan_sql(run, args.revision, out)
    _no_range(args.revision, "plan (without --sql)")
    run.drive(_observe(run, args.revision))
    run.report.settle_outcome()
    pending = [p for t in run.targets for p in t.pending]
    if args.json:
        _json([p.public() for p in pending], out)
    else:
        for rev in pending:
            out.write(
                f"{rev.revision}  {rev.down_revision or '(base)'} -> {rev.revision}  "
                f"{rev.message}\n"
            )
    return ExitCode.OK


def _plan_sql(run: Run, revision: str, out: TextIO) -> int:
    """The SQL `upgrade` would run, from Alembic's offline mode (`alembic upgrade --sql`):
    from the database's current revision, or over `FROM:TO` as given (no database)."""
    if ":" in revision:
        starting, destination = revision.split(":", 1)
        no_url = run.settings.database_url is None and run.settings.shadow_url is None
        if no_url and not run.config.get_main_option("sqlalchemy.url"):
            raise ConfigError(
                "plan --sql FROM:TO renders without a database but needs its dialect: set "
                "MIGRATION_DATABASE_URL (it is not connected to) or sqlalchemy.url in the ini"
            )
    else:
        run.drive(_observe(run, revision))
        if len(run.targets) > 1:
            raise UsageError("plan --sql covers one database; this env.py configures several")
        target = run.targets[0]
        if target.unknown:
            raise DatabaseAhead(target.unknown)
        if not target.pending:
            out.write("-- database is at head; nothing to apply\n")
            return ExitCode.OK
        if len(target.heads) > 1:
            raise UsageError("plan --sql needs a database with at most one head")
        starting = target.heads[0] if target.heads else None  # type: ignore[assignment]
        destination = revision
    script = run.script
    if run.settings.shadow_url is not None and _plan_backend(run) == "postgresql":
        return _plan_sql_from_shadow(run, starting or None, destination, out)
    why = (
        "MIGRATION_SHADOW_URL is not set"
        if run.settings.shadow_url is None
        else "the shadow run is PostgreSQL's"
    )
    log.info("plan_sql_offline", reason=f"{why}: rendered by Alembic's offline mode")
    out.write(
        f"-- rendered by Alembic's offline mode ({why}): a revision that inspects the "
        "database cannot render; set MIGRATION_SHADOW_URL to render from a shadow run\n"
    )
    run.config.output_buffer = out

    def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        return upgrade_steps(script, destination, heads)

    run.drive(
        Work(
            "plan",
            fn,
            as_sql=True,
            starting_rev=starting or None,
            destination_rev=destination,
            target=destination,
        )
    )
    return ExitCode.OK


def _plan_backend(run: Run) -> str:
    """The backend `plan --sql` renders for: the target's, else (a range, no target) the
    shadow server's."""
    if run.targets:
        return run.targets[0].adopted.backend
    return "postgresql"


def _plan_sql_from_shadow(run: Run, starting: str | None, destination: str, out: TextIO) -> int:
    """`plan --sql` from a shadow run: the statements each revision really sends, so a revision
    that inspects the database renders too."""
    from runner import lint as linting
    from runner import lint_output
    from runner.errors import MigrationFailed

    with run.graph.asking(destination):
        steps = upgrade_steps(run.script, destination, (starting,) if starting else ())
    review = {describe_step(step).revision for step in steps}
    if not review:
        out.write("-- nothing to apply\n")
        return ExitCode.OK
    observations = linting.shadow_run(run, review, destination=destination, keep_all=True)
    lint_output.sql_script(observations, out)
    out.flush()
    failed = [o for o in observations if o.status == "failed"]
    if failed:
        raise MigrationFailed(
            f"revision {failed[0].revision} failed in the shadow run: {failed[0].error}",
            revision=failed[0].revision,
            sqlstate=failed[0].sqlstate,
        )
    return ExitCode.OK


def lint(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    """Run the selected revisions on a throwaway database and report what each would lock
    (`runner.lint`; what it prints and exits with: `runner.lint_output.finish`)."""
    from runner import lint as linting
    from runner import lint_output
    from runner.errors import ConfigError

    options = linting.LintOptions(
        since=args.since, from_revision=args.from_revision, use_squawk=not args.no_squawk
    )
    pending = None
    label = None
    by_target = options.since is None and options.from_revision is None
    if by_target and run.settings.database_url is not None:
        run.drive(_observe(run, "heads"))
        if len(run.targets) != 1:
            raise UsageError("lint covers one database; this env.py configures several")
        target = run.targets[0]
        if target.adopted.backend != "postgresql":
            raise ConfigError(
                f"lint runs the revisions on PostgreSQL; {target.label} is "
                f"{target.adopted.backend} (MariaDB comes later)"
            )
        if target.unknown:
            if run.settings.on_db_ahead == "fail":
                raise DatabaseAhead(target.unknown)
            log.warning("database_ahead", target=target.label, db_revisions=target.unknown)
        pending, label = target.pending, target.label
    result = linting.lint(run, options, pending, label)
    return lint_output.finish(result, args, out, run.settings, run.report)


def current(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    run.drive(_observe(run, "heads"))
    run.report.settle_outcome()
    states = target_states(run)
    if args.json:
        shown = [{k: s[k] for k in ("target", "current", "head", "up_to_date")} for s in states]
        _json(shown[0] if len(shown) == 1 else shown, out)
    else:
        for state in states:
            prefix = f"{state['target']}: " if len(states) > 1 else ""
            for rev in state["current"] or ["(base)"]:
                suffix = " (head)" if rev in state["head"] else ""
                out.write(f"{prefix}{rev}{suffix}\n")
    return ExitCode.OK


def log_(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    """The history table: what the runner applied, downgraded, stamped, and what failed."""
    rows: list[tuple[str, Any]] = []

    def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        target = _current(run)
        history = run.history_of(target)
        entries = history.entries(limit=args.limit) if history is not None else []
        rows.extend((target.label, entry) for entry in entries)
        return []

    if run.settings.history_table.lower() == "off":
        raise UsageError("the history table is off (MIGRATION_HISTORY_TABLE=off)")
    run.drive(Work("log", fn, target="heads"))
    run.report.settle_outcome()
    several = len(run.targets) > 1
    if args.json:
        _json([{"target": label, **entry.as_dict()} for label, entry in rows], out)
        return ExitCode.OK
    for label, entry in rows:
        when = entry.started_at.strftime("%Y-%m-%d %H:%M:%S")
        took = f" {entry.duration_ms} ms" if entry.duration_ms is not None else ""
        who = entry.pod or entry.host or "-"
        where = f"{label}  " if several else ""
        out.write(
            f"{where}{when}  {entry.state:<8} {entry.action:<9} {entry.revision}{took}  "
            f"by {who}" + (f"  -- {entry.reason}" if entry.reason else "") + "\n"
        )
    if not rows:
        out.write("(no history yet)\n")
    return ExitCode.OK


def history(run: Run, args: argparse.Namespace, out: TextIO) -> int:
    """As `alembic history`: the scripts alone, env.py is not run."""
    revisions = run.graph.history()
    heads = run.graph.heads
    if args.json:
        _json([r.public() for r in revisions], out)
    else:
        for rev in revisions:
            head = " (head)" if rev.revision in heads else ""
            out.write(f"{rev.down_revision or '<base>'} -> {rev.revision}{head}, {rev.message}\n")
    return ExitCode.OK


def _json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data) + "\n")
    out.flush()


COMMANDS = {
    "upgrade": upgrade,
    "downgrade": downgrade,
    "stamp": stamp,
    "check": check,
    "wait": wait,
    "plan": plan,
    "current": current,
    "history": history,
    "log": log_,
    "lint": lint,
}
