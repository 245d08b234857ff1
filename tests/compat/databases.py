"""Fresh databases for the compatibility suite, and normalised snapshots to compare them.

Every database is created here under a unique name and dropped by `fresh_database`'s
`finally`; no other database is touched. A snapshot is text, one section per aspect, so two
databases compare with a unified diff:
- PostgreSQL: `pg_dump --schema-only --no-owner` (comments, `\\restrict` keys and the
  database name stripped), the owner of every schema, relation, type, function and
  extension, the version tables' rows, and every table's row count.
- SQLite: `sqlite_master` (type, name, table, SQL with the table-level constraints of each
  CREATE TABLE sorted: Alembic's batch mode writes them in set order, which differs between
  two plain Alembic runs), `PRAGMA user_version`, version tables, row counts.
- MariaDB: `SHOW CREATE TABLE/VIEW` (AUTO_INCREMENT counters and DEFINERs stripped, keys
  and constraints sorted for the same batch-mode reason), triggers, routines, version
  tables, row counts.

The one object the runner adds on purpose, its history table (`migration_runner_history`,
next to the version table), is left out of every section, as tests/parity.py leaves it out
for the default suite: plain Alembic never creates it. Only that table and what belongs to it
(its `id` sequence and primary key on PostgreSQL) are left out, by exact name.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import NullPool

from tests.parity import HISTORY

PG_ENV = "MIGRATION_TEST_POSTGRES_URL"
MARIADB_ENV = "MIGRATION_TEST_MARIADB_URL"
DUMP_TIMEOUT_S = 120
_PG_SYSTEM = "('pg_catalog', 'information_schema', 'pg_toast')"
#: The runner's history table and the relations PostgreSQL makes for it (SERIAL, primary key).
_PG_HISTORY = f"('{HISTORY}', '{HISTORY}_id_seq', '{HISTORY}_pkey')"


class BackendUnavailable(Exception):
    """The backend is not configured here (its server URL is not set)."""


@dataclass(frozen=True)
class Database:
    backend: str
    name: str
    #: Synchronous SQLAlchemy URL (psycopg2, pymysql, pysqlite), with the password.
    url: URL

    def project_url(self, async_driver: bool = False) -> str:
        """The URL as a project's configuration holds it (asyncpg/aiosqlite for async ones)."""
        drivers = {
            ("postgresql", False): "postgresql+psycopg2",
            ("postgresql", True): "postgresql+asyncpg",
            ("sqlite", False): "sqlite",
            ("sqlite", True): "sqlite+aiosqlite",
            ("mariadb", False): "mysql+pymysql",
            ("mariadb", True): "mysql+aiomysql",
        }
        return self.url.set(drivername=drivers[self.backend, async_driver]).render_as_string(
            hide_password=False
        )


def admin_url(backend: str) -> URL:
    if backend == "postgresql":
        configured = os.environ.get(PG_ENV)
        if not configured:
            raise BackendUnavailable(f"set {PG_ENV} to a server where databases may be created")
        return make_url(configured).set(drivername="postgresql+psycopg2")
    if backend == "mariadb":
        configured = os.environ.get(MARIADB_ENV)
        if not configured:
            raise BackendUnavailable(f"set {MARIADB_ENV} to run the MariaDB rows")
        return make_url(configured).set(drivername="mysql+pymysql", database=None)
    if backend == "sqlite":
        return make_url("sqlite://")
    raise ValueError(backend)


@contextmanager
def _autocommit(url: URL) -> Iterator[Connection]:
    # Bounded: a server that does not answer fails the case instead of hanging it.
    timeout = {"postgresql": {"connect_timeout": 10}, "mysql": {"connect_timeout": 10}}
    engine = create_engine(
        url,
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args=timeout.get(url.get_backend_name(), {}),
    )
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


@contextmanager
def fresh_database(backend: str, label: str) -> Iterator[Database]:
    """A new empty database of `backend`, dropped afterwards whatever happened."""
    admin = admin_url(backend)
    name = f"mr_compat_{re.sub(r'[^a-z0-9]', '_', label.lower())[:24]}_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="mr-compat-sqlite-"))
        try:
            yield Database(backend, name, make_url(f"sqlite:///{folder / (name + '.db')}"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    quote = '"' if backend == "postgresql" else "`"
    with _autocommit(admin) as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {quote}{name}{quote}")
    try:
        yield Database(backend, name, admin.set(database=name))
    finally:
        with _autocommit(admin) as conn:
            if backend == "postgresql":
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :d AND pid <> pg_backend_pid()"
                    ),
                    {"d": name},
                )
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote}{name}{quote}")


# -- snapshots ---------------------------------------------------------------------------------


