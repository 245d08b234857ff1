"""Connections: how every connection of a run is opened, tuned, cancelled and understood.

The runner does not open the connections that migrate: env.py does, exactly as under plain
Alembic. This module owns what the runner adds to them:
- `RetryingConnects`: for the length of a run, every connection the process opens (env.py's,
  through whatever engine it builds) retries transient failures for up to the connect timeout,
  and a PostgreSQL connection gets TCP keepalives, a connect timeout per attempt and an
  `application_name`, unless env.py chose its own;
- `apply_session_settings`: the safety settings of a connection env.py handed to `configure()`,
  recorded first so that `restore` puts back what env.py had;
- `cancel_function`: how to interrupt a statement running on such a connection from the signal
  handler's thread;
- `classify`: database errors as the runner's error types.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from runner import redact
from runner.cancel import CancelToken, in_background
from runner.errors import (
    ConfigError,
    DatabaseUnavailable,
    DdlLockTimeout,
    MigrationFailed,
    PermissionDenied,
    RunnerError,
)
from runner.logs import log

APPLICATION_NAME = "migration-runner"

# SQLSTATE classes and codes the runner treats specially (PostgreSQL; MySQL errors are mapped
# onto the same names by `sqlstate_of`).
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
READ_ONLY_TRANSACTION = "25006"
INSUFFICIENT_PRIVILEGE = "42501"
_AUTH_CODES = {"28P01", "28000"}
_MYSQL_SQLSTATE = {
    1045: "28000",  # access denied for user
    1044: "42501",  # access denied to database
    1142: "42501",  # command denied
    1049: "3D000",  # unknown database
    2003: "08001",  # can't connect
    2005: "08001",  # unknown host
    2006: "08006",  # server has gone away
    2013: "08006",  # lost connection during query
    1205: LOCK_NOT_AVAILABLE,  # lock wait timeout
    3024: QUERY_CANCELED,  # max_execution_time exceeded
    1317: QUERY_CANCELED,  # query execution was interrupted
    1290: READ_ONLY_TRANSACTION,  # --read-only
    1792: READ_ONLY_TRANSACTION,  # read-only transaction
}
#: libpq drivers: they take the same keyword connection parameters.
_LIBPQ_DRIVERS = ("psycopg2", "psycopg")


@dataclass(frozen=True)
class SessionSettings:
    ddl_lock_timeout_s: float
    statement_timeout_s: float
    idle_in_transaction_timeout_s: float


def backend_of(conn: Connection) -> str:
    """`postgresql`, `mysql`, `mariadb` or `sqlite`."""
    dialect = conn.dialect
    if dialect.name == "mysql" and getattr(dialect, "is_mariadb", False):
        return "mariadb"
    return str(dialect.name)


# -- errors ------------------------------------------------------------------------------


def sqlstate_of(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code:
        return str(code)
    args: tuple[Any, ...] = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return _MYSQL_SQLSTATE.get(args[0], f"MY{args[0]}")
    return None


def one_line(exc: BaseException) -> str:
    """The first meaningful line of a database error, without SQL or bind parameters."""
    orig = getattr(exc, "orig", None) or exc
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        return redact.redact(str(primary))
    args: tuple[Any, ...] = getattr(orig, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):  # PyMySQL: (errno, message)
        return redact.redact(str(args[1]).splitlines()[0])
    text_ = str(orig).strip()
    for line in text_.splitlines():
        line = line.strip()
        if line:
            for prefix in ("FATAL:", "ERROR:"):
                if line.startswith(prefix):
                    line = line[len(prefix) :].strip()
            return redact.redact(line)
    return type(orig).__name__


def classify_connect_error(exc: BaseException, target: str) -> RunnerError | None:
    """A permanent error (bad password, missing database) or None when retrying may help."""
    state = sqlstate_of(exc)
    message = one_line(exc)
    lowered = message.lower()
    if (
        state in _AUTH_CODES
        or "password authentication failed" in lowered
        or ("role" in lowered and "does not exist" in lowered)
        or "access denied" in lowered
        or "no password supplied" in lowered
    ):
        return PermissionDenied(f"cannot log in to {target}: {message}", sqlstate=state)
    if (
        state == "3D000"
        or ("database" in lowered and "does not exist" in lowered)
        or ("unknown database" in lowered)
    ):
        return ConfigError(f"database not found at {target}: {message}", sqlstate=state)
    if "ssl" in lowered and ("not support" in lowered or "required" in lowered):
        return ConfigError(f"TLS mismatch with {target}: {message}", sqlstate=state)
    if "invalid" in lowered and (
        "sslmode" in lowered
        or "connection option" in lowered
        or "uri" in lowered
        or "port" in lowered
    ):
        return ConfigError(f"invalid connection parameters for {target}: {message}")
    return None


def _is_connection_failure(exc: DBAPIError, state: str | None, backend: str) -> bool:
    # A psycopg error with no SQLSTATE is a connection-level failure (refused, reset...);
    # SQLite reports SQL errors ("table exists") as OperationalError without one.
    return bool(
        exc.connection_invalidated
        or (state or "").startswith(("08", "57P"))
        or (state is None and isinstance(exc, OperationalError) and backend == "postgresql")
    )


def classify(exc: DBAPIError, backend: str, where: str = "", **fields: Any) -> RunnerError:
    """A database error raised while migrating, as the runner's error (and exit code).
    `where` prefixes the reason ("revision abc: "); `fields` go into the log line."""
    state = sqlstate_of(exc)
    reason = one_line(exc)
    fields = {"sqlstate": state, **fields}
    if _is_connection_failure(exc, state, backend):
        return DatabaseUnavailable(f"{where}connection to the database lost: {reason}", **fields)
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
    permanent = classify_connect_error(exc, "the database")
    if isinstance(permanent, PermissionDenied):
        return permanent
    if state == QUERY_CANCELED:
        return MigrationFailed(f"{where}statement timeout: {reason}", **fields)
    return MigrationFailed(f"{where}{reason}", **fields)


# -- opening connections -----------------------------------------------------------------


@dataclass
class ConnectFailure:
    """The last connection that could not be opened within the connect timeout."""

    error: BaseException
    display: str
    attempts: int
    waited_s: float


@dataclass
class RetryingConnects:
    """While active, every connection the process opens retries transient failures for up to
    `timeout_s` (bounded, jittered backoff), whichever engine opens it: env.py's engines are
    built by the project, so the retry hooks into SQLAlchemy itself (`do_connect`), not into
    an engine of the runner's. The error that ends the retry is env.py's to see, unchanged."""

    timeout_s: float
    cancel: CancelToken
    last_failure: ConnectFailure | None = None
    _active: bool = field(default=False, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __enter__(self) -> RetryingConnects:
        event.listen(Engine, "do_connect", self._connect)
        self._active = True
        self._thread = threading.current_thread()
        return self

    def __exit__(self, *_: Any) -> None:
        if self._active:
            event.remove(Engine, "do_connect", self._connect)
            self._active = False

    def _connect(
        self, dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> Any:
        if dialect.name == "sqlite" or threading.current_thread() is not self._thread:
            # A file: nothing to wait for. Another thread: a cancel request, which must not
            # wait (nor stop because the run is being cancelled).
            return None
        if dialect.driver in _LIBPQ_DRIVERS:
            _libpq_defaults(cparams, self.timeout_s)
        display = _display(cparams)
        started = time.monotonic()
        attempt = 0
        delay = 0.25
        while True:
            self.cancel.check()
            attempt += 1
            try:
                conn = dialect.connect(*cargs, **cparams)
            except Exception as exc:
                waited = time.monotonic() - started
                permanent = classify_connect_error(exc, display)
                left = self.timeout_s - waited
                if permanent is not None or left <= 0:
                    self.last_failure = ConnectFailure(exc, display, attempt, round(waited, 3))
                    raise
                if attempt == 1:
                    log.info("database_waiting", target=display, reason=one_line(exc))
                # The last attempt comes at the timeout, not a backoff step before it: a
                # database that needs all of MIGRATION_CONNECT_TIMEOUT gets all of it.
                pause = delay * (0.5 + random.random())  # noqa: S311 - jitter
                self.cancel.sleep(min(pause, left))
                delay = min(delay * 2, 2.0)
                continue
            if attempt > 1:
                log.info(
                    "database_ready",
                    target=display,
                    attempts=attempt,
                    waited_s=round(time.monotonic() - started, 3),
                )
            return conn

    def explain(self, exc: BaseException) -> RunnerError | None:
        """The runner's error for `exc` when it is the one that ended a connect retry."""
        failure = self.last_failure
        orig = getattr(exc, "orig", exc)
        if failure is None or orig is not failure.error:
            return None
        permanent = classify_connect_error(orig, failure.display)
        if permanent is not None:
            return permanent
        return DatabaseUnavailable(
            f"database at {failure.display} not reachable within {self.timeout_s:g}s: "
            f"{one_line(orig)}",
            attempts=failure.attempts,
            waited_s=failure.waited_s,
        )


