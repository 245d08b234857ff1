"""Exactly what Alembic would do: each env.py pattern real projects use, run by plain
`alembic upgrade head` into one database and by `migration-runner upgrade` into another, and
the two databases compared whole (objects, owners, version tables). Each runner run also
proves that the revisions ran on a connection holding the migration lock.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.conftest import FreshDatabases
from tests.parity import dump_schema, run_alembic
from tests.support import INI, Rev, chain, run_cli, write_project, write_revision

#: A revision that fails unless its own connection holds the runner's lock (only when the
#: runner runs it: EXPECT_LOCK is set for the runner alone, so the schemas stay comparable).
LOCK_PROOF = """
import os
bind = op.get_bind()
if os.environ.get("EXPECT_LOCK") and bind.dialect.name == "postgresql":
    held = bind.exec_driver_sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND pid = pg_backend_pid() AND granted").scalar()
    assert held == 1, f"revision ran without the lock ({held})"
if os.environ.get("EXPECT_LOCK") and bind.dialect.name == "mysql":
    from runner.lock import MySqlNamedLock, derive_key
    database = bind.exec_driver_sql("SELECT DATABASE()").scalar()
    name = MySqlNamedLock(bind, derive_key(database, None, "alembic_version")).key
    held = bind.exec_driver_sql(f"SELECT IS_USED_LOCK('{name}') = CONNECTION_ID()").scalar()
    assert held == 1, f"revision ran without the lock ({held})"
op.create_table("proof", sa.Column("id", sa.Integer, primary_key=True))
"""


def proof_rev(down: str | None) -> Rev:
    return Rev("proof", down, upgrade=LOCK_PROOF, downgrade='op.drop_table("proof")')


def write(root: Path, env_py: str, revisions: list[Rev], versions: str = "versions") -> Path:
    """A project with this env.py; returns its alembic.ini."""
    (root / "migrations" / versions).mkdir(parents=True, exist_ok=True)
    (root / "migrations" / "versions").mkdir(parents=True, exist_ok=True)
    (root / "alembic.ini").write_text(INI)
    (root / "migrations" / "env.py").write_text(textwrap.dedent(env_py))
    for index, rev in enumerate(revisions):
        write_revision(root / "migrations" / versions, rev, index)
    return root / "alembic.ini"


def both(
    ini: Path,
    databases: FreshDatabases,
    backend: str,
    args: list[str] | None = None,
    **env: str,
) -> tuple[str, str]:
    """`alembic ARGS upgrade head` into one fresh database and `migration-runner ARGS
    upgrade` into another; returns (alembic's url, the runner's url)."""
    args = args or []
    plain, ours = databases.new(backend), databases.new(backend)
    done = run_alembic(ini, plain, [*args, "upgrade", "head"], **env)
    assert done.returncode == 0, done.stderr
    result = run_cli(["upgrade", *args, "--config", str(ini)], ours, EXPECT_LOCK="1", **env)
    assert result.returncode == 0, result.stderr
    assert result.finished["applied"] > 0
    return plain, ours


def assert_same(plain: str, ours: str) -> None:
    assert dump_schema(ours) == dump_schema(plain)


def execute(url: str, *statements: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def scalar(url: str, sql: str) -> object:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()
    finally:
        engine.dispose()


# -- the generic template, on every backend --------------------------------------------------

GENERIC = """
from sqlalchemy import engine_from_config, pool
from alembic import context

config = context.config


def run_migrations_online():
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
        poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""


def test_generic_template_gives_alembics_schema_on_each_backend(
    tmp_path: Path, databases: FreshDatabases, backend: str
) -> None:
    ini = write(tmp_path, GENERIC, [*chain(3), proof_rev("r0002")])
    assert_same(*both(ini, databases, backend))


# -- Alembic's cookbook: schema per tenant, `-x tenant=NAME` ---------------------------------

