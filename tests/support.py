"""Shared test helpers: run the real CLI as a subprocess, and write Alembic projects.

Projects are written in the three `env.py` styles users have: the unmodified `alembic init`
generic template, the cookbook pattern that reads `config.attributes["connection"]`, and the
`alembic init -t async` template.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.report import AppliedRevision, RunReport, TargetReport

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CI = bool(os.environ.get("CI"))
#: Skip reasons end with `[enable: COMMAND]`: the one command that makes the test run. The
#: run's closing line (tests/conftest.py) groups the skipped tests by it.
ENABLE_MARKER = "[enable: "
#: What the suite needs a PostgreSQL over TCP for (proxies, a pooler, containers, TLS).
TCP_POSTGRES_HINT = (
    "export MIGRATION_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres"
)


def enable_hint(command: str) -> str:
    """The tail of a skip reason naming the command that enables the test."""
    return f" {ENABLE_MARKER}{command}]"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    @property
    def finished(self) -> dict[str, Any]:
        lines = self.named("run_finished")
        assert len(lines) == 1, f"expected one run_finished line, got {len(lines)}:\n{self.stderr}"
        return lines[0]


def report_of(
    command: str = "upgrade",
    from_revision: str | None = None,
    to_revision: str | None = None,
    applied: list[AppliedRevision] | None = None,
    **fields: Any,
) -> RunReport:
    """A finished one-database run report, as the reporters receive it."""
    target = TargetReport("app", "postgresql", "success" if applied else "up_to_date")
    target.from_revision, target.to_revision = from_revision, to_revision
    target.applied = list(applied or [])
    return RunReport(command=command, targets=[target], **fields)


def with_credentials(url: str, username: str, password: str | None) -> str:
    """`url` logging in as another role; the password is URL-encoded by SQLAlchemy."""
    from sqlalchemy.engine import make_url

    return (
        make_url(url)
        .set(username=username, password=password)
        .render_as_string(hide_password=False)
    )


def parse_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def cli_env(database_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MIGRATION_", "GITHUB_", "KUBERNETES_")) and k != "DATABASE_URL"
    }
    env["MIGRATION_LOG_FORMAT"] = "json"
    env["PYTHONUNBUFFERED"] = "1"
    if database_url is not None:
        env["MIGRATION_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def run_cli(
    args: list[str],
    database_url: str | None,
    cwd: Path | None = None,
    timeout: float = 120,
    **extra_env: str,
) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=cli_env(database_url, **extra_env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr, parse_events(proc.stderr))


def start_cli(
    args: list[str], database_url: str | None, cwd: Path | None = None, **extra_env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        env=cli_env(database_url, **extra_env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> CliResult:
    out, err = proc.communicate(timeout=timeout)
    return CliResult(proc.returncode, out, err, parse_events(err))


GENERIC_ENV = """
from logging.config import fileConfig

from sqlalchemy import engine_from_config, pool

from alembic import context

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
target_metadata = None
{extra}

def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={{"paramstyle": "named"}}{configure_kw})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {{}}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata{configure_kw})
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""

COOKBOOK_ENV = """
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
target_metadata = None
{extra}

def run_migrations_online() -> None:
    connectable = config.attributes.get("connection", None)
    if connectable is None:
        connectable = engine_from_config(
            config.get_section(config.config_ini_section, {{}}), prefix="sqlalchemy.",
            poolclass=pool.NullPool).connect()
    context.configure(connection=connectable, target_metadata=target_metadata{configure_kw})
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
"""

ASYNC_ENV = """
import asyncio
from logging.config import fileConfig

from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from alembic import context

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
target_metadata = None
{extra}

def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={{"paramstyle": "named"}}{configure_kw})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata{configure_kw})
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {{}}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await connectable.dispose()


def run_migrations_online() -> None:
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""

ENV_STYLES = {"generic": GENERIC_ENV, "cookbook": COOKBOOK_ENV, "async": ASYNC_ENV}

INI = """[alembic]
script_location = %(here)s/migrations
prepend_sys_path = .
path_separator = os
sqlalchemy.url =

[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARNING
handlers = console
[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic
[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""


@dataclass
class Rev:
    """One revision file: `upgrade`/`downgrade` are Python bodies (indented by the helper)."""

    revision: str
    down_revision: str | tuple[str, ...] | None
    upgrade: str = "pass"
    downgrade: str = "pass"
    message: str = ""
    header: str = ""


def table_rev(revision: str, down: str | None, table: str) -> Rev:
    return Rev(
        revision,
        down,
        upgrade=f'op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))',
        downgrade=f'op.drop_table("{table}")',
        message=f"create {table}",
    )


def write_project(
    root: Path,
    revisions: list[Rev],
    env_style: str = "generic",
    configure_kw: str = "",
    env_extra: str = "",
) -> Path:
    """Write an Alembic project under `root`; returns the path of its alembic.ini."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (root / "alembic.ini").write_text(INI)
    kw = f", {configure_kw}" if configure_kw else ""
    (root / "migrations" / "env.py").write_text(
        ENV_STYLES[env_style].format(configure_kw=kw, extra=env_extra)
    )
    for index, rev in enumerate(revisions):
        write_revision(versions, rev, index)
    return root / "alembic.ini"


def write_revision(versions: Path, rev: Rev, index: int = 0) -> Path:
    down = rev.down_revision
    body = f'''"""{rev.message or rev.revision}

Revision ID: {rev.revision}
"""
import sqlalchemy as sa
from alembic import op
{rev.header}
revision = {rev.revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{textwrap.indent(textwrap.dedent(rev.upgrade).strip() or "pass", "    ")}


def downgrade() -> None:
{textwrap.indent(textwrap.dedent(rev.downgrade).strip() or "pass", "    ")}
'''
    path = versions / f"{index:04d}_{rev.revision}.py"
    path.write_text(body)
    return path


def chain(n: int, prefix: str = "r") -> list[Rev]:
    """`n` revisions in a line, each creating a small table."""
    revs = []
    down = None
    for i in range(n):
        rid = f"{prefix}{i:04d}"
        revs.append(table_rev(rid, down, f"t_{rid}"))
        down = rid
    return revs
