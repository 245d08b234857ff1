"""The real projects of the compatibility suite: what to install, and how plain Alembic runs them.

Each entry is a package from PyPI that ships its Alembic migrations inside its distribution,
pinned to an exact version, with the facts found by installing it and reading its `env.py`
and the code with which the package itself runs its migrations. Nothing here is guessed: when
a package's own code builds its `Config` (script location, URL) in Python, the harness writes
the same `alembic.ini` that code would build, and `ini_origin` says so.

Seeds: two of the chains do not start from an empty database in real life. MLflow's tracking
store first runs `create_all()` of its frozen initial models, then `alembic upgrade heads`
(`mlflow.store.db.utils._initialize_tables`); JupyterHub's revisions alter tables that
`create_all()` of JupyterHub 0.5-0.8 made. The harness runs the same seed in both databases
before either tool runs, so the comparison still covers every revision of the chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("postgresql", "sqlite", "mariadb")


@dataclass(frozen=True)
class Project:
    #: Short name used in test ids and the report.
    key: str
    #: What `pip install` gets, pinned; projects with the same requirement share one venv.
    requirement: str
    #: The migrations directory, relative to site-packages.
    script_dir: str
    #: The alembic.ini the package ships, relative to site-packages.
    ini: str
    #: How the ini handed to both tools is made (for the report).
    ini_origin: str
    #: What the package's env.py does that the `alembic init` template does not.
    env_py: str
    #: The same in a few words, for the result table.
    pattern: str
    #: How plain Alembic is invoked (for the report).
    alembic_invocation: str
    backends: tuple[str, ...]
    #: Revision for the downgrade scenario, per backend (some chains differ per dialect).
    downgrade_to: dict[str, str]
    #: "lines": the shipped ini with `script_location`/`sqlalchemy.url` replaced, as the
    #: package's code does with set_main_option; "format": the shipped ini is a str.format
    #: template of `alembic_dir` and `db_url` (JupyterHub's dbutil.write_alembic_ini);
    #: "verbatim": the shipped ini as it is (the URL comes from the environment).
    ini_style: str = "lines"
    #: Where env.py finds the database URL: "ini" (sqlalchemy.url), or "env:NAME".
    url_in: str = "ini"
    #: The project's URL uses asyncio drivers (asyncpg, aiosqlite).
    async_driver: bool = False
    #: "cli": `alembic -c INI upgrade head`; "anyio-worker-thread": alembic.command.upgrade
    #: called in an AnyIO worker thread (Prefect's env.py refuses to run elsewhere).
    alembic_driver: str = "cli"
    #: Python source run in the project's venv with the database URL as argv[1] before
    #: either tool runs (identical for both databases).
    seed: str | None = None
    seed_origin: str = ""
    target: str = "head"
    extra_env: dict[str, str] = field(default_factory=dict)
    #: (scenario, backend) pairs with no case, because plain Alembic itself cannot do them:
    #: there is nothing to compare with. The report lists them with the reason.
    not_run: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def distribution(self) -> str:
        return self.requirement.split("==")[0].split("[")[0]

    @property
    def version(self) -> str:
        return self.requirement.split("==")[1]


MLFLOW_SEED = """
import sys
from sqlalchemy import create_engine
from mlflow.store.tracking.dbmodels.initial_models import Base

engine = create_engine(sys.argv[1])
Base.metadata.create_all(engine)
engine.dispose()
"""

# A JupyterHub 1.0-era database (at revision 99a28a4418e1). From an empty database plain
# Alembic fails at the second revision (eeb276e51423 alters `users`), and JupyterHub 6.1.1's
# own revision 99a28a4418e1 fails under plain Alembic on any database older than it
# (`datetime.now(timezone.utc)._replace`: AttributeError). So the seed creates the tables
# JupyterHub 0.7's create_all() made that the later revisions alter, drop or reference
# (users._server_id -> servers.id is the FK revision 3ec6993fe20c drops by MySQL's generated
# name users_ibfk_1), runs JupyterHub's own revisions up to 56cc5a70207e with plain Alembic
# (jupyterhub.dbutil's ini), does what 99a28a4418e1 does (two columns) and stamps it. Both
# tools then run the 11 revisions after it, RBAC's batch-mode foreign keys (833da8570507)
# among them.
JUPYTERHUB_SEED = """
import sys
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from jupyterhub.dbutil import _temp_alembic_ini

