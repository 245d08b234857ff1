"""The fast path: what every deploy pays when there is nothing to do, kept cheap.

Before Alembic and SQLAlchemy are imported, with only psycopg2 and the cached answers of a
previous full run (runner/cache.py), and for its first look (`probe`) even before the settings
are validated, it:
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
from typing import TYPE_CHECKING, Any

from runner import cache
from runner.cancel import CancelToken, in_background
from runner.errors import ExitCode
from runner.lock import acquire, derive_key
from runner.logs import log
from runner.report import RunReport

if TYPE_CHECKING:
    from runner.environment import EarlySettings
    from runner.settings import Settings

_PG_SCHEMES = {
    "postgres",
    "postgresql",
    "postgres+psycopg2",
    "postgresql+psycopg2",
    "postgresql+psycopg",
    "postgresql+asyncpg",
    "postgresql+psycopg_async",
}


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


@dataclass
class Probe:
    """The first look, taken before the settings are validated (see runner/environment.py):
    the database's heads and, for `upgrade` with work pending, one try at the lock."""

    early: EarlySettings
    facts: cache.ProjectFacts
    dsn: str
    conn: Any
    heads: tuple[str, ...]
    lock: _DbapiAdvisoryLock | None = None
    held: bool = False

    @property
    def at_head(self) -> bool:
        return set(self.heads) == set(self.facts.heads)

    @property
    def busy(self) -> bool:
        """Another runner holds the lock: this one will only wait."""
        return self.lock is not None and not self.held

    def read_heads(self) -> tuple[str, ...] | None:
        return _read_heads(self.conn, self.facts)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()  # the server drops a lock held by this session with it


def probe(command: str, target: str, early: EarlySettings | None) -> Probe | None:
    """Connect with psycopg2 alone, read the heads, and try the lock once. None: not here."""
    if early is None or target != "head" or command not in ("upgrade", "wait"):
        return None
    facts = cache.lookup(
        cache.entry_path(
            early.cache_dir, early.config, early.script_location, early.environment_digest
        )
    )
    dsn = _libpq_dsn(early.database_url)
    if facts is None or dsn is None:
        return None
    import psycopg2

    try:
        conn = psycopg2.connect(
            dsn,
            connect_timeout=2,
            application_name="migration-runner",
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        conn.autocommit = True
    except Exception:
        return None  # the full path retries, classifies and reports
    heads = _read_heads(conn, facts)
    found = Probe(early, facts, dsn, conn, heads or ())
    if heads is None or (not found.at_head and command != "upgrade"):
        found.close()
        return None
    if not found.at_head:
        key = early.lock_key
        if key is None:
            key = derive_key(conn.info.dbname, facts.version_table_schema, facts.version_table)
        found.lock = _DbapiAdvisoryLock(conn, key)
        try:
            found.held = found.lock.try_acquire()
        except Exception:
            found.close()
            return None
    return found


def attempt(
    found: Probe | None,
    settings: Settings,
    cancel: CancelToken,
    report: RunReport,
    on_wait: Callable[[str, float], None] = lambda key, waited_s: None,
) -> tuple[int | None, Handoff | None]:
    """Finish what the probe started: (exit code, None) when answered here, else
    (None, handoff or None) for the full path."""
    if found is None:
        return None, None
    if not found.early.agrees_with(settings):
        found.close()
        return None, None
    handed_off = False
    try:
        _cancellable(found, cancel)
        if found.at_head:
            _up_to_date(report, found.heads)
            return ExitCode.OK, None
        lock = found.lock
        assert lock is not None
        if found.held:
            waited: float | None = 0.0
        else:

            def waiting(waited_s: float) -> None:
                on_wait(lock.key, waited_s)
                log.info("lock_waiting", key=lock.key, reason="held by another runner")

            def done() -> bool:
                current = found.read_heads()
                return current is not None and set(current) == set(found.facts.heads)

            waited = acquire(lock, settings.lock_timeout, cancel, waiting, done)
        if waited is None:
            log.info("lock_not_needed", key=lock.key, reason="another runner reached the target")
            _up_to_date(report, found.read_heads() or ())
            return ExitCode.OK, None
        log.info("lock_acquired", key=lock.key, waited_s=round(waited, 3), backend="postgresql")
        heads = found.read_heads()
        if heads is not None and set(heads) == set(found.facts.heads):
            lock.release()
            log.info("lock_released", key=lock.key)
            _up_to_date(report, heads)
            return ExitCode.OK, None
        found.conn.autocommit = False
        handed_off = True
        return None, Handoff(found.conn, lock.key_int)
    finally:
        if not handed_off:
            found.close()


def _cancellable(found: Probe, cancel: CancelToken) -> None:
    import psycopg2

    pid = found.conn.get_backend_pid()

    def cancel_backend() -> None:
        # Not conn.cancel(): PQcancel holds the GIL with no timeout (see runner/cancel.py).
        with contextlib.closing(psycopg2.connect(found.dsn, connect_timeout=3)) as other:
            other.autocommit = True
            with other.cursor() as cur:
                cur.execute("SELECT pg_cancel_backend(%s)", (pid,))

    cancel.on_cancel(in_background(cancel_backend))


def _up_to_date(report: RunReport, heads: tuple[str, ...]) -> None:
    report.outcome = "up_to_date"
    report.from_revision = report.to_revision = ",".join(heads) or None
