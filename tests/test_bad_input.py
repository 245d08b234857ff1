"""Bad input, end to end through the CLI: every case ends with its documented exit code, one
`run_finished` line, nothing changed in the database, and the password nowhere in the output.

Covered elsewhere (not repeated here): bare/unknown schemes, drivers and unparseable URLs in
process (tests/test_settings.py); refused and never-answering ports, wrong password, missing
database, every URL special character, no URL, missing alembic.ini (tests/test_safety.py);
multiple heads, database ahead of the code, a revision raising halfway
(tests/test_upgrade.py); empty script dir, duplicate ids, syntax and import errors in process
(tests/test_revisions.py).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy.engine import make_url

from tests.faults.checks import (
    SENTINEL_PASSWORD,
    assert_clean_outcome,
    leaked,
    query,
    scalar,
    version_heads,
)
from tests.faults.private_pg import free_port
from tests.support import (
    TCP_POSTGRES_HINT,
    Rev,
    chain,
    enable_hint,
    run_cli,
    table_rev,
    with_credentials,
    write_project,
    write_revision,
)
from tests.test_upgrade import execute

ENC = quote(SENTINEL_PASSWORD, safe="")


def _no_leak(output: str) -> None:
    assert not leaked(SENTINEL_PASSWORD, output), leaked(SENTINEL_PASSWORD, output)


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        pytest.param(
            f"postgresql://u:{ENC}@@db:x/app", 78, "not a valid database URL", id="garbage"
        ),
        pytest.param(f"oracle://u:{ENC}@db/app", 78, "unknown database scheme", id="scheme"),
        pytest.param(f"postgresql+nosuch://u:{ENC}@db/app", 78, "unknown driver", id="driver"),
        pytest.param(f"postgresql://u:{ENC}@db:99999/app", 78, "", id="port-out-of-range"),
        pytest.param(
            f"postgresql://u:{ENC}@db.invalid/app", 69, "db.invalid", id="unresolvable-host"
        ),
        pytest.param(f"mysql://u:{ENC}@127.0.0.1:{free_port()}/app", 69, "", id="mysql-refused"),
    ],
)
@pytest.mark.timeout(60)
def test_bad_url_exits_with_its_code_without_printing_the_password(
    tmp_path: Path, url: str, code: int, words: str
) -> None:
    ini = write_project(tmp_path, chain(1))
    started = time.monotonic()
    result = run_cli(["upgrade", "--config", str(ini)], url, MIGRATION_CONNECT_TIMEOUT="2")
    assert result.returncode == code, result.stderr
    assert time.monotonic() - started < 20
    assert words in result.finished["reason"]
    _no_leak(result.output)


@pytest.mark.timeout(60)
def test_tls_required_but_not_offered_is_a_configuration_error(tmp_path: Path, pg_url: str) -> None:
    parsed = make_url(pg_url)
    if not parsed.host or "host" in parsed.query:
        pytest.skip("TLS negotiation needs a TCP server" + enable_hint(TCP_POSTGRES_HINT))
    if scalar(pg_url, "SHOW ssl") == "on":
        pytest.skip("this server offers TLS")
    ini = write_project(tmp_path, chain(1))
    url = with_credentials(pg_url, parsed.username or "postgres", SENTINEL_PASSWORD)
    result = run_cli(
        ["upgrade", "--config", str(ini)], url + "?sslmode=require", MIGRATION_CONNECT_TIMEOUT="2"
    )
    assert "TLS" in result.finished["reason"], result.stderr
    assert_clean_outcome(result, pg_url, 78, applied=set(), config=ini)


@pytest.mark.timeout(60)
def test_missing_role_exits_77(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(1))
    url = with_credentials(pg_url, f"nobody_{uuid.uuid4().hex[:6]}", SENTINEL_PASSWORD)
    result = run_cli(["upgrade", "--config", str(ini)], url, MIGRATION_CONNECT_TIMEOUT="2")
    assert result.finished["outcome"] == "permission_denied", result.stderr
    assert_clean_outcome(result, pg_url, 77, applied=set())


@pytest.mark.timeout(60)
def test_role_without_create_privilege_exits_77_and_changes_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    role = f"ro_{uuid.uuid4().hex[:8]}"
    execute(pg_url, f"CREATE ROLE {role} LOGIN PASSWORD 'x'")
    execute(pg_url, f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
    ini = write_project(tmp_path, chain(2))
    try:
        result = run_cli(["upgrade", "--config", str(ini)], with_credentials(pg_url, role, "x"))
        assert result.finished["outcome"] == "permission_denied", result.stderr
        assert result.finished["sqlstate"] == "42501"
        assert_clean_outcome(
            result,
            pg_url,
            77,
            applied=set(),
            password=None,
            revision_order=["r0000", "r0001"],
            config=ini,
        )
    finally:
        execute(pg_url, f"DROP OWNED BY {role}")
        execute(pg_url, f"DROP ROLE {role}")


def test_unreadable_alembic_ini_exits_78(tmp_path: Path, sqlite_url: str) -> None:
    if os.geteuid() == 0:
        pytest.skip(
            "root reads any file: an unreadable alembic.ini cannot be simulated"
            + enable_hint("scripts/test.sh as a user other than root")
        )
    ini = write_project(tmp_path, chain(1))
    ini.chmod(0)
    result = run_cli(["upgrade", "--config", str(ini)], sqlite_url)
    ini.chmod(0o644)
    assert result.returncode == 78, result.stderr


@pytest.mark.parametrize(
    ("case", "code"),
    [("empty", 78), ("no-dir", 78), ("duplicate", 65), ("syntax", 65), ("import", 65)],
)
def test_broken_project_is_refused_before_touching_the_database(
    tmp_path: Path, pg_url: str, case: str, code: int
) -> None:
    versions = tmp_path / "migrations" / "versions"
    if case == "empty":
        ini = write_project(tmp_path, [])
    elif case == "no-dir":
        ini = write_project(tmp_path, chain(1))
        for f in versions.iterdir():
            f.unlink()
        versions.rmdir()
        (tmp_path / "migrations" / "env.py").unlink()
        (tmp_path / "migrations").rmdir()
    elif case == "duplicate":
        ini = write_project(tmp_path, chain(2))
        write_revision(versions, table_rev("r0001", "r0000", "dup"), 7)
    elif case == "syntax":
        ini = write_project(tmp_path, [*chain(1), Rev("bad", "r0000", upgrade="def broken(:")])
    else:
        ini = write_project(
            tmp_path, [*chain(1), Rev("bad", "r0000", header="import no_such_module_here")]
        )
    url = with_credentials(pg_url, make_url(pg_url).username or "postgres", SENTINEL_PASSWORD)
    result = run_cli(["upgrade", "--config", str(ini)], url)
    assert_clean_outcome(result, pg_url, code, applied=set())
    assert scalar(pg_url, "SELECT to_regclass('t_r0000') IS NULL") is True


@pytest.mark.parametrize("name", ['v"; DROP TABLE canary; --', "v'; DROP TABLE canary; --"])
def test_version_table_name_with_quotes_and_semicolons_is_quoted_never_executed(
    tmp_path: Path, pg_url: str, name: str
) -> None:
    execute(pg_url, "CREATE TABLE canary (id int)")
    ini = write_project(tmp_path, chain(2), configure_kw=f"version_table={name!r}")
    result = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert result.returncode in (0, 78), result.stderr
    assert scalar(pg_url, "SELECT to_regclass('canary') IS NOT NULL") is True
    if result.returncode == 0:
        rows = query(pg_url, "SELECT tablename FROM pg_tables WHERE tablename = :n", n=name)
        assert rows, "the version table exists under its literal (quoted) name"
        again = run_cli(["upgrade", "--config", str(ini)], pg_url)
        assert again.returncode == 0 and again.finished["applied"] == 0
    assert scalar(pg_url, "SELECT to_regclass('canary') IS NOT NULL") is True


@pytest.mark.timeout(60)
def test_url_from_a_secret_file_with_trailing_newlines_and_spaces_works_end_to_end(
    tmp_path: Path, pg_url: str
) -> None:
    role = f"sf_{uuid.uuid4().hex[:8]}"
    password = " pass word with spaces "
    execute(pg_url, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    execute(pg_url, f"GRANT ALL ON SCHEMA public TO {role}")
    secret = tmp_path / "url"
    secret.write_text(with_credentials(pg_url, role, password) + "\r\n\n")
    ini = write_project(tmp_path / "p", chain(2))
    try:
        result = run_cli(
            ["upgrade", "--config", str(ini)], None, MIGRATION_DATABASE_URL_FILE=str(secret)
        )
        assert result.returncode == 0, result.stderr
        assert version_heads(pg_url) == {"r0001"}
        assert password.strip() not in result.output
    finally:
        execute(pg_url, f"DROP OWNED BY {role}")
        execute(pg_url, f"DROP ROLE {role}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_thousand_revisions_apply_in_one_run_and_the_noop_rerun_is_quick(
    tmp_path: Path, pg_url: str
) -> None:
    revs = [Rev(f"r{i:04d}", f"r{i - 1:04d}" if i else None) for i in range(2000)]
    ini = write_project(tmp_path, revs)
    started = time.monotonic()
    result = run_cli(["upgrade", "--config", str(ini)], pg_url, timeout=540)
    applied_s = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.finished["applied"] == 2000
    started = time.monotonic()
    again = run_cli(["upgrade", "--config", str(ini)], pg_url, timeout=120)
    noop_s = time.monotonic() - started
    print(f"2000 revisions: apply {applied_s:.1f}s, no-op rerun {noop_s:.1f}s")
    assert again.returncode == 0 and again.finished["applied"] == 0
    assert_clean_outcome(again, pg_url, 0, applied={"r1999"}, password=None)
