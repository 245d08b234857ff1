"""Exit 1 is kept for bugs: an unexpected exception still ends in one clear run_finished line."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from runner import cli, logs


@pytest.fixture(autouse=True)
def restore_logging() -> Any:
    """This test configures the process's logging; leave it as the other tests expect."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs.configure_logging("json", "info", io.StringIO())


def test_unexpected_exception_exits_1_without_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(*_: Any, **__: Any) -> int:
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli, "_dispatch", broken)
    monkeypatch.setenv("MIGRATION_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("MIGRATION_LOG_FORMAT", "json")
    stream = io.StringIO()
    code = cli.run(["upgrade"], stdout=io.StringIO(), stderr=stream)
    assert code == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    finished = [line for line in lines if line["event"] == "run_finished"]
    assert len(finished) == 1
    assert finished[0]["exit_code"] == 1 and finished[0]["outcome"] == "internal_error"
    assert "KeyError" in finished[0]["reason"]
    assert "Traceback" not in stream.getvalue()


def test_a_project_that_configures_logging_and_structlog_cannot_touch_our_events() -> None:
    """The runner's pipeline is private: global logging and structlog settings made later (by
    a project's import) neither swallow, reformat nor duplicate the runner's events."""
    import structlog

    ours = io.StringIO()
    logs.configure_logging("json", "info", ours)
    theirs = io.StringIO()
    logging.basicConfig(stream=theirs, level=logging.DEBUG, force=True)
    structlog.configure(processors=[structlog.dev.ConsoleRenderer()])
    try:
        logs.log.info("run_finished", exit_code=0)
    finally:
        structlog.reset_defaults()
    lines = ours.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["event"] == "run_finished"
    assert "run_finished" not in theirs.getvalue()
