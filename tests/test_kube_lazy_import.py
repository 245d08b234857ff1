"""`kubernetes` is imported by one module only, and only on the Kubernetes paths.

The import alone costs about a quarter of a second and tens of MB; compose and CI users never
need it, so a run outside a cluster must never load it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, chain, cli_env, write_project

pytestmark = pytest.mark.timeout(120)

RUNNER = REPO / "runner"


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found += [
                (f"{module}.{alias.name}" if module else alias.name, node) for alias in node.names
            ]
    return found


def _module_level(tree: ast.Module) -> set[ast.AST]:
    """Import nodes that run when the module is imported (not inside a def or TYPE_CHECKING)."""
    nodes: set[ast.AST] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            nodes.update(n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
    return nodes


def test_only_runner_kube_imports_kubernetes() -> None:
    importers = sorted(
        path.name
        for path in RUNNER.glob("*.py")
        if any(
            name == "kubernetes" or name.startswith("kubernetes.")
            for name, _ in _imports(ast.parse(path.read_text()))
        )
    )
    assert importers == ["kube.py"]


def test_no_runner_module_imports_runner_kube_at_import_time() -> None:
    offenders = []
    for path in RUNNER.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = _module_level(tree)
        for name, node in _imports(tree):
            if node in top and (name == "runner.kube" or name.startswith("runner.kube.")):
                offenders.append(path.name)
    assert offenders == []


def test_importing_the_cli_and_the_kube_entry_points_does_not_import_kubernetes() -> None:
    code = (
        "import sys, runner.cli, runner.kube_cli, runner.termination, runner.observers\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes')\n"
        "assert not loaded, loaded\n"
        "import runner.kube\n"
        "assert 'kubernetes' in sys.modules  # the check above can see the import\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_an_upgrade_outside_a_cluster_never_imports_kubernetes(tmp_path: Path) -> None:
    write_project(tmp_path, chain(2))
    env = cli_env(f"sqlite:///{tmp_path / 'app.db'}")  # no KUBERNETES_* variables
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "runner", "upgrade"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = re.findall(r"^import time:.*\|\s*(\S+)\s*$", proc.stderr, flags=re.MULTILINE)
    assert "runner.cli" in imported  # -X importtime did report this process's imports
    assert "sqlalchemy" in imported
    assert [m for m in imported if m.split(".")[0] == "kubernetes"] == []
    assert "runner.kube" not in imported
