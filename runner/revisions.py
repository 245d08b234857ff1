"""The project's Alembic configuration and revision graph. Never opens a database connection.

Alembic owns the graph; this module loads it, turns Alembic's complaints into the runner's
errors, and answers the questions the orchestrator asks (heads, unknown revisions, pending).
"""

from __future__ import annotations

import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError

from runner.errors import ConfigError, GraphError, MultipleHeads, UsageError


@dataclass(frozen=True)
class PendingRevision:
    revision: str
    down_revision: str | None
    message: str

    @classmethod
    def of(cls, script: Script) -> PendingRevision:
        return cls(script.revision, _joined(script.down_revision), (script.doc or "").strip())


def _joined(value: str | tuple[str, ...] | list[str] | None) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else ",".join(value)


def load_config(config_path: Path, script_location: str | None) -> Config:
    """The Alembic `Config`: from alembic.ini, or from a script location alone."""
    if config_path.is_file():
        cfg = Config(str(config_path))
    elif script_location:
        cfg = Config()
    else:
        raise ConfigError(
            f"alembic.ini not found at {config_path} (set MIGRATION_CONFIG to its path, or "
            "MIGRATION_SCRIPT_LOCATION to the migrations directory)",
            path=str(config_path),
        )
    if script_location:
        cfg.set_main_option("script_location", script_location.replace("%", "%%"))
    return cfg


def set_database_url(cfg: Config, url: str) -> None:
    """Hand env.py the URL through `sqlalchemy.url`; `%` must be doubled for configparser."""
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))


class RevisionGraph:
    """A loaded `ScriptDirectory`, with load errors reported once and clearly."""

    def __init__(self, cfg: Config) -> None:
        try:
            self.script = ScriptDirectory.from_config(cfg)
        except CommandError as exc:
            raise ConfigError(f"cannot open the migration scripts: {exc}") from None
        env_py = Path(self.script.dir, "env.py")
        if not env_py.is_file():
            raise ConfigError(f"no env.py in the script directory {self.script.dir}")
        self.env_py = env_py
        self._load()

    def _load(self) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                heads = self.script.get_heads()
            except CommandError as exc:
                raise GraphError(f"the revision graph is invalid: {exc}") from None
            except Exception as exc:
                raise GraphError(
                    f"cannot load a revision file: {_describe_load_error(exc)}",
                    error=type(exc).__name__,
                ) from None
        duplicates = [str(w.message) for w in caught if "present more than once" in str(w.message)]
        if duplicates:
            raise GraphError(f"duplicate revision id: {duplicates[0]}", duplicates=duplicates)
        self.heads: tuple[str, ...] = tuple(heads)
        if not self.heads:
            raise ConfigError(f"the script directory {self.script.dir} holds no revisions")

    @property
    def is_async_env(self) -> bool:
        """True for an env.py made by `alembic init -t async` (it builds an async engine)."""
        source = self.env_py.read_text(encoding="utf-8", errors="replace")
        return "async_engine_from_config" in source or "create_async_engine" in source

    def single_head(self) -> str:
        if len(self.heads) > 1:
            raise MultipleHeads(list(self.heads))
        return self.heads[0]

    def resolve_target(self, target: str) -> str:
        """`head` must mean one head; any other target must name a known revision."""
        if target == "head":
            self.single_head()
            return target
        if target in ("heads", "base"):
            return target
        try:
            self.script.get_revisions(target)
        except CommandError as exc:
            raise UsageError(f"unknown revision {target!r}: {exc}") from None
        return target

    def unknown(self, db_heads: tuple[str, ...]) -> list[str]:
        """Revisions the database is at that this code does not know (app rolled back)."""
        missing = []
        for rev in db_heads:
            try:
                if self.script.get_revision(rev) is None:
                    missing.append(rev)
            except CommandError:
                missing.append(rev)
        return missing

    def pending(self, target: str, db_heads: tuple[str, ...]) -> list[PendingRevision]:
        """What `upgrade target` would apply from `db_heads`, in application order."""
        # `_upgrade_revs` is what `alembic upgrade` itself calls to plan its steps; using it
        # keeps the graph walk Alembic's, including branches and merge points.
        steps = self.script._upgrade_revs(target, cast(Any, db_heads))  # noqa: SLF001
        return [PendingRevision.of(step.revision) for step in steps]

    def project_files(self) -> tuple[list[str], bool]:
        """Directories whose .py files define the project (env.py's and the versions'), and
        whether version locations are searched recursively."""
        # `_version_locations` resolves `version_locations` exactly as Alembic loads them.
        locations = [str(p) for p in self.script._version_locations]  # noqa: SLF001
        return [str(Path(self.script.dir).absolute()), *locations], bool(
            self.script.recursive_version_locations
        )

    def describe(self, revision: str) -> PendingRevision | None:
        try:
            script = self.script.get_revision(revision)
        except CommandError:
            return None
        return PendingRevision.of(script) if script is not None else None

    def history(self) -> list[PendingRevision]:
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
