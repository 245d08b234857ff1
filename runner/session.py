"""One connection env.py handed to `context.configure()`, and what the runner adds to it.

The runner adopts the connection, it never replaces it: everything env.py did to it (search
path, role, connect arguments, isolation level, event listeners) stays. On top, for as long as
the migrations run on it: the safety settings (`lock_timeout`, ...), a cancel channel for the
signal handler, the migration lock (keyed by the connection's own database and the version
table that `configure()` names), and at the end the settings env.py had, put back.

When env.py holds the connection in a transaction of its own when it calls `configure()`
(Alembic's multidb template does), Alembic runs every revision inside that transaction and
env.py commits it; the runner then commits nothing itself and releases the lock only once
env.py is done (`after_env`), so no other runner can start before that commit.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from runner import activity, db
from runner import lock as locks
from runner.cancel import CancelToken
from runner.errors import ConfigError, LockLost
from runner.logs import log

DEFAULT_VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class VersionTable:
    name: str = DEFAULT_VERSION_TABLE
    schema: str | None = None

    @classmethod
    def of(cls, configure_kw: dict[str, Any]) -> VersionTable:
        """The version table as env.py passed it to `configure()`."""
        return cls(
            configure_kw.get("version_table") or DEFAULT_VERSION_TABLE,
            configure_kw.get("version_table_schema"),
        )


class AdoptedConnection:
    """The runner's additions to one of env.py's connections, and their removal."""

    def __init__(
        self,
        conn: Connection,
        version_table: VersionTable,
        session: db.SessionSettings,
        cancel: CancelToken,
    ) -> None:
        self.conn = conn
        self.version_table = version_table
        self.backend = db.backend_of(conn)
        self.cancel = cancel
        #: env.py began a transaction before `configure()`: Alembic runs everything in it.
        self.external = conn.in_transaction()
        owned = not self.external
        self.facts = db.session_facts(conn, self.backend, commit=owned)
        self._restore: Callable[[], None] | None = db.apply_session_settings(
            conn, self.backend, session, commit=owned
        )
        self._dbapi = conn.connection.dbapi_connection
        self._cancel = db.cancel_function(conn, self.backend, self.facts.server_id)
        cancel.on_cancel(self._cancel)
        #: Once cancelled, no further statement of the migration may start on this connection
        #: (a revision busy in Python code reaches its next statement after the signal); the
        #: runner's own clean-up statements still run.
        self._giving_back = False
        event.listen(conn, "before_cursor_execute", self._before_statement)
        #: Who blocked this connection's last slow statement (PostgreSQL): a statement still
        #: waiting at half the lock timeout has its blockers looked up from a second
        #: connection, so that a `lock_timeout` can name them.
        self.blockers: list[activity.SessionInfo] = []
        self._watch: _StatementWatch | None = None
        if self.backend == "postgresql" and self.facts.server_id:
            # Half the lock timeout, so the look comes before the timeout does.
            self._watch = _StatementWatch(self, max(0.2, session.ddl_lock_timeout_s / 2))
        self.lock: locks.MigrationLock | None = None
        self.wrote = False
        #: env.py committed its own transaction after the runner's revisions ran in it.
        self.committed_by_env = False
        if self.external:
            event.listen(conn, "commit", self._env_committed)
            event.listen(conn, "rollback", self._env_rolled_back)

    # -- identity ----------------------------------------------------------------------

    @property
    def schema(self) -> str:
        """The schema the version table lives in (or would be created in)."""
        return self.version_table.schema or self.facts.default_schema

    @property
    def lock_schema(self) -> str | None:
        """The schema in the lock key: the version table's, or the session's default schema
        when that is not `public` (a schema-per-tenant env.py sets search_path), so that two
        tenants of one database never wait for each other while the usual project keeps the
        key of (database, no schema, table)."""
        if self.version_table.schema:
            return self.version_table.schema
        return self.facts.default_schema if self.facts.default_schema != "public" else None

    @property
    def label(self) -> str:
        """How the logs name this target: the database, and the schema when it is not the
        default one (a schema-per-tenant env.py)."""
        if self.backend == "postgresql" and self.schema not in ("", "public"):
            return f"{self.facts.database}/{self.schema}"
        if self.backend == "sqlite":
            return self.facts.database or "sqlite"
        return self.facts.database

    # -- the lock ----------------------------------------------------------------------

    def take_lock(
        self,
        timeout_s: float,
        key: int | None,
        on_wait: Callable[[str, float], None],
        satisfied: Callable[[], bool],
    ) -> bool:
        """Take the migration lock; False when `satisfied()` said, while waiting, that
        another runner already did the work."""
        if self.lock is not None:
            return True
        if key is None:
            key = locks.derive_key(self.facts.database, self.lock_schema, self.version_table.name)
        lock = locks.lock_for(self.conn, self.backend, self.facts.database, key)
        waited = locks.acquire(
            lock, timeout_s, self.cancel, lambda s: on_wait(lock.key, s), satisfied
        )
        if waited is None:
            log.info(
                "lock_not_needed",
                key=lock.key,
                target=self.label,
                reason="another runner reached the target",
            )
            return False
        self.lock = lock
        log.info(
            "lock_acquired",
            key=lock.key,
            waited_s=round(waited, 3),
            backend=self.backend,
            target=self.label,
        )
        return True

    def lock_holder(self, key: int | None) -> activity.SessionInfo | None:
        """Who holds this target's migration lock, when the server can say."""
        if self.backend == "postgresql":
            return activity.postgres_lock_holder(self.conn, self._key(key))
        if self.backend in ("mysql", "mariadb"):
            name = locks.MySqlNamedLock(self.conn, self._key(key)).key
            return activity.mysql_lock_holder(self.conn, name)
        return None

    def blockers_of(self, holder: activity.SessionInfo) -> list[activity.SessionInfo]:
        """The sessions that the runner `holder` waits for (PostgreSQL): right now, or, while
        it pauses between lock-timeout retries, those that blocked its last try."""
        if self.backend != "postgresql":
            return []
        waiting_for = activity.postgres_blockers(self.conn, holder.pid)
        return waiting_for or activity.postgres_advertised_blockers(self.conn, holder)

    @contextlib.contextmanager
    def retrying_behind(self, blockers: list[activity.SessionInfo]) -> Iterator[None]:
        """For a pause between lock-timeout retries: the session's application_name names the
        sessions that blocked it (see `activity.RETRYING_PREFIX`), then env.py's is put back."""
        name = activity.retrying_name(blockers)
        if self.backend != "postgresql" or self.external or name is None:
            yield
            return
        before: list[str] = []
        db.quiet(
            lambda: before.append(db.swap_application_name(self.conn, name)),
            "application_name_set_failed",
        )
        try:
            yield
        finally:
            if before:
                db.quiet(
                    lambda: db.swap_application_name(self.conn, before[0]),
                    "application_name_restore_failed",
                )

    def lock_is_free(self, key: int | None) -> bool:
        """Whether no runner holds this target's migration lock right now (taken and given
        back at once when free)."""
        if self.lock is not None:
            return False
        probe = locks.lock_for(self.conn, self.backend, self.facts.database, self._key(key))
        if probe.try_acquire():
            probe.release()
            return True
        return False

    def _key(self, key: int | None) -> int:
        if key is not None:
            return key
        return locks.derive_key(self.facts.database, self.lock_schema, self.version_table.name)

    def verify_lock(self) -> None:
        """Before each revision. The lock belongs to a server session, so it is held exactly
        while the connection still sits on the DBAPI connection it was taken on and that one
        is open: checked without a round trip (asking `pg_locks` before each of 100 revisions
        cost more than the revisions' own version updates). A backend terminated under an
        open-looking connection fails the revision's first statement instead: connection
        lost, retryable, the revision rolled back."""
        if self.lock is None:
            return
        same_session = (
            not self.conn.invalidated
            and not self.conn.closed
            and self.conn.connection.dbapi_connection is self._dbapi
            and not _dbapi_closed(self._dbapi)
        )
        if not same_session:
            raise LockLost(
                f"migration lock {self.lock.key} was lost (backend terminated?); "
                "stopping before the next revision",
                key=self.lock.key,
            )

    def refuse_transaction_pooler(self) -> None:
        """A transaction-mode pooler (PgBouncer `pool_mode = transaction`) hands each
        transaction to whichever server connection is free, so a session advisory lock
        protects nothing. Detected once, right after the lock is held: a second connection
        must not land on the locking backend, and this connection must stay on it while the
        second one holds a transaction open."""
        lock = self.lock
        if self.backend != "postgresql" or self.external:
            return
        assert isinstance(lock, locks.PostgresAdvisoryLock)
        locking_pid = locks.backend_pid(self.conn)
        engine = db.runner_engine(db.sync_url(self.conn))
        try:
            with engine.connect() as probe:
                probe_pid = locks.backend_pid(probe, commit=False)  # pinned: in a transaction
                own_pid = locks.backend_pid(self.conn)
                shared = probe_pid == locking_pid or own_pid != locking_pid
                if shared and probe_pid == locking_pid:
                    lock.release_on(probe)  # the lock lives where the probe landed
                probe.rollback()
        except DBAPIError as exc:
            log.debug("pooler_probe_failed", reason=db.one_line(exc))
            return
        finally:
            engine.dispose()
        if shared:
            raise ConfigError(
                f"{self.label} is reached through a transaction-mode connection pooler (e.g. "
                "PgBouncer pool_mode=transaction): each transaction may run on another server "
                "connection, so the migration lock cannot be held. Point "
                "MIGRATION_DATABASE_URL at the database directly (or at a session-mode pool)",
                backend_pids=sorted({locking_pid, probe_pid, own_pid}),
            )

    # -- after a failure ---------------------------------------------------------------

    def report_invalid_indexes(self) -> None:
        """After a failed run on PostgreSQL, name every INVALID index (what a failed or
        interrupted CREATE INDEX CONCURRENTLY leaves behind): it is not rolled back, and the
        rerun fails on it ("already exists") until it is dropped. Best effort, never raises."""
        self.stop_migrating()
        conn = self.conn
        if self.backend != "postgresql" or self.external or conn.closed or conn.invalidated:
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
            log.debug("invalid_index_check_failed", reason=db.one_line(exc))
            return
        for schema, index, table in rows:
            log.warning(
                "invalid_index_found",
                index=index,
                schema=schema,
                table=table,
                action=f'DROP INDEX CONCURRENTLY "{schema}"."{index}"; fix the cause; if the '
                "run marked the database dirty, `migration-runner stamp` it; then rerun",
            )

    # -- giving the connection back ----------------------------------------------------

    def finish(self, succeeded: bool) -> None:
        """After the migrations on a connection env.py does not keep in a transaction: make
        the commits durable, put env.py's settings back, release the lock. Raises only when
        the durability of reported work cannot be confirmed (the connection was lost)."""
        if self.external:
            return
        self.stop_migrating()
        try:
            usable = not (self.conn.closed or self.conn.invalidated)
            if usable and self.conn.in_transaction():
                self.conn.rollback()  # a failed revision's transaction, already dead
            if succeeded and self.wrote and self.backend == "postgresql":
                db.flush_commits(self.conn)
        finally:
            self._give_back()

    def after_env(self) -> None:
        """Once env.py is done (it committed or rolled back its own transaction, and has
        usually closed the connection): release what is still held. Never raises."""
        self.stop_migrating()
        with contextlib.suppress(Exception):
            event.remove(self.conn, "before_cursor_execute", self._before_statement)
        if self.external:
            with contextlib.suppress(Exception):
                event.remove(self.conn, "commit", self._env_committed)
                event.remove(self.conn, "rollback", self._env_rolled_back)
        self._give_back()

    def _give_back(self) -> None:
        conn = self.conn
        open_ = not (conn.closed or conn.invalidated)
        restore, self._restore = self._restore, None
        if restore is not None and open_ and not conn.in_transaction():
            db.quiet(restore, "session_settings_restore_failed")
        lock, self.lock = self.lock, None
        if lock is None:
            return
        try:
            if open_:
                lock.release()
            elif not _dbapi_closed(self._dbapi):
                lock.release_raw(self._dbapi)
            log.info("lock_released", key=lock.key, target=self.label)
        except Exception as exc:
            # The server drops a session lock with its connection.
            log.warning("lock_release_failed", key=lock.key, reason=db.one_line(exc))

    def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def stop_migrating(self) -> None:
        """From here on only the runner's own clean-up runs on this connection (history,
        INVALID index report, settings, unlock): let it through a cancelled run."""
        self._giving_back = True
        self.cancel.off_cancel(self._cancel)
        self._stop_watching()

    def _before_statement(self, _conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if not self._giving_back:
            self.cancel.check()
        if log.is_debug():
            # The statement, never its parameters; whatever env.py's logging configuration
            # did to SQLAlchemy's own echo (Alembic's templates call fileConfig()).
            log.debug("sql", target=self.label, statement=statement.strip())

    def _env_committed(self, _: Connection) -> None:
        self.committed_by_env = True

    def _env_rolled_back(self, _: Connection) -> None:
        self.committed_by_env = False


class _StatementWatch:
    """Looks, from a second connection, at who blocks a statement of this connection that is
    still running at `after_s` (a daemon thread per connection, idle between statements)."""

    def __init__(self, adopted: AdoptedConnection, after_s: float) -> None:
        self._adopted = adopted
        self._after_s = after_s
        self._pid = int(adopted.facts.server_id or 0)
        self._url = db.sync_url(adopted.conn)
        self._started: float | None = None
        self._looked = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        event.listen(adopted.conn, "before_cursor_execute", self._statement_started)
        event.listen(adopted.conn, "after_cursor_execute", self._statement_done)

    def _statement_started(self, *_: Any) -> None:
        self._started, self._looked = time.monotonic(), False
        self._adopted.blockers = []
        if self._thread is None and not self._stopped.is_set():
            self._thread = threading.Thread(target=self._run, name="statement-watch", daemon=True)
            self._thread.start()

    def _statement_done(self, *_: Any) -> None:
        self._started = None

    def _run(self) -> None:
        while not self._stopped.wait(0.1):
            started = self._started
            if started is None or self._looked or time.monotonic() - started < self._after_s:
                continue
            self._looked = True
            try:
                engine = db.runner_engine(self._url)
                try:
                    with engine.connect() as other:
                        self._adopted.blockers = activity.postgres_blockers(other, self._pid)
                finally:
                    engine.dispose()
            except Exception as exc:  # best effort: the event just names no blocker
                log.debug("blocker_lookup_failed", reason=db.one_line(exc))

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(Exception):
            event.remove(self._adopted.conn, "before_cursor_execute", self._statement_started)
            event.remove(self._adopted.conn, "after_cursor_execute", self._statement_done)


def _dbapi_closed(dbapi_connection: Any) -> bool:
    closed = getattr(dbapi_connection, "closed", None)
    if closed is None:
        return not getattr(dbapi_connection, "open", True)  # PyMySQL
    return bool(closed)
