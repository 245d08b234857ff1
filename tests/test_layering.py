"""The module layering in CONVENTIONS.md, held by walking the imports of runner/.

The arrows (a module may import the modules listed for it, plus anything below them) are
checked for every module; `test_a_wrong_import_is_caught` proves the check can fail."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

RUNNER = REPO / "runner"

#: module -> the runner modules it may import. Leaves (errors, redact, cancel, report,
#: urls) import nothing of the runner's but errors/redact.
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "__main__": {"cli"},
    "cli": {
        "logs",
        "redact",
        "errors",
        "report",
        "settings",
        "cancel",
        "commands",
        "drive",
        "observers",
        "github",
        "termination",
        "kube",
        "kube_cli",
        "__init__",
    },
    "commands": {
        "activity",
        "drive",
        "steps",
        "errors",
        "logs",
        "revisions",
        "lint",
        "lint_output",
    },
    # lint: the shadow run drives env.py (drive) on a throwaway database (shadow); rules,
    # git-base checks, Squawk and the outputs sit beside it and never import drive.
    "lint": {
        "drive",
        "report",
        "shadow",
        "lint_rules",
        "lint_git",
        "squawk",
        "errors",
        "logs",
        "redact",
        "revisions",
        "settings",
    },
    "lint_output": {
        "__init__",
        "lint",
        "lint_rules",
        "lint_git",
        "github",
        "errors",
        "redact",
        "logs",
        "report",
        "settings",
    },
    "lint_git": {"lint_rules", "errors"},
    "lint_rules": set(),
    "squawk": {"lint_rules"},
    "shadow": {"db", "cancel", "errors", "logs", "urls"},
    "drive": {
        "__init__",
        "steps",
        "history",
        "redact",
        "db",
        "revisions",
        "session",
        "cancel",
        "errors",
        "logs",
        "observers",
        "report",
        "settings",
    },
    "steps": {
        "db",
        "errors",
        "history",
        "logs",
        "observers",
        "redact",
        "report",
        "revisions",
        "session",
    },
    "session": {"activity", "db", "lock", "cancel", "errors", "logs"},
    "activity": {"redact"},
    "db": {"redact", "cancel", "errors", "logs"},
    "lock": {"cancel", "errors"},
    "history": {"errors"},
    "revisions": {"errors"},
    "settings": {"redact", "errors", "urls"},
    "urls": {"redact", "errors"},
    "logs": {"redact"},
    "observers": {"report", "logs"},
    "report": set(),
    "redact": set(),
    "errors": set(),
    "cancel": {"errors"},
    "github": {"errors", "observers", "report", "logs"},
    "termination": {"observers", "report", "logs"},
    "kube": {"errors", "observers", "report", "settings", "logs"},
    "kube_cli": {"errors", "logs", "kube", "redact"},
}

# The fleet: targets, worker processes, shards (one target is one drive.Run) ...
ALLOWED["fleet"] = {"drive", "report", "db", "redact", "cancel", "errors", "logs", "settings"}
# ... and what each command does on every target of a fleet, and prints.
ALLOWED["fleet_commands"] = {
    "commands",
    "lint",
    "lint_output",
    "revisions",
    "fleet",
    "drive",
    "cancel",
    "errors",
    "logs",
    "report",
    "settings",
}
ALLOWED["cli"].add("fleet_commands")


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


def runner_imports(path: Path) -> set[str]:
    return {
        m.split(".", 1)[1]
        for m in imports_of(path)
        if m.startswith("runner.") and m != "runner.__version__"
    }


def violations(module: str, imported: set[str]) -> set[str]:
    return imported - ALLOWED[module] - {module}


def test_every_module_imports_only_down_the_layers() -> None:
    modules = {p.stem for p in RUNNER.glob("*.py")}
    assert modules == set(ALLOWED), "a new module needs its place in ALLOWED"
    for path in RUNNER.glob("*.py"):
        assert not violations(path.stem, runner_imports(path)), path.name


def test_a_wrong_import_is_caught(tmp_path: Path) -> None:
    """The revision graph must never reach the database layer: add such an import once."""
    bad = tmp_path / "revisions.py"
    bad.write_text((RUNNER / "revisions.py").read_text() + "\nfrom runner import db\n")
    assert violations("revisions", runner_imports(bad)) == {"db"}


def test_revision_graph_opens_no_connection() -> None:
    assert not {
        m
        for m in imports_of(RUNNER / "revisions.py")
        if m.startswith(("runner.db", "runner.lock", "runner.session", "sqlalchemy"))
    }


def test_only_kube_imports_kubernetes() -> None:
    for path in RUNNER.glob("*.py"):
        uses = any(m == "kubernetes" or m.startswith("kubernetes.") for m in imports_of(path))
        assert uses == (path.name == "kube.py"), path.name


def test_only_settings_reads_the_environment() -> None:
    for path in RUNNER.glob("*.py"):
        if path.name == "settings.py":
            continue
        text = path.read_text()
        assert "os.environ.get" not in text and "getenv" not in text, path
        assert "os.environ[" not in text or path.name == "cli.py", path  # cli *sets* one


def test_the_cli_module_loads_neither_alembic_nor_sqlalchemy_nor_kubernetes() -> None:
    """Usage errors and --help answer before the heavy imports; kubernetes only in a pod."""
    code = (
        "import sys, runner.cli; "
        "print(sorted(m for m in ('alembic', 'sqlalchemy', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"
