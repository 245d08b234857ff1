"""The one database connection a run uses: opened with a bounded retry, tuned for safety,
cancellable from the signal handler, and errors classified into the runner's error types.

The engine uses `NullPool`: closing the connection really closes it, so no pooled
connection can keep a session-level advisory lock alive after the run released it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from runner import redact
from runner.cancel import CancelToken, in_background
from runner.errors import (
    ConfigError,
    DatabaseUnavailable,
    PermissionDenied,
    RunnerError,
)
from runner.urls import DatabaseUrl

log = structlog.get_logger("runner")

APPLICATION_NAME = "migration-runner"

# SQLSTATE classes and codes the runner treats specially (PostgreSQL; MySQL errors are mapped
# onto the same names by `sqlstate_of`).
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
READ_ONLY_TRANSACTION = "25006"
INSUFFICIENT_PRIVILEGE = "42501"
_AUTH_CODES = {"28P01", "28000"}
_UNAVAILABLE_PREFIXES = ("08", "57P")  # connection exceptions; admin shutdown/crash/cannot connect
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


@dataclass
class SessionSettings:
    ddl_lock_timeout_s: float
    statement_timeout_s: float
    idle_in_transaction_timeout_s: float
    connect_attempt_timeout_s: float = 10.0


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
            for prefix in ("FATAL:", "ERROR:", "connection to server"):
                if line.startswith(prefix) and prefix != "connection to server":
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


def make_engine(
    db: DatabaseUrl, session: SessionSettings, cancel: CancelToken, creator: Any = None
) -> Engine:
    """`creator`: hand SQLAlchemy an already open DBAPI connection (the fast path's, which
    holds the migration lock) instead of opening a new one."""
    connect_args: dict[str, Any] = {}
    backend = db.backend
    if backend == "postgresql":
        connect_args = {
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(2, int(session.connect_attempt_timeout_s)),
            # Notice a dead peer (blackholed network, crashed host) within ~30 s, not hours.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
    elif backend in ("mysql", "mariadb"):
        connect_args = {
            "connect_timeout": max(2, int(session.connect_attempt_timeout_s)),
            "read_timeout": None,
        }
    extra: dict[str, Any] = {"creator": creator} if creator is not None else {}
    engine = create_engine(
        db.url,
        poolclass=NullPool,
        **extra,
        hide_parameters=True,  # bind parameters never reach a log line or an error message
        connect_args=connect_args,
    )

    @event.listens_for(engine, "before_cursor_execute")
    def _stop_when_cancelled(*_: Any) -> None:
        if not cancel.cleaning_up:
            cancel.check()

    return engine


def _cancel_function(conn: Connection, db: DatabaseUrl) -> Any:
    """A callable that interrupts the statement running on `conn`, from any thread, and
    returns at once."""
    return in_background(_blocking_cancel_function(conn, db))


def _blocking_cancel_function(conn: Connection, db: DatabaseUrl) -> Any:
    dbapi_conn: Any = conn.connection.dbapi_connection
    if db.backend == "postgresql":
        # Not psycopg2's `connection.cancel()`: it calls PQcancel while holding the GIL and
        # PQcancel has no timeout, so with a silent network it froze the whole process, signal
        # handler included. `pg_cancel_backend` over a short-lived connection with a connect
        # timeout does the same job and gives up after a few seconds.
        info = getattr(dbapi_conn, "info", None)
        pid = getattr(info, "backend_pid", None) or dbapi_conn.get_backend_pid()

        def cancel_backend() -> None:
            killer = create_engine(
                db.url,
                poolclass=NullPool,
                connect_args={
                    "connect_timeout": 3,
                    "application_name": f"{APPLICATION_NAME}-cancel",
                },
            )
            try:
                with killer.connect() as other:
                    other.exec_driver_sql("SET statement_timeout = 3000")
                    other.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": int(pid)})
            finally:
                killer.dispose()

        return cancel_backend
    if db.backend == "sqlite" and hasattr(dbapi_conn, "interrupt"):
        return dbapi_conn.interrupt
    if db.backend in ("mysql", "mariadb"):
        thread_id = dbapi_conn.thread_id()

        def kill_query() -> None:
            killer = create_engine(db.url, poolclass=NullPool)
            try:
                with killer.connect() as other:
                    other.exec_driver_sql(f"KILL QUERY {int(thread_id)}")
            finally:
                killer.dispose()

        return kill_query
    return lambda: None


def connect(
    engine: Engine,
    db: DatabaseUrl,
    session: SessionSettings,
    timeout_s: float,
    cancel: CancelToken,
) -> Connection:
    """Open the run's connection, retrying transient failures for up to `timeout_s` seconds."""
    started = time.monotonic()
    attempt = 0
    delay = 0.25
    while True:
        cancel.check()
        attempt += 1
        try:
            conn = engine.connect()
        except DBAPIError as exc:
            permanent = classify_connect_error(exc, db.display)
            if permanent is not None:
                raise permanent from None
            waited = time.monotonic() - started
            if waited + delay > timeout_s:
                raise DatabaseUnavailable(
                    f"database at {db.display} not reachable within {timeout_s:g}s: "
                    f"{one_line(exc)}",
                    attempts=attempt,
                    waited_s=round(waited, 3),
                ) from None
            if attempt == 1:
                log.info("database_waiting", target=db.display, reason=one_line(exc))
            cancel.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 2.0)
            continue
        try:
            _prepare_session(conn, db, session)
        except BaseException:
            conn.close()
            raise
        cancel.on_cancel(_cancel_function(conn, db))
        if attempt > 1:
            log.info(
                "database_ready", attempts=attempt, waited_s=round(time.monotonic() - started, 3)
            )
        return conn