def _libpq_defaults(cparams: dict[str, Any], timeout_s: float) -> None:
    # Notice a dead peer (blackholed network, crashed host) within ~30 s, not hours; give each
    # attempt its own bound; name the session so an operator can find it in pg_stat_activity.
    cparams.setdefault("application_name", APPLICATION_NAME)
    cparams.setdefault("connect_timeout", max(2, min(10, int(timeout_s) or 2)))
    cparams.setdefault("keepalives", 1)
    cparams.setdefault("keepalives_idle", 10)
    cparams.setdefault("keepalives_interval", 5)
    cparams.setdefault("keepalives_count", 3)


def _display(cparams: dict[str, Any]) -> str:
    host = cparams.get("host") or cparams.get("unix_socket") or "localhost"
    port = f":{cparams['port']}" if cparams.get("port") else ""
    database = cparams.get("dbname") or cparams.get("database") or cparams.get("db") or ""
    return f"{host}{port}/{database}"


def runner_engine(url: URL) -> Engine:
    """An engine for the runner's own short statements (a cancel request, a pooler probe): no
    pool, so closing really closes; bind parameters never reach a log line."""
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": 3, "application_name": f"{APPLICATION_NAME}-aux"}
    elif url.get_backend_name() in ("mysql", "mariadb"):
        connect_args = {"connect_timeout": 3}
    return create_engine(url, poolclass=NullPool, hide_parameters=True, connect_args=connect_args)