def snapshot(db: Database) -> str:
    """The database as comparable text (database name replaced by <db>)."""
    sections = {"postgresql": _pg_sections, "sqlite": _sqlite_sections, "mariadb": _maria_sections}
    parts = []
    for title, body in sections[db.backend](db):
        parts.append(f"==== {title}\n{body.rstrip()}\n")
    return "\n".join(parts).replace(db.name, "<db>")


def diff(expected: str, actual: str, expected_label: str, actual_label: str) -> str:
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=expected_label,
            tofile=actual_label,
            n=2,
        )
    )


def _rows(conn: Connection, sql: str, **params: object) -> list[tuple[object, ...]]:
    return [tuple(r) for r in conn.execute(text(sql), params).all()]


def _lines(rows: list[tuple[object, ...]]) -> str:
    return "\n".join(" | ".join("NULL" if v is None else str(v) for v in row) for row in rows)


def _normalise_pg_dump(dump: str) -> str:
    kept = []
    for line in dump.splitlines():
        if not line.strip() or line.startswith(("--", "\\restrict", "\\unrestrict")):
            continue
        kept.append(line)
    return "\n".join(kept)


def _pg_sections(db: Database) -> Iterator[tuple[str, str]]:
    libpq = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    dump = subprocess.run(
        [
            "pg_dump",
            "--schema-only",
            "--no-owner",
            f"--exclude-table=*.{HISTORY}",
            f"--exclude-table=*.{HISTORY}_id_seq",
            f"--dbname={libpq}",
        ],
        capture_output=True,
        text=True,
        timeout=DUMP_TIMEOUT_S,
        check=False,
    )
    if dump.returncode != 0:
        raise RuntimeError(f"pg_dump failed ({dump.returncode}): {dump.stderr.strip()}")
    yield "pg_dump --schema-only --no-owner", _normalise_pg_dump(dump.stdout)
    with _autocommit(db.url) as conn:
        yield (
            "owners",
            _lines(
                _rows(
                    conn,
                    f"""
            SELECT 'schema', nspname::text, '', pg_get_userbyid(nspowner)::text FROM pg_namespace
             WHERE nspname NOT IN {_PG_SYSTEM} AND nspname NOT LIKE 'pg\\_%'
            UNION ALL
            SELECT 'relation:' || c.relkind::text, n.nspname::text, c.relname::text,
                   pg_get_userbyid(c.relowner)::text
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN {_PG_SYSTEM} AND n.nspname NOT LIKE 'pg\\_%'
               AND c.relname NOT IN {_PG_HISTORY}
            UNION ALL
            SELECT 'type:' || t.typtype::text, n.nspname::text, t.typname::text,
                   pg_get_userbyid(t.typowner)::text
              FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname NOT IN {_PG_SYSTEM} AND n.nspname NOT LIKE 'pg\\_%'
               AND t.typtype IN ('e', 'd', 'c', 'r') AND t.typrelid = 0
            UNION ALL
            SELECT 'function', n.nspname::text, p.proname::text || '(' ||
                   pg_get_function_identity_arguments(p.oid) || ')',
                   pg_get_userbyid(p.proowner)::text
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname NOT IN {_PG_SYSTEM} AND n.nspname NOT LIKE 'pg\\_%'
            UNION ALL
            SELECT 'extension', e.extname::text, e.extversion, pg_get_userbyid(e.extowner)::text
              FROM pg_extension e
            ORDER BY 1, 2, 3
            """,
                )
            ),
        )
        tables = _rows(
            conn,
            f"""SELECT table_schema, table_name FROM information_schema.tables
                 WHERE table_type = 'BASE TABLE' AND table_schema NOT IN {_PG_SYSTEM}
                   AND table_name <> '{HISTORY}'
                 ORDER BY 1, 2""",
        )
        version_tables = _rows(
            conn,
            f"""SELECT table_schema, table_name FROM information_schema.columns
                 WHERE column_name = 'version_num' AND table_schema NOT IN {_PG_SYSTEM}
                 ORDER BY 1, 2""",
        )
        yield "version tables", _version_rows(conn, version_tables, '"')
        yield "row counts", _counts(conn, tables, '"')


def _version_rows(conn: Connection, tables: list[tuple[object, ...]], q: str) -> str:
    out = []
    for schema, table in tables:
        rows = _rows(conn, f"SELECT version_num FROM {q}{schema}{q}.{q}{table}{q} ORDER BY 1")
        out.append(f"{schema}.{table}: {', '.join(str(r[0]) for r in rows) or '(empty)'}")
    return "\n".join(out) or "(no version table)"


def _counts(conn: Connection, tables: list[tuple[object, ...]], q: str) -> str:
    out = []
    for schema, table in tables:
        (count,) = _rows(conn, f"SELECT count(*) FROM {q}{schema}{q}.{q}{table}{q}")[0]
        out.append(f"{schema}.{table}: {count}")
    return "\n".join(out)


