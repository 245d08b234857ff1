"""`lint --since BASE`: which revisions a branch added or changed, and whether it edited,
re-parented or deleted a revision that is already on the base branch.

A revision on the base branch may already be applied somewhere: editing it changes nothing
there (Alembic never runs it again), so the schemas drift apart. "Edited" means its
`upgrade()` or `downgrade()` changed as code (the normalised AST: comments, docstrings and
formatting do not count); "re-parented" means its `down_revision` changed. Revisions are
matched by their id, not their file name (a renamed file is the same revision).

Reads git with `git` itself (bounded by a timeout); never opens a database.
"""

from __future__ import annotations

import ast
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory

from runner import lint_rules
from runner.errors import ConfigError
from runner.lint_rules import Finding

GIT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RevisionSource:
    revision: str
    down_revision: tuple[str, ...]
    #: Normalised `upgrade()` and `downgrade()` (AST dumps without positions or docstrings).
    code: tuple[str, str]
    path: str


@dataclass
class Changes:
    base: str
    merge_base: str
    added: set[str] = field(default_factory=set)
    edited: set[str] = field(default_factory=set)
    reparented: set[str] = field(default_factory=set)
    deleted: dict[str, str] = field(default_factory=dict)
    #: revision -> (file now, what changed)
    details: dict[str, tuple[str, str]] = field(default_factory=dict)

    def findings(self) -> list[Finding]:
        out = []
        for rev in sorted(self.edited):
            path, detail = self.details[rev]
            out.append(_finding("revision-edited", rev, path, detail))
        for rev in sorted(self.reparented):
            path, detail = self.details[rev]
            out.append(_finding("revision-reparented", rev, path, detail))
        for rev, path in sorted(self.deleted.items()):
            out.append(_finding("revision-deleted", rev, None, f"was {path} at {self.base}"))
        return out


def _finding(rule: str, revision: str, path: str | None, detail: str) -> Finding:
    item = lint_rules.finding(rule, None, detail=detail)
    item.revision = revision
    item.file = path
    return item


def git(args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise ConfigError("lint --since needs git on PATH") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"git {args[0]} did not answer within {GIT_TIMEOUT_S:g}s") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["failed"])[0]
        raise ConfigError(f"git {' '.join(args[:2])}: {first}", git_exit=proc.returncode)
    return proc.stdout


def repo_root(path: Path) -> Path | None:
    """The git work tree holding `path`, or None."""
    try:
        return Path(git(["rev-parse", "--show-toplevel"], path).strip())
    except ConfigError:
        return None


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _down(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(sorted(str(v) for v in value))


def _normalised(fn: ast.FunctionDef | None) -> str:
    if fn is None:
        return ""
    body = list(fn.body)
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]  # the docstring
    return ast.dump(ast.Module(body=body, type_ignores=[]), include_attributes=False)


def parse_revision(source: str, path: str) -> RevisionSource | None:
    """The revision id, down_revision and normalised code of a revision file (None: not one)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    values: dict[str, Any] = {}
    functions: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = _literal(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            values[node.target.id] = _literal(node.value)
        elif isinstance(node, ast.FunctionDef):
            functions[node.name] = node
    revision = values.get("revision")
    if not isinstance(revision, str):
        return None
    code = (_normalised(functions.get("upgrade")), _normalised(functions.get("downgrade")))
    return RevisionSource(revision, _down(values.get("down_revision")), code, path)


def changes_since(base: str, script: ScriptDirectory) -> Changes:
    """Compare the project's revisions with those at the merge base of `base` and HEAD."""
    locations = [Path(p).resolve() for p in _version_locations(script)]
    root = repo_root(locations[0]) if locations else None
    if root is None:
        raise ConfigError(f"lint --since needs a git checkout ({script.dir} is not in one)")
    try:
        merge_base = git(["merge-base", base, "HEAD"], root).strip()
    except ConfigError:
        try:
            merge_base = git(["rev-parse", "--verify", f"{base}^{{commit}}"], root).strip()
        except ConfigError:
            raise ConfigError(
                f"git base {base!r} not found: fetch it first (actions/checkout with "
                "fetch-depth: 0, or `git fetch origin main`)"
            ) from None
    relative = [str(loc.relative_to(root)) for loc in locations if loc.is_relative_to(root)]
    listed = git(["ls-tree", "-r", "--name-only", merge_base, "--", *relative], root)
    then: dict[str, RevisionSource] = {}
    for name in listed.splitlines():
        if not name.endswith(".py") or "/__pycache__/" in name:
            continue
        source = git(["show", f"{merge_base}:{name}"], root)
        parsed = parse_revision(source, name)
        if parsed is not None:
            then[parsed.revision] = parsed
    now: dict[str, RevisionSource] = {}
    for found in script.walk_revisions():
        if found.path is None:
            continue
        path = Path(found.path).resolve()
        parsed = parse_revision(path.read_text(encoding="utf-8"), str(path))
        if parsed is not None:
            now[found.revision] = parsed
    changes = Changes(base, merge_base)
    for rev, current in now.items():
        old = then.get(rev)
        if old is None:
            changes.added.add(rev)
            continue
        if old.down_revision != current.down_revision:
            changes.reparented.add(rev)
            changes.details[rev] = (
                current.path,
                f"down_revision {_show(old.down_revision)} -> {_show(current.down_revision)}",
            )
        elif old.code != current.code:
            changed = [
                name
                for name, a, b in zip(
                    ("upgrade()", "downgrade()"), old.code, current.code, strict=True
                )
                if a != b
            ]
            changes.edited.add(rev)
            changes.details[rev] = (current.path, f"{' and '.join(changed)} changed")
    for rev, old in then.items():
        if rev not in now:
            changes.deleted[rev] = old.path
    return changes


def _show(down: tuple[str, ...]) -> str:
    return ",".join(down) if down else "None"


def _version_locations(script: ScriptDirectory) -> list[str]:
    locations = list(getattr(script, "version_locations", None) or [])
    return locations or [str(Path(script.dir) / "versions")]