def sync_url(conn: Connection) -> URL:
    """The URL of `conn`'s engine with a synchronous driver, for a second connection to the
    same server from another thread (an async env.py's engine cannot be used from there)."""
    url = conn.engine.url
    backend = url.get_backend_name()
    driver = {"postgresql": "psycopg2", "mysql": "pymysql", "mariadb": "pymysql"}.get(backend)
    if driver is None or not conn.dialect.is_async:
        return url
    return url.set(drivername=f"{backend}+{driver}")


# -- the safety settings of an adopted connection ----------------------------------------


def _execute(conn: Connection, sql: str, commit: bool) -> Any:
    result = conn.exec_driver_sql(sql)
    value = result.first() if result.returns_rows else None
    if commit:
        conn.commit()
    return value


@dataclass(frozen=True)
class SessionFacts:
    """Who a connection is on its server: for the lock key, the cancel channel, messages."""

    server_id: int | None
    database: str
    #: The schema an unqualified version table lands in (PostgreSQL's `current_schema()`).
    default_schema: str


def session_facts(conn: Connection, backend: str, commit: bool) -> SessionFacts:
    if backend == "postgresql":
        row = _execute(
            conn,
            "SELECT pg_backend_pid(), current_database(), coalesce(current_schema(), '')",
            commit,
        )
        return SessionFacts(int(row[0]), str(row[1]), str(row[2]))
    if backend in ("mysql", "mariadb"):
        row = _execute(conn, "SELECT CONNECTION_ID(), coalesce(DATABASE(), '')", commit)
        return SessionFacts(int(row[0]), str(row[1]), "")
    database = conn.engine.url.database or ""
    return SessionFacts(None, os.path.abspath(database) if database else "", "")


def apply_session_settings(
    conn: Connection, backend: str, session: SessionSettings, commit: bool
) -> Callable[[], None]:
    """Set the runner's safety settings on `conn` and return what puts env.py's back.
    `commit`: False when env.py keeps the connection in a transaction of its own (the SETs
    then belong to that transaction; the runner never commits env.py's work)."""
    if backend == "postgresql":
        return _postgres_settings(conn, session, commit)
    if backend in ("mysql", "mariadb"):
        return _mysql_settings(conn, backend, session, commit)
    return lambda: None


def _postgres_settings(
    conn: Connection, session: SessionSettings, commit: bool
) -> Callable[[], None]:
    wanted: dict[str, str] = {
        # DDL never queues behind a long transaction for longer than this.
        "lock_timeout": f"{int(session.ddl_lock_timeout_s * 1000)}",
        # Each revision commits on its own; waiting for a WAL flush at each of them would cost
        # one fsync per revision. The run flushes once before it reports success
        # (`flush_commits`), so what `run_finished` reports as applied is durable.
        "synchronous_commit": "off",
        # Server side of the keepalives: a partitioned runner's session (and its advisory
        # lock) is dropped in about 25 s instead of the kernel's two hours.
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
    }
    if session.statement_timeout_s:
        wanted["statement_timeout"] = f"{int(session.statement_timeout_s * 1000)}"
    if session.idle_in_transaction_timeout_s:
        wanted["idle_in_transaction_session_timeout"] = (
            f"{int(session.idle_in_transaction_timeout_s * 1000)}"
        )
    if (conn.dialect.server_version_info or (0,)) >= (14,):
        # Lets the server notice a vanished client (SIGKILL, cut network) mid-statement and
        # release the advisory lock, instead of running on until the statement ends.
        wanted["client_connection_check_interval"] = "2000"
    names = {f"n{i}": name for i, name in enumerate(wanted)}
    olds = ", ".join(f"current_setting(:{key})" for key in names)
    row = conn.execute(text(f"SELECT {olds}"), names).first()
    before = dict(zip(wanted, (str(v) for v in row or ()), strict=True))
    _set_configs(conn, wanted, commit)

    def restore() -> None:
        _set_configs(conn, before, commit)

    return restore


