"""Settings: where the database URL comes from, how it is normalised, and every default."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import redact
from runner.errors import ConfigError
from runner.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "MIGRATION_DATABASE_URL",
        "MIGRATION_DATABASE_URL_FILE",
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "KUBERNETES_SERVICE_HOST",
        "GITHUB_ACTIONS",
        "GITHUB_STEP_SUMMARY",
    ):
        monkeypatch.delenv(var, raising=False)
    for var in list(__import__("os").environ):
        if var.startswith("MIGRATION_"):
            monkeypatch.delenv(var, raising=False)


def test_every_setting_has_the_documented_default() -> None:
    s = load_settings()
    assert s.database_url is None
    assert s.config == Path("alembic.ini")
    assert s.script_location is None
    assert s.connect_timeout == 60
    assert s.lock_timeout == 300
    assert s.ddl_lock_timeout == 2
    assert s.ddl_retry_budget == 120
    assert s.statement_timeout == 0
    assert s.idle_in_transaction_timeout == 60
    assert s.wait_timeout == 300
    assert s.lock_key is None
    assert s.log_format == "auto"
    assert s.log_level == "info"
    assert s.on_db_ahead == "warn"
    assert s.ini_section == "alembic" and s.x_args == () and s.tag is None
    assert s.export_url_as == ()
    assert s.kube_events == "auto"
    assert s.in_kubernetes is False
    assert s.github_actions is False


def test_no_url_is_a_configuration_error_not_a_sqlite_file() -> None:
    with pytest.raises(ConfigError, match="no database URL"):
        load_settings().database()


def test_migration_database_url_wins_over_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/app")
    monkeypatch.setenv("MIGRATION_DATABASE_URL", "postgresql://migrator@db/app")
    assert load_settings().database().url.username == "migrator"


def test_database_url_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/app")
    assert load_settings().database().url.username == "app"


def test_file_variant_strips_trailing_newlines_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://u:pass word @db/app\r\n\n")
    monkeypatch.setenv("MIGRATION_DATABASE_URL_FILE", str(secret))
    url = load_settings().database().url
    assert url.password == "pass word "


def test_unreadable_secret_file_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL_FILE", "/nonexistent/secret")
    with pytest.raises(ConfigError, match="DATABASE_URL_FILE=/nonexistent/secret"):
        load_settings()


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", "5")
    assert load_settings({"lock_timeout": 9.0}).lock_timeout == 9.0
    assert load_settings().lock_timeout == 5.0


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("postgres://u@h/d", "postgresql+psycopg2"),
        ("postgresql://u@h/d", "postgresql+psycopg2"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg"),
        ("postgresql+asyncpg://u@h/d", "postgresql+psycopg2"),
        ("mysql://u@h/d", "mysql+pymysql"),
        ("mariadb://u@h/d", "mariadb+pymysql"),
        ("sqlite:///tmp/x.db", "sqlite+pysqlite"),
    ],
)
def test_bare_schemes_get_an_installed_sync_driver(
    monkeypatch: pytest.MonkeyPatch, raw: str, driver: str
) -> None:
    monkeypatch.setenv("MIGRATION_DATABASE_URL", raw)
    assert load_settings().database().url.drivername == driver


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("oracle2://u@h/d", "unknown database scheme"),
        ("postgresql+nosuch://u@h/d", "unknown driver"),
        ("not a url", "not a valid database URL"),
        ("postgresql://u:p@h:notaport/d", "not a valid database URL"),
        ("postgresql://u@h", "names no database"),
        ("sqlite://", "in-memory"),
    ],
)
def test_bad_urls_are_configuration_errors(
    monkeypatch: pytest.MonkeyPatch, raw: str, message: str
) -> None:
    monkeypatch.setenv("MIGRATION_DATABASE_URL", raw)
    with pytest.raises(ConfigError, match=message):
        load_settings().database()


def test_invalid_setting_names_variable_without_echoing_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", "soon-ish-secret")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "MIGRATION_LOCK_TIMEOUT" in info.value.reason
    assert "soon-ish-secret" not in info.value.reason


def test_url_password_is_registered_for_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    redact.forget_all()
    monkeypatch.setenv("MIGRATION_DATABASE_URL", "postgresql://u:s%40cr%3At@h/d")
    load_settings().database()
    assert "s@cr:t" not in redact.redact("oops s@cr:t and s%40cr%3At")


def test_kubernetes_service_host_means_in_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert load_settings().in_kubernetes is True


def test_settings_forbid_unknown_fields() -> None:
    with pytest.raises(TypeError, match="unexpected keyword"):
        Settings(nonsense=1)  # type: ignore[call-arg]


def test_invalid_values_given_directly_are_refused_too() -> None:
    with pytest.raises(ConfigError, match="MIGRATION_DDL_LOCK_TIMEOUT: must be more than 0"):
        Settings(ddl_lock_timeout=0)


def test_every_invalid_setting_is_named_in_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATION_LOG_LEVEL", "loud")
    monkeypatch.setenv("MIGRATION_WAIT_TIMEOUT", "-1")
    monkeypatch.setenv("MIGRATION_X_ARGS", "[1, 2]")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "MIGRATION_LOG_LEVEL: must be one of" in info.value.reason
    assert "MIGRATION_X_ARGS: not a JSON array of strings" in info.value.reason
    # Parsing stops at the first layer of errors; the range check names the variable too.
    monkeypatch.delenv("MIGRATION_LOG_LEVEL")
    monkeypatch.delenv("MIGRATION_X_ARGS")
    with pytest.raises(ConfigError, match="MIGRATION_WAIT_TIMEOUT: must be 0 or more"):
        load_settings()


def test_alembic_arguments_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATION_X_ARGS", "tenant=acme\ndata=1\n")
    monkeypatch.setenv("MIGRATION_INI_SECTION", "shop")
    monkeypatch.setenv("MIGRATION_TAG", "blue")
    monkeypatch.setenv("MIGRATION_EXPORT_URL_AS", "APP_DB_URL, LEGACY_URL")
    s = load_settings()
    assert s.x_args == ("tenant=acme", "data=1")
    assert (s.ini_section, s.tag) == ("shop", "blue")
    assert s.export_url_as == ("APP_DB_URL", "LEGACY_URL")
    monkeypatch.setenv("MIGRATION_X_ARGS", '["tenant=a b", "x"]')
    assert load_settings().x_args == ("tenant=a b", "x")
    assert load_settings({"x_args": ("flag=1",)}).x_args == ("flag=1",), "flags win"
