"""All settings, read from the environment (and `*_FILE` secrets); flags override them.

The only code that reads `os.environ`. Every duration is a number of seconds and every
setting has a default documented in the README's configuration table.

Read by a small table (`_SPECS`: the variable, how to parse it, what to check), not by a
settings library: every deploy pays this module's import, and pydantic-settings cost 0.3 s of
CPU there, more than a third of what plain `alembic upgrade head` spends on a no-op.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from runner import redact
from runner.errors import ConfigError
from runner.urls import DatabaseUrl, parse_database_url

# Where the database URL may come from, highest priority first. `*_FILE` is how a Kubernetes
# Secret or a Docker secret is mounted; the file's trailing CR/LF is stripped, nothing else.
URL_SOURCES = (
    "MIGRATION_DATABASE_URL",
    "MIGRATION_DATABASE_URL_FILE",
    "DATABASE_URL",
    "DATABASE_URL_FILE",
)


class Secret:
    """A value that never shows itself in a repr, a log line or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: Secret | None = None
    database_url_source: str = "MIGRATION_DATABASE_URL"
    config: Path = Path("alembic.ini")
    script_location: str | None = None
    #: The ini section env.py reads (`alembic -n NAME`).
    ini_section: str = "alembic"
    #: `alembic -x` values, read by env.py through `context.get_x_argument()`.
    x_args: tuple[str, ...] = ()
    #: `alembic --tag`, read by env.py through `context.get_tag_argument()`.
    tag: str | None = None
    #: Environment variables env.py reads its URL from (instead of `sqlalchemy.url`): the
    #: runner sets each to its own database URL, so one Secret serves both.
    export_url_as: tuple[str, ...] = ()
    connect_timeout: float = 60.0
    lock_timeout: float = 300.0
    ddl_lock_timeout: float = 2.0
    ddl_retry_budget: float = 120.0
    statement_timeout: float = 0.0
    idle_in_transaction_timeout: float = 60.0
    wait_timeout: float = 300.0
    lock_key: int | None = None
    #: The runner's history table, next to the version table; `off` for none.
    history_table: str = "migration_runner_history"
    log_format: str = "auto"
    log_level: str = "info"
    on_db_ahead: str = "warn"
    # Kubernetes (the outcome visible in the cluster). Filled by the Downward API.
    kube_events: str = "auto"
    pod_name: str | None = None
    pod_namespace: str | None = None
    job_name: str | None = None
    #: The image the runner runs in (the chart passes it), recorded in the history table.
    image: str | None = None
    #: Where the run's summary is written for `kubectl get pod` (in a pod by default at the
    #: kubelet's `/dev/termination-log`); set, it is written anywhere (a compose volume).
    termination_message_path: Path | None = None
    in_kubernetes: bool = False
    #: `lint` and `plan --sql`: a PostgreSQL server where the runner may create and drop a
    #: throwaway database (the shadow run applies the revisions there).
    shadow_url: Secret | None = None
    # GitHub Actions step summary and annotations.
    github_actions: bool = False
    github_step_summary: Path | None = None
    # Fleet: one run over many targets (README "Fleets"; runner/fleet.py).
    #: Tenant names (MIGRATION_TENANTS, or the lines of MIGRATION_TENANTS_FILE): each runs the
    #: project with the x-argument `tenant_arg=NAME`, as `alembic -x tenant=NAME upgrade head`.
    tenants: tuple[str, ...] = ()
    tenants_file: Path | None = None
    #: SQL run on the main database; its first column names the tenants.
    tenants_query: str | None = None
    tenant_arg: str = "tenant"
    database_urls_file: Path | None = None
    #: The URLs of `database_urls_file` (a mounted Secret), each a target; registered for
    #: masking when read.
    database_urls: tuple[Secret, ...] = ()
    #: Targets migrated at once, each in a worker process of its own.
    parallel: int = 4
    #: Stop starting targets after this many failed (0: never stop).
    max_failed: int = 0
    #: Migrate this many targets first; stop if any of them fails.
    canary: int = 0
    shard_count: int = 1
    #: This pod's shard (MIGRATION_SHARD_INDEX, or an Indexed Job's JOB_COMPLETION_INDEX).
    shard_index: int | None = None

    def __post_init__(self) -> None:
        errors = [
            f"{spec.variables[0]}: {problem}"
            for name, spec in _SPECS.items()
            if (problem := spec.problem(getattr(self, name))) is not None
        ]
        errors += _fleet_problems(self)
        if errors:
            raise ConfigError("invalid settings: " + "; ".join(errors))

    @property
    def fleet(self) -> bool:
        """Whether this run migrates a fleet of targets (tenants or databases)."""
        return bool(
            self.tenants
            or self.tenants_file  # an empty list is a fleet of none, not the main database
            or self.tenants_query
            or self.database_urls_file
            or self.database_urls
        )

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


