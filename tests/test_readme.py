"""The README is the user's contract: its tables must say what the code does."""

from __future__ import annotations

import re

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