COOKBOOK_TENANT = """
from sqlalchemy import engine_from_config, pool, text
from alembic import context

config = context.config


def run_migrations_online():
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
        poolclass=pool.NullPool)
    current_tenant = context.get_x_argument(as_dictionary=True).get("tenant")
    with connectable.connect() as connection:
        connection.execute(text('set search_path to "%s"' % current_tenant))
        connection.commit()
        connection.dialect.default_schema_name = current_tenant
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""


def test_cookbook_schema_per_tenant_lands_in_the_tenant_schema(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    ini = write(tmp_path, COOKBOOK_TENANT, [*chain(2), proof_rev("r0001")])
    plain, ours = databases.new("postgresql"), databases.new("postgresql")
    for url in (plain, ours):
        execute(url, "CREATE SCHEMA acme", "CREATE SCHEMA globex")
    assert run_alembic(ini, plain, ["-x", "tenant=acme", "upgrade", "head"]).returncode == 0
    result = run_cli(["upgrade", "-x", "tenant=acme", "--config", str(ini)], ours, EXPECT_LOCK="1")
    assert result.returncode == 0, result.stderr
    assert_same(plain, ours)
    assert scalar(ours, "SELECT version_num FROM acme.alembic_version") == "proof"
    assert scalar(ours, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    assert result.named("lock_acquired")[0]["target"].endswith("/acme")

    # The same through the environment (chart and compose users), for a second tenant: and the
    # two tenants' locks are distinct, so a fleet of them never queues on one lock.
    assert run_alembic(ini, plain, ["-x", "tenant=globex", "upgrade", "head"]).returncode == 0
    second = run_cli(["upgrade", "--config", str(ini)], ours, MIGRATION_X_ARGS="tenant=globex")
    assert second.returncode == 0, second.stderr
    assert_same(plain, ours)
    assert second.named("lock_acquired")[0]["key"] != result.named("lock_acquired")[0]["key"]


# -- alembic init -t multidb, URLs from the environment --------------------------------------

MULTIDB = """
import logging
import os
import re

from sqlalchemy import create_engine, pool
from alembic import context

config = context.config
logger = logging.getLogger("alembic.env")
db_names = "engine1, engine2"
target_metadata = {}


def run_migrations_online():
    engines = {}
    for name in re.split(r",\\s*", db_names):
        engines[name] = rec = {}
        rec["engine"] = create_engine(os.environ[name.upper() + "_URL"], poolclass=pool.NullPool)
    for name, rec in engines.items():
        rec["connection"] = conn = rec["engine"].connect()
        rec["transaction"] = conn.begin()
    try:
        for name, rec in engines.items():
            logger.info("Migrating database %s" % name)
            context.configure(
                connection=rec["connection"],
                upgrade_token="%s_upgrades" % name,
                downgrade_token="%s_downgrades" % name,
                target_metadata=target_metadata.get(name),
            )
            context.run_migrations(engine_name=name)
        for rec in engines.values():
            rec["transaction"].commit()
    except:
        for rec in engines.values():
            rec["transaction"].rollback()
        raise
    finally:
        for rec in engines.values():
            rec["connection"].close()