md = sa.MetaData()
sa.Table("servers", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("proto", sa.Unicode(15)), sa.Column("ip", sa.Unicode(255)),
         sa.Column("port", sa.Integer), sa.Column("base_url", sa.Unicode(255)),
         sa.Column("cookie_name", sa.Unicode(255)))
sa.Table("users", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.Unicode(255), unique=True),
         sa.Column("_server_id", sa.Integer, sa.ForeignKey("servers.id")),
         sa.Column("admin", sa.Boolean), sa.Column("last_activity", sa.DateTime),
         sa.Column("cookie_id", sa.Unicode(255)), sa.Column("state", sa.Text))
sa.Table("proxies", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("auth_token", sa.Unicode(255)))
sa.Table("hubs", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("host", sa.Unicode(255)))
sa.Table("api_tokens", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("hashed", sa.Unicode(255)), sa.Column("prefix", sa.Unicode(16)),
         sa.Column("user_id", sa.Integer))
sa.Table("groups", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.Unicode(255), unique=True))
sa.Table("services", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.Unicode(255), unique=True), sa.Column("admin", sa.Boolean))
sa.Table("spawners", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("user_id", sa.Integer), sa.Column("server_id", sa.Integer),
         sa.Column("state", sa.Text), sa.Column("name", sa.Unicode(255)),
         sa.Column("last_activity", sa.DateTime))
sa.Table("oauth_clients", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("identifier", sa.Unicode(255), unique=True),
         sa.Column("secret", sa.Unicode(255)), sa.Column("redirect_uri", sa.Unicode(1023)))
sa.Table("oauth_access_tokens", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("client_id", sa.Unicode(255)), sa.Column("user_id", sa.Integer),
         sa.Column("hashed", sa.Unicode(255)))
sa.Table("oauth_codes", md, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("client_id", sa.Unicode(255)), sa.Column("code", sa.Unicode(36)),
         sa.Column("redirect_uri", sa.Unicode(1023)), sa.Column("user_id", sa.Integer))
url = sys.argv[1]
engine = sa.create_engine(url)
md.create_all(engine)
with engine.begin() as conn:
    conn.execute(md.tables["servers"].insert(), [{"id": 1, "port": 8888}])
    conn.execute(md.tables["users"].insert(), [{"id": 1, "name": "alice", "_server_id": 1}])
    conn.execute(md.tables["spawners"].insert(), [{"id": 1, "user_id": 1, "server_id": 1}])
with _temp_alembic_ini(url) as ini:
    command.upgrade(Config(ini), "56cc5a70207e")
with engine.begin() as conn:
    op = Operations(MigrationContext.configure(conn))
    op.add_column("users", sa.Column("created", sa.DateTime, nullable=True))
    op.add_column("spawners", sa.Column("started", sa.DateTime, nullable=True))
    conn.execute(sa.text("UPDATE alembic_version SET version_num = '99a28a4418e1'"))
