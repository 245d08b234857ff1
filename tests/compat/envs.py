"""Throwaway venvs, one per pinned package, each with the runner built from this checkout.

They live under `$MIGRATION_COMPAT_CACHE` (default /tmp/migration-runner-compat) and are
reused between runs. The runner is rebuilt from the checkout and reinstalled whenever its
sources change (a digest of runner/ and pyproject.toml), so the same suite tests whatever
core the checkout holds. The package and the runner are installed by one `pip install`, so
pip picks an Alembic and SQLAlchemy that both accept.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.compat.projects import Project

REPO = Path(__file__).resolve().parents[2]
#: The runner's distribution name as pyproject.toml has it (`pip list` shows it so), and the
#: prefix of its wheel's file name (PEP 427: `-` becomes `_`), so a rename needs no edit here.
RUNNER_DISTRIBUTION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"]
RUNNER_WHEEL_GLOB = re.sub(r"[-_.]+", "_", RUNNER_DISTRIBUTION) + "-*.whl"
INSTALL_TIMEOUT_S = 1800
PYTHON = os.environ.get("MIGRATION_COMPAT_PYTHON", "python3.11")


def cache_root() -> Path:
    default = Path(tempfile.gettempdir(), "migration-runner-compat")
    root = Path(os.environ.get("MIGRATION_COMPAT_CACHE") or default)
    root.mkdir(parents=True, exist_ok=True)
    return root


class InstallError(Exception):
    """The package (or the runner) could not be installed; carries pip's last lines."""


@dataclass(frozen=True)
class Venv:
    path: Path
    site_packages: Path
    versions: dict[str, str]

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name


def runner_digest() -> str:
    digest = hashlib.sha256()
    files = [REPO / "pyproject.toml", *sorted((REPO / "runner").rglob("*"))]
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer per venv at a time (parallel pytest workers, a report run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(args: list[str | Path], log: Path, timeout: float = INSTALL_TIMEOUT_S) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(map(str, args))}\n")
        out.flush()
        try:
            proc = subprocess.run(
                [str(a) for a in args],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
        except subprocess.TimeoutExpired:
            raise InstallError(f"timed out after {timeout:g}s: {args}; see {log}") from None
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise InstallError(f"exit {proc.returncode}: {' '.join(map(str, args))}\n{tail}")


def runner_wheel() -> Path:
    """The runner built from this checkout as a wheel, once per source digest."""
    digest = runner_digest()
    out = cache_root() / "wheels" / digest
    with _locked(cache_root() / "wheels" / f"{digest}.lock"):
        found = sorted(out.glob(RUNNER_WHEEL_GLOB))
        if found:
            return found[0]
        out.mkdir(parents=True, exist_ok=True)
        # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
        src = out / "src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(
            REPO,
            src,
            ignore=shutil.ignore_patterns(
                ".venv", ".git", "__pycache__", "*.egg-info", "build", ".tools", ".*_cache"
            ),
        )
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, src], out / "build.log")
        shutil.rmtree(src, ignore_errors=True)
        built = sorted(out.glob(RUNNER_WHEEL_GLOB))
        if not built:
            raise InstallError(f"pip wheel made no {RUNNER_WHEEL_GLOB} in {out}; see build.log")
        return built[0]


def ensure_venv(project: Project) -> Venv:
    """The project's venv, created or brought up to date (package pinned, runner current)."""
    root = cache_root() / "venvs" / re.sub(r"[^A-Za-z0-9.]+", "-", project.requirement)
    with _locked(root.with_name(root.name + ".lock")):
        stamp = root / "compat-stamp.json"
        state = json.loads(stamp.read_text()) if stamp.is_file() else {}
        wheel = runner_wheel()
        log = root / "install.log"
        if state.get("requirement") != project.requirement:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _run([PYTHON, "-m", "venv", root], log)
            _run([root / "bin" / "pip", "install", project.requirement, wheel], log)
        elif state.get("runner") != runner_digest():
            # The core changed: replace the runner, then let pip add any new dependency.
            _run([root / "bin" / "pip", "install", "--force-reinstall", "--no-deps", wheel], log)
            _run([root / "bin" / "pip", "install", project.requirement, wheel], log)
        else:
            return Venv(root, Path(state["site_packages"]), state["versions"])
        site = subprocess.run(
            [
                root / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        listed = subprocess.run(
            [root / "bin" / "pip", "list", "--format=json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        wanted = {
            project.distribution.lower(),
            "alembic",
            "sqlalchemy",
            RUNNER_DISTRIBUTION.lower(),
        }
        versions = {
            p["name"]: p["version"] for p in json.loads(listed) if p["name"].lower() in wanted
        }
        state = {
            "requirement": project.requirement,
            "runner": runner_digest(),
            "site_packages": site,
            "versions": versions,
        }
        stamp.write_text(json.dumps(state, indent=2))
        return Venv(root, Path(site), versions)