run_migrations_online()
"""


def multidb_rev(revision: str, down: str | None) -> Rev:
    rev = Rev(
        revision,
        down,
        upgrade='globals()["upgrade_%s" % engine_name]()',
        downgrade='globals()["downgrade_%s" % engine_name]()',
        message=f"{revision} on both databases",
    )
    rev.header = textwrap.dedent(
        f"""
        def upgrade_engine1():
            op.create_table("one_{revision}", sa.Column("id", sa.Integer, primary_key=True))

        def downgrade_engine1():
            op.drop_table("one_{revision}")

        def upgrade_engine2():
            op.create_table("two_{revision}", sa.Column("id", sa.Integer, primary_key=True))

        def downgrade_engine2():
            op.drop_table("two_{revision}")
        """
    )
    return rev


@pytest.mark.parametrize("backend_name", ["postgresql", "mariadb", "sqlite"])
def test_multidb_template_migrates_each_database_under_its_own_lock(
    tmp_path: Path, databases: FreshDatabases, backend_name: str
) -> None:
    ini = write(tmp_path, MULTIDB, [multidb_rev("m1", None), multidb_rev("m2", "m1")])
    for path in (tmp_path / "migrations" / "versions").glob("*.py"):
        body = path.read_text().replace("def upgrade() -> None:", "def upgrade(engine_name):")
        path.write_text(body.replace("def downgrade() -> None:", "def downgrade(engine_name):"))
    plain = [databases.new(backend_name) for _ in range(2)]
    ours = [databases.new(backend_name) for _ in range(2)]
    done = run_alembic(
        ini, plain[0], ["upgrade", "head"], ENGINE1_URL=plain[0], ENGINE2_URL=plain[1]
    )
    assert done.returncode == 0, done.stderr
    result = run_cli(
        ["upgrade", "--config", str(ini)], ours[0], ENGINE1_URL=ours[0], ENGINE2_URL=ours[1]
    )
    assert result.returncode == 0, result.stderr
    for alembics, runners in zip(plain, ours, strict=True):
        assert_same(alembics, runners)
    finished = result.finished
    assert finished["applied"] == 4 and finished["outcome"] == "success"
    assert [t["applied"] for t in finished["targets"]] == [2, 2]
    assert {t["to_revision"] for t in finished["targets"]} == {"m2"}
    assert len(result.named("lock_acquired")) == 2
    assert len({e["target"] for e in result.named("revision_applied")}) == 2


# -- an async app's env.py with its own asyncpg engine -------------------------------------------

ASYNCPG_APP = """
import asyncio
import os
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine
from alembic import context


def do_run_migrations(connection):
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    # The app's own URL and driver: asyncpg prepares every statement it sends.
    engine = create_async_engine(os.environ["APP_DATABASE_URL"], poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


asyncio.run(main())
"""


def test_env_py_with_its_own_asyncpg_engine_gives_alembics_schema(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    """The runner's session settings reach a connection whose driver refuses several commands
    in one statement (asyncpg), and are put back on it."""
    ini = write(tmp_path, ASYNCPG_APP, [*chain(2), proof_rev("r0001")])
    plain, ours = databases.new("postgresql"), databases.new("postgresql")

    def asyncpg(url: str) -> str:
        return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(False)

    done = run_alembic(ini, plain, ["upgrade", "head"], APP_DATABASE_URL=asyncpg(plain))
    assert done.returncode == 0, done.stderr
    result = run_cli(
        ["upgrade", "--config", str(ini)], ours, EXPECT_LOCK="1", APP_DATABASE_URL=asyncpg(ours)
    )
    assert result.returncode == 0, result.stderr
    assert result.finished["applied"] == 3
    assert_same(plain, ours)


# -- SET ROLE on env.py's connection ------------------------------------------------------------

SET_ROLE = """
import os
from sqlalchemy import engine_from_config, pool, text
from alembic import context

config = context.config


def run_migrations_online():
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
        poolclass=pool.NullPool)
    with connectable.connect() as connection:
        connection.execute(text('SET ROLE "%s"' % os.environ["APP_OWNER"]))
        connection.commit()
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""


@contextmanager
def owner_role(admin_url: str, databases: list[str]) -> Iterator[str]:
    """A role of the test's own, allowed to create in `public` of each database."""
    role = f"mr_owner_{uuid.uuid4().hex[:8]}"
    execute(admin_url, f'CREATE ROLE "{role}" NOLOGIN')
    try:
        for url in databases:
            execute(url, f'GRANT CREATE ON SCHEMA public TO "{role}"')
        yield role
    finally:
        for url in databases:
            execute(url, f'DROP OWNED BY "{role}"')
        execute(admin_url, f'DROP ROLE "{role}"')


