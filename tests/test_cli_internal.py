"""Exit 1 is kept for bugs: an unexpected exception still ends in one clear run_finished line."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog

from runner import cli, logs


@pytest.fixture(autouse=True)
def restore_logging() -> Any:
    """This test configures the process's logging; leave it as the other tests expect."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_unexpected_exception_exits_1_without_traceback(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(*_: Any, **__: Any) -> int:
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli, "_dispatch", broken)
    monkeypatch.setenv("MIGRATION_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("MIGRATION_LOG_FORMAT", "json")
    stream = io.StringIO()
    monkeypatch.setattr(logs, "_configured", False)
    monkeypatch.setattr(
        logs,
        "configure_logging",
        lambda fmt, level, s=None, _orig=logs.configure_logging: _orig(fmt, level, stream),
    )
    code = cli.run(["upgrade"], stdout=io.StringIO())
    assert code == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    finished = [line for line in lines if line["event"] == "run_finished"]
    assert len(finished) == 1
    assert finished[0]["exit_code"] == 1 and finished[0]["outcome"] == "internal_error"
    assert "KeyError" in finished[0]["reason"]
    assert "Traceback" not in stream.getvalue()