engine.dispose()
"""

PROJECTS: tuple[Project, ...] = (
    Project(
        key="optuna",
        pattern="template + render_as_batch",
        requirement="optuna==5.0.0",
        script_dir="optuna/storages/_rdb/alembic",
        ini="optuna/storages/_rdb/alembic.ini",
        ini_origin=(
            "shipped optuna/storages/_rdb/alembic.ini with script_location and sqlalchemy.url "
            "set as RDBStorage._create_alembic_config does"
        ),
        env_py=(
            "generic template + fileConfig only when the root logger has no handler; "
            "render_as_batch=True"
        ),
        alembic_invocation="alembic -c INI upgrade head",
        backends=("postgresql", "sqlite"),
        # Two steps: v3.0.0.c's own downgrade fails under plain Alembic in 5.0.0
        # (IntermediateValueModel.FloatTypeEnum no longer exists).
        downgrade_to={b: "v3.0.0.c" for b in BACKENDS},
    ),
    Project(
        key="jupyterhub",
        pattern='attributes["connection"] used as an Engine',
        requirement="jupyterhub==6.1.1",
        script_dir="jupyterhub/alembic",
        ini="jupyterhub/alembic.ini",
        ini_origin=(
            "shipped jupyterhub/alembic.ini template filled as jupyterhub.dbutil."
            "write_alembic_ini does (what `jupyterhub upgrade-db` runs)"
        ),
        env_py=(
            'treats config.attributes["connection"] as an Engine (calls .connect() on it); '
            "transaction_per_migration=True; fileConfig with a jupyterhub formatter class"
        ),
        alembic_invocation="alembic -c INI upgrade head (as jupyterhub.dbutil.upgrade)",
        backends=("postgresql", "sqlite", "mariadb"),
        downgrade_to={b: "be8ecf03ddac" for b in BACKENDS},
        ini_style="format",
        seed=JUPYTERHUB_SEED,
        seed_origin="a JupyterHub 1.0-era database at 99a28a4418e1: 0.7-era tables, plain "
        "Alembic to 56cc5a70207e, 99a28a4418e1's two columns by hand (from empty, plain Alembic "
        "fails at eeb276e51423; 6.1.1's own 99a28a4418e1 fails: `datetime._replace`)",
    ),
    Project(
        key="mlflow-tracking",
        pattern='attributes["connection"].engine',
        requirement="mlflow[auth]==3.17.2",
        script_dir="mlflow/store/db_migrations",
        ini="mlflow/store/db_migrations/alembic.ini",
        ini_origin=(
            "shipped mlflow/store/db_migrations/alembic.ini with script_location and "
            "sqlalchemy.url set as mlflow.store.db.utils._get_alembic_config does"
        ),
        env_py=(
            'uses config.attributes["connection"].engine to open a connection of its own; '
            "render_as_batch=True"
        ),
        alembic_invocation="alembic -c INI upgrade heads",
        backends=("postgresql", "sqlite", "mariadb"),
        downgrade_to={b: "17e22815139b" for b in BACKENDS},
        seed=MLFLOW_SEED,
        not_run={
            ("downgrade", "mariadb"): (
                "plain Alembic's downgrade fails: MLflow's own dc11669786a5 downgrade runs "
                "`DROP INDEX index_job_locks_job_id`, which MariaDB refuses (1553: needed in a "
                "foreign key constraint)"
            )
        },
        seed_origin="InitialBase.metadata.create_all(), as mlflow's _initialize_tables does "
        "before upgrading (the chain's first revision alters `metrics`)",
        target="heads",
    ),
    Project(
        key="mlflow-auth",
        pattern="custom version_table",
        requirement="mlflow[auth]==3.17.2",
        script_dir="mlflow/server/auth/db/migrations",
        ini="mlflow/server/auth/db/migrations/alembic.ini",
        ini_origin=(
            "shipped mlflow/server/auth/db/migrations/alembic.ini with script_location and "
            "sqlalchemy.url set as mlflow.server.auth.db.utils._get_alembic_config does"
        ),
        env_py="version_table='alembic_version_auth'; imports Flask through mlflow.server",
        alembic_invocation="alembic -c INI upgrade head",
        backends=("postgresql", "sqlite"),
        downgrade_to={b: "2ed73881770d" for b in BACKENDS},
    ),
    Project(
        key="airflow",
        pattern='attributes["connection"] (cookbook), URL from Airflow settings',
        requirement="apache-airflow[postgres]==3.3.2",
        script_dir="airflow/migrations",
        ini="airflow/alembic.ini",
        ini_origin=(
            "shipped airflow/alembic.ini with script_location made absolute (it is "
            "%(here)s/migrations; the file is written elsewhere)"
        ),
        env_py=(
            'cookbook: uses config.attributes["connection"] when set, else '
            "settings.engine (URL from AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, not the ini); "
            "transaction_per_migration=True, render_as_batch=True; imports every Airflow model"
        ),
        alembic_invocation=(
            "alembic -c INI upgrade head (`airflow db migrate` instead creates an empty "
            "database from the models and stamps it)"
        ),
        backends=("postgresql", "sqlite"),
        downgrade_to={b: "dd5f3a8e2b91" for b in BACKENDS},
        ini_style="lines",
        url_in="env:AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    ),
    Project(
        key="prefect",
        pattern="URL from env, version_locations set at run time, AnyIO thread",
        requirement="prefect==3.9.1",
        script_dir="prefect/server/database/_migrations",
        ini="prefect/server/database/alembic.ini",
        ini_origin="shipped prefect/server/database/alembic.ini, verbatim "
        "(script_location = prefect:server:database:_migrations)",
        env_py=(
            "URL from PREFECT_API_DATABASE_CONNECTION_URL (async engine), sets "
            "context.script.version_locations per dialect at run time, runs only inside an "
            "AnyIO worker thread"
        ),
        alembic_invocation=(
            "alembic.command.upgrade(Config(INI), 'head') in an AnyIO worker thread, as "
            "`prefect server database upgrade` does (the bare `alembic` CLI fails: "
            "NoEventLoopError)"
        ),
        backends=("postgresql", "sqlite"),
        downgrade_to={"postgresql": "c8d5f2a71b3e", "sqlite": "f416ea180ae1"},
        ini_style="verbatim",
        url_in="env:PREFECT_API_DATABASE_CONNECTION_URL",
        async_driver=True,
        alembic_driver="anyio-worker-thread",
    ),
)

#: Tried and not kept (the report lists them with the reason).
DROPPED: tuple[tuple[str, str], ...] = (
    (
        "mlflow-skinny 3.17.2",
        "ships both migration directories but not Flask/Flask-WTF, which the auth store's "
        "env.py imports (through mlflow.server); `mlflow[auth]` is used for both MLflow projects",
    ),
    (
        "mlflow 3.18.0",
        "needs mlflow-skinny==3.18.0, which the package index here does not serve; 3.17.2 used",
    ),
    (
        "apache-airflow without the [postgres] extra",
        "env.py builds Airflow's async engine too, which imports asyncpg even for a psycopg2 URL",
    ),
    (
        "zenml 0.98.0",
        "ships no alembic.ini (its Alembic class builds the Config in code; a minimal ini with "
        "script_location = zenml:zen_stores/migrations works) and env.py takes its engine from "
        "ZenML's SqlZenStore (URL from ZENML_STORE_URL); needs the [server] extra; no "
        "PostgreSQL support; plain Alembic fails on SQLite at 728c6369cfaa "
        "(NotImplementedError: Unsupported engine: sqlite), and for MySQL/MariaDB ZenML "
        "insists on a user with a password in the URL, which this test server's root has not",
    ),
    (
        "langflow",
        "not tried, for lack of time in this session (the five packages above came first)",
    ),
    (
        "optuna 5.0.0 on MariaDB 10.11",
        "plain Alembic itself fails at v2.4.0.a (`ALTER TABLE trial_values DROP COLUMN step`: "
        "(1072) Key column 'step' doesn't exist in table); no baseline to compare with",
    ),
)


def by_key(key: str) -> Project:
    for project in PROJECTS:
        if project.key == key:
            return project
    raise KeyError(key)