def test_set_role_in_env_py_makes_that_role_own_every_object(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    ini = write(tmp_path, SET_ROLE, [*chain(2), proof_rev("r0001")])
    plain, ours = databases.new("postgresql"), databases.new("postgresql")
    admin = make_url(plain).set(database="postgres").render_as_string(hide_password=False)
    with owner_role(admin, [plain, ours]) as role:
        assert run_alembic(ini, plain, ["upgrade", "head"], APP_OWNER=role).returncode == 0
        result = run_cli(["upgrade", "--config", str(ini)], ours, APP_OWNER=role, EXPECT_LOCK="1")
        assert result.returncode == 0, result.stderr
        assert_same(plain, ours)
        owners = scalar(
            ours,
            "SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables "
            "WHERE schemaname = 'public'",
        )
        assert owners == role


# -- env.py that treats config.attributes["connection"] as an Engine ---------------------------

ENGINE_ATTRIBUTE = """
from sqlalchemy import engine_from_config, pool
from alembic import context

config = context.config


def run_migrations_online():
    connectable = config.attributes.get("connection", None)
    if connectable is None:
        connectable = engine_from_config(
            config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
            poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""


@pytest.mark.parametrize("backend_name", ["postgresql", "mariadb", "sqlite"])
def test_env_py_that_calls_connect_on_the_connection_attribute_runs(
    tmp_path: Path, databases: FreshDatabases, backend_name: str
) -> None:
    ini = write(tmp_path, ENGINE_ATTRIBUTE, [*chain(2), proof_rev("r0001")])
    assert_same(*both(ini, databases, backend_name))


# -- env.py that moves the version locations at run time ---------------------------------------

MOVING_VERSIONS = """
import os
from sqlalchemy import engine_from_config, pool
from alembic import context

config = context.config
here = os.path.dirname(__file__)
context.script.version_locations = [os.path.join(here, "versions_" + os.environ["FLAVOUR"])]


def run_migrations_online():
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
        poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""


def test_env_py_that_sets_version_locations_at_run_time_applies_its_revisions(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    ini = write(
        tmp_path, MOVING_VERSIONS, [*chain(2, "pg"), proof_rev("pg0001")], versions="versions_pg"
    )
    plain, ours = both(ini, databases, "postgresql", FLAVOUR="pg")
    assert_same(plain, ours)
    check = run_cli(["check", "--json", "--config", str(ini)], ours, FLAVOUR="pg")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["head"] == ["proof"]


# -- revisions that reach for the engine ----------------------------------------------------------

ENGINE_WRITER = """
bind = op.get_bind()
session_id = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}[
    bind.dialect.name
]
mine = bind.exec_driver_sql(session_id).scalar()
with bind.engine.begin() as other:
    theirs = other.exec_driver_sql(session_id).scalar()
    other.exec_driver_sql("INSERT INTO events (id, note) VALUES (1, 'written elsewhere')")
assert mine != theirs, "the engine handed out the migrating connection"
assert "events" in sa.inspect(bind.engine).get_table_names()
op.add_column("events", sa.Column("checked", sa.Boolean))
"""


# SQLite is left out: a second connection writing while the revision's transaction holds the
# database waits for it under plain Alembic too.
@pytest.mark.parametrize("backend_name", ["postgresql", "mariadb"])
def test_revision_writing_through_its_engine_gets_a_connection_of_its_own(
    tmp_path: Path, databases: FreshDatabases, backend_name: str
) -> None:
    """op.get_bind().engine is env.py's engine, as under plain Alembic: a separate connection,
    never the runner's locked one, so nothing a revision does through it can commit or close
    the revision's own transaction."""
    first = Rev(
        "events",
        None,
        upgrade='op.create_table("events", sa.Column("id", sa.Integer, primary_key=True),'
        ' sa.Column("note", sa.Text))',
    )
    second = Rev("writer", "events", upgrade=ENGINE_WRITER)
    ini = write(tmp_path, GENERIC, [first, second, proof_rev("writer")])
    plain, ours = databases.new(backend_name), databases.new(backend_name)
    assert run_alembic(ini, plain, ["upgrade", "events"]).returncode == 0
    assert run_alembic(ini, plain, ["upgrade", "head"]).returncode == 0
    assert run_cli(["upgrade", "events", "--config", str(ini)], ours).returncode == 0
    result = run_cli(["upgrade", "--config", str(ini)], ours, EXPECT_LOCK="1")
    assert result.returncode == 0, result.stderr
    assert_same(plain, ours)
    assert scalar(ours, "SELECT note FROM events") == "written elsewhere"

    # downgrade then upgrade (the second deploy of the same image): still Alembic's result.
    for url, runner in ((plain, False), (ours, True)):
        if runner:
            down = run_cli(["downgrade", "-1", "--yes", "--config", str(ini)], url)
            up = run_cli(["upgrade", "--config", str(ini)], url)
            assert down.returncode == 0 and up.returncode == 0, down.stderr + up.stderr
        else:
            assert run_alembic(ini, url, ["downgrade", "-1"]).returncode == 0
            assert run_alembic(ini, url, ["upgrade", "head"]).returncode == 0
    assert_same(plain, ours)


# -- a project whose import configures logging, structlog and stdout ----------------------------

NOISY_APP = """
import logging
import logging.config
import sys

import structlog

logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format="BASIC %(name)s %(message)s")
logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": True,
    "formatters": {"plain": {"format": "DICT %(name)s %(message)s"}},
    "handlers": {"out": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                         "formatter": "plain"}},
    "root": {"handlers": ["out"], "level": "DEBUG"},
    "loggers": {"sqlalchemy": {"level": "INFO"}, "alembic": {"level": "DEBUG"}},
})
structlog.configure(
    processors=[structlog.dev.ConsoleRenderer(colors=False)],
    logger_factory=structlog.PrintLoggerFactory(sys.stdout),
)
print("hello from the app's import")
import warnings
warnings.warn("app.legacy is deprecated", FutureWarning, stacklevel=1)
structlog.get_logger().info("app_configured")
logging.getLogger("app").info("app logger says hi")
"""


def test_a_project_that_takes_over_logging_does_not_take_over_the_runners_output(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    env_py = "import sys, os\nsys.path.insert(0, os.path.dirname(__file__))\nimport noisy_app\n"
    ini = write(tmp_path, env_py + textwrap.dedent(GENERIC), chain(2))
    (tmp_path / "migrations" / "noisy_app.py").write_text(NOISY_APP)
    plain, ours = databases.new("postgresql"), databases.new("postgresql")
    assert run_alembic(ini, plain, ["upgrade", "head"]).returncode == 0
    result = run_cli(["upgrade", "--config", str(ini)], ours)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", "stdout carries command results only"
    assert result.finished["applied"] == 2, "exactly one run_finished, as JSON on stderr"
    assert len(result.named("revision_applied")) == 2
    assert "hello from the app's import" in result.stderr, "the project keeps its own lines"
    assert "DICT app app logger says hi" in result.stderr
    assert "app_configured" in result.stderr
    assert any(e.get("logger", "").startswith("alembic") for e in result.events), (
        "Alembic's records still reach the runner's pipeline after the project's dictConfig"
    )
    [warned] = [e for e in result.events if e.get("logger") == "py.warnings"]
    assert "app.legacy is deprecated" in warned["event"], "warnings are events, not plain text"
    assert_same(plain, ours)

    check = run_cli(["check", "--json", "--config", str(ini)], ours)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["up_to_date"] is True, "stdout is one JSON document"
    sql = run_cli(["plan", "--sql", "r0000:r0001", "--config", str(ini)], ours)
    assert sql.returncode == 0, sql.stderr
    assert "hello from the app" not in sql.stdout and "CREATE TABLE t_r0001" in sql.stdout


# -- Alembic's command line ----------------------------------------------------------------------

TAGGED = """
from sqlalchemy import engine_from_config, pool
from alembic import context

config = context.config
x = context.get_x_argument(as_dictionary=True)


def run_migrations_online():
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
        poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            version_table="v_%s_%s_%s" % (context.get_tag_argument(), x["a"], x["b"]),
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""


def test_x_name_and_tag_reach_env_py_as_under_alembic(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    ini = write(tmp_path, TAGGED, chain(1))
    ini.write_text(ini.read_text().replace("[alembic]", "[shop]"))
    plain, ours = databases.new("sqlite"), databases.new("sqlite")
    args = ["-n", "shop", "-x", "a=1", "-x", "b=2"]
    done = run_alembic(ini, plain, [*args, "upgrade", "--tag", "blue", "head"])
    assert done.returncode == 0, done.stderr
    result = run_cli([*args, "upgrade", "--tag", "blue", "--config", str(ini)], ours)
    assert result.returncode == 0, result.stderr
    assert_same(plain, ours)
    assert scalar(ours, "SELECT version_num FROM v_blue_1_2") == "r0000"


def test_alembic_revision_syntax_works_everywhere(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    ini = write(tmp_path, GENERIC, chain(4))
    url = databases.new("postgresql")

    def at() -> object:
        return scalar(url, "SELECT version_num FROM alembic_version")

    assert run_cli(["upgrade", "+2", "--config", str(ini)], url).returncode == 0
    assert at() == "r0001"
    assert run_cli(["upgrade", "head-1", "--config", str(ini)], url).returncode == 0
    assert at() == "r0002"
    assert run_cli(["downgrade", "-1", "--yes", "--config", str(ini)], url).returncode == 0
    assert at() == "r0001"
    planned = run_cli(["plan", "--json", "base+4", "--config", str(ini)], url)
    assert [p["revision"] for p in json.loads(planned.stdout)] == ["r0002", "r0003"]
    sql = run_cli(["plan", "--sql", "r0001:r0003", "--config", str(ini)], url)
    assert sql.returncode == 0, sql.stderr
    assert "CREATE TABLE t_r0002" in sql.stdout and "CREATE TABLE t_r0003" in sql.stdout
    assert "t_r0001" not in sql.stdout
    unknown = run_cli(["upgrade", "nope", "--config", str(ini)], url)
    assert unknown.returncode == 2 and "nope" in unknown.finished["reason"]


def test_plan_sql_over_a_range_needs_no_database_as_under_alembic(tmp_path: Path) -> None:
    """`alembic upgrade FROM:TO --sql` connects nowhere: the ini's URL only names the dialect.
    The runner renders the same SQL with no MIGRATION_DATABASE_URL, and says what is missing
    when there is no URL at all (before printing anything)."""
    ini = write_project(tmp_path, chain(4))  # Alembic's generic env.py, offline branch included
    nowhere = "postgresql://nobody@127.0.0.1:1/none"
    plain = run_alembic(ini, nowhere, ["upgrade", "r0001:r0003", "--sql"])
    assert plain.returncode == 0, plain.stderr
    without_url = run_cli(["plan", "--sql", "r0001:r0003", "--config", str(ini)], None)
    assert without_url.returncode == 78 and without_url.stdout == ""
    assert "sqlalchemy.url" in without_url.finished["reason"]
    ini.write_text(ini.read_text().replace("sqlalchemy.url =", f"sqlalchemy.url = {nowhere}"))
    ours = run_cli(["plan", "--sql", "r0001:r0003", "--config", str(ini)], None)
    assert ours.returncode == 0, ours.stderr
    body = ours.stdout.split("\n", 1)[1]  # after the runner's note on how it was rendered
    assert body == plain.stdout
    assert all(line.startswith("{") for line in ours.stderr.splitlines()), "JSON only"


def test_one_secret_serves_an_env_py_that_reads_its_own_variable(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    env_py = GENERIC.replace(
        "connectable = engine_from_config(\n"
        '        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",\n'
        "        poolclass=pool.NullPool)",
        "import os\n    from sqlalchemy import create_engine\n"
        "    connectable = create_engine(os.environ['SHOP_DB_URL'], poolclass=pool.NullPool)",
    )
    assert "SHOP_DB_URL" in env_py
    ini = write(tmp_path, env_py, chain(2))
    url = databases.new("postgresql")
    result = run_cli(["upgrade", "--config", str(ini)], url, MIGRATION_EXPORT_URL_AS="SHOP_DB_URL")
    assert result.returncode == 0, result.stderr
    assert scalar(url, "SELECT version_num FROM alembic_version") == "r0001"


# -- where the runner cannot keep its promises, it refuses, naming why ---------------------------


def test_systemexit_from_env_py_is_a_configuration_error_with_its_message(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    env_py = 'from alembic import context\nraise SystemExit("missing -x tenant=NAME")\n'
    ini = write(tmp_path, env_py, chain(1))
    result = run_cli(["upgrade", "--config", str(ini)], databases.new("sqlite"))
    assert result.returncode == 78
    assert "missing -x tenant=NAME" in result.finished["reason"]


def test_env_py_without_a_connection_is_refused(tmp_path: Path, databases: FreshDatabases) -> None:
    env_py = (
        "from alembic import context\n"
        "context.configure(url=context.config.get_main_option('sqlalchemy.url'))\n"
        "with context.begin_transaction():\n    context.run_migrations()\n"
    )
    ini = write(tmp_path, env_py, chain(1))
    result = run_cli(["upgrade", "--config", str(ini)], databases.new("sqlite"))
    assert result.returncode == 78
    assert "without a connection" in result.finished["reason"]


def test_env_py_that_never_commits_its_own_transaction_is_refused_not_reported_applied(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    """Plain Alembic runs the revisions in env.py's transaction and applies nothing when env.py
    never commits it; the runner gives the same result, and says so (exit 78, not 0)."""
    env_py = GENERIC.replace(
        "        context.configure(connection=connection)",
        "        connection.exec_driver_sql('SELECT 1')  # autobegins; never committed\n"
        "        context.configure(connection=connection)",
    )
    ini = write(tmp_path, env_py, chain(2))
    plain, ours = databases.new("postgresql"), databases.new("postgresql")
    assert run_alembic(ini, plain, ["upgrade", "head"]).returncode == 0
    result = run_cli(["upgrade", "--config", str(ini)], ours)
    assert result.returncode == 78, result.stderr
    assert "never committed" in result.finished["reason"]
    assert result.named("revision_applied") == []
    assert_same(plain, ours)


def test_plan_sql_on_a_revision_that_inspects_the_database_names_it(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    inspecting = Rev(
        "inspects",
        "r0000",
        upgrade='if "t_r0000" in sa.inspect(op.get_bind()).get_table_names():\n'
        '    op.drop_table("t_r0000")',
    )
    ini = write(tmp_path, GENERIC, [*chain(1), inspecting])
    result = run_cli(
        ["plan", "--sql", "r0000:inspects", "--config", str(ini)], databases.new("sqlite")
    )
    assert result.returncode == 70, result.stderr
    assert result.finished["revision"] == "inspects"
    assert "offline" in result.finished["reason"]


def test_a_failed_run_reports_the_revision_the_database_is_now_at(
    tmp_path: Path, databases: FreshDatabases
) -> None:
    broken = Rev("broken", "r0001", upgrade='raise RuntimeError("boom")')
    ini = write(tmp_path, GENERIC, [*chain(2), broken])
    url = databases.new("postgresql")
    result = run_cli(["upgrade", "--config", str(ini), "--log-level", "debug"], url)
    assert result.returncode == 70
    finished = result.finished
    assert finished["from_revision"] is None and finished["to_revision"] == "r0001"
    assert finished["applied"] == 2 and finished["revision"] == "broken"
    traceback = [e for e in result.events if "Traceback" in str(e.get("exception", ""))]
    assert traceback and "boom" in traceback[0]["exception"], "debug shows the traceback"
    assert not [e for e in result.events if str(e.get("logger", "")).startswith("sqlalchemy.orm")]
