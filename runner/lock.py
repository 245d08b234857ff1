"""The migration lock: only one runner migrates a database at a time.

Contract every backend keeps (and `tests/test_lock.py` checks for each):
- `try_acquire()` never blocks and never leaves a transaction open: a waiter that sat inside
  a transaction would deadlock with `CREATE INDEX CONCURRENTLY` running in the holder.
- `is_held()` tells whether this process still holds the lock (a terminated backend loses it).
- `release()` is idempotent and safe to call from `finally`.
The timeout and the polling are enforced here, in `acquire`, not by the backends.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from runner.cancel import CancelToken
from runner.errors import ConfigError, LockTimeout

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


class MigrationLock(Protocol):
    key: str

    def try_acquire(self) -> bool: ...

    def is_held(self) -> bool: ...

    def release(self) -> None: ...

    def release_raw(self, dbapi_connection: Any) -> None:
        """Release through the DBAPI connection itself, after env.py closed the SQLAlchemy
        connection that held the lock: a pooled connection keeps its session, and with it
        a session-level lock, until the pool closes it."""


def _short_statement(conn: Connection, sql: str, params: Mapping[str, object]) -> object:
    """One statement in its own transaction, committed at once: a poll never leaves the
    session idle in a transaction. On failure, roll back and re-raise the original error: a
    commit in `finally` would replace "connection lost" with SQLAlchemy's PendingRollbackError.
    When env.py holds the connection in a transaction of its own, the statement runs inside
    it and nothing is committed or rolled back: that transaction is env.py's to end."""
    from sqlalchemy import text

    owned = not conn.in_transaction()
    try:
        value = conn.execute(text(sql), params).scalar()
    except BaseException:
        if owned:
            with contextlib.suppress(Exception):
                conn.rollback()
        raise
    if owned:
        conn.commit()
    return value


def _raw_statement(dbapi_connection: Any, sql: str) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        cursor.fetchall()
    finally:
        cursor.close()
    dbapi_connection.rollback()  # end the transaction the driver may have begun


def derive_key(database: str, schema: str | None, table: str) -> int:
    """A deterministic signed 64-bit key for (database, version schema, version table)."""
    material = "\x00".join((database, schema or "", table)).encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big", signed=True)


class PostgresAdvisoryLock:
    """A session-level advisory lock on the connection that runs the migrations."""

    def __init__(self, conn: Connection, key: int) -> None:
        self.conn = conn
        self.key_int = key
        self.key = str(key)
        self._held = False

    def _scalar(self, sql: str, **params: int) -> object:
        return _short_statement(self.conn, sql, params)

    def try_acquire(self) -> bool:
        self._held = bool(self._scalar("SELECT pg_try_advisory_lock(:k)", k=self.key_int))
        return self._held

    def is_held(self) -> bool:
        hi, lo = (self.key_int >> 32) & 0xFFFFFFFF, self.key_int & 0xFFFFFFFF
        return bool(
            self._scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND classid = CAST(:hi AS oid)"
                " AND objid = CAST(:lo AS oid) AND objsubid = 1)",
                hi=hi,
                lo=lo,
            )
        )

    def release(self) -> None:
        if self._held:
            self._held = False
            self._scalar("SELECT pg_advisory_unlock(:k)", k=self.key_int)

    def release_on(self, other: Connection) -> None:
        """Release through `other`, a connection found on the locking backend (a pooler
        moved this lock's session there); `release()` then has nothing left to do."""
        from sqlalchemy import text

        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key_int})
        self._held = False

    def release_raw(self, dbapi_connection: Any) -> None:
        if self._held:
            self._held = False
            _raw_statement(dbapi_connection, f"SELECT pg_advisory_unlock({int(self.key_int)})")


def backend_pid(conn: Connection, commit: bool = True) -> int:
    """The server process behind `conn` for its current (or a new) transaction."""
    pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() or 0)
    if commit:
        conn.commit()
    return pid


class MySqlNamedLock:
    """`GET_LOCK` with a zero wait, polled like the PostgreSQL lock."""

    def __init__(self, conn: Connection, key: int) -> None:
        self.conn = conn
        # MySQL lock names are at most 64 characters and global to the server.
        self.key = f"migration-runner:{key & 0xFFFFFFFFFFFFFFFF:016x}"
        self._held = False

    def _scalar(self, sql: str) -> object:
        return _short_statement(self.conn, sql, {"name": self.key})

    def try_acquire(self) -> bool:
        self._held = self._scalar("SELECT GET_LOCK(:name, 0)") == 1
        return self._held

    def is_held(self) -> bool:
        return bool(self._scalar("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()"))

    def release(self) -> None:
        if self._held:
            self._held = False
            self._scalar("SELECT RELEASE_LOCK(:name)")

    def release_raw(self, dbapi_connection: Any) -> None:
        if self._held:
            self._held = False
            # The name is the runner's own hex digest: safe as a literal.
            _raw_statement(dbapi_connection, f"SELECT RELEASE_LOCK('{self.key}')")


class SqliteFileLock:
    """An exclusive `flock` on `<database>.migration-lock` next to the database file."""

    def __init__(self, database_path: str) -> None:
        self.path = Path(f"{database_path}.migration-lock")
        self.key = str(self.path)
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        if self._file is None:
            try:
                self._file = open(self.path, "ab")  # noqa: SIM115 - held until release()
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the SQLite lock file {self.path}: {exc.strerror}"
                ) from None
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def is_held(self) -> bool:
        return self._file is not None and not self._file.closed

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def release_raw(self, dbapi_connection: Any) -> None:
        self.release()  # a file lock: no connection involved


def lock_for(conn: Connection, backend: str, database: str, key: int) -> MigrationLock:
    if backend == "postgresql":
        return PostgresAdvisoryLock(conn, key)
    if backend in ("mysql", "mariadb"):
        return MySqlNamedLock(conn, key)
    if backend == "sqlite":
        return SqliteFileLock(os.path.abspath(database))
    raise ConfigError(f"no migration lock for database backend {backend!r}")


def acquire(
    lock: MigrationLock,
    timeout_s: float,
    cancel: CancelToken,
    on_first_wait: Callable[[float], None] = lambda _: None,
    satisfied: Callable[[], bool] | None = None,
    # A poll is one index lookup on the server: polling often keeps waiters close behind
    # the holder at no real cost.
    poll_s: float = 0.05,
    max_poll_s: float = 0.1,
) -> float | None:
    """Poll `lock` until it is ours; return seconds waited, or raise `LockTimeout`.

    `satisfied` is asked after each failed attempt: when it says the holder already did the
    work (the database reached the target), the waiter returns None without the lock, so ten
    waiters finish together instead of taking the lock one after another."""
    started = time.monotonic()
    interval = poll_s
    first = True
    while True:
        cancel.check()
        if lock.try_acquire():
            return time.monotonic() - started
        waited = time.monotonic() - started
        if first:
            on_first_wait(waited)
            first = False
        if satisfied is not None and satisfied():
            return None
        if waited >= timeout_s:
            raise LockTimeout(lock.key, waited)
        # Jitter spreads the pollers of 20 runners started together.
        pause = interval * (0.5 + random.random())  # noqa: S311 - jitter, not crypto
        cancel.sleep(min(pause, max(0.0, timeout_s - waited)))
        interval = min(interval * 1.5, max_poll_s)
