"""The project's Alembic configuration and revision graph. Never opens a database connection.

Alembic owns the graph. The runner asks it the way Alembic's own commands do: through the
`ScriptDirectory` that env.py sees as `context.script`, *after* env.py has run, because env.py
may change it (a project that sets `context.script.version_locations` per dialect). This module
builds the `Config` as Alembic's command line would, and turns the graph's answers and
complaints into the runner's terms.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError

from runner.errors import ConfigError, GraphError, MultipleHeads, UsageError


@dataclass(frozen=True)
class PendingRevision:
    """One step of a plan: a revision to apply (or to undo, or a stamp)."""

    revision: str
    down_revision: str | None
    message: str
    #: `upgrade`, `downgrade` or `stamp`.
    kind: str = "upgrade"
    #: The revision file, when the step runs one.
    path: str | None = None

    @classmethod
    def of(cls, script: Script, kind: str = "upgrade") -> PendingRevision:
        return cls(
            script.revision,
            _joined(script.down_revision),
            (script.doc or "").strip(),
            kind,
            script.path,
        )

    def public(self) -> dict[str, Any]:
        """The fields `plan --json` and `check --json` print."""
        out = {k: v for k, v in asdict(self).items() if k in ("revision", "down_revision")}
        out["message"] = self.message
        if self.kind != "upgrade":
            out["kind"] = self.kind
        return out


def describe_step(step: Any) -> PendingRevision:
    """An Alembic migration step (`RevisionStep` or `StampStep`) in the runner's terms."""
    script = getattr(step, "revision", None)
    if isinstance(script, Script):
        return PendingRevision.of(script, "upgrade" if step.is_upgrade else "downgrade")
    return PendingRevision(
        ",".join(step.to_revisions_no_deps) or "base",
        ",".join(step.from_revisions_no_deps) or None,
        "stamp",
        "stamp",
    )


# The steps Alembic's own `upgrade`, `downgrade` and `stamp` commands run (alembic/command.py
# calls these private methods the same way); typed here once, since Alembic's annotations say
# `str` where the command passes the tuple of current heads.


def upgrade_steps(script: ScriptDirectory, destination: str, heads: tuple[str, ...]) -> list[Any]:
    return list(script._upgrade_revs(destination, cast(Any, heads)))  # noqa: SLF001


def downgrade_steps(script: ScriptDirectory, destination: str, heads: tuple[str, ...]) -> list[Any]:
    return list(script._downgrade_revs(destination, cast(Any, heads)))  # noqa: SLF001


def stamp_steps(
    script: ScriptDirectory, destinations: tuple[str, ...], heads: tuple[str, ...]
) -> list[Any]:
    return list(script._stamp_revs(destinations, heads))  # noqa: SLF001


def _joined(value: str | tuple[str, ...] | list[str] | None) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else ",".join(value)


def load_config(
    config_path: Path,
    script_location: str | None,
    ini_section: str = "alembic",
    x_args: tuple[str, ...] = (),
    tag: str | None = None,
) -> Config:
    """The Alembic `Config` as `alembic -c INI -n SECTION -x ... --tag ...` builds it, with
    `[tool.alembic]` from `pyproject.toml` as Alembic's command line reads it (the file given,
    or the one in the working directory)."""
    cmd_opts = argparse.Namespace(
        config=[str(config_path)],
        name=ini_section,
        x=list(x_args) or None,
        tag=tag,
        raiseerr=False,
        quiet=False,
    )
    if config_path.name == "pyproject.toml":
        ini, toml = None, config_path
    else:
        ini, toml = config_path, Path("pyproject.toml")
    cfg = Config(
        str(ini) if ini is not None and ini.is_file() else None,
        toml_file=str(toml),
        ini_section=ini_section,
        cmd_opts=cmd_opts,
    )
    if script_location:
        cfg.set_main_option("script_location", script_location.replace("%", "%%"))
    elif not cfg.get_alembic_option("script_location"):
        if cfg.config_file_name is None and not cfg.toml_alembic_config:
            raise ConfigError(
                f"{config_path} not found (set MIGRATION_CONFIG to the path of alembic.ini, "
                "or MIGRATION_SCRIPT_LOCATION to the migrations directory)",
                path=str(config_path),
            )
        raise ConfigError(
            f"{config_path} names no script_location (section [{ini_section}])",
            path=str(config_path),
        )
    return cfg


