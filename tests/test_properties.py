"""Property tests: no generated password ever appears in the output — in process on the
settings, URL-parsing, error and log paths, and (a few examples) end to end through the CLI
with a failing connection."""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import logs, redact
from runner.db import classify_connect_error, one_line
from runner.errors import ConfigError
from runner.urls import parse_database_url
from tests.faults.checks import leaked
from tests.faults.private_pg import free_port
from tests.support import chain, run_cli, write_project

# Passwords people paste: printable, any URL-special character, spaces inside. At least 6
# characters, so that a password cannot coincide with ordinary words of a log line.
PASSWORDS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x2FF, blacklist_categories=("Cs",))
    | st.sampled_from(list("@:/%#?&=+ ;'\"\\")),
    min_size=6,
    max_size=30,
).filter(lambda p: p.strip() == p)


def _forms(password: str) -> set[str]:
    return {password, quote(password, safe=""), quote_plus(password)}


@settings(max_examples=150, deadline=None)
@given(password=PASSWORDS, host=st.sampled_from(["db", "db:notaport", "[::1", "h:99999"]))
def test_url_errors_never_echo_the_password(password: str, host: str) -> None:
    redact.forget_all()
    raw = f"postgresql://user:{quote(password, safe='')}@{host}/app"
    try:
        parse_database_url(raw, source="MIGRATION_DATABASE_URL")
    except ConfigError as exc:
        for form in _forms(password):
            assert form not in redact.redact(exc.reason)
            assert form not in redact.redact(str(exc.fields))


@settings(max_examples=150, deadline=None)
@given(password=PASSWORDS)
def test_driver_error_text_with_the_url_is_scrubbed_by_one_line(password: str) -> None:
    redact.forget_all()
    url = f"postgresql://user:{quote(password, safe='')}@db/app"
    parse_database_url(url, source="test")

    class FakeDriverError(Exception):
        pass

    exc = FakeDriverError(f'connection to "{url}" failed: password "{password}" rejected')
    line = one_line(exc)
    classified = classify_connect_error(exc, "db")
    for form in _forms(password):
        assert form not in line
        if classified is not None:
            assert form not in classified.reason


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=PASSWORDS)
def test_log_pipeline_never_renders_a_registered_password(password: str) -> None:
    redact.forget_all()
    url = f"postgresql://user:{quote(password, safe='')}@db/app"
    parse_database_url(url, source="test")
    stream = io.StringIO()
    logs.configure_logging("json", "info", stream)
    import logging

    logs.log.error(
        "connect_failed", url=url, detail=[password], nested={"pw": quote_plus(password)}
    )
    logging.getLogger("sqlalchemy.engine").warning("raw %s at %s", password, url)
    out = stream.getvalue()
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["event"] == "connect_failed", "the event was written"
    assert not leaked(password, out)


@pytest.mark.slow
@pytest.mark.timeout(180)
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=PASSWORDS)
def test_cli_with_a_failing_connection_never_prints_the_password(
    tmp_path: Path, password: str
) -> None:
    ini = tmp_path / "alembic.ini"
    if not ini.exists():
        write_project(tmp_path, chain(1))
    url = f"postgresql://user:{quote(password, safe='')}@127.0.0.1:{free_port()}/app"
    result = run_cli(
        ["upgrade", "--config", str(ini), "--log-level", "debug"],
        url,
        MIGRATION_CONNECT_TIMEOUT="0.5",
    )
    assert result.returncode == 69, result.stderr
    assert not leaked(password, result.output), leaked(password, result.output)
