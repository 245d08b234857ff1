"""Runs the project's own env.py for one command, and adds the runner's promises around every
connection env.py configures.

A command is handed to Alembic exactly as `alembic.command` hands it: an `EnvironmentContext`
carrying the command's migration function (`Work.fn`), then `script.run_env()`. env.py builds
its connections as it always does. `RunnerEnvironment` is that `EnvironmentContext`, with two
methods extended:

- `configure(connection=...)` adopts the connection (`session.AdoptedConnection`: safety
  settings, cancel channel), asks for one transaction per revision and wraps the migration
  function so that every step is checked (lock held, not cancelled) and reported once done;
- `run_migrations()` first reads the database's revision, decides what is pending (by asking
  the script directory as env.py left it), takes the migration lock on the same connection
  when there is work, runs Alembic's own `run_migrations`, retries a revision that hit the
  DDL `lock_timeout`, and gives the connection back (durable commits, env.py's settings
  restored, lock released).

Every `configure()` call is a *target* with its own lock and report: one for the usual env.py,
one per database for Alembic's multidb template.

Alembic's private API is used in one place each, listed in `ALEMBIC_PRIVATE_API`.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from runner import __version__, db, revisions
from runner.cancel import CancelToken
from runner.errors import (
    ConfigError,
    DatabaseAhead,
    DdlBudgetExhausted,
    DirtyDatabase,
    GraphError,
    LockLost,
    MigrationFailed,
    RunnerError,
)
from runner.history import History, RunIdentity
from runner.logs import log, reclaim_library_loggers
from runner.observers import RunObserver, notify
from runner.report import RunReport, TargetReport
from runner.revisions import Graph, PendingRevision, describe_step
from runner.session import AdoptedConnection, VersionTable
from runner.settings import Settings, export_database_url
from runner.steps import StepObserver, Steps, Target, joined, with_dirty_note

#: Alembic internals the runner relies on, where no public API exists; checked against
#: Alembic 1.13 to 1.20 (the versions pyproject.toml admits).
ALEMBIC_PRIVATE_API = {
    "EnvironmentContext._setups": "alembic.context proxies to the active environment, "
    "registered per exact class: the runner's subclass shares the base registration",
    "ScriptDirectory._upgrade_revs / _downgrade_revs / _stamp_revs": "the steps Alembic's "
    "own upgrade/downgrade/stamp commands run (runner/revisions.py: upgrade_steps, ...)",
}

MigrationFn = Callable[[tuple[str, ...], MigrationContext], Iterable[Any]]


@dataclass
class Work:
    """What one command asks of env.py, in the terms `alembic.command` uses, plus what the
    runner must know about it."""

    command: str
    #: Alembic's migration function: `fn(current_heads, context) -> steps`.
    fn: MigrationFn
    #: Changes the database (upgrade, downgrade, stamp): needs the migration lock.
    writes: bool = False
    destination_rev: Any = None
    starting_rev: str | None = None
    as_sql: bool = False
    purge: bool = False
    #: The database at a revision this code does not know: `policy` (warn/fail per the
    #: setting) for upgrade, always an error for downgrade, not a question for stamp.
    on_unknown: str = "policy"
    #: Revision argument as the user gave it, for messages.
    target: str = "head"


class RunnerEnvironment(EnvironmentContext):
    """The `EnvironmentContext` env.py talks to (as `alembic.context`) during a runner command."""

    def __init__(self, run: Run, work: Work, **kw: Any) -> None:
        super().__init__(run.config, run.script, **kw)
        self._run = run
        self._work = work

    # Same keywords as the base class; they pass through **kw untouched.
    def configure(  # type: ignore[override]
        self, connection: Connection | None = None, url: Any = None, **kw: Any
    ) -> None:
        if self.is_offline_mode():
            reclaim_library_loggers()  # env.py's fileConfig() runs in offline mode too
            self.context_opts["fn"] = self._run.track_offline(self._work.fn)
            super().configure(connection=connection, url=url, **kw)
            return
        if not isinstance(connection, Connection):
            raise self._run.refuse(
                ConfigError(
                    f"{self._run.env_py} called context.configure() without a connection "
                    f"(got {type(connection).__name__}): the runner locks and migrates on "
                    "the connection env.py opens; pass connection=... as Alembic's templates do"
                )
            )
        reclaim_library_loggers()  # the project's imports may have reconfigured logging
        with self._run.refusing():
            target = self._run.adopt(connection, VersionTable.of(kw))
        if self._work.writes:
            kw["transaction_per_migration"] = True
        on_apply = kw.get("on_version_apply") or ()
        on_apply = tuple(on_apply) if isinstance(on_apply, list | tuple) else (on_apply,)
        kw["on_version_apply"] = (*on_apply, self._run.steps.on_version_apply(target))
        self.context_opts["fn"] = self._run.wrap_steps(target, self._work)
        super().configure(connection=connection, url=url, **kw)
        target.context = self.get_context()
        self._run.steps.watch_autocommit(target)

    def run_migrations(self, **kw: Any) -> None:
        if self.is_offline_mode():
            super().run_migrations(**kw)
            return
        target = self._run.current
        if target is None or target.context is not self.get_context():
            super().run_migrations(**kw)  # never configured online: Alembic says so itself
            return
        with self._run.refusing():
            self._run.migrate(
                target, self._work, lambda: super(RunnerEnvironment, self).run_migrations(**kw)
            )


# `alembic.context` forwards module-level calls (context.configure, context.config, ...) to the
# active EnvironmentContext, keyed by its exact class; share the base class's registration so
# the subclass is what env.py talks to.
RunnerEnvironment._setups[RunnerEnvironment] = (  # noqa: SLF001
    EnvironmentContext._setups[EnvironmentContext]  # noqa: SLF001
)


class Run:
    """One command against the project: env.py run once (or, for `plan --sql`, twice).

    `project_of`: a previous `Run` whose script directory (revisions loaded once, env.py's
    changes to it kept) this one reuses, as a fleet does for each of its targets."""

    def __init__(
        self,
        settings: Settings,
        cancel: CancelToken,
        observers: Iterable[RunObserver],
        report: RunReport,
        *,
        project_of: Run | None = None,
        step_observers: Iterable[StepObserver] = (),
    ) -> None:
        self.settings = settings
        self.cancel = cancel
        self.observers = list(observers)
        self.step_observers = list(step_observers)
        self.report = report
        self.config = revisions.load_config(
            settings.config,
            settings.script_location,
            settings.ini_section,
            settings.x_args,
            settings.tag,
        )
        self.script: ScriptDirectory
        self.graph: Graph
        if project_of is not None:
            self.script = project_of.script
            self.graph = project_of.graph
        else:
            self.script = revisions.open_script_directory(self.config)
            self.graph = Graph(self.script)
        self.env_py = f"{self.script.dir}/env.py"
        self.targets: list[Target] = []
        self.current: Target | None = None
        self.session = db.SessionSettings(
            ddl_lock_timeout_s=settings.ddl_lock_timeout,
            statement_timeout_s=settings.statement_timeout,
            idle_in_transaction_timeout_s=settings.idle_in_transaction_timeout,
        )
        self._connects = db.RetryingConnects(settings.connect_timeout, cancel)
        self.identity = RunIdentity.new(
            __version__,
            host=os.uname().nodename,
            pod=settings.pod_name,
            job=settings.job_name,
            image=settings.image,
        )
        self.steps = Steps(
            self.observers, self.identity, settings.history_table, settings.lock_key, self.env_py
        )
        self._url_set = False
        #: What the runner refused from inside env.py: raised again after env.py returns,
        #: even if env.py's own error handling swallowed it.
        self._refusal: RunnerError | None = None
        self.offline_step: PendingRevision | None = None

    # -- running env.py ----------------------------------------------------------------

    def drive(self, work: Work) -> None:
        """Run env.py for `work`; every failure comes out as a `RunnerError`."""
        self._give_env_py_the_url(offline=work.as_sql)
        environment = RunnerEnvironment(
            self,
            work,
            fn=work.fn,
            as_sql=work.as_sql,
            starting_rev=work.starting_rev,
            destination_rev=work.destination_rev,
            tag=self.settings.tag,
            purge=work.purge,
            **({} if work.writes or work.as_sql else {"dont_mutate": True}),
        )
        first_target = len(self.targets)
        try:
            with self._connects, environment:
                self.script.run_env()
        except BaseException as exc:
            for target in self.targets[first_target:]:
                target.adopted.after_env()
                target.uncommitted.clear()  # env.py's transaction did not commit
            error = self._translate(exc)
            if error is None:
                raise
            raise error from None
        for target in self.targets[first_target:]:
            target.adopted.after_env()
        if self._refusal is not None:
            raise self._refusal  # env.py caught it and went on: the refusal stands
        for target in self.targets[first_target:]:
            if target.running is not None:
                info = target.running[0]
                raise MigrationFailed(
                    f"revision {info.revision} did not complete: {self.env_py} caught its "
                    "error and went on",
                    revision=info.revision,
                )
            self.steps.settle_env_transaction(target)
        if not work.as_sql and len(self.targets) == first_target:
            raise ConfigError(
                f"{self.env_py} finished without calling context.configure(connection=...) "
                "in online mode: there is no connection to migrate"
            )
        if work.writes:
            idle = [t.label for t in self.targets[first_target:] if not t.migrated]
            if idle:
                raise ConfigError(
                    f"{self.env_py} configured {', '.join(idle)} but never called "
                    "context.run_migrations() on it: nothing was migrated"
                )

    def _give_env_py_the_url(self, offline: bool = False) -> None:
        """env.py reads its URL from `sqlalchemy.url` (set once in this run's config) or from
        variables of its own (MIGRATION_EXPORT_URL_AS: process-wide, so set again at every
        drive: a fleet's targets and lint's shadow run each have their URL). Offline
        (`plan --sql FROM:TO`) no database is needed: without a URL env.py keeps the ini's
        `sqlalchemy.url` for its dialect, as `alembic upgrade FROM:TO --sql` does."""
        export_database_url(self.settings)
        if self._url_set or (offline and self.settings.database_url is None):
            return
        db_url = self.settings.database()
        url = db_url.for_async_env() if revisions.is_async_env(self.script) else db_url.url
        revisions.set_database_url(self.config, url.render_as_string(hide_password=False))
        self._url_set = True

    def refuse(self, error: RunnerError) -> RunnerError:
        """Remember `error` as the run's outcome, and return it to be raised into env.py."""
        if self._refusal is None:
            self._refusal = error
        return error

    @contextmanager
    def refusing(self) -> Iterator[None]:
        """Every runner error raised from inside env.py is a refusal that stands."""
        try:
            yield
        except RunnerError as error:
            raise self.refuse(error) from None
        except DBAPIError as exc:
            target, step = self.running_step()
            if target is None or step is not None:
                raise
            # The runner's own statements (settings, heads, lock) failed.
            raise self.refuse(db.classify(exc, target.adopted.backend)) from None

    def adopt(self, conn: Connection, version_table: VersionTable) -> Target:
        try:
            adopted = AdoptedConnection(conn, version_table, self.session, self.cancel)
        except DBAPIError as exc:
            raise db.classify(exc, db.backend_of(conn)) from None
        target = Target(
            adopted,
            TargetReport(adopted.label, adopted.backend),
            step_observers=self.step_observers,
        )
        self.targets.append(target)
        self.report.targets.append(target.report)
        self.current = target
        return target

    # -- one target's migrations --------------------------------------------------------

    def read_heads(self, target: Target) -> tuple[str, ...]:
        """The database's revision(s), through Alembic, without leaving a transaction open."""
        assert target.context is not None
        conn = target.adopted.conn
        owned = not conn.in_transaction()
        heads = tuple(target.context.get_current_heads())
        if owned:
            conn.commit()
        return heads

    def plan(self, work: Work, heads: tuple[str, ...], target: Target) -> list[PendingRevision]:
        assert target.context is not None
        with self.graph.asking(work.target):
            return [describe_step(step) for step in work.fn(heads, target.context)]

    def migrate(self, target: Target, work: Work, run_alembic: Callable[[], None]) -> None:
        """Everything around Alembic's `run_migrations` for one target (see module doc)."""
        target.migrated = True
        adopted = target.adopted
        heads = self.read_heads(target)
        target.heads = heads
        target.report.from_revision = target.report.to_revision = joined(heads)
        self.graph.load()
        if self._database_ahead(target, work, heads):
            return
        self.graph.check_target(work.target)
        if not work.writes:
            run_alembic()  # the reader's fn records what it needs
            return
        todo = self.plan(work, heads, target)

        def satisfied() -> bool:
            if work.command == "stamp":
                return False
            now = self.read_heads(target)
            return bool(now) and not self.plan(work, now, target)

        # A stamp always records itself, even onto the revision the database is at: that is
        # how a person clears a dirty mark.
        stamp = work.command == "stamp"
        if todo or not heads or stamp:
            if not adopted.take_lock(
                self.settings.lock_timeout,
                self.settings.lock_key,
                functools.partial(self._lock_waiting, target),
                satisfied,
            ):
                target.report.to_revision = joined(self.read_heads(target))
                return
            heads = self.read_heads(target)  # another runner may have finished meanwhile
            target.report.from_revision = target.report.to_revision = joined(heads)
            if self._database_ahead(target, work, heads):
                self._finish(target, succeeded=True)
                return
            todo = self.plan(work, heads, target)
            adopted.refuse_transaction_pooler()
            self.steps.open_history(target, refuse_dirty=work.command != "stamp")
        if todo:
            log.info(
                "migration_started",
                target=target.label,
                current=list(heads),
                destination=str(work.target),
                pending=len(todo),
                revisions=[p.revision for p in todo],
            )
        elif heads and not stamp:
            # At the destination already: Alembic's run_migrations would only read the version
            # table again (each target of a fleet at head pays one read, not two). A dirty
            # database is not "at" anything, though: an upgrade that exits 0 there (an older
            # image whose head is the revision before the dirty one) would start the app on a
            # half-applied schema. Refused as when there is work to do.
            dirty = self.dirty_state(target)
            if dirty is not None:
                self._finish(target, succeeded=False)
                raise dirty
            self._finish(target, succeeded=True)
            return
        succeeded = False
        try:
            self._with_ddl_retries(target, run_alembic)
            if stamp and not todo:
                self.steps.stamp_in_place(target, str(work.target), heads)
            succeeded = True
        except BaseException as exc:
            adopted.stop_migrating()
            self.steps.failed(target, functools.partial(self._reason_of, exc))
            adopted.report_invalid_indexes()
            raise
        finally:
            self._finish(target, succeeded)

    def history_of(self, target: Target) -> History | None:
        return self.steps.history_of(target)

    def dirty_state(self, target: Target) -> DirtyDatabase | None:
        return self.steps.dirty_state(target)

    def _finish(self, target: Target, succeeded: bool) -> None:
        try:
            target.adopted.finish(succeeded)
        except DBAPIError as exc:
            if succeeded:
                # Every revision committed, then the connection went before the commits were
                # confirmed durable: report it as lost (exit 69, retry), so a rerun confirms
                # the state instead of a guess here.
                raise db.classify(exc, target.adopted.backend) from None
            log.debug("connection_finish_failed", reason=db.one_line(exc))

    def _with_ddl_retries(self, target: Target, run_alembic: Callable[[], None]) -> None:
        """A revision that hit `lock_timeout` was rolled back by Alembic; the revisions
        before it stay committed. Run Alembic's `run_migrations` again (it resumes from the
        database's revision) after a jittered pause, within the retry budget. Inside a
        transaction of env.py's own there is nothing to resume: that is a temporary failure
        at once (exit 75)."""
        budget_left = self.settings.ddl_retry_budget
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                run_alembic()
                return
            except DBAPIError as exc:
                if (
                    db.sqlstate_of(exc) != db.LOCK_NOT_AVAILABLE
                    or target.adopted.external
                    or target.partial
                    or not target.transactional
                ):
                    raise  # only a step rolled back whole can be run again
                revision = target.running[0].revision if target.running else None
                target.running = None
                self.cancel.check()
                budget_left -= time.monotonic() - started
                pause = min(2.0 ** min(attempt, 5) * 0.25, 5.0) * (0.5 + random.random())  # noqa: S311
                blockers = target.adopted.blockers
                if budget_left - pause <= 0:
                    held_by = "; ".join(b.describe() for b in blockers) or "a long transaction"
                    raise DdlBudgetExhausted(
                        f"revision {revision}: could not take a table lock within "
                        f"{self.settings.ddl_lock_timeout:g}s, retried for "
                        f"{self.settings.ddl_retry_budget:g}s; held by {held_by}",
                        revision=revision,
                        sqlstate=db.LOCK_NOT_AVAILABLE,
                        attempts=attempt,
                    ) from None
                log.warning(
                    "ddl_lock_timeout",
                    target=target.label,
                    revision=revision,
                    attempt=attempt,
                    retry_in_s=round(pause, 3),
                    budget_left_s=round(budget_left, 3),
                    sqlstate=db.LOCK_NOT_AVAILABLE,
                    blocked_by="; ".join(b.describe() for b in blockers) or "unknown",
                    blockers=[b.as_dict() for b in blockers],
                )
                with target.adopted.retrying_behind(blockers):
                    self.cancel.sleep(pause)
                budget_left -= pause

    def _database_ahead(self, target: Target, work: Work, heads: tuple[str, ...]) -> bool:
        """True when the database is at a revision this code does not know and the command
        must not go on (the warn policy: nothing to do, exit 0)."""
        unknown = self.graph.unknown(heads)
        target.unknown = unknown
        if not unknown or work.on_unknown == "ignore":
            return False
        if work.on_unknown == "fail" or self.settings.on_db_ahead == "fail":
            raise DatabaseAhead(unknown)
        log.warning(
            "database_ahead",
            target=target.label,
            db_revisions=unknown,
            head=list(self.graph.heads),
            reason="the database is at a revision this code does not know; "
            "nothing applied (MIGRATION_ON_DB_AHEAD=fail makes this exit 65)",
        )
        target.report.outcome = "database_ahead"
        return True

    def _lock_waiting(self, target: Target, key: str, waited_s: float) -> None:
        log.info(
            "lock_waiting", target=target.adopted.label, key=key, reason="held by another runner"
        )
        notify(self.observers, lambda o: o.lock_waiting(key, waited_s))

    # -- steps -------------------------------------------------------------------------

    def wrap_steps(self, target: Target, work: Work) -> MigrationFn:
        """Alembic's migration function, with each step checked before it runs and reported
        once its transaction has committed (Alembic commits a step before it asks for the
        next one, so "applied" is never claimed for work that was rolled back)."""
        adopted = target.adopted

        def steps(heads: tuple[str, ...], context: MigrationContext) -> Iterator[Any]:
            with self.graph.asking(work.target):
                planned = list(work.fn(heads, context))
            for step in planned:
                self.steps.done(target)
                self.cancel.check()
                if work.writes:
                    if adopted.lock is None:
                        raise self.refuse(
                            LockLost(
                                f"{target.label}: the database changed while no lock was "
                                "held (another tool migrated it); rerun",
                            )
                        )
                    adopted.verify_lock()
                info = describe_step(step)
                target.start(info)
                self.steps.before_step(target, info)
                yield step
            self.steps.done(target)

        return steps

    def track_offline(self, fn: MigrationFn) -> MigrationFn:
        """Offline (`--sql`) steps, tracked so that a failure names its revision."""

        def steps(heads: tuple[str, ...], context: MigrationContext) -> Iterator[Any]:
            for step in fn(heads, context):
                self.offline_step = describe_step(step)
                yield step
            self.offline_step = None

        return steps

    # -- errors --------------------------------------------------------------------------

    def running_step(self) -> tuple[Target | None, PendingRevision | None]:
        for target in reversed(self.targets):
            if target.running is not None:
                return target, target.running[0]
        return self.current, self.offline_step

    def _reason_of(self, exc: BaseException) -> str:
        error = self._translate(exc)
        return error.reason if error is not None else _first_line(exc)

    def _translate(self, exc: BaseException) -> RunnerError | None:
        """The runner's error for whatever came out of env.py (None: let it through)."""
        if self._refusal is not None:
            return self._refusal
        if isinstance(exc, RunnerError):
            return exc
        if isinstance(exc, KeyboardInterrupt | GeneratorExit):
            return None
        try:
            self.cancel.check()  # a statement cancelled by a signal: report the signal
        except RunnerError as interrupted:
            return interrupted
        target, step = self.running_step()
        where = f"revision {step.revision}: " if step else ""
        fields: dict[str, Any] = {"revision": step.revision} if step else {}
        if isinstance(exc, SystemExit):
            return ConfigError(
                f"{self.env_py} exited (SystemExit: {exc.code}): {where or 'before migrating'}",
                **fields,
            )
        if isinstance(exc, DBAPIError):
            connect_error = self._connects.explain(exc)
            if connect_error is not None:
                return connect_error
            backend = target.adopted.backend if target else "postgresql"
            return with_dirty_note(target, db.classify(exc, backend, where, **fields))
        if isinstance(exc, CommandError):
            return GraphError(str(exc).splitlines()[0], **fields)
        reason = _first_line(exc)
        if log.is_debug():
            log.debug("migration_traceback", exc_info=exc)
        if step is not None:
            if self.offline_step is step:
                return MigrationFailed(
                    f"revision {step.revision} cannot be rendered as SQL offline ({reason}): "
                    "it inspects the live database",
                    **fields,
                    error=type(exc).__name__,
                )
            return with_dirty_note(
                target,
                MigrationFailed(
                    f"revision {step.revision} ({step.message}) failed: {reason}",
                    **fields,
                    error=type(exc).__name__,
                ),
            )
        if not self.targets:
            return ConfigError(f"{self.env_py} failed: {reason}", error=type(exc).__name__)
        return MigrationFailed(f"migration failed: {reason}", error=type(exc).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
