"""All settings, read from the environment (and `*_FILE` secrets); flags override them.

With runner/environment.py (raw reads shared with the lock probe), the only code that reads
`os.environ`. Every duration is a number of seconds and
every setting has a default documented in the README's configuration table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runner import environment, redact
from runner.errors import ConfigError
from runner.urls import DatabaseUrl, parse_database_url

Seconds = float


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MIGRATION_", extra="forbid", populate_by_name=True, frozen=True
    )

    database_url: SecretStr | None = Field(default=None, exclude=True)
    database_url_source: str = Field(default="MIGRATION_DATABASE_URL", exclude=True)
    config: Path = Path("alembic.ini")
    script_location: str | None = None
    connect_timeout: Seconds = Field(default=60.0, ge=0)
    lock_timeout: Seconds = Field(default=300.0, ge=0)
    ddl_lock_timeout: Seconds = Field(default=2.0, gt=0)
    ddl_retry_budget: Seconds = Field(default=120.0, ge=0)
    statement_timeout: Seconds = Field(default=0.0, ge=0)
    idle_in_transaction_timeout: Seconds = Field(default=60.0, ge=0)
    wait_timeout: Seconds = Field(default=300.0, ge=0)
    lock_key: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    on_db_ahead: Literal["warn", "fail"] = "warn"
    # The fast path answers "already at head" from a cache of Alembic's own answers, without
    # importing Alembic or SQLAlchemy (see runner/fastpath.py). Off: always the full path.
    fast_path: bool = True
    cache_dir: Path | None = None
    #: Digest of the environment the project's env.py sees (the database URL excluded): a
    #: cached answer is reused only under the same environment. Computed, not configured.
    environment_digest: str = Field(default="", exclude=True)
    # Kubernetes (issue: the outcome visible in the cluster). Filled by the Downward API.
    kube_events: Literal["auto", "on", "off"] = "auto"
    pod_name: str | None = None
    pod_namespace: str | None = None
    job_name: str | None = None
    termination_message_path: Path = Path("/dev/termination-log")
    in_kubernetes: bool = Field(
        default=False, validation_alias=AliasChoices("in_kubernetes", "KUBERNETES_SERVICE_HOST")
    )
    # GitHub Actions step summary and annotations.
    github_actions: bool = Field(
        default=False, validation_alias=AliasChoices("github_actions", "GITHUB_ACTIONS")
    )
    github_step_summary: Path | None = Field(
        default=None, validation_alias=AliasChoices("github_step_summary", "GITHUB_STEP_SUMMARY")
    )

    @field_validator("log_level", "log_format", "on_db_ahead", "kube_events", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("in_kubernetes", mode="before")
    @classmethod
    def _service_host_means_in_cluster(cls, value: Any) -> Any:
        # KUBERNETES_SERVICE_HOST holds an address, not a boolean; any value means "in a pod".
        if isinstance(value, str) and value not in ("true", "false", "0", "1"):
            return bool(value.strip())
        return value

    def database(self) -> DatabaseUrl:
        """The parsed database URL, or a configuration error naming every place looked at."""
        if self.database_url is None:
            raise ConfigError(
                "no database URL: set MIGRATION_DATABASE_URL (or DATABASE_URL, or a *_FILE "
                "variant pointing at a mounted secret)"
            )
        return parse_database_url(
            self.database_url.get_secret_value(), source=self.database_url_source
        )


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Read settings from the environment; `overrides` (from flags) win over it."""
    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    values["environment_digest"] = environment.environment_digest()
    if not os.environ.get("MIGRATION_CACHE_DIR"):
        values.setdefault("cache_dir", environment.default_cache_dir())
    if "database_url" in values:
        redact.register_url_text(values["database_url"])
        values["database_url_source"] = "--database-url"
    else:
        found = environment.database_url_from_environment()
        if found is not None:
            values["database_url"], values["database_url_source"] = found
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    """A one-line reason per invalid setting, naming the variable and never echoing its value."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        name = str(err["loc"][0]) if err["loc"] else "setting"
        if name in Settings.model_fields and name not in ("github_actions", "in_kubernetes"):
            name = f"MIGRATION_{name.upper()}"
        parts.append(f"{name}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)
