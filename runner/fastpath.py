"""The fast path: what every deploy pays when there is nothing to do, kept cheap.

Before Alembic and SQLAlchemy are imported, with only psycopg2 and the cached answers of a
previous full run (runner/cache.py), it:
- answers "already at head" for `upgrade` and `wait` (exit 0 at once);
- for `upgrade` with work pending, takes the migration lock itself, polling without a
  transaction open, so ten runners started together wait cheaply instead of each loading the
  whole project; a waiter that gets the lock after another runner finished exits 0 at once;
- otherwise hands the locked connection to the full path, which migrates on it.
Any doubt (no cache entry, another database, an error) means "not answered here": the full
path runs and reports exactly as if the fast path did not exist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner import cache
from runner.cancel import CancelToken, in_background
from runner.errors import ExitCode
from runner.lock import acquire, derive_key
from runner.logs import log
from runner.report import RunReport
from runner.settings import Settings

_PG_SCHEMES = {"postgres", "postgresql", "postgres+psycopg2", "postgresql+psycopg2",
               "postgresql+psycopg", "postgresql+asyncpg", "postgresql+psycopg_async"}


@dataclass
class Handoff:
    """A psycopg2 connection that holds the migration lock, for the full path to adopt."""

    connection: Any
    lock_key: int


class _DbapiAdvisoryLock:
    """The PostgreSQL advisory lock over a raw autocommit connection (same key, same lock)."""

    def __init__(self, conn: Any, key: int) -> None:
        self.conn, self.key_int, self.key = conn, key, str(key)

    def _scalar(self, sql: str) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql, (self.key_int,))
            return cur.fetchone()[0]

    def try_acquire(self) -> bool:
        return bool(self._scalar("SELECT pg_try_advisory_lock(%s)"))

    def is_held(self) -> bool:
        return True

    def release(self) -> None:
        self._scalar("SELECT pg_advisory_unlock(%s)")


def _libpq_dsn(raw_url: str) -> str | None:
    scheme, sep, rest = raw_url.strip().partition("://")
    if not sep or scheme not in _PG_SCHEMES:
        return None
    return f"postgresql://{rest}"


def _read_heads(conn: Any, facts: cache.ProjectFacts) -> tuple[str, ...] | None:
    from psycopg2 import errors, sql

    table = sql.Identifier(facts.version_table)
    if facts.version_table_schema:
        table = sql.Identifier(facts.version_table_schema, facts.version_table)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT version_num FROM {}").format(table))
            return tuple(row[0] for row in cur.fetchall())
    except errors.UndefinedTable:
        return ()
    except Exception:
        return None


def attempt(command: str, target: str, settings: Settings, cancel: CancelToken,
            report: RunReport, on_wait: Callable[[], None] = lambda: None,
            ) -> tuple[int | None, Handoff | None]:
    """(exit code, None) when answered here; (None, handoff or None) for the full path."""
    if (not settings.fast_path or settings.cache_dir is None or target != "head"
            or command not in ("upgrade", "wait") or settings.database_url is None):
        return None, None
    facts = cache.lookup(cache.entry_path(settings.cache_dir, settings.config,
                                          settings.script_location,
                                          settings.environment_digest))
    dsn = _libpq_dsn(settings.database_url.get_secret_value())
    if facts is None or dsn is None:
        return None, None
    import psycopg2

    try:
        conn = psycopg2.connect(dsn, connect_timeout=2, application_name="migration-runner",
                                keepalives=1, keepalives_idle=10, keepalives_interval=5,
                                keepalives_count=3)
    except Exception:
        return None, None  # the full path retries, classifies and reports
    handed_off = False
    try:
        conn.autocommit = True
        pid = conn.get_backend_pid()

        def cancel_backend() -> None:
            # Not conn.cancel(): PQcancel holds the GIL with no timeout (see runner/cancel.py).
            with contextlib.closing(psycopg2.connect(dsn, connect_timeout=3)) as other:
                other.autocommit = True
                with other.cursor() as cur:
                    cur.execute("SELECT pg_cancel_backend(%s)", (pid,))

        cancel.on_cancel(in_background(cancel_backend))
        heads = _read_heads(conn, facts)
        if heads is None:
            return None, None
        if set(heads) == set(facts.heads):
            _up_to_date(report, heads)
            return ExitCode.OK, None
        if command != "upgrade":
            return None, None
        key = settings.lock_key
        if key is None:
            key = derive_key(conn.info.dbname, facts.version_table_schema, facts.version_table)
        lock = _DbapiAdvisoryLock(conn, key)

        def waiting(waited_s: float) -> None:
            on_wait()
            log.info("lock_waiting", key=lock.key, reason="held by another runner")

        def done() -> bool:
            current = _read_heads(conn, facts)
            return current is not None and set(current) == set(facts.heads)

        waited = acquire(lock, settings.lock_timeout, cancel, waiting, done)
        if waited is None:
            log.info("lock_not_needed", key=lock.key,
                     reason="another runner reached the target")
            _up_to_date(report, _read_heads(conn, facts) or ())
            return ExitCode.OK, None
        log.info("lock_acquired", key=lock.key, waited_s=round(waited, 3), backend="postgresql")
        heads = _read_heads(conn, facts)
        if heads is not None and set(heads) == set(facts.heads):
            lock.release()
            log.info("lock_released", key=lock.key)
            _up_to_date(report, heads)
            return ExitCode.OK, None
        conn.autocommit = False
        handed_off = True
        return None, Handoff(conn, key)
    finally:
        if not handed_off:
            with contextlib.suppress(Exception):
                conn.close()


def _up_to_date(report: RunReport, heads: tuple[str, ...]) -> None:
    report.outcome = "up_to_date"
    report.from_revision = report.to_revision = ",".join(heads) or None
