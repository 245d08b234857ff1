"""The module layering in CONVENTIONS.md, held by walking the imports of runner/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

RUNNER = REPO / "runner"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "runner":
                found.update(f"runner.{alias.name}" for alias in node.names)
    return found


def test_only_kube_imports_kubernetes() -> None:
    for path in RUNNER.glob("*.py"):
        uses = any(m == "kubernetes" or m.startswith("kubernetes.") for m in imports_of(path))
        assert uses == (path.name == "kube.py"), path.name


def test_only_settings_reads_the_environment() -> None:
    for path in RUNNER.glob("*.py"):
        if path.name in ("settings.py", "environment.py"):
            continue
        assert "os.environ" not in path.read_text() and "getenv" not in path.read_text(), path


def test_revision_graph_and_lower_layers_never_import_the_cli() -> None:
    for name in (
        "revisions",
        "db",
        "lock",
        "settings",
        "errors",
        "logs",
        "urls",
        "cache",
        "cancel",
        "fastpath",
        "migrate",
    ):
        assert "runner.cli" not in imports_of(RUNNER / f"{name}.py"), name
    assert not {
        m
        for m in imports_of(RUNNER / "revisions.py")
        if m.startswith(("runner.db", "runner.lock", "sqlalchemy.engine"))
    }


def test_fast_path_imports_neither_alembic_nor_sqlalchemy_nor_structlog() -> None:
    code = (
        "import sys, runner.cli, runner.fastpath, runner.settings; "
        "print(sorted(m for m in ('alembic', 'sqlalchemy', 'kubernetes', 'structlog') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"
