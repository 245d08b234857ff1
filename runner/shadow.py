"""The throwaway database of a shadow run: created on the shadow server
(`MIGRATION_SHADOW_URL`), handed out for one run, and always dropped.

The shadow server is one where the runner may `CREATE DATABASE` and `DROP DATABASE`: a
PostgreSQL service container in CI, the embedded server of the test suite on a laptop. The
database is named `mr_shadow_<pid>_<random>` so that an operator can tell whose it is; it is
dropped in `finally` (with `WITH (FORCE)`, so a connection env.py left open cannot keep it),
after a failed revision and after SIGTERM alike.

Only a process killed outright (SIGKILL, the OOM killer) cannot drop its database. So that
those do not pile up on a long-lived server, each run holds a guard for its database's whole
life: a session advisory lock, keyed by the database's name, on a connection of its own, taken
before the database is created and released (by closing that connection) after it is dropped.
A killed run's connection closes with it, so its guard goes too; the next run drops every
`mr_shadow_*` database whose guard nobody holds. `pg_locks` shows the advisory locks of every
database on the server, so the check does not depend on which maintenance database a run's
URL names.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError

from runner import db
from runner.cancel import CancelToken
from runner.errors import ConfigError, DatabaseUnavailable
from runner.logs import log
from runner.urls import parse_database_url

SOURCE = "MIGRATION_SHADOW_URL"
#: How long reaching the shadow server may retry while it starts, unless the run says
#: (MIGRATION_CONNECT_TIMEOUT).
CONNECT_TIMEOUT_S = 30.0
#: The names this module gives its databases, and the only ones it ever drops.
NAME_PATTERN = re.compile(r"mr_shadow_[0-9]+_[0-9a-f]{8}")


@dataclass(frozen=True)
class ShadowDatabase:
    """One throwaway database: `url` holds the password (never print it), `name` does not."""

    url: URL
    name: str

    @property
    def display(self) -> str:
        return self.url.render_as_string(hide_password=True)


def server_url(raw: str) -> URL:
    """The shadow server's admin URL (its maintenance database, `postgres` unless named)."""
    if "://" in raw and make_url(raw.strip()).database in (None, ""):
        raw = make_url(raw.strip()).set(database="postgres").render_as_string(hide_password=False)
    url = parse_database_url(raw, source=SOURCE).url
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"{SOURCE} must name a PostgreSQL server (got {url.get_backend_name()}): the "
            "shadow run reads PostgreSQL's lock and catalog tables"
        )
    return url


def _connect(admin: URL, cancel: CancelToken | None, timeout_s: float) -> Connection:
    """An autocommit connection to the shadow server, retried (bounded) while it starts. The
    connection's engine has no pool: closing the connection ends the session."""
    started = time.monotonic()
    delay = 0.25
    while True:
        engine = db.runner_engine(admin).execution_options(isolation_level="AUTOCOMMIT")
        try:
            return engine.connect()
        except DBAPIError as exc:
            display = admin.render_as_string(hide_password=True)
            permanent = db.classify_connect_error(exc, display)
            if permanent is not None:
                raise permanent from None
            waited = time.monotonic() - started
            if waited + delay > timeout_s:
                raise DatabaseUnavailable(
                    f"shadow server {display} not reachable within {timeout_s:g}s: "
                    f"{db.one_line(exc)}"
                ) from None
        if cancel is not None:
            cancel.sleep(delay)
        else:
            time.sleep(delay)
        delay = min(delay * 2, 2.0)


def _execute(conn: Connection, sql: str) -> None:
    """One statement on a connection to the shadow server, its failure in the runner's terms."""
    try:
        conn.exec_driver_sql(sql)
    except DBAPIError as exc:
        raise db.classify(exc, "postgresql", "shadow server: ") from None


def _admin(admin: URL, sql: str, cancel: CancelToken | None, timeout_s: float) -> None:
    """One statement in autocommit on the shadow server, on a connection of its own."""
    conn = _connect(admin, cancel, timeout_s)
    try:
        _execute(conn, sql)
    finally:
        conn.close()


