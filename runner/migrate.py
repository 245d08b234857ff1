"""The orchestrator: runs the project's own env.py, on the runner's locked connection.

How the user's env.py is driven (the same for `alembic init` generic, the cookbook pattern
that reads `config.attributes["connection"]`, and `alembic init -t async`):
- `_RunnerEnvironment` is an `EnvironmentContext` whose `configure()` swaps in the runner's
  connection, forces one transaction per revision, and wraps the step list so that the lock is
  verified and cancellation checked before each revision and every revision is reported once it
  has committed. Everything else env.py passes (version table, schema, target metadata...) is
  kept, so every command honours the project's own configuration.
- Work that only reads (check, current, plan, wait, and the "already at head" fast path) stops
  env.py inside `configure()`, before any migration context is built.
"""

from __future__ import annotations

import contextlib
import logging.config
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import structlog
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from runner import lock as locks
from runner.cache import ProjectFacts
from runner.cancel import CancelToken
from runner.db import (
    INSUFFICIENT_PRIVILEGE,
    LOCK_NOT_AVAILABLE,
    QUERY_CANCELED,
    READ_ONLY_TRANSACTION,
    SessionSettings,
    classify_connect_error,
    connect,
    flush_commits,
    make_engine,
    one_line,
    sqlstate_of,
)
from runner.errors import (
    ConfigError,
    DatabaseAhead,
    DatabaseUnavailable,
    DdlBudgetExhausted,
    DdlLockTimeout,
    GraphError,
    LockLost,
    MigrationFailed,
    PermissionDenied,
    RunnerError,
    UsageError,
    WaitTimeout,
)
from runner.fastpath import Handoff
from runner.observers import RunObserver, notify
from runner.report import AppliedRevision, RunReport
from runner.revisions import PendingRevision, RevisionGraph, load_config, set_database_url
from runner.settings import Settings
from runner.urls import DatabaseUrl

log = structlog.get_logger("runner")

DEFAULT_VERSION_TABLE = "alembic_version"


class _StopEnv(Exception):
    """Raised inside configure() to end env.py once the runner has what it needed."""


@dataclass
class VersionTable:
    name: str = DEFAULT_VERSION_TABLE
    schema: str | None = None


@dataclass
class DatabaseState:
    heads: tuple[str, ...]
    version_table: VersionTable


@dataclass
class CheckResult:
    current: tuple[str, ...]
    heads: tuple[str, ...]
    pending: list[PendingRevision]
    unknown: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.unknown

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": list(self.current),
            "head": list(self.heads),
            "up_to_date": self.up_to_date,
            "pending": [vars(p) for p in self.pending],
            "unknown": self.unknown,
        }


class _RunnerEnvironment(EnvironmentContext):
    """An EnvironmentContext whose configure() runs the project's migrations our way."""

    def __init__(
        self,
        cfg: Config,
        graph: RevisionGraph,
        on_configure: Callable[[dict[str, Any]], Any],
        wrap_steps: Callable[[Any], Any] | None,
        on_version_apply: Any = None,
        **kw: Any,
    ) -> None:
        super().__init__(cfg, graph.script, **kw)
        self._on_configure = on_configure
        self._wrap_steps = wrap_steps
        self._on_version_apply = on_version_apply

    # Same keywords as the base class; they pass through **kw untouched.
    def configure(  # type: ignore[override]
        self, connection: Connection | None = None, url: Any = None, **kw: Any
    ) -> None:
        if self.is_offline_mode():
            super().configure(connection=connection, url=url, **kw)
            return
        ours = self._on_configure(kw)
        kw["transaction_per_migration"] = True
        if self._wrap_steps is not None and "fn" in self.context_opts:
            self.context_opts["fn"] = self._wrap_steps(self.context_opts["fn"])
        if self._on_version_apply is not None:
            existing = kw.get("on_version_apply") or ()
            existing = tuple(existing) if isinstance(existing, list | tuple) else (existing,)
            kw["on_version_apply"] = (*existing, self._on_version_apply)
        super().configure(connection=ours, **kw)


# `alembic.context` forwards module-level calls (context.configure, context.config, ...) to the
# active EnvironmentContext, keyed by its exact class; share the base class's registration so
# the subclass is what env.py talks to.
_RunnerEnvironment._setups[_RunnerEnvironment] = (  # noqa: SLF001
    EnvironmentContext._setups[EnvironmentContext]  # noqa: SLF001
)


