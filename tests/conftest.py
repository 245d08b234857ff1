"""Real databases for the tests, each test getting a fresh one it created itself, and the
closing line that says what did not run.

PostgreSQL: `MIGRATION_TEST_POSTGRES_URL` names a server where the suite may CREATE DATABASE
(CI gives the local service); without it the suite starts its own throwaway server on loopback
TCP (the server binaries of the `pgserver` package, or Debian's) and says so: TCP, so that the
fault tests that put a proxy or a pooler in front of it run too. MariaDB:
`MIGRATION_TEST_MARIADB_URL`, else those tests skip. SQLite: always, in a temporary directory.
No test ever touches a database it did not create.

Every run ends with one line counting the skipped tests by cause, each with the one command
that enables them (`pytest_terminal_summary` below): a green run that skipped a quarter of the
suite must say so where the eye lands.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from tests.faults.private_pg import (
    PrivateServer,
    can_run_here,
    pgserver_bindir,
    server_bindir,
)
from tests.support import CI, ENABLE_MARKER, enable_hint

_PG_ENV = "MIGRATION_TEST_POSTGRES_URL"
_MARIADB_ENV = "MIGRATION_TEST_MARIADB_URL"
_state: dict[str, object] = {}


def pytest_report_header(config: pytest.Config) -> list[str]:
    pg = (
        f"server from {_PG_ENV}"
        if os.environ.get(_PG_ENV)
        else f"throwaway server on 127.0.0.1 started by the suite; set {_PG_ENV} to use your own"
    )
    maria = (
        f"server from {_MARIADB_ENV}"
        if os.environ.get(_MARIADB_ENV)
        else f"not configured: MariaDB tests skip (set {_MARIADB_ENV})"
    )
    return [f"postgres: {pg}", f"mariadb: {maria}"]


def _as_psycopg2(url: URL) -> URL:
    return url.set(drivername="postgresql+psycopg2")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[URL]:
    """An admin URL of a PostgreSQL server on which the suite may create databases."""
    configured = os.environ.get(_PG_ENV)
    if configured:
        yield _as_psycopg2(make_url(configured))
        return
    workdir = Path(tempfile.mkdtemp(prefix="migration-runner-pg-"))
    bindir = pgserver_bindir() or server_bindir()
    if bindir is not None and can_run_here():
        # pgserver itself only listens on a Unix socket; its binaries, started like the fault
        # tests' private server, listen on 127.0.0.1 (trust authentication, fsync off).
        print(f"\n*** no {_PG_ENV}: starting a throwaway PostgreSQL on 127.0.0.1 in {workdir} ***")
        server = PrivateServer(bindir, workdir, max_connections=100)
        try:
            server.init()
            server.start()
            yield make_url(server.admin_url())
        finally:
            server.destroy()
        return
    # Root without a `postgres` OS user: pgserver creates one of its own, Unix socket only.
    import pgserver

    print(f"\n*** no {_PG_ENV}: starting a throwaway PostgreSQL in {workdir} (pgserver) ***")
    legacy = pgserver.get_server(workdir, cleanup_mode="delete")
    try:
        yield _as_psycopg2(make_url(legacy.get_uri()))
    finally:
        legacy.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def _create_database(admin: URL, prefix: str, quote: str) -> tuple[URL, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {quote}{name}{quote}")
    engine.dispose()
    return admin.set(database=name), name


def _drop_database(admin: URL, name: str) -> None:
    engine = create_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if admin.get_backend_name() == "postgresql":
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": name},
            )
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        else:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    engine.dispose()


def _mariadb_admin() -> URL:
    configured = os.environ.get(_MARIADB_ENV)
    if not configured:
        if CI:
            pytest.fail(f"CI must run the MariaDB tests: set {_MARIADB_ENV}")
        pytest.skip(
            "no MariaDB configured"
            + enable_hint(f"export {_MARIADB_ENV}=mysql+pymysql://root@127.0.0.1:3306/")
        )
    return make_url(configured).set(drivername="mysql+pymysql", database=None)


class FreshDatabases:
    """Creates empty databases for one test (`new(backend)`), and drops them all after it."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self._request = request
        self._tmp_path = tmp_path
        self._created: list[tuple[URL, str]] = []

    def new(self, backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{self._tmp_path / f'db_{uuid.uuid4().hex[:8]}.db'}"
        if backend == "postgresql":
            admin: URL = self._request.getfixturevalue("pg_server_url")
            quote = '"'
        else:
            admin, quote = _mariadb_admin(), "`"
        url, name = _create_database(admin, "mr_test", quote)
        self._created.append((admin, name))
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for admin, name in self._created:
            _drop_database(admin, name)


@pytest.fixture
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FreshDatabases]:
    """Any number of fresh, empty databases for this test, dropped afterwards."""
    fresh = FreshDatabases(request, tmp_path)
    try:
        yield fresh
    finally:
        fresh.drop_all()


@pytest.fixture
def pg_url(databases: FreshDatabases) -> str:
    """A fresh, empty PostgreSQL database for this test, as a URL string (with password)."""
    return databases.new("postgresql")


@pytest.fixture
def mariadb_url(databases: FreshDatabases) -> str:
    """A fresh MariaDB database for this test; skips (fails on CI) without a configured server."""
    return databases.new("mariadb")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """The same test against each backend the runner supports."""
    fixture = {"postgresql": "pg_url", "mariadb": "mariadb_url", "sqlite": "sqlite_url"}
    return str(request.getfixturevalue(fixture[request.param]))


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend the runner supports, for tests that make their own databases."""
    if request.param == "mariadb":
        _mariadb_admin()  # skip early, before anything is created
    return str(request.param)


# --- the closing line: what was skipped, and how to run it -------------------------------------

_HINT = re.compile(re.escape(ENABLE_MARKER) + r"(.+?)\]\s*$")


def skip_summary(reasons: list[str], total: int) -> str:
    """One line: the skipped tests counted by cause, each cause with the command that enables it.

    Skip reasons in this suite end with `[enable: COMMAND]` (`tests.support.enable_hint`); tests
    that share a command are one cause, named by the first reason seen. A reason without a
    command (e.g. "this server offers TLS") is a cause of its own.
    """
    if not reasons:
        return f"skipped: none of {total} tests"
    counts: Counter[str] = Counter()
    described: dict[str, str] = {}
    for reason in reasons:
        reason = reason.removeprefix("Skipped: ").removeprefix("SKIPPED, NOT TESTED: ")
        match = _HINT.search(reason)
        key = match.group(1).strip() if match else reason
        counts[key] += 1
        described.setdefault(key, reason[: match.start()].strip(" ;") if match else reason)
    parts = [
        f"{n} ({described[key]}): {key}" if described[key] != key else f"{n} ({key})"
        for key, n in counts.most_common()
    ]
    return f"skipped: {len(reasons)} of {total} tests -- " + "; ".join(parts)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> Generator[None]:
    """After pytest's own summaries (and its -ra list), before its final count."""
    result = yield
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reasons.append(str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr))
    ran = {
        report.nodeid
        for key in ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
        for report in terminalreporter.stats.get(key, [])
        if hasattr(report, "nodeid")
    }
    terminalreporter.write_line(skip_summary(reasons, len(ran)))
    return result