# -- how each setting is read and checked ------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    parse: Callable[[Any], Any]
    #: Environment variables, first found wins (default: MIGRATION_<NAME>).
    variables: tuple[str, ...]
    check: Callable[[Any], str | None] = lambda _: None

    def problem(self, value: Any) -> str | None:
        return None if value is None else self.check(value)


def _text(value: Any) -> str:
    return str(value).strip()


def _seconds(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError("not a number of seconds") from None


def _at_least_zero(value: float) -> str | None:
    return "must be 0 or more" if value < 0 else None


def _above_zero(value: float) -> str | None:
    return "must be more than 0" if value <= 0 else None


def _identifier(value: str) -> str | None:
    ok = value and len(value) <= 63 and value.replace("_", "a").isalnum() and not value[0].isdigit()
    return None if ok else "must be a table name (letters, digits, _) or off"


def _integer(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError("not an integer") from None


def _int64(value: int) -> str | None:
    return None if -(2**63) <= value < 2**63 else "must be a signed 64-bit integer"


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError("must be true or false")


def _present(value: Any) -> bool:
    """KUBERNETES_SERVICE_HOST holds an address, not a boolean: any value means "in a pod"."""
    return value if isinstance(value, bool) else bool(str(value).strip())


def _x_args(value: Any) -> tuple[str, ...]:
    """One `key=value` per line, or a JSON array of strings (flags: a list already)."""
    if not isinstance(value, str):
        return tuple(str(v) for v in value)
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise ValueError("not a JSON array of strings") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("not a JSON array of strings")
        return tuple(items)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _names(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    names = tuple(str(name).strip() for name in items if str(name).strip())
    for name in names:
        if not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ValueError(f"{name!r} is not an environment variable name")
    return names


#: Characters a tenant name may not hold: it is handed to env.py, which may quote it into SQL
#: (Alembic's cookbook: `set search_path to "%s"`).
_TENANT_FORBIDDEN = set("\"'`\\;,")


def tenant_name_problem(name: str) -> str | None:
    """Why `name` cannot be a tenant name (None when it can)."""
    if not name or len(name) > 255:
        return f"{name[:40]!r} must be 1 to 255 characters"
    if any(c.isspace() or not c.isprintable() or c in _TENANT_FORBIDDEN for c in name):
        return f"{name!r} holds a space, a quote, a comma, ';' or a control character"
    return None


def _tenant_names(value: Any) -> tuple[str, ...]:
    """A comma-separated list (flags: a list already); blanks dropped, duplicates once."""
    items = value.split(",") if isinstance(value, str) else value
    names = dict.fromkeys(str(name).strip() for name in items if str(name).strip())
    for name in names:
        if (problem := tenant_name_problem(name)) is not None:
            raise ValueError(problem)
    return tuple(names)


def _key_name(value: str) -> str | None:
    ok = value and "=" not in value and not any(c.isspace() for c in value)
    return None if ok else "must be an x-argument key (no '=', no spaces)"


def _at_least_one(value: int) -> str | None:
    return "must be 1 or more" if value < 1 else None


def _not_negative(value: int) -> str | None:
    return "must be 0 or more" if value < 0 else None


def _fleet_problems(s: Settings) -> list[str]:
    """What the fleet settings say together."""
    problems = []
    sources = [
        name
        for name, used in (
            ("MIGRATION_TENANTS/MIGRATION_TENANTS_FILE", bool(s.tenants or s.tenants_file)),
            ("MIGRATION_TENANTS_QUERY", bool(s.tenants_query)),
            ("MIGRATION_DATABASE_URLS_FILE", bool(s.database_urls_file or s.database_urls)),
        )
        if used
    ]
    if len(sources) > 1:
        problems.append(f"choose one source of fleet targets, not {' and '.join(sources)}")
    if s.shard_count > 1:
        if not s.fleet:
            problems.append(
                "MIGRATION_SHARD_COUNT: shards split a fleet; set MIGRATION_TENANTS, "
                "MIGRATION_TENANTS_FILE, MIGRATION_TENANTS_QUERY or MIGRATION_DATABASE_URLS_FILE"
            )
        if s.shard_index is None:
            problems.append(
                "MIGRATION_SHARD_INDEX: needed with MIGRATION_SHARD_COUNT > 1 (an Indexed Job "
                "sets JOB_COMPLETION_INDEX)"
            )
        elif s.shard_index >= s.shard_count:
            problems.append(
                f"MIGRATION_SHARD_INDEX: {s.shard_index} is not below MIGRATION_SHARD_COUNT "
                f"({s.shard_count})"
            )
    return problems


def _optional_text(value: Any) -> str | None:
    return _text(value) or None


def _path(value: Any) -> Path:
    return Path(value)


def _secret_url(value: Any) -> Secret | None:
    """A URL holding a password: masked in every output from the moment it is read."""
    if isinstance(value, Secret):
        return value
    text = str(value).strip()
    if not text:
        return None
    redact.register_url_text(text)
    return Secret(text)


def _spec(
    name: str,
    parse: Callable[[Any], Any],
    check: Callable[[Any], str | None] = lambda _: None,
    variables: tuple[str, ...] = (),
) -> tuple[str, _Spec]:
    return name, _Spec(parse, variables or (f"MIGRATION_{name.upper()}",), check)


_SPECS: dict[str, _Spec] = dict(
    [
        _spec("config", _path),
        _spec("script_location", _optional_text),
        _spec("ini_section", _text),
        _spec("x_args", _x_args),
        _spec("tag", _optional_text),
        _spec("export_url_as", _names),
        _spec("connect_timeout", _seconds, _at_least_zero),
        _spec("lock_timeout", _seconds, _at_least_zero),
        _spec("ddl_lock_timeout", _seconds, _above_zero),
        _spec("ddl_retry_budget", _seconds, _at_least_zero),
        _spec("statement_timeout", _seconds, _at_least_zero),
        _spec("idle_in_transaction_timeout", _seconds, _at_least_zero),
        _spec("wait_timeout", _seconds, _at_least_zero),
        _spec("lock_key", _integer, _int64),
        _spec("history_table", _text, _identifier),
        _spec("log_format", _one_of("auto", "json", "console")),
        _spec("log_level", _one_of("debug", "info", "warning", "error")),
        _spec("on_db_ahead", _one_of("warn", "fail")),
        _spec("kube_events", _one_of("auto", "on", "off")),
        _spec("pod_name", _optional_text),
        _spec("pod_namespace", _optional_text),
        _spec("job_name", _optional_text),
        _spec("image", _optional_text),
        _spec("termination_message_path", _path),
        _spec(
            "in_kubernetes",
            _present,
            variables=("MIGRATION_IN_KUBERNETES", "KUBERNETES_SERVICE_HOST"),
        ),
        _spec("shadow_url", _secret_url),
        _spec("github_actions", _boolean, variables=("GITHUB_ACTIONS",)),
        _spec("github_step_summary", _path, variables=("GITHUB_STEP_SUMMARY",)),
        _spec("tenants", _tenant_names),
        _spec("tenants_file", _path),
        _spec("tenants_query", _optional_text),
        _spec("tenant_arg", _text, _key_name),
        _spec("database_urls_file", _path),
        _spec("parallel", _integer, _at_least_one),
        _spec("max_failed", _integer, _not_negative),
        _spec("canary", _integer, _not_negative),
        _spec("shard_count", _integer, _at_least_one),
        _spec(
            "shard_index",
            _integer,
            _not_negative,
            variables=("MIGRATION_SHARD_INDEX", "JOB_COMPLETION_INDEX"),
        ),
    ]
)


def variables() -> dict[str, str]:
    """Each user setting and the environment variable that sets it (for the README test)."""
    return {name: spec.variables[0] for name, spec in _SPECS.items()}


def export_database_url(settings: Settings) -> None:
    """MIGRATION_EXPORT_URL_AS: env.py reads its URL from variables of its own; point them at
    `settings.database_url` (the shadow run points them at its throwaway database)."""
    if settings.export_url_as and settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        for name in settings.export_url_as:
            os.environ[name] = url


def _read_secret_file(var: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{var}={path}: cannot read the file ({exc.strerror})") from None
    return text.rstrip("\r\n")


def _database_url_from_environment() -> tuple[str, str] | None:
    """(value, variable name) of the first URL source that is set, else None."""
    for var in URL_SOURCES:
        value = os.environ.get(var)
        if not value:
            continue
        if var.endswith("_FILE"):
            value = _read_secret_file(var, value)
        redact.register_url_text(value)
        return value, var
    return None


def _lines(var: str, path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each line of a list file that is neither blank nor a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{var}={path}: cannot read the file ({exc.strerror})") from None
    lines = ((n, line.strip()) for n, line in enumerate(text.splitlines(), 1))
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


def _read_fleet_files(values: dict[str, Any]) -> None:
    """The lists behind MIGRATION_TENANTS_FILE and MIGRATION_DATABASE_URLS_FILE. Every URL is
    registered for masking before anything else happens to it."""
    urls_file = values.get("database_urls_file")
    if urls_file is not None:
        urls = _lines("MIGRATION_DATABASE_URLS_FILE", urls_file)
        for _, url in urls:
            redact.register_url_text(url)
        values["database_urls"] = tuple(Secret(url) for url in dict.fromkeys(u for _, u in urls))
    tenants_file = values.get("tenants_file")
    if tenants_file is not None:
        if values.get("tenants"):
            raise ConfigError(
                "invalid settings: set MIGRATION_TENANTS or MIGRATION_TENANTS_FILE, not both"
            )
        names = _lines("MIGRATION_TENANTS_FILE", tenants_file)
        for n, name in names:
            if (problem := tenant_name_problem(name)) is not None:
                raise ConfigError(f"invalid settings: MIGRATION_TENANTS_FILE line {n}: {problem}")
        values["tenants"] = tuple(dict.fromkeys(name for _, name in names))


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Read settings from the environment; `overrides` (from flags) win over it. Every
    invalid setting is named in one error, without echoing its value."""
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values: dict[str, Any] = {}
    errors: list[str] = []
    for name, spec in _SPECS.items():
        source, raw = _raw_value(name, spec, flags)
        if raw is None:
            continue
        try:
            values[name] = spec.parse(raw)
        except ValueError as exc:
            errors.append(f"{source}: {exc}")
    if errors:
        raise ConfigError("invalid settings: " + "; ".join(errors))
    _read_fleet_files(values)
    url = flags.get("database_url")
    if url is not None:
        redact.register_url_text(url)
        values["database_url"], values["database_url_source"] = Secret(url), "--database-url"
    else:
        found = _database_url_from_environment()
        if found is not None:
            values["database_url"], values["database_url_source"] = Secret(found[0]), found[1]
    return Settings(**values)


def _raw_value(name: str, spec: _Spec, flags: dict[str, Any]) -> tuple[str, Any]:
    if name in flags:
        return f"--{name.replace('_', '-')}", flags[name]
    for variable in spec.variables:
        value = os.environ.get(variable)
        if value is not None:
            return variable, value
    return spec.variables[0], None


assert {f.name for f in fields(Settings)} == {
    *_SPECS,
    "database_url",
    "database_url_source",
    "database_urls",
}
