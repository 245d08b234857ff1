"""A cache of Alembic's own answers about a project: its heads and the version table its
env.py configures. The fast path reads it to say "already at head" without loading Alembic.

An entry is reused only when every file that could change those answers is byte-identical
(alembic.ini, every .py file in the script directory and the version locations) and the
environment is the same (`Settings.environment_digest`). Anything unreadable is a miss:
the cache can only make a run faster, never change its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_FORMAT = 1


@dataclass(frozen=True)
class ProjectFacts:
    heads: list[str]
    version_table: str
    version_table_schema: str | None
    #: Directories whose .py files make up the project: the script directory (env.py) and
    #: every version location.
    dirs: list[str]
    recursive: bool
    #: Other files read by Alembic (alembic.ini).
    files: list[str]


def _python_files(directory: Path, recursive: bool) -> list[Path]:
    pattern = "**/*.py" if recursive else "*.py"
    return sorted(p for p in directory.glob(pattern) if "__pycache__" not in p.parts)


def project_digest(facts: ProjectFacts) -> str | None:
    digest = hashlib.sha256()
    try:
        paths = [Path(f) for f in facts.files]
        for directory in facts.dirs:
            paths.extend(_python_files(Path(directory), facts.recursive))
        for path in paths:
            digest.update(str(path).encode("utf-8", "surrogateescape") + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    except OSError:
        return None
    return digest.hexdigest()


def entry_path(
    cache_dir: Path, config: Path, script_location: str | None, environment_digest: str
) -> Path:
    key = "\0".join((str(config.absolute()), script_location or "", environment_digest))
    return cache_dir / f"project-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def lookup(entry: Path) -> ProjectFacts | None:
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        if data.pop("format") != CACHE_FORMAT:
            return None
        expected = data.pop("digest")
        facts = ProjectFacts(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return facts if project_digest(facts) == expected else None


def store(entry: Path, facts: ProjectFacts) -> bool:
    """Write atomically, unless the entry already says the same; a read-only filesystem or a
    race simply leaves no entry (False)."""
    digest = project_digest(facts)
    if digest is None:
        return False
    record = {"format": CACHE_FORMAT, "digest": digest, **asdict(facts)}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(entry.read_text(encoding="utf-8")) == record:
            return True
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.replace(tmp, entry)
    except OSError:
        return False
    return True
