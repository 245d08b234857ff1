"""The throwaway database of a shadow run: created on the shadow server
(`MIGRATION_SHADOW_URL`), handed out for one run, and always dropped.

The shadow server is one where the runner may `CREATE DATABASE` and `DROP DATABASE`: a
PostgreSQL service container in CI, the embedded server of the test suite on a laptop. The
database is named `mr_shadow_<pid>_<random>` so that an operator can tell whose it is; it is
dropped in `finally` (with `WITH (FORCE)`, so a connection env.py left open cannot keep it),
after a failed revision and after SIGTERM alike.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from runner import db
from runner.cancel import CancelToken
from runner.errors import ConfigError, DatabaseUnavailable
from runner.logs import log
from runner.urls import parse_database_url

SOURCE = "MIGRATION_SHADOW_URL"
#: How long creating or dropping the throwaway database may retry while the server starts.
CONNECT_TIMEOUT_S = 30.0


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


def _admin(admin: URL, sql: str, cancel: CancelToken | None, timeout_s: float) -> None:
    """One statement in autocommit on the shadow server, retried (bounded) while it starts."""
    started = time.monotonic()
    delay = 0.25
    while True:
        engine = db.runner_engine(admin).execution_options(isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(sql)
            return
        except DBAPIError as exc:
            display = admin.render_as_string(hide_password=True)
            permanent = db.classify_connect_error(exc, display)
            error = permanent or db.classify(exc, "postgresql", "shadow server: ")
            retry = isinstance(error, DatabaseUnavailable)
            if not retry or time.monotonic() - started + delay > timeout_s:
                raise error from None
        finally:
            engine.dispose()
        if cancel is not None:
            cancel.sleep(delay)
        else:
            time.sleep(delay)
        delay = min(delay * 2, 2.0)


def create(admin: URL, cancel: CancelToken | None = None) -> ShadowDatabase:
    name = f"mr_shadow_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    _admin(admin, f'CREATE DATABASE "{name}"', cancel, CONNECT_TIMEOUT_S)
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
def throwaway(raw_server_url: str, cancel: CancelToken | None = None) -> Iterator[ShadowDatabase]:
    """A fresh database on the shadow server for the length of the block, then dropped."""
    admin = server_url(raw_server_url)
    shadow = create(admin, cancel)
    try:
        yield shadow
    finally:
        drop(admin, shadow)


def _display(url: URL) -> str:
    return url.render_as_string(hide_password=True)
