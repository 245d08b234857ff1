"""Each step of one target, and what the runner records of it.

A *target* is one connection env.py handed to `context.configure()`. For each of its steps
(a revision applied or undone, a stamp) the runner checks the lock and the cancel flag
before it runs (runner/drive.py), and here: writes a `started` history row first when a
rollback could not undo the step; inside the step's transaction, lets the step observers look
and writes the step's history row (so both commit or roll back with it); once committed,
reports it (`revision_applied`, ...); after a failure, records whether part of it stayed
(the database is then dirty). A step inside a transaction of env.py's own is reported only
once env.py has committed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.engine import Connection

from runner import db
from runner.errors import ConfigError, DirtyDatabase, RunnerError
from runner.history import History, RunIdentity
from runner.logs import log
from runner.observers import RunObserver, notify
from runner.redact import redact
from runner.report import AppliedRevision, TargetReport
from runner.revisions import PendingRevision
from runner.session import AdoptedConnection


class StepObserver(Protocol):
    """Watches each step on its connection (the shadow run of `lint` records statements,
    locks and rewrites this way). Called on the migration's own connection: what it runs
    there runs inside the step's transaction when it says so."""

    def before_step(self, conn: Connection, step: PendingRevision) -> None:
        """Before the step's transaction begins."""

    def in_step_transaction(self, conn: Connection, step: PendingRevision) -> None:
        """After the step's work, inside its transaction, before it commits."""

    def after_step(self, conn: Connection, step: PendingRevision, duration_ms: int) -> None:
        """Once the step has committed."""


@dataclass
class Target:
    """One connection env.py configured, while the command runs on it."""

    adopted: AdoptedConnection
    report: TargetReport
    context: MigrationContext | None = None
    #: What is pending (readers fill it: check, plan, wait).
    pending: list[PendingRevision] = field(default_factory=list)
    heads: tuple[str, ...] = ()
    unknown: list[str] = field(default_factory=list)
    running: tuple[PendingRevision, float] | None = None
    #: The database's heads once the running step is done (from Alembic's callback).
    heads_after_step: tuple[str, ...] | None = None
    #: Steps done inside env.py's own transaction, not yet committed by it.
    uncommitted: list[tuple[PendingRevision, int, tuple[str, ...]]] = field(default_factory=list)
    migrated: bool = False
    history: History | None = None
    #: The running step committed part of its work on its own (non-transactional DDL, or
    #: `autocommit_block()`): a failure now leaves the database dirty.
    partial: bool = False
    #: The step that failed part-way, for the run's final reason.
    dirty_step: PendingRevision | None = None
    #: What a reader found: the history says a revision stopped part-way.
    dirty: DirtyDatabase | None = None
    step_observers: list[StepObserver] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.adopted.label

    @property
    def transactional(self) -> bool:
        """DDL rolls back with its transaction here (PostgreSQL), as Alembic judges it."""
        return bool(self.context is not None and self.context.impl.transactional_ddl)

    def start(self, info: PendingRevision) -> None:
        self.running = (info, time.monotonic())
        self.heads_after_step = None
        self.partial = False


