"""Cancellation shared by the signal handler (main thread) and the migration (worker thread).

Kept free of database imports: the fast path waits on it before SQLAlchemy is loaded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from runner.errors import ExitCode, Interrupted


class CancelToken:
    """Set by the signal handler; checked by every loop and before every statement."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""
        self.exit_code = 0
        self._cancel_in_flight: list[Any] = []
        self._cleaning_up = False

    def cancel(self, signal_name: str, exit_code: int) -> None:
        self.signal_name, self.exit_code = signal_name, exit_code
        self.event.set()
        self.cancel_statement()

    def cleanup_started(self) -> None:
        """From here on the run only rolls back and unlocks: let those statements through."""
        self._cleaning_up = True

    def cancel_statement(self) -> None:
        """Ask the server to stop the statement in flight (safe from another thread)."""
        if self._cleaning_up:
            return
        for fn in list(self._cancel_in_flight):
            with contextlib.suppress(Exception):
                fn()

    def on_cancel(self, fn: Any) -> None:
        self._cancel_in_flight.append(fn)

    def off_cancel(self, fn: Any) -> None:
        """Forget `fn` once its connection is done: a cancel aimed at a closed session's
        process id could reach whichever session the server gives that id next."""
        with contextlib.suppress(ValueError):
            self._cancel_in_flight.remove(fn)

    @property
    def cleaning_up(self) -> bool:
        return self._cleaning_up

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise Interrupted(self.signal_name, ExitCode(self.exit_code))

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up and raise at once when cancelled."""
        if self.event.wait(max(0.0, seconds)):
            self.check()


def in_background(fn: Callable[[], Any]) -> Callable[[], None]:
    """`fn` run in a daemon thread, at most one at a time: a cancel request sent into a dead
    or silent network (libpq's PQcancel has no timeout and holds the GIL) must not block the
    signal handler that sends it, or SIGTERM would never end the run."""
    busy = threading.Lock()

    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: S110 - best effort; the grace period bounds the run anyway
            pass
        finally:
            busy.release()

    def start() -> None:
        if busy.acquire(blocking=False):
            threading.Thread(target=run, name="cancel-request", daemon=True).start()

    return start
