"""No secret in any sink: generated passwords driven through every failure kind, with every
sink switched on at once (stdout, stderr, the GitHub step summary and annotations, the
termination message, Kubernetes Events on the fake API), and looked for in every spelling.

The server checks passwords (scram-sha-256, a private PostgreSQL of this module), so a wrong
password is refused as in production; every other kind logs in as a role whose password is
the generated one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from runner.redact import spellings
from tests.fake_kube_api import FakeKubeApi
from tests.faults.private_pg import PrivateServer, free_port, password_pg_fixture  # noqa: F401
from tests.support import CliResult, Rev, chain, run_cli, with_credentials, write_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NS = "migrations"
JOB = "app-migrate-s3cr3"

# Passwords people paste: printable, URL-special characters, quotes, backslashes, spaces
# inside, non-ASCII. At least 8 characters, so that none can coincide with a word of a log.
PASSWORDS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x17F, blacklist_categories=("Cs",))
    | st.sampled_from(list("@:/%#?&=+ ;'\"\\")),
    min_size=8,
    max_size=24,
).filter(lambda p: p.strip() == p and "\x00" not in p)

LEAKS_URL_IN_EXCEPTION = """
url = op.get_bind().engine.url.render_as_string(hide_password=False)
raise RuntimeError(f"cannot reach {url} (password {op.get_bind().engine.url.password!r})")
"""
LEAKS_URL_IN_LOGS = """
import logging
url = op.get_bind().engine.url
logging.getLogger("app.migrations").error("connecting to %s", url.render_as_string(False))
print("the url is", url.render_as_string(hide_password=False), "password", url.password)
op.execute("SELECT * FROM no_such_table")
"""
QUOTES_IT_IN_SQL = """
password = op.get_bind().engine.url.password
op.execute(sa.text("SELECT CAST('x' || :p AS integer)").bindparams(p=password))
"""


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        api.add_job(NS, JOB)
        yield api


def _role(server: PrivateServer, password: str) -> tuple[str, str]:
    """A login role with `password` owning a fresh database; (its URL, the database URL)."""
    role = f"mr_secret_{uuid.uuid4().hex[:8]}"
    database_url = server.create_database()
    engine = create_engine(server.admin_url(), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            literal = password.replace("'", "''")
            # The DBAPI cursor directly: no parameter substitution that would read a `%`.
            conn.connection.dbapi_connection.cursor().execute(  # type: ignore[union-attr]
                f"CREATE ROLE {role} LOGIN PASSWORD '{literal}'"
            )
            conn.exec_driver_sql(
                f'ALTER DATABASE "{make_url(database_url).database}" OWNER TO {role}'
            )
    finally:
        engine.dispose()
    return with_credentials(database_url, role, password), database_url


def _sinks(tmp_path: Path, fake_api: FakeKubeApi) -> dict[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    kubeconfig = fake_api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md"),
        "MIGRATION_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination-log"),
        "MIGRATION_KUBE_EVENTS": "on",
        "KUBECONFIG": str(kubeconfig),
        "MIGRATION_POD_NAMESPACE": NS,
        "MIGRATION_JOB_NAME": JOB,
    }


def _everything_written(result: CliResult, tmp_path: Path, api: FakeKubeApi, seen: int) -> str:
    parts = [result.stdout, result.stderr]
    for name in ("step-summary.md", "termination-log"):
        path = tmp_path / name
        if path.exists():
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    events = api.requests_for("POST", "/events$")[seen:]
    parts.extend(json.dumps(r.body, ensure_ascii=False) for r in events)
    parts.extend(json.dumps(r.body) for r in events)
    return "\n".join(parts)


def _assert_masked(password: str, written: str, what: str) -> None:
    found = sorted(form for form in spellings(password) if form in written)
    assert not found, f"{what}: the password leaked as {found}"


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(password=PASSWORDS)
@example(password="pass word with spaces")
@example(password="p@ss:w/rd%25#?&'\"\\é")
def test_no_password_reaches_any_sink_whatever_fails(
    tmp_path_factory: pytest.TempPathFactory,
    password_pg: PrivateServer,
    fake_api: FakeKubeApi,
    password: str,
) -> None:
    work = tmp_path_factory.mktemp("secrets")
    url, database_url = _role(password_pg, password)
    wrong = with_credentials(database_url, make_url(url).username or "", password + "-wrong")
    unreachable = with_credentials(
        f"postgresql+psycopg2://x@127.0.0.1:{free_port()}/app", "app", password
    )
    bad_port = f"postgresql://app:{quote(password, safe='')}@db:notaport/app"
    secret_file = work / "database-url"
    secret_file.write_text(url + "\n")

    def project(name: str, upgrade: str | None) -> Path:
        revisions = chain(1) if upgrade is None else [*chain(1), Rev("leaky", "r0000", upgrade)]
        return write_project(work / name, revisions)

    kinds: list[tuple[str, str | None, Path, list[str], dict[str, str]]] = [
        ("bad URL", bad_port, project("a", None), [], {}),
        ("wrong password", wrong, project("b", None), [], {}),
        ("unreachable", unreachable, project("c", None), [], {"MIGRATION_CONNECT_TIMEOUT": "1"}),
        ("revision raises the URL", url, project("d", LEAKS_URL_IN_EXCEPTION), [], {}),
        ("revision logs and prints it", url, project("e", LEAKS_URL_IN_LOGS), [], {}),
        ("SQL error quoting it", url, project("f", QUOTES_IT_IN_SQL), [], {}),
        (
            "debug level",
            url,
            project("g", LEAKS_URL_IN_EXCEPTION),
            ["--log-level", "debug"],
            {},
        ),
        (
            "URL from a *_FILE",
            None,
            project("h", LEAKS_URL_IN_EXCEPTION),
            [],
            {"MIGRATION_DATABASE_URL_FILE": str(secret_file)},
        ),
    ]
    for what, database, ini, flags, extra in kinds:
        sinks_dir = work / f"sinks-{what.replace(' ', '-').replace('*', '')}"
        seen = len(fake_api.requests_for("POST", "/events$"))
        result = run_cli(
            ["upgrade", "--config", str(ini), *flags],
            database,
            **_sinks(sinks_dir, fake_api),
            **extra,
        )
        assert result.returncode != 0, f"{what}: expected a failure\n{result.stderr[-2000:]}"
        assert len(result.named("run_finished")) == 1, what
        written = _everything_written(result, sinks_dir, fake_api, seen)
        assert (sinks_dir / "step-summary.md").exists(), what
        assert (sinks_dir / "termination-log").exists(), what
        _assert_masked(password, written, what)
