"""The README is the user's contract: its tables must say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from runner import settings
from runner.errors import EXIT_CODES
from tests.support import REPO

README = (REPO / "README.md").read_text()


def test_exit_code_table_matches_the_code() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+?) \| (.+?) \|$", README, re.MULTILINE)
    documented = {int(code): (meaning, retry) for code, meaning, retry in rows}
    assert documented == {int(code): value for code, value in EXIT_CODES.items()}


def test_every_user_setting_is_documented_with_its_variable() -> None:
    for name, variable in settings.variables().items():
        if variable.startswith("MIGRATION_") and name != "in_kubernetes":
            assert f"`{variable}`" in README, name


def test_newcomer_commands_exist_and_ci_runs_the_test_command() -> None:
    assert "scripts/demo.sh" in README and "scripts/test.sh" in README
    assert (REPO / "scripts" / "demo.sh").is_file() and (REPO / "scripts" / "test.sh").is_file()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


#: Where users read how to install the runner.
USER_FACING = [
    "README.md",
    "docs",
    "deploy",
    "helm",
    ".github",
    "Dockerfile",
    "scripts",
]
PIP_INSTALL = re.compile(r"pip install[^\n`]*")


def _distribution_name() -> str:
    import tomllib

    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["name"])


def _user_facing_files() -> list[Path]:
    files: list[Path] = []
    for name in USER_FACING:
        path = REPO / name
        files += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return files


def test_the_distribution_name_is_not_the_taken_pypi_name() -> None:
    """`migration-runner` on PyPI is an unrelated project; the command keeps that name."""
    assert _distribution_name() == "alembic-migration-runner"
    with (REPO / "pyproject.toml").open("rb") as f:
        import tomllib

        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {"migration-runner": "runner.cli:main"}


def test_every_pip_install_of_the_runner_names_the_distribution() -> None:
    """A `pip install` of the runner names `alembic-migration-runner` or a local path (a
    checkout, a wheel); never the bare PyPI name, which installs someone else's package."""
    name = _distribution_name()
    wrong = []
    for path in _user_facing_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for command in PIP_INSTALL.findall(text):
            for word in command.split():
                bare = word.strip("\"'")
                if "migration-runner" not in bare or bare.startswith(("./", "/", name)):
                    continue
                wrong.append(f"{path.relative_to(REPO)}: {command.strip()}")
    assert not wrong, wrong


def test_image_title_label_is_the_distribution_name() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert f'org.opencontainers.image.title="{_distribution_name()}"' in dockerfile


def test_lock_files_were_generated_for_this_distribution() -> None:
    """The regeneration commands in the README produce these files: their `via` comments name
    the project as it is called now."""
    name = _distribution_name()
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (REPO / lock).read_text(encoding="utf-8")
        assert f"# via {name} (pyproject.toml)" in text, lock
        assert "uv pip compile pyproject.toml --extra kube" in text.splitlines()[1], lock
        assert f"-o {lock}" in README, lock