def set_database_url(cfg: Config, url: str) -> None:
    """Hand env.py the URL through `sqlalchemy.url`; `%` must be doubled for configparser."""
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))


def open_script_directory(cfg: Config) -> ScriptDirectory:
    """The project's `ScriptDirectory`, with no revision loaded yet (env.py may still move
    the version locations)."""
    try:
        script = ScriptDirectory.from_config(cfg)
    except CommandError as exc:
        raise ConfigError(f"cannot open the migration scripts: {exc}") from None
    if not Path(script.dir, "env.py").is_file():
        raise ConfigError(f"no env.py in the script directory {script.dir}")
    return script


def is_async_env(script: ScriptDirectory) -> bool:
    """True for an env.py made by `alembic init -t async` (it builds an async engine)."""
    source = Path(script.dir, "env.py").read_text(encoding="utf-8", errors="replace")
    return "async_engine_from_config" in source or "create_async_engine" in source


class Graph:
    """Questions about the revision graph, asked of the script directory as env.py left it."""

    def __init__(self, script: ScriptDirectory) -> None:
        self.script = script
        self._loaded = False

    def load(self) -> None:
        """Load every revision once, turning load problems into one clear error."""
        if self._loaded:
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                heads = self.script.get_heads()
            except CommandError as exc:
                raise GraphError(f"the revision graph is invalid: {exc}") from None
            except KeyError as exc:
                raise GraphError(
                    f"the revision graph is invalid: a revision names {exc} as its "
                    "down_revision or dependency, and no revision has that id"
                ) from None
            except Exception as exc:
                raise GraphError(
                    f"cannot load a revision file: {_describe_load_error(exc)}",
                    error=type(exc).__name__,
                ) from None
        duplicates = [str(w.message) for w in caught if "present more than once" in str(w.message)]
        if duplicates:
            raise GraphError(f"duplicate revision id: {duplicates[0]}", duplicates=duplicates)
        for warning in caught:  # what is not ours to judge goes on as it came
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        if not heads:
            raise ConfigError(f"the script directory {self.script.dir} holds no revisions")
        self._loaded = True

    @property
    def heads(self) -> tuple[str, ...]:
        self.load()
        return tuple(self.script.get_heads())

    def unknown(self, db_heads: tuple[str, ...]) -> list[str]:
        """Revisions the database is at that this code does not know (app rolled back)."""
        self.load()
        missing = []
        for rev in db_heads:
            try:
                if self.script.get_revision(rev) is None:
                    missing.append(rev)
            except CommandError:
                missing.append(rev)
        return missing

    def check_target(self, target: str) -> None:
        """`head` (alone or relative: `head-1`) needs one head; say so with the heads named,
        as Alembic's own message does not."""
        self.load()
        base = target.split(":")[-1]
        if base == "head" or (base.startswith("head") and base[4:5] in ("+", "-")):
            heads = list(self.heads)
            if len(heads) > 1:
                raise MultipleHeads(heads)

    @contextmanager
    def asking(self, target: str) -> Iterator[None]:
        """Alembic's complaints about a revision argument, as the runner's errors."""
        try:
            yield
        except CommandError as exc:
            message = str(exc).splitlines()[0]
            if "Multiple head" in message:
                raise MultipleHeads(list(self.heads)) from None
            if any(
                phrase in message
                for phrase in ("Can't locate revision", "No such revision", "not a valid", "is not")
            ):
                raise UsageError(f"revision {target!r}: {message}") from None
            raise GraphError(message) from None

    def history(self) -> list[PendingRevision]:
        self.load()
        return [PendingRevision.of(s) for s in self.script.walk_revisions()]


def _describe_load_error(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}:{exc.lineno}: SyntaxError: {exc.msg}"
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if "site-packages" not in frame.filename and frame.filename != sys.argv[0]:
            where = f"{frame.filename}:{frame.lineno}: "
            break
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{where}{type(exc).__name__}: {first}"