def guard_key(name: str) -> int:
    """The advisory-lock key (signed 64-bit) that guards the database `name` while it lives."""
    digest = hashlib.sha256(f"migration-runner shadow database {name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _held_advisory_keys(conn: Connection) -> set[int]:
    """The 64-bit advisory locks held right now, in any database of the server."""
    rows = conn.execute(
        text(
            "SELECT classid::bigint, objid::bigint FROM pg_catalog.pg_locks "
            "WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        )
    ).all()
    # A bigint key is stored as its high and low 32 bits; put the signed key back together.
    return {
        int.from_bytes(((hi << 32) | lo).to_bytes(8, "big"), "big", signed=True) for hi, lo in rows
    }


@contextmanager
def _guarded_name(
    admin: URL, cancel: CancelToken | None, timeout_s: float
) -> Iterator[tuple[str, Connection]]:
    """A new database name whose guard this run holds until the block ends, and the guard's
    connection (for the run's other statements on the server)."""
    conn = _connect(admin, cancel, timeout_s)
    try:
        for _ in range(3):  # a taken key would be a 64-bit hash collision
            name = f"mr_shadow_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            taken = conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": guard_key(name)}
            ).scalar()
            if taken:
                yield name, conn
                return
        raise ConfigError("shadow server: no free guard lock for a throwaway database")
    finally:
        conn.close()  # ends the session: the guard goes with it


def sweep_orphans(conn: Connection) -> list[str]:
    """Drop the throwaway databases of runs that were killed outright (their guard is gone).
    Returns the names dropped; a database that cannot be dropped is logged and left."""
    names = conn.execute(
        text("SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'mr\\_shadow\\_%'")
    ).scalars()
    candidates = [name for name in names if NAME_PATTERN.fullmatch(name)]
    if not candidates:
        return []
    held = _held_advisory_keys(conn)
    dropped = []
    for name in candidates:
        if guard_key(name) in held:
            continue  # a run is using it
        try:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except DBAPIError as exc:
            log.warning(
                "shadow_database_not_swept",
                database=name,
                reason=db.one_line(exc),
                action=f'DROP DATABASE "{name}" WITH (FORCE) on the shadow server',
            )
            continue
        log.info("shadow_database_swept", database=name, reason="its run was killed")
        dropped.append(name)
    return dropped


def create(conn: Connection, admin: URL, name: str) -> ShadowDatabase:
    """The throwaway database `name`, created over `conn` (the guard's connection)."""
    _execute(conn, f'CREATE DATABASE "{name}"')
    shadow = ShadowDatabase(admin.set(database=name), name)
    log.info("shadow_database_created", database=name, server=_display(admin))
    return shadow


def drop(admin: URL, shadow: ShadowDatabase) -> None:
    """Drop the throwaway database, whatever is still connected to it. Never cancelled: it is
    what a cancelled run does last. Logs (does not raise) when the server refuses."""
    try:
        _admin(admin, f'DROP DATABASE IF EXISTS "{shadow.name}" WITH (FORCE)', None, 10.0)
    except Exception as exc:
        log.warning(
            "shadow_database_not_dropped",
            database=shadow.name,
            reason=db.one_line(exc),
            action=f'DROP DATABASE "{shadow.name}" WITH (FORCE) on the shadow server',
        )
        return
    log.info("shadow_database_dropped", database=shadow.name)


@contextmanager
def throwaway(
    raw_server_url: str,
    cancel: CancelToken | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> Iterator[ShadowDatabase]:
    """A fresh database on the shadow server for the length of the block, then dropped."""
    admin = server_url(raw_server_url)
    with _guarded_name(admin, cancel, connect_timeout_s) as (name, conn):
        sweep_orphans(conn)
        shadow = create(conn, admin, name)
        try:
            yield shadow
        finally:
            drop(admin, shadow)


def _display(url: URL) -> str:
    return url.render_as_string(hide_password=True)
