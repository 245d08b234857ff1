"""Raw reads of the process environment, shared by the settings and by the lock probe.

`runner.settings` builds the validated `Settings` from the environment with pydantic-settings;
importing that costs ~0.15 s of CPU. The lock probe (runner/fastpath.py) must run before that
cost, so that ten runners started together on one machine find out at once which of them
migrates: `early_settings` reads the handful of values it needs here, and the full `Settings`
must agree with them (`EarlySettings.agrees_with`) before the probe's result is used.
Together with runner/settings.py, this is the only code that reads `os.environ`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import redact
from runner.errors import ConfigError

if TYPE_CHECKING:
    from runner.settings import Settings

# Where the database URL may come from, highest priority first. `*_FILE` is how a Kubernetes
# Secret or a Docker secret is mounted; the file's trailing CR/LF is stripped, nothing else.
URL_SOURCES = (
    "MIGRATION_DATABASE_URL",
    "MIGRATION_DATABASE_URL_FILE",
    "DATABASE_URL",
    "DATABASE_URL_FILE",
)
# Variables that change between runs without changing what env.py configures.
_NOT_IN_DIGEST = frozenset({*URL_SOURCES, "MIGRATION_LOG_FORMAT", "MIGRATION_LOG_LEVEL"})
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def read_secret_file(var: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{var}={path}: cannot read the file ({exc.strerror})") from None
    return text.rstrip("\r\n")


def database_url_from_environment() -> tuple[str, str] | None:
    """(value, variable name) of the first URL source that is set, else None."""
    for var in URL_SOURCES:
        value = os.environ.get(var)
        if not value:
            continue
        if var.endswith("_FILE"):
            value = read_secret_file(var, value)
        redact.register_url_text(value)
        return value, var
    return None


def environment_digest() -> str:
    digest = hashlib.sha256()
    for key in sorted(os.environ):
        if key not in _NOT_IN_DIGEST:
            digest.update(f"{key}\0{os.environ[key]}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def default_cache_dir() -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME") or (
        str(Path(os.environ["HOME"], ".cache")) if os.environ.get("HOME") else None
    )
    return Path(base, "migration-runner") if base else None


@dataclass(frozen=True)
class EarlySettings:
    """What the lock probe needs, read without pydantic."""

    database_url: str
    config: Path
    script_location: str | None
    cache_dir: Path
    lock_key: int | None
    environment_digest: str

    def agrees_with(self, settings: Settings) -> bool:
        return (
            settings.fast_path
            and settings.database_url is not None
            and settings.database_url.get_secret_value() == self.database_url
            and settings.config == self.config
            and settings.script_location == self.script_location
            and settings.cache_dir == self.cache_dir
            and settings.lock_key == self.lock_key
            and settings.environment_digest == self.environment_digest
        )


def early_settings(overrides: dict[str, Any]) -> EarlySettings | None:
    """The probe's settings, or None whenever anything is unusual (the full path decides)."""
    env = os.environ
    try:
        if env.get("MIGRATION_FAST_PATH", "true").strip().lower() not in _TRUE:
            return None
        url = overrides.get("database_url")
        if url is None:
            found = database_url_from_environment()
            if found is None:
                return None
            url = found[0]
        cache_dir = env.get("MIGRATION_CACHE_DIR")
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        key = env.get("MIGRATION_LOCK_KEY")
        config = overrides.get("config") or env.get("MIGRATION_CONFIG") or "alembic.ini"
        location = overrides.get("script_location") or env.get("MIGRATION_SCRIPT_LOCATION")
        if cache is None:
            return None
        return EarlySettings(
            url,
            Path(config),
            location or None,
            cache,
            int(key) if key else None,
            environment_digest(),
        )
    except (ConfigError, ValueError, OSError):
        return None