@contextmanager
def _runner_owns_logging() -> Iterator[None]:
    """env.py from `alembic init` calls fileConfig(alembic.ini), which would replace our JSON
    handlers with plain-text ones; the runner owns logging, so that call is skipped."""
    original = logging.config.fileConfig

    def skipped(*_: Any, **__: Any) -> None:
        log.debug("env_logging_config_skipped")

    logging.config.fileConfig = skipped
    try:
        yield
    finally:
        logging.config.fileConfig = original


class Migrator:
    """One run of one command against one database."""

    def __init__(
        self,
        settings: Settings,
        cancel: CancelToken,
        observers: Sequence[RunObserver],
        report: RunReport,
        handoff: Handoff | None = None,
    ) -> None:
        self.settings = settings
        self.cancel = cancel
        self.observers = observers
        self.report = report
        self.cfg = load_config(settings.config, settings.script_location)
        self.graph = RevisionGraph(self.cfg)
        self._db: DatabaseUrl | None = None
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._lock: locks.MigrationLock | None = None
        self._configured = False
        self._current_step: PendingRevision | None = None
        self._pooler_checked = False
        #: The version table env.py configured, once seen (cached for the fast path).
        self.seen_version_table: VersionTable | None = None
        self._handoff = handoff
        self._wrote = False

    # -- connection and lock -------------------------------------------------------------

    @property
    def db(self) -> DatabaseUrl:
        if self._db is None:
            self._db = self.settings.database()
            set_database_url(self.cfg, self._env_url())
        return self._db

    def _env_url(self) -> str:
        assert self._db is not None
        url = self._db.for_async_env() if self.graph.is_async_env else self._db.url
        return url.render_as_string(hide_password=False)

    def connection(self) -> Connection:
        if self._conn is None:
            session = SessionSettings(
                ddl_lock_timeout_s=self.settings.ddl_lock_timeout,
                statement_timeout_s=self.settings.statement_timeout,
                idle_in_transaction_timeout_s=self.settings.idle_in_transaction_timeout,
                connect_attempt_timeout_s=min(10.0, max(2.0, self.settings.connect_timeout)),
            )
            handoff, self._handoff = self._handoff, None
            creator = (lambda: handoff.connection) if handoff else None
            self._engine = make_engine(self.db, session, self.cancel, creator)
            self._conn = connect(
                self._engine, self.db, session, self.settings.connect_timeout, self.cancel
            )
            # The cookbook env.py pattern: use the connection handed over in attributes.
            self.cfg.attributes["connection"] = self._conn
            if handoff is not None:
                self._lock = locks.PostgresAdvisoryLock(self._conn, handoff.lock_key, held=True)
        return self._conn

    def close(self) -> None:
        """Release the lock and close the connection; never raises (runs in `finally`)."""
        self.cancel.cleanup_started()
        if self._wrote and self._conn is not None and self.db.backend == "postgresql":
            try:
                flush_commits(self._conn)
            except Exception as exc:
                log.warning("commit_flush_failed", reason=one_line(exc))
        if self._lock is not None:
            try:
                self._lock.release()
                log.info("lock_released", key=self._lock.key)
            except Exception as exc:
                # The server drops a session lock with its connection, closed just below.
                log.warning("lock_release_failed", key=self._lock.key, reason=one_line(exc))
            self._lock = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as exc:
                log.debug("connection_close_failed", reason=one_line(exc))
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def project_facts(self) -> ProjectFacts | None:
        """What the fast path may reuse next time: Alembic's heads and env.py's version table."""
        vt = self.seen_version_table
        if vt is None:
            return None
        dirs, recursive = self.graph.project_files()
        files = [str(self.settings.config.absolute())] if self.settings.config.is_file() else []
        return ProjectFacts(list(self.graph.heads), vt.name, vt.schema, dirs, recursive, files)

    def _read_heads(self, version_table: VersionTable) -> tuple[str, ...]:
        conn = self.connection()
        context = MigrationContext.configure(
            connection=conn,
            opts={
                "version_table": version_table.name,
                "version_table_schema": version_table.schema,
            },
        )
        try:
            heads = tuple(context.get_current_heads())
        except BaseException:
            # Re-raise the real error (e.g. connection lost), not a PendingRollbackError
            # from committing on a dead connection.
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        conn.commit()
        return heads

    def _take_lock(
        self, version_table: VersionTable, satisfied: Callable[[], bool] | None = None
    ) -> bool:
        """Take the lock; False when `satisfied()` said, while waiting, that it is not needed."""
        if self._lock is not None:
            return True
        conn = self.connection()
        key = self.settings.lock_key
        if key is None:
            key = locks.derive_key(self.db.database, version_table.schema, version_table.name)
        lock = locks.lock_for(conn, self.db.backend, self.db.database, key)

        def waiting(waited_s: float) -> None:
            log.info("lock_waiting", key=lock.key, reason="held by another runner")
            notify(self.observers, lambda o: o.lock_waiting(lock.key, waited_s))

        waited = locks.acquire(lock, self.settings.lock_timeout, self.cancel, waiting, satisfied)
        if waited is None:
            log.info("lock_not_needed", key=lock.key, reason="another runner reached the target")
            return False
        self._lock = lock
        log.info("lock_acquired", key=lock.key, waited_s=round(waited, 3), backend=self.db.backend)
        return True

    def _refuse_transaction_pooler(self) -> None:
        """A transaction-mode pooler (PgBouncer `pool_mode = transaction`) hands each
        transaction to whichever server connection is free, so a session advisory lock protects
        nothing. Detect it once, on the write path, right after the lock is held: a second
        connection must not land on the locking backend, and the runner's connection must stay
        on it while the second one holds a transaction open."""
        if (
            self._pooler_checked
            or self.db.backend != "postgresql"
            or not isinstance(self._lock, locks.PostgresAdvisoryLock)
        ):
            return
        self._pooler_checked = True
        conn = self.connection()
        locking_pid = locks.backend_pid(conn)
        probe_engine = make_engine(self.db, SessionSettings(0, 0, 0, 5.0), CancelToken())
        try:
            with probe_engine.connect() as probe:
                probe_pid = locks.backend_pid(probe, commit=False)  # stays pinned: in a txn
                runner_pid = locks.backend_pid(conn)
                shared = probe_pid == locking_pid or runner_pid != locking_pid
                if shared and probe_pid == locking_pid:
                    # The lock lives on the backend the probe is on: release it there.
                    self._lock.release_on(probe)
                probe.rollback()
        except DBAPIError as exc:
            log.debug("pooler_probe_failed", reason=one_line(exc))
            return
        finally:
            probe_engine.dispose()
        if shared:
            raise ConfigError(
                f"{self.db.display} is a transaction-mode connection pooler (e.g. PgBouncer "
                "pool_mode=transaction): each transaction may run on another server "
                "connection, so the migration lock cannot be held. Point "
                "MIGRATION_DATABASE_URL at the database directly (or at a session-mode pool)",
                backend_pids=sorted({locking_pid, probe_pid, runner_pid}),
            )

    def _verify_lock(self) -> None:
        if self._lock is not None and not self._lock.is_held():
            raise LockLost(
                f"migration lock {self._lock.key} was lost (backend terminated?); "
                "stopping before the next revision",
                key=self._lock.key,
            )

    # -- running env.py ------------------------------------------------------------------

    def _run_env(
        self,
        on_configure: Callable[[dict[str, Any]], Any],
        fn: Callable[..., Any] | None = None,
        wrap_steps: Callable[[Any], Any] | None = None,
        on_version_apply: Any = None,
        **env_kw: Any,
    ) -> None:
        # Connect (with the bounded retry) before env.py opens a connection of its own, so a
        # database that is not up yet is waited for rather than failing inside env.py.
        self.connection()
        self._configured = False

        def configure_hook(kw: dict[str, Any]) -> Any:
            self._configured = True
            self.seen_version_table = _version_table(kw)
            return on_configure(kw)

        environment = _RunnerEnvironment(
            self.cfg,
            self.graph,
            configure_hook,
            wrap_steps,
            on_version_apply,
            fn=fn or (lambda rev, context: []),
            **env_kw,
        )
        try:
            with _runner_owns_logging(), environment:
                self.graph.script.run_env()
        except _StopEnv:
            return

    def inspect(self) -> DatabaseState:
        """Read the database's heads through env.py's own version-table settings."""
        state: list[DatabaseState] = []

        def on_configure(kw: dict[str, Any]) -> Any:
            vt = _version_table(kw)
            state.append(DatabaseState(self._read_heads(vt), vt))
            raise _StopEnv

        self._guarded(lambda: self._run_env(on_configure))
        if not state:
            raise ConfigError(
                f"{self.graph.env_py} finished without calling context.configure() in online mode"
            )
        return state[0]

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except (RunnerError, _StopEnv):
            raise
        except DBAPIError as exc:
            raise self._database_error(exc) from None
        except CommandError as exc:
            raise GraphError(str(exc).splitlines()[0]) from None
        except Exception as exc:
            if self.cancel.cancelled:
                self.cancel.check()
            step = self._current_step
            reason = _first_line(exc)
            if step is not None:
                raise MigrationFailed(
                    f"revision {step.revision} ({step.message}) failed: {reason}",
                    revision=step.revision,
                    error=type(exc).__name__,
                ) from None
            if not self._configured:
                raise ConfigError(
                    f"{self.graph.env_py} failed: {reason}", error=type(exc).__name__
                ) from None
            raise MigrationFailed(f"migration failed: {reason}", error=type(exc).__name__) from None

    def _database_error(self, exc: DBAPIError) -> RunnerError:
        state = sqlstate_of(exc)
        reason = one_line(exc)
        step = self._current_step
        where = f"revision {step.revision}: " if step else ""
        fields: dict[str, Any] = {"sqlstate": state}
        if step:
            fields["revision"] = step.revision
        if state == QUERY_CANCELED and self.cancel.cancelled:
            self.cancel.check()
        # A psycopg error with no SQLSTATE is a connection-level failure (refused, reset...);
        # SQLite reports SQL errors ("table exists") as OperationalError without one.
        if (
            exc.connection_invalidated
            or (state or "").startswith(("08", "57P"))
            or (
                state is None
                and isinstance(exc, OperationalError)
                and self.db.backend == "postgresql"
            )
        ):
            return DatabaseUnavailable(
                f"{where}connection to the database lost: {reason}", **fields
            )
        if state == LOCK_NOT_AVAILABLE:
            return DdlLockTimeout(f"{where}{reason}", **fields)
        if state == READ_ONLY_TRANSACTION:
            return ConfigError(
                f"{where}the database is read-only ({reason}); point "
                "MIGRATION_DATABASE_URL at the primary",
                **fields,
            )
        if state == INSUFFICIENT_PRIVILEGE:
            return PermissionDenied(f"{where}{reason}", **fields)
        permanent = classify_connect_error(exc, self.db.display)
        if isinstance(permanent, PermissionDenied):
            return permanent
        if state == QUERY_CANCELED:
            return MigrationFailed(f"{where}statement timeout: {reason}", **fields)
        return MigrationFailed(f"{where}{reason}", **fields)

    # -- commands --------------------------------------------------------------------------

    def check(self, target: str = "head") -> CheckResult:
        target = self.graph.resolve_target(target)
        state = self.inspect()
        unknown = self.graph.unknown(state.heads)
        pending = [] if unknown else self.graph.pending(target, state.heads)
        return CheckResult(state.heads, self.graph.heads, pending, unknown)

    def wait(self, target: str = "head") -> CheckResult:
        """Block until the database is at `target`, bounded by MIGRATION_WAIT_TIMEOUT."""
        started = time.monotonic()
        result = self.check(target)
        version_table = VersionTable()
        if not result.up_to_date:
            version_table = self.inspect().version_table
            log.info(
                "wait_started",
                current=list(result.current),
                head=list(result.heads),
                timeout_s=self.settings.wait_timeout,
            )
        while not result.up_to_date:
            waited = time.monotonic() - started
            if result.unknown:
                break  # a newer deploy already migrated past this code; nothing to wait for
            if waited >= self.settings.wait_timeout:
                raise WaitTimeout(
                    f"database not at head after {waited:.1f}s "
                    f"(at {','.join(result.current) or 'base'}, "
                    f"{len(result.pending)} pending)",
                    waited_s=round(waited, 3),
                )
            self.cancel.sleep(min(1.0, self.settings.wait_timeout - waited))
            try:
                heads = self._read_heads(version_table)
            except DBAPIError as exc:
                raise self._database_error(exc) from None
            unknown = self.graph.unknown(heads)
            pending = [] if unknown else self.graph.pending(target, heads)
            result = CheckResult(heads, self.graph.heads, pending, unknown)
        return result

    def upgrade(self, target: str = "head") -> None:
        target = self.graph.resolve_target(target)
        self._migrate(
            target,
            plan=lambda heads: self.graph.pending(target, heads),
            fn=lambda rev, context: self.graph.script._upgrade_revs(target, rev),  # noqa: SLF001
            destination_rev=target,
        )

    def downgrade(self, target: str) -> None:
        self.graph.resolve_target(target)
        script = self.graph.script

        def plan(heads: tuple[str, ...]) -> list[PendingRevision]:
            steps = script._downgrade_revs(target, cast(Any, heads))  # noqa: SLF001
            return [PendingRevision.of(s.revision) for s in steps]

        self._migrate(
            target,
            plan=plan,
            fn=lambda rev, context: script._downgrade_revs(target, rev),  # noqa: SLF001
            destination_rev=target,
            check_ahead=False,
        )

    def stamp(self, target: str) -> None:
        self.graph.resolve_target(target)
        script = self.graph.script
        self._migrate(
            target,
            plan=lambda heads: [PendingRevision(target, None, "stamp")],
            fn=lambda rev, context: script._stamp_revs(target, rev),  # noqa: SLF001
            destination_rev=target,
            check_ahead=False,
            report_steps=False,
        )

    def _migrate(
        self,
        target: str,
        plan: Callable[[tuple[str, ...]], list[PendingRevision]],
        fn: Callable[..., Any],
        destination_rev: str,
        check_ahead: bool = True,
        report_steps: bool = True,
    ) -> None:
        budget_left = self.settings.ddl_retry_budget
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                self._migrate_once(plan, fn, destination_rev, check_ahead, report_steps)
                return
            except DdlLockTimeout as exc:
                self.cancel.check()
                budget_left -= time.monotonic() - started
                pause = min(2.0 ** min(attempt, 5) * 0.25, 5.0) * (0.5 + random.random())  # noqa: S311
                revision = exc.fields.get("revision")
                if budget_left - pause <= 0:
                    raise DdlBudgetExhausted(
                        f"revision {revision}: could not take a table lock within "
                        f"{self.settings.ddl_lock_timeout:g}s, retried for "
                        f"{self.settings.ddl_retry_budget:g}s; a long transaction holds it",
                        revision=revision,
                        sqlstate=LOCK_NOT_AVAILABLE,
                        attempts=attempt,
                    ) from None
                log.warning(
                    "ddl_lock_timeout",
                    revision=revision,
                    attempt=attempt,
                    retry_in_s=round(pause, 3),
                    budget_left_s=round(budget_left, 3),
                    sqlstate=LOCK_NOT_AVAILABLE,
                )
                self._current_step = None
                self.cancel.sleep(pause)
                budget_left -= pause
            except RunnerError:
                self._report_invalid_indexes()
                raise

    def _report_invalid_indexes(self) -> None:
        """After a failed run on PostgreSQL, name every INVALID index (what a failed or
        interrupted CREATE INDEX CONCURRENTLY leaves behind): it is not rolled back, and the
        rerun fails on it ("already exists") until it is dropped. Best effort, never raises."""
        conn = self._conn
        if conn is None or self.db.backend != "postgresql" or conn.invalidated:
            return
        try:
            conn.rollback()
            rows = conn.exec_driver_sql(
                "SELECT n.nspname, c.relname, t.relname FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_class t ON t.oid = i.indrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE NOT i.indisvalid ORDER BY 1, 2"
            ).all()
            conn.commit()
        except Exception as exc:
            log.debug("invalid_index_check_failed", reason=one_line(exc))
            return
        for schema, index, table in rows:
            log.warning(
                "invalid_index_found",
                index=index,
                schema=schema,
                table=table,
                action=f'DROP INDEX CONCURRENTLY "{schema}"."{index}"; fix the cause, then rerun',
            )

    def _migrate_once(
        self,
        plan: Callable[[tuple[str, ...]], list[PendingRevision]],
        fn: Callable[..., Any],
        destination_rev: str,
        check_ahead: bool,
        report_steps: bool,
    ) -> None:
        report = self.report

        def on_configure(kw: dict[str, Any]) -> Connection:
            vt = _version_table(kw)
            heads = self._read_heads(vt)
            if report.from_revision is None:
                report.from_revision = ",".join(heads) or None
            if check_ahead and self._database_ahead(heads):
                raise _StopEnv
            if self._lock is None:
                if not plan(heads):
                    report.to_revision = report.from_revision
                    report.outcome = "up_to_date"
                    raise _StopEnv
                if not self._take_lock(vt, satisfied=lambda: not plan(self._read_heads(vt))):
                    report.outcome = "up_to_date"
                    report.to_revision = ",".join(self._read_heads(vt)) or None
                    raise _StopEnv
                heads = self._read_heads(vt)  # another runner may have finished meanwhile
                if check_ahead and self._database_ahead(heads):
                    raise _StopEnv
            todo = plan(heads)
            if not todo:
                report.outcome = "up_to_date"
                raise _StopEnv
            self._refuse_transaction_pooler()
            log.info(
                "migration_started",
                current=list(heads),
                target=destination_rev,
                pending=len(todo),
                revisions=[p.revision for p in todo],
            )
            return self.connection()

        def wrap_steps(original: Callable[..., Any]) -> Callable[..., Any]:
            def steps(heads: Any, context: Any) -> Iterator[Any]:
                running: tuple[PendingRevision, float] | None = None
                for step in original(heads, context):
                    if running is not None:
                        self._committed(*running, report_steps)
                    self.cancel.check()
                    self._verify_lock()
                    info = (
                        PendingRevision.of(step.revision)
                        if hasattr(step, "revision")
                        else PendingRevision(str(step), None, "")
                    )
                    self._current_step = info
                    running = (info, time.monotonic())
                    yield step
                if running is not None:
                    self._committed(*running, report_steps)

            return steps

        self._guarded(
            lambda: self._run_env(
                on_configure, fn=fn, wrap_steps=wrap_steps, destination_rev=destination_rev
            )
        )
        vt = self.seen_version_table
        if self._lock is not None and self._conn is not None and vt is not None:
            try:
                heads = self._read_heads(vt)
            except DBAPIError as exc:
                # Every revision committed, then the connection went: report it as lost
                # (exit 69, retry), so a rerun confirms the state instead of a guess here.
                raise self._database_error(exc) from None
            report.to_revision = ",".join(heads) or None

    def _committed(self, info: PendingRevision, started: float, report_steps: bool) -> None:
        # Called once the step's transaction has committed (Alembic commits before asking for
        # the next step), so "applied" is never claimed for work that was rolled back.
        self._current_step = None
        self._wrote = True
        applied = AppliedRevision(
            info.revision,
            info.down_revision,
            info.message,
            int((time.monotonic() - started) * 1000),
        )
        if report_steps:
            self.report.applied.append(applied)
            log.info(
                "revision_applied",
                revision=applied.revision,
                down_revision=applied.down_revision,
                message=applied.message,
                duration_ms=applied.duration_ms,
            )
            notify(self.observers, lambda o: o.revision_applied(applied))

    def _database_ahead(self, heads: tuple[str, ...]) -> bool:
        unknown = self.graph.unknown(heads)
        if not unknown:
            return False
        if self.settings.on_db_ahead == "fail":
            raise DatabaseAhead(unknown)
        log.warning(
            "database_ahead",
            db_revisions=unknown,
            head=list(self.graph.heads),
            reason="the database is at a revision this code does not know; "
            "nothing applied (MIGRATION_ON_DB_AHEAD=fail makes this exit 65)",
        )
        self.report.outcome = "database_ahead"
        self.report.to_revision = ",".join(heads)
        return True

    def plan_sql(self, target: str, out: TextIO) -> None:
        """Print the SQL `upgrade` would run from the database's current revision."""
        target = self.graph.resolve_target(target)
        state = self.inspect()
        if self.graph.unknown(state.heads):
            raise DatabaseAhead(self.graph.unknown(state.heads))
        if not self.graph.pending(target, state.heads):
            out.write("-- database is at head; nothing to apply\n")
            return
        if len(state.heads) > 1:
            raise UsageError("plan --sql needs a database with at most one head")
        self.cfg.output_buffer = out
        starting = state.heads[0] if state.heads else None

        def offline(kw: dict[str, Any]) -> Any:
            raise AssertionError("offline mode never calls the online hook")

        self._guarded(
            lambda: self._run_env(
                offline,
                fn=lambda rev, context: self.graph.script._upgrade_revs(target, rev),  # noqa: SLF001
                as_sql=True,
                starting_rev=starting,
                destination_rev=target,
            )
        )


def _version_table(kw: dict[str, Any]) -> VersionTable:
    return VersionTable(
        kw.get("version_table") or DEFAULT_VERSION_TABLE, kw.get("version_table_schema")
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