def flush_commits(conn: Connection) -> None:
    """Make every earlier asynchronous commit durable: committing a transaction that has a
    transaction id with synchronous_commit on waits for the WAL flush up to that point."""
    conn.exec_driver_sql("SET synchronous_commit = on")
    conn.exec_driver_sql("SELECT txid_current()")
    conn.commit()


def _prepare_session(conn: Connection, db: DatabaseUrl, session: SessionSettings) -> None:
    """Session limits that keep a migration from freezing the database (PostgreSQL)."""
    if db.backend == "postgresql":
        version = conn.dialect.server_version_info or (0,)
        statements = [
            f"SET lock_timeout = {int(session.ddl_lock_timeout_s * 1000)}",
            f"SET statement_timeout = {int(session.statement_timeout_s * 1000)}",
            "SET idle_in_transaction_session_timeout = "
            f"{int(session.idle_in_transaction_timeout_s * 1000)}",
            # Each revision commits on its own; waiting for a WAL flush at each of them would
            # cost one fsync per revision. The run flushes once before it reports success
            # (`flush_commits`), so what `run_finished` reports as applied is durable.
            "SET synchronous_commit = off",
            # Server side of the keepalives: a partitioned runner's session (and its advisory
            # lock) is dropped in about 25 s instead of the kernel's two hours.
            "SET tcp_keepalives_idle = 10",
            "SET tcp_keepalives_interval = 5",
            "SET tcp_keepalives_count = 3",
        ]
        if version >= (14,):
            # Lets the server notice a vanished client (SIGKILL, cut network) mid-statement
            # and release the advisory lock, instead of running on until the statement ends.
            statements.append("SET client_connection_check_interval = 2000")
        conn.exec_driver_sql("; ".join(statements))
        conn.commit()
    elif db.backend in ("mysql", "mariadb"):
        if session.statement_timeout_s:
            variable = "max_statement_time" if db.backend == "mariadb" else "max_execution_time"
            value = (
                session.statement_timeout_s
                if variable == "max_statement_time"
                else int(session.statement_timeout_s * 1000)
            )
            conn.exec_driver_sql(f"SET SESSION {variable} = {value}")
        lock_wait = max(1, int(session.ddl_lock_timeout_s))
        conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {lock_wait}")
        conn.commit()
