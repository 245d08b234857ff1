"""A CLI subprocess whose JSON log lines the test can wait for while it runs."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.support import CliResult, parse_events, start_cli


class LiveCli:
    def __init__(
        self, args: list[str], url: str | None, cwd: Path | None = None, **env: str
    ) -> None:
        self.proc = start_cli(args, url, cwd=cwd, **env)
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.started = time.monotonic()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        """The first log line with `event`; fails (showing stderr) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for found in self.events():
                    if found.get("event") == event:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {event!r} within {timeout}s:\n{''.join(self.lines)}")
                self._new.wait(min(left, 0.2))

    def finish(self, timeout: float = 60) -> CliResult:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"CLI still running after {timeout}s:\n{''.join(self.lines)}"
            ) from None
        self._reader.join(10)
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()
        stderr = "".join(self.lines)
        return CliResult(self.proc.returncode, stdout, stderr, parse_events(stderr))


def wait_for_statement(url: str, pattern: str, run: LiveCli, timeout: float = 20) -> None:
    """Wait until a statement LIKE `pattern` runs in the database of `url` (the runner is
    mid-revision); fail with the runner's output so far if it never does."""
    from tests.faults.checks import scalar

    deadline = time.monotonic() + timeout
    while not scalar(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE :p "
        "AND datname = current_database()",
        p=pattern,
    ):
        assert time.monotonic() < deadline, "".join(run.lines)
        time.sleep(0.05)
