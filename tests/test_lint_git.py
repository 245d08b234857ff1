"""`lint --since BASE` in a real git repository: the revisions a branch added or changed are
linted, and a revision already on the base branch that was edited (as code, not as
formatting), re-parented or deleted is an error."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from runner.lint_git import parse_revision
from tests.support import Rev, chain, run_cli, write_project, write_revision

pytestmark = pytest.mark.postgres

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_SYSTEM": "/dev/null",
}


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", *args],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=30,
        env={**os.environ, **GIT_ENV},
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository whose `main` holds a three-revision project; HEAD is branch `feature`."""
    write_project(tmp_path, chain(3))
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "three revisions")
    git(tmp_path, "checkout", "-q", "-b", "feature")
    return tmp_path


def versions(repo: Path) -> Path:
    return repo / "migrations" / "versions"


def lint_since(repo: Path, shadow: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(
        ["lint", "--since", "main", "--format", "json", "--config", str(repo / "alembic.ini")],
        None,
        cwd=repo,
        MIGRATION_SHADOW_URL=shadow,
    )
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture
def shadow(pg_server_url: URL) -> str:
    return pg_server_url.render_as_string(hide_password=False)


def test_added_and_edited_revisions_are_linted_and_an_edit_is_an_error(
    repo: Path, shadow: str
) -> None:
    first = versions(repo) / "0001_r0001.py"
    first.write_text(
        first.read_text().replace(
            "def upgrade() -> None:\n", 'def upgrade() -> None:\n    """Formatting only."""\n'
        )
        + "\n# a comment is not an edit\n"
    )
    second = versions(repo) / "0002_r0002.py"
    second.write_text(
        second.read_text().replace(
            'op.create_table("t_r0002", sa.Column("id", sa.Integer, primary_key=True))',
            'op.create_table("t_r0002", sa.Column("id", sa.Integer, primary_key=True),\n'
            '                    sa.Column("extra", sa.Text))',
        )
    )
    write_revision(
        versions(repo),
        Rev("idx", "r0002", upgrade='op.create_index("ix_t0", "t_r0000", ["id"])'),
        3,
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "feature")
    code, data = lint_since(repo, shadow)
    findings = data["findings"]
    rules = {(f["revision"], f["rule"]) for f in findings if f["severity"] != "info"}
    assert rules == {("r0002", "revision-edited"), ("idx", "index-not-concurrent")}
    edited = next(f for f in findings if f["rule"] == "revision-edited")
    assert edited["file"] == "migrations/versions/0002_r0002.py"
    assert "upgrade() changed" in edited["message"]
    assert [r["revision"] for r in data["revisions"]] == ["r0002", "idx"], (
        "only added or changed ones"
    )
    assert "since main" in str(data["scope"])
    assert code == 4


def test_a_reparented_revision_is_an_error(repo: Path, shadow: str) -> None:
    second = versions(repo) / "0002_r0002.py"
    second.write_text(
        second.read_text().replace("down_revision = 'r0001'", "down_revision = 'r0000'")
    )
    code, data = lint_since(repo, shadow)
    rules = {(f["revision"], f["rule"]) for f in data["findings"]}
    assert ("r0002", "revision-reparented") in rules
    assert (None, "multiple-heads") in rules, "r0001 and r0002 are both heads now"
    assert code == 4


def test_a_deleted_revision_is_an_error_and_an_untouched_branch_is_clean(
    repo: Path, shadow: str
) -> None:
    code, data = lint_since(repo, shadow)
    assert code == 0 and data["findings"] == [] and data["revisions"] == []
    (versions(repo) / "0002_r0002.py").unlink()
    code, data = lint_since(repo, shadow)
    deleted = [f for f in data["findings"] if f["rule"] == "revision-deleted"]
    assert len(deleted) == 1 and deleted[0]["revision"] == "r0002"
    assert "0002_r0002.py" in deleted[0]["message"]
    assert code == 4


def test_an_unknown_base_names_the_fix(repo: Path, shadow: str) -> None:
    result = run_cli(
        ["lint", "--since", "origin/nope", "--config", str(repo / "alembic.ini")],
        None,
        cwd=repo,
        MIGRATION_SHADOW_URL=shadow,
    )
    assert result.returncode == 78
    assert "fetch-depth: 0" in result.finished["reason"]


def test_parse_revision_ignores_docstrings_comments_and_formatting() -> None:
    plain = "revision = 'a'\ndown_revision = ('c', 'b')\ndef upgrade():\n    op.f(1)\n"
    styled = (
        '"""doc"""\nrevision: str = "a"\ndown_revision = ("b", "c")  # merge\n'
        'def upgrade():\n    """Says why."""\n    # note\n    op.f(\n        1,\n    )\n'
    )
    one, two = parse_revision(plain, "x.py"), parse_revision(styled, "y.py")
    assert one is not None and two is not None
    assert one.revision == two.revision == "a"
    assert one.down_revision == two.down_revision == ("b", "c")
    assert one.code == two.code
    changed = parse_revision(plain.replace("op.f(1)", "op.f(2)"), "x.py")
    assert changed is not None and changed.code != one.code
    assert parse_revision("x = 1\n", "z.py") is None
