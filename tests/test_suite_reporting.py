"""The suite's closing line: skipped tests counted by cause, each with the command that enables
them (tests/conftest.py). A green run must not hide what it did not test."""

from __future__ import annotations

import re

from tests.conftest import skip_summary
from tests.support import TCP_POSTGRES_HINT, enable_hint
from tests.support_tools import INSTALL_COMMAND, TOOL_COMMANDS

HELM = TOOL_COMMANDS["helm"]
#: What CI (and a reader) must never mistake the line for: pytest's own closing count.
PYTEST_COUNT = re.compile(r"^(\w+: )?\d+ passed, \d+ failed")


def test_no_skips_says_so() -> None:
    assert skip_summary([], 349) == "skipped: none of 349 tests"


def test_skips_are_grouped_by_the_command_that_enables_them() -> None:
    reasons = [
        "SKIPPED, NOT TESTED: `helm` is not installed" + enable_hint(HELM),
        "SKIPPED, NOT TESTED: `helm` is not installed" + enable_hint(HELM),
        "SKIPPED, NOT TESTED: `podman` is not installed" + enable_hint(INSTALL_COMMAND),
        "SKIPPED, NOT TESTED: `docker-compose` is not installed" + enable_hint(INSTALL_COMMAND),
        "the proxy tests need PostgreSQL over TCP" + enable_hint(TCP_POSTGRES_HINT),
        "Skipped: this server offers TLS",
    ]
    line = skip_summary(reasons, 100)
    assert "\n" not in line, "one line"
    assert line.startswith("skipped: 6 of 100 tests -- ")
    groups = line.split(" -- ", 1)[1].split("; ")
    assert groups == [
        f"2 (`helm` is not installed): {HELM}",
        f"2 (`podman` is not installed): {INSTALL_COMMAND}",
        f"1 (the proxy tests need PostgreSQL over TCP): {TCP_POSTGRES_HINT}",
        "1 (this server offers TLS)",
    ]
    assert not PYTEST_COUNT.match(line)