_TABLE_CONSTRAINT = re.compile(r"(CONSTRAINT|PRIMARY KEY|FOREIGN KEY|UNIQUE|CHECK)\b", re.I)


def _split_top_level(body: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in body:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    items.append(current.strip())
    return items


def _normalise_sqlite_sql(sql: str | None) -> str:
    """Sort the table-level constraints of a CREATE TABLE. Alembic's batch mode (the "move and
    copy" SQLite needs) writes them in the iteration order of a set, which differs between two
    runs of plain Alembic itself; their order means nothing to SQLite. Columns keep their
    order, and everything else is compared as written."""
    if not sql or not sql.upper().startswith("CREATE TABLE"):
        return str(sql)
    start, end = sql.find("("), sql.rfind(")")
    if start < 0 or end < start:
        return sql
    items = _split_top_level(sql[start + 1 : end])
    columns = [i for i in items if not _TABLE_CONSTRAINT.match(i)]
    constraints = sorted(i for i in items if _TABLE_CONSTRAINT.match(i))
    body = ",\n  ".join(columns + constraints)
    return f"{sql[: start + 1]}\n  {body}\n{sql[end:]}"


def _sqlite_sections(db: Database) -> Iterator[tuple[str, str]]:
    path = db.url.database
    if not path or not Path(path).exists():
        yield "sqlite_master (table constraints sorted)", "(no database file)"
        return
    with _autocommit(db.url) as conn:
        master = _rows(
            conn,
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE tbl_name <> :h "
            "ORDER BY 1, 2",
            h=HISTORY,
        )
        normalised = [(*row[:3], _normalise_sqlite_sql(str(row[3]))) for row in master]
        yield "sqlite_master (table constraints sorted)", _lines(normalised)
        yield "user_version", _lines(_rows(conn, "PRAGMA user_version"))
        tables = [
            ("main", r[0])
            for r in _rows(
                conn,
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> :h "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY 1",
                h=HISTORY,
            )
        ]
        version_tables = [
            (schema, table)
            for schema, table in tables
            if any(col[1] == "version_num" for col in _rows(conn, f'PRAGMA table_info("{table}")'))
        ]
        yield "version tables", _version_rows(conn, version_tables, '"')
        yield "row counts", _counts(conn, tables, '"')


_MARIA_KEY = re.compile(r"\s+(PRIMARY KEY|UNIQUE KEY|KEY|FULLTEXT KEY|SPATIAL KEY|CONSTRAINT)\b")


def _normalise_maria_create(create: str) -> str:
    """SHOW CREATE TABLE with its keys and constraints sorted and the AUTO_INCREMENT counter
    dropped. MariaDB lists indexes in creation order, and Alembic's batch mode creates them
    in the iteration order of a set (two plain Alembic runs differ); columns keep their order."""
    lines = re.sub(r" AUTO_INCREMENT=\d+", "", create).splitlines()
    if len(lines) < 3:
        return "\n".join(lines)
    items = [line.rstrip(",") for line in lines[1:-1]]
    columns = [i for i in items if not _MARIA_KEY.match(i)]
    keys = sorted(i for i in items if _MARIA_KEY.match(i))
    return "\n".join([lines[0], ",\n".join(columns + keys), lines[-1]])


def _maria_sections(db: Database) -> Iterator[tuple[str, str]]:
    with _autocommit(db.url) as conn:
        tables = _rows(
            conn,
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = :d AND table_name <> :h ORDER BY 1",
            d=db.name,
            h=HISTORY,
        )
        creates = []
        for name, kind in tables:
            if kind == "VIEW":
                row = _rows(conn, f"SHOW CREATE VIEW `{name}`")[0]
                creates.append(re.sub(r"DEFINER=\S+ ", "", str(row[1])))
            else:
                row = _rows(conn, f"SHOW CREATE TABLE `{name}`")[0]
                creates.append(_normalise_maria_create(str(row[1])))
        yield "SHOW CREATE", "\n".join(creates)
        yield (
            "triggers and routines",
            _lines(
                _rows(
                    conn,
                    "SELECT 'trigger', trigger_name, event_object_table, action_statement "
                    "FROM information_schema.triggers WHERE trigger_schema = :d "
                    "UNION ALL SELECT 'routine', routine_name, routine_type, routine_definition "
                    "FROM information_schema.routines WHERE routine_schema = :d ORDER BY 1, 2",
                    d=db.name,
                )
            ),
        )
        base = [(db.name, n) for n, kind in tables if kind == "BASE TABLE"]
        version_tables = [
            (db.name, r[0])
            for r in _rows(
                conn,
                "SELECT table_name FROM information_schema.columns "
                "WHERE table_schema = :d AND column_name = 'version_num' ORDER BY 1",
                d=db.name,
            )
        ]
        yield "version tables", _version_rows(conn, version_tables, "`")
        yield "row counts", _counts(conn, base, "`")
