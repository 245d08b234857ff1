"""Side by side with plain Alembic: run `alembic` itself on a project, and dump a database's
whole schema (objects, owners, version table) in a form two databases can be compared by.

The oracle of the runner is Alembic: a test runs `alembic ... upgrade head` into one database
and `migration-runner upgrade` into another, then asserts `dump(a) == dump(b)`. The one object
the runner adds on purpose, its history table, is left out of the dump (it is documented and
tested on its own).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.support import cli_env

ALEMBIC = Path(sys.executable).parent / "alembic"
HISTORY = "migration_runner_history"


def run_alembic(
    ini: Path, url: str | None, args: list[str], timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """Plain `alembic -c INI ARGS`, with `sqlalchemy.url` set to `url` in a copy of the ini
    (what a user of plain Alembic writes there), in the same environment the runner gets."""
    config = ini
    if url is not None:
        config = ini.with_name(f"{ini.stem}.plain{ini.suffix}")
        body = ini.read_text()
        escaped = url.replace("%", "%%")
        body, n = re.subn(r"(?m)^sqlalchemy\.url\s*=.*$", f"sqlalchemy.url = {escaped}", body)
        if n == 0:
            body = body.replace("[alembic]\n", f"[alembic]\nsqlalchemy.url = {escaped}\n", 1)
        config.write_text(body)
    process_env = cli_env(None, **env)
    proc = subprocess.run(
        [str(ALEMBIC), "-c", str(config), *args],
        env=process_env,
        cwd=ini.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc


def _pg_dump_binary() -> str:
    """pgserver's pg_dump when the suite runs its own server (it is as new as that server),
    else the system's."""
    try:
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
        if bundled.exists() and not os.environ.get("MIGRATION_TEST_POSTGRES_URL"):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("pg_dump")
    if found is None:
        raise RuntimeError("pg_dump not found: install the PostgreSQL client")
    return found


_PG_DUMP_NOISE = re.compile(
    r"^(--.*|SET .*|SELECT pg_catalog\.set_config.*|\\(un)?restrict .*|)$", re.MULTILINE
)


def dump_schema(url: str) -> str:
    """The whole schema of the database at `url`, normalised for comparison: every object
    with its owner (PostgreSQL: `pg_dump --schema-only`), plus every version table's rows."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        libpq = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        out = subprocess.run(
            [
                _pg_dump_binary(),
                "--schema-only",
                "--no-comments",
                f"--exclude-table=*.{HISTORY}",
                f"--exclude-table=*.{HISTORY}_id_seq",
                libpq,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        schema = "\n".join(
            line for line in _PG_DUMP_NOISE.sub("", out).splitlines() if line.strip()
        )
    elif backend == "sqlite":
        schema = "\n".join(
            f"{row[0]} {row[1]}: {row[2]}"
            for row in _rows(url, "SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            if not str(row[1]).startswith(HISTORY) and row[1] != "sqlite_sequence"
        )
    else:
        names = [row[0] for row in _rows(url, "SHOW TABLES") if row[0] != HISTORY]
        schema = "\n".join(
            str(_rows(url, f"SHOW CREATE TABLE `{name}`")[0][1]) for name in sorted(names)
        )
        schema = re.sub(r" AUTO_INCREMENT=\d+", "", schema)
    return schema + "\n-- versions\n" + "\n".join(version_rows(url))


def version_rows(url: str) -> list[str]:
    """`schema.table: revision` for every Alembic-style version table in the database."""
    engine = create_engine(url, poolclass=NullPool)
    found: list[str] = []
    try:
        inspector = inspect(engine)
        schemas = (
            [s for s in inspector.get_schema_names() if not s.startswith(("pg_", "information"))]
            if engine.dialect.name == "postgresql"
            else [None]
        )
        with engine.connect() as conn:
            for schema in schemas:
                for table in inspector.get_table_names(schema=schema):
                    columns = {c["name"] for c in inspector.get_columns(table, schema=schema)}
                    if columns != {"version_num"}:
                        continue
                    qualified = f'"{schema}"."{table}"' if schema else table
                    if engine.dialect.name != "postgresql" and schema is None:
                        qualified = table
                    for (rev,) in conn.execute(text(f"SELECT version_num FROM {qualified}")):
                        found.append(f"{schema or ''}.{table}: {rev}")
    finally:
        engine.dispose()
    return sorted(found)


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()
