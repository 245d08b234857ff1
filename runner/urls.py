"""Turn the database URL a user gives into the URLs the runner and the project's env.py use.

Users write what their platform hands them (`postgres://...` from Heroku-style providers,
`postgresql+asyncpg://...` copied from an async app). The runner's own connection always uses
a synchronous, installed driver; an async `env.py` gets the async twin of that driver.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner import redact
from runner.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# scheme (as typed) -> (dialect, sync driver). A bare PostgreSQL URL means psycopg2: SQLAlchemy
# 2.1 would otherwise pick psycopg 3, and the runner's cancel/keepalive handling is tuned for it.
_DEFAULT_DRIVERS: dict[str, tuple[str, str]] = {
    "postgres": ("postgresql", "psycopg2"),
    "postgresql": ("postgresql", "psycopg2"),
    "mysql": ("mysql", "pymysql"),
    "mariadb": ("mariadb", "pymysql"),
    "sqlite": ("sqlite", "pysqlite"),
}
# Async drivers users paste from their apps, and the sync driver the runner uses instead.
_SYNC_TWIN = {
    "asyncpg": "psycopg2",
    "psycopg_async": "psycopg",
    "aiosqlite": "pysqlite",
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
}
# Sync driver -> the async driver an `alembic init -t async` env.py can use on the same server.
_ASYNC_TWIN = {
    "psycopg2": "psycopg",  # psycopg 3 serves both APIs under the same name
    "psycopg": "psycopg",
    "pysqlite": "aiosqlite",
    "pymysql": "aiomysql",
}
# Which module each driver needs, to say "not installed" before SQLAlchemy tries to import it.
_DRIVER_MODULE = {
    "psycopg2": "psycopg2",
    "psycopg": "psycopg",
    "pymysql": "pymysql",
    "mysqldb": "MySQLdb",
    "pysqlite": "sqlite3",
    "asyncpg": "asyncpg",
    "aiosqlite": "aiosqlite",
    "aiomysql": "aiomysql",
    "asyncmy": "asyncmy",
}

_URL_HINT = "expected dialect[+driver]://user:password@host:port/database, URL-encoded"


@dataclass(frozen=True)
class DatabaseUrl:
    """The URL the runner connects with. `url` holds the password; print only `display`."""

    url: URL

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    @property
    def display(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def database(self) -> str:
        return self.url.database or ""

    def for_async_env(self) -> URL:
        """The same target, with a driver an async env.py can use."""
        driver = self.url.get_driver_name()
        return self.url.set(
            drivername=f"{self.url.get_backend_name()}+{_ASYNC_TWIN.get(driver, driver)}"
        )


def parse_database_url(raw: str, *, source: str) -> DatabaseUrl:
    """Parse and normalise `raw` (read from `source`, an env var name used in messages)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    redact.register_url_text(raw)
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError, TypeError):
        raise ConfigError(f"{source} is not a valid database URL ({_URL_HINT})") from None
    redact.register(url.password if isinstance(url.password, str) else None)

    scheme, _, driver = url.drivername.partition("+")
    if scheme not in _DEFAULT_DRIVERS:
        known = ", ".join(sorted(_DEFAULT_DRIVERS))
        raise ConfigError(f"{source} has unknown database scheme {scheme!r} (known: {known})")
    dialect, default_driver = _DEFAULT_DRIVERS[scheme]
    driver = _SYNC_TWIN.get(driver, driver) or default_driver
    module = _DRIVER_MODULE.get(driver)
    if module is None:
        raise ConfigError(f"{source} names unknown driver {driver!r} for {dialect}")
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"{source} needs driver {driver!r}, which is not installed (pip install {module})"
        )
    url = url.set(drivername=f"{dialect}+{driver}")
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"{source} names driver {driver!r}, unknown to SQLAlchemy") from None
    if dialect != "sqlite" and not url.database:
        raise ConfigError(f"{source} names no database ({_URL_HINT})")
    if dialect == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigError(
            f"{source} points at an in-memory SQLite database, which cannot hold a schema "
            "between runs; use sqlite:///path/to/file.db"
        )
    return DatabaseUrl(url)