class Steps:
    """The per-step bookkeeping of a run's targets: history rows, observers, reports."""

    def __init__(
        self,
        observers: Iterable[RunObserver],
        identity: RunIdentity,
        history_table: str,
        lock_key: int | None,
        env_py: str,
    ) -> None:
        self.observers = list(observers)
        self.identity = identity
        self.history_table = history_table
        self.lock_key = lock_key
        self.env_py = env_py

    # -- the history table ------------------------------------------------------------

    def history_of(self, target: Target) -> History | None:
        """The history of this target's version table (None when switched off)."""
        if self.history_table.lower() == "off":
            return None
        vt = target.adopted.version_table
        return History(target.adopted.conn, self.history_table, vt.name, vt.schema, self.identity)

    def open_history(self, target: Target, refuse_dirty: bool) -> None:
        """Under the lock, before the first step: the table exists, and a dirty database is
        refused (`stamp`, the way out, is not)."""
        history = self.history_of(target)
        if history is None:
            return
        owned = not target.adopted.conn.in_transaction()
        history.create()
        dirty = history.dirty() if refuse_dirty else None
        if owned:
            target.adopted.conn.commit()
        if dirty is not None:
            raise dirty
        target.history = history

    def dirty_state(self, target: Target) -> DirtyDatabase | None:
        """For readers (check, wait): the database is dirty, unless the `started` row belongs
        to a runner that is migrating right now (it holds the lock)."""
        history = self.history_of(target)
        if history is None:
            return None
        state = history.latest_state()
        if target.adopted.external is False and target.adopted.conn.in_transaction():
            target.adopted.conn.rollback()
        if state not in ("started", "dirty"):
            return None
        if state == "started" and not target.adopted.lock_is_free(self.lock_key):
            return None
        return history.dirty()

    # -- around each step --------------------------------------------------------------

    def before_step(self, target: Target, info: PendingRevision) -> None:
        """A step a rollback cannot undo gets its `started` row, committed, before it runs."""
        for observer in target.step_observers:
            observer.before_step(target.adopted.conn, info)
        history = target.history
        if history is None or target.transactional or info.kind == "stamp":
            return
        history.started(info)
        if not target.adopted.conn.in_transaction() or target.adopted.external:
            return
        target.adopted.conn.commit()

    def on_version_apply(self, target: Target) -> Callable[..., None]:
        """Alembic's `on_version_apply` hook, inside each step's transaction after its work:
        the heads it leads to, and its history row (committed with the step, or not at all)."""

        def on_version_apply(*, ctx: Any, step: Any, heads: set[str], run_args: Any) -> None:
            target.heads_after_step = tuple(sorted(heads))
            if target.running is None:
                return
            info, started = target.running
            for observer in target.step_observers:
                observer.in_step_transaction(target.adopted.conn, info)
            if target.history is not None:
                target.history.applied(info, int((time.monotonic() - started) * 1000))

        return on_version_apply

    def watch_autocommit(self, target: Target) -> None:
        """A revision entering `autocommit_block()` commits what it did so far, and each
        statement in the block commits on its own: once one has run, a failure cannot be
        rolled back whole (the database is dirty). Its `started` row goes into the
        transaction Alembic commits on the way in."""
        context = target.context
        assert context is not None
        original = context.autocommit_block
        inside = [False]

        def statement_started(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            # A statement other than a plain SELECT may leave something behind even when it
            # fails (CREATE INDEX CONCURRENTLY leaves an INVALID index).
            if inside[0] and not statement.lstrip().upper().startswith("SELECT"):
                target.partial = True

        def statement_done(*_: Any) -> None:
            if inside[0]:
                target.partial = True  # committed the moment it finished

        event.listen(target.adopted.conn, "before_cursor_execute", statement_started)
        event.listen(target.adopted.conn, "after_cursor_execute", statement_done)

        @contextmanager
        def autocommit_block() -> Iterator[None]:
            history = target.history
            if target.running is not None and history is not None and history.open_row is None:
                history.started(target.running[0])
            inside[0] = True
            try:
                with original():
                    yield
            finally:
                inside[0] = False

        context.autocommit_block = autocommit_block  # type: ignore[method-assign]

    def done(self, target: Target) -> None:
        """The running step's transaction has committed (Alembic asks for the next step only
        then), or, inside env.py's own transaction, is waiting for env.py's commit."""
        if target.running is None:
            return
        info, started = target.running
        target.running = None
        target.adopted.wrote = True
        duration_ms = int((time.monotonic() - started) * 1000)
        heads = target.heads_after_step or ()
        if target.adopted.external:
            target.uncommitted.append((info, duration_ms, heads))
            return
        self.report(target, info, duration_ms, heads)

    def report(
        self, target: Target, info: PendingRevision, duration_ms: int, heads: tuple[str, ...]
    ) -> None:
        for observer in target.step_observers:
            observer.after_step(target.adopted.conn, info, duration_ms)
        report = target.report
        report.to_revision = joined(heads)
        report.outcome = "success"
        done = AppliedRevision(
            info.revision, info.down_revision, info.message, duration_ms, target.label
        )
        fields = {
            "target": target.label,
            "revision": info.revision,
            "down_revision": info.down_revision,
            "message": info.message,
            "duration_ms": duration_ms,
        }
        if info.kind == "upgrade":
            report.applied.append(done)
            log.info("revision_applied", **fields)
            notify(self.observers, lambda o: o.revision_applied(done))
        elif info.kind == "downgrade":
            report.downgraded.append(done)
            log.info("revision_downgraded", **fields, to_revision=report.to_revision)
        else:
            report.stamped.append(info.revision)
            log.info(
                "revision_stamped",
                target=target.label,
                revision=info.revision,
                from_revision=info.down_revision,
            )

    def settle_env_transaction(self, target: Target) -> None:
        """env.py held the revisions in a transaction of its own: they count once it
        committed. An env.py that returns without committing leaves plain Alembic's result
        (nothing) and the runner says so rather than exit 0."""
        if not target.uncommitted:
            return
        if not target.adopted.committed_by_env:
            revs = ", ".join(info.revision for info, _, _ in target.uncommitted)
            target.uncommitted.clear()
            raise ConfigError(
                f"{self.env_py} ran the migrations of {target.label} inside a transaction "
                f"it began before context.configure() and never committed: nothing was "
                f"applied ({revs} rolled back, as under plain Alembic). Commit or end that "
                "transaction before configure(), as Alembic's cookbook does"
            )
        for info, duration_ms, heads in target.uncommitted:
            self.report(target, info, duration_ms, heads)
        target.uncommitted.clear()

    # -- stamps and failures -------------------------------------------------------------

    def stamp_in_place(self, target: Target, destination: str, heads: tuple[str, ...]) -> None:
        """A stamp that moved nothing (the database is already there) still says who stated
        the schema is at that revision: its history row clears a dirty mark."""
        history = target.history
        if history is None:
            return
        stamped = PendingRevision(destination, joined(heads), "stamp", "stamp")
        history.applied(stamped, 0)
        if not target.adopted.external:
            target.adopted.conn.commit()
        target.report.stamped.append(stamped.revision)
        log.info(
            "revision_stamped",
            target=target.label,
            revision=stamped.revision,
            from_revision=stamped.down_revision,
        )

    def failed(self, target: Target, reason: Callable[[], str]) -> None:
        """The failed step's history row: `dirty` when part of it may have stayed."""
        if target.running is None:
            return
        info, started = target.running
        partial = target.partial or not target.transactional
        history = target.history
        conn = target.adopted.conn
        writable = history is not None and not (
            target.adopted.external or conn.closed or conn.invalidated
        )
        # The row keeps the failure itself; the run's reason adds "may be partly applied"
        # (`with_dirty_note`) once `dirty_step` is set, and the refusal a later run reads from
        # this row says that part itself.
        row_reason = redact(reason()) if writable else ""
        if partial and info.kind != "stamp":
            target.dirty_step = info
        if history is None:
            return
        if not writable:
            history.forget_open_row()  # env.py's transaction decides; it is failing
            return

        def write() -> None:
            assert history is not None
            if conn.in_transaction():
                conn.rollback()
            took = int((time.monotonic() - started) * 1000)
            history.failed(info, row_reason, partial, took)
            conn.commit()

        db.quiet(write, "history_write_failed")


def with_dirty_note(target: Target | None, error: RunnerError) -> RunnerError:
    """A step that failed part-way says so in the run's reason: it is the last chance to
    tell before the next run refuses."""
    if target is None or target.dirty_step is None:
        return error
    step = target.dirty_step
    error.reason += (
        f"; revision {step.revision} may be partly applied (its DDL commits on its own): the "
        "database is marked dirty, see `migration-runner log`"
    )
    error.fields["dirty"] = True
    return error


def joined(heads: Iterable[str]) -> str | None:
    return ",".join(heads) or None