def _set_configs(conn: Connection, values: dict[str, str], commit: bool) -> None:
    """Set session parameters in one statement: `set_config()` rather than `SET a; SET b`,
    because a driver that prepares its statements (asyncpg, under an env.py's async engine)
    refuses several commands in one."""
    params: dict[str, str] = {}
    for i, (name, value) in enumerate(values.items()):
        params[f"n{i}"], params[f"v{i}"] = name, value
    calls = ", ".join(f"set_config(:n{i}, :v{i}, false)" for i in range(len(values)))
    conn.execute(text(f"SELECT {calls}"), params)
    if commit:
        conn.commit()


def _mysql_settings(
    conn: Connection, backend: str, session: SessionSettings, commit: bool
) -> Callable[[], None]:
    wanted = {"lock_wait_timeout": str(max(1, int(session.ddl_lock_timeout_s)))}
    if session.statement_timeout_s:
        if backend == "mariadb":
            wanted["max_statement_time"] = f"{session.statement_timeout_s:g}"
        else:
            wanted["max_execution_time"] = str(int(session.statement_timeout_s * 1000))
    names = list(wanted)
    row = conn.exec_driver_sql("SELECT " + ", ".join(f"@@SESSION.{n}" for n in names)).first()
    before = dict(zip(names, row or (), strict=False))
    _execute(conn, "SET " + ", ".join(f"SESSION {n} = {v}" for n, v in wanted.items()), commit)

    def restore() -> None:
        _execute(conn, "SET " + ", ".join(f"SESSION {n} = {v}" for n, v in before.items()), commit)

    return restore


def swap_application_name(conn: Connection, name: str) -> str:
    """Set the session's application_name (PostgreSQL) and return the one it had. For a
    connection the runner holds outside any transaction of env.py's: committed at once."""
    before = str(conn.execute(text("SELECT current_setting('application_name')")).scalar())
    _set_configs(conn, {"application_name": name}, commit=True)
    return before


def flush_commits(conn: Connection) -> None:
    """Make every earlier asynchronous commit durable: committing a transaction that has a
    transaction id with synchronous_commit on waits for the WAL flush up to that point."""
    conn.execute(text("SELECT set_config('synchronous_commit', 'on', false), txid_current()"))
    conn.commit()


# -- cancelling a statement from another thread ------------------------------------------


def cancel_function(conn: Connection, backend: str, server_id: int | None) -> Callable[[], None]:
    """A callable that interrupts the statement running on `conn`, from any thread, and
    returns at once (the request runs in a background thread: see `in_background`).
    `server_id`: the backend PID (PostgreSQL) or connection id (MySQL) of `conn`."""
    if backend == "postgresql" and server_id:
        # Not the driver's own cancel: psycopg2 calls PQcancel while holding the GIL and
        # PQcancel has no timeout, so with a silent network it froze the whole process, signal
        # handler included. `pg_cancel_backend` over a short-lived connection with a connect
        # timeout does the same job and gives up after a few seconds.
        sql = f"SET statement_timeout = 3000; SELECT pg_cancel_backend({int(server_id)})"
        return in_background(_on_new_connection(sync_url(conn), sql))
    if backend in ("mysql", "mariadb") and server_id:
        return in_background(_on_new_connection(sync_url(conn), f"KILL QUERY {int(server_id)}"))
    dbapi_conn: Any = conn.connection.dbapi_connection
    if backend == "sqlite" and hasattr(dbapi_conn, "interrupt"):
        return in_background(dbapi_conn.interrupt)
    return lambda: None


def _on_new_connection(url: URL, sql: str) -> Callable[[], None]:
    def run() -> None:
        engine = runner_engine(url)
        try:
            with engine.connect() as other:
                other.exec_driver_sql(sql)
        finally:
            engine.dispose()

    return run


def quiet(fn: Callable[[], Any], event_name: str) -> None:
    """Run a best-effort step of cleanup: a failure is logged at debug level, never raised."""
    try:
        fn()
    except Exception as exc:
        log.debug(event_name, reason=one_line(exc))
