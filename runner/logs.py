"""The runner's log pipeline: one JSON object per line on the runner's own stderr.

The pipeline is private. The runner's events never pass through the root logger or through
structlog's global configuration, and they are written to a stream the CLI took before any
project code ran. A project whose import calls `logging.basicConfig`, `dictConfig` or
`structlog.configure`, or replaces `sys.stdout`, therefore keeps its own log lines while ours
are neither swallowed, reformatted nor duplicated. Alembic's and SQLAlchemy's stdlib records
are routed into the same pipeline (with a `logger` field) by a handler of ours on those two
loggers, re-attached each time env.py hands over a connection (`reclaim_library_loggers`).

Every value passes the secret redaction on its way out; stdlib records are masked when they
are created (`mask_log_records`), so a project's own handlers never see a secret either.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from runner import redact

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: Libraries whose records belong in the runner's log (at the levels `reclaim_library_loggers`
#: sets).
LIBRARY_LOGGERS = ("alembic", "sqlalchemy")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact.redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return {key: _scrub(value) for key, value in event_dict.items()}


class _LineWriter:
    """structlog's wrapped logger: each rendered event is one line on the runner's stream."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    debug = info = warning = error = critical = exception = msg


class _OncePerMessage(logging.Filter):
    """Alembic says "Context impl PostgresqlImpl." each time a context is made; say it once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


class _RecordsToEvents(logging.Handler):
    """Turns stdlib records (Alembic, SQLAlchemy, a project without its own logging setup)
    into events of the runner's pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_text:
                fields["exception"] = record.exc_text
            _pipeline.emit(record.levelno, record.getMessage().rstrip(), fields)
        except Exception:
            self.handleError(record)


def _message(record: logging.LogRecord) -> str:
    """The record's text, without the values SQLAlchemy's engine logs next to a statement
    (bind parameters as `[%s] %r`, result rows as `Row %r`): they are the application's data,
    secrets included, and `debug` promises the SQL, not the data."""
    args = record.args
    if (
        record.name.startswith("sqlalchemy.engine")
        and isinstance(record.msg, str)
        and record.msg.endswith("%r")
        and isinstance(args, tuple)
        and args
    ):
        return str(record.msg[:-2] % args[:-1]) + "[values hidden]"
    return record.getMessage()


class _Pipeline:
    def __init__(self) -> None:
        self.level = logging.INFO
        self.stream: TextIO | None = None
        self.format = "json"
        self.context: dict[str, Any] = {}
        self._logger: Any = None
        self.handler = _RecordsToEvents()
        self._migration_filter = _OncePerMessage()
        #: Set by `captured()` (tests): events are collected here instead of written.
        self.captured: list[dict[str, Any]] | None = None

    def configure(self, fmt: str, level: str, stream: TextIO | None) -> None:
        self.stream = stream or self.stream or sys.stderr
        if fmt == "auto":
            fmt = "console" if _isatty(self.stream) else "json"
        self.format = fmt
        self.level = _LEVELS[level]
        self._logger = None  # rebuilt at the next event
        self.handler.setLevel(logging.DEBUG)
        self._migration_filter = _OncePerMessage()
        # Python's warnings (a deprecation printed by a project's import) are events too, not
        # plain lines among the JSON ones; straight into the pipeline, so that a project's
        # logging configuration cannot drop them.
        warnings.showwarning = _show_warning
        reclaim_library_loggers()
        root = logging.getLogger()
        # The root logger carries project records that nobody else handles; a project that
        # configures logging replaces this, which changes nothing for the runner's events.
        if not any(h is self.handler for h in root.handlers):
            root.addHandler(self.handler)
        root.setLevel(self.level)

    def logger(self) -> Any:
        if self._logger is None:
            import structlog

            renderer: Processor
            assert self.stream is not None
            if self.format == "json":
                renderer = structlog.processors.JSONRenderer(sort_keys=False)
            else:
                renderer = structlog.dev.ConsoleRenderer(colors=_isatty(self.stream))
            processors: list[Processor] = [
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
                _order_fields,
                _format_exception,
                _redact_secrets,
                renderer,
            ]
            # Levels are filtered in `emit` (which lets `run_finished` through at any level).
            cls = structlog.make_filtering_bound_logger(logging.DEBUG)
            self._logger = cls(_LineWriter(self.stream), processors, {})  # type: ignore[call-arg]
        return self._logger

    def emit(self, levelno: int, event: str, fields: dict[str, Any], always: bool = False) -> None:
        if levelno < self.level and not always:
            return
        name = logging.getLevelName(levelno).lower()
        if self.captured is not None:
            self.captured.append({"event": event, "level": name, **self.context, **fields})
            return
        method = getattr(self.logger(), name if name in _LEVELS else "error")
        method(event, **self.context, **fields)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    text = warnings.formatwarning(message, category, filename, lineno, line).strip()
    _pipeline.emit(logging.WARNING, text, {"logger": "py.warnings"})


def _order_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """`timestamp`, `level`, `event` first: what a reader scans for."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    return {**head, **event_dict}


def _format_exception(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # Tracebacks go out only at debug level; otherwise a one-line reason is the contract.
    exc_info = event_dict.pop("exc_info", None)
    if exc_info and _pipeline.level <= logging.DEBUG:
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        event_dict["exception"] = "".join(traceback.format_exception(*exc_info))
    elif not (_pipeline.level <= logging.DEBUG):
        event_dict.pop("exception", None)
    return event_dict


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_pipeline = _Pipeline()


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Where and how the runner's events are written (`stream`: the runner's own stderr)."""
    _pipeline.configure(fmt, level, stream)


def reclaim_library_loggers() -> None:
    """Route Alembic's and SQLAlchemy's records to the runner again, whatever a project's
    logging configuration did to those loggers (dictConfig disables existing loggers and
    replaces handlers; fileConfig in env.py likewise)."""
    debug = _pipeline.level <= logging.DEBUG
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [_pipeline.handler]
        logger.propagate = False
        logger.disabled = False
    for name, child in list(logging.root.manager.loggerDict.items()):
        if isinstance(child, logging.Logger) and name.startswith(
            tuple(f"{lib}." for lib in LIBRARY_LOGGERS)
        ):
            child.disabled = False
    logging.getLogger("alembic").setLevel(_pipeline.level)
    # SQLAlchemy's echo is off: at debug the runner logs each statement of the connections it
    # adopted itself (event `sql`), which a project's logging configuration cannot turn off.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    migration = logging.getLogger("alembic.runtime.migration")
    migration.filters[:] = [_pipeline._migration_filter]  # noqa: SLF001
    # Alembic announces each autogenerate plugin at INFO on every run: noise for a deploy job.
    logging.getLogger("alembic.runtime.plugins").setLevel(
        logging.DEBUG if debug else logging.WARNING
    )


def mask_log_records() -> Callable[[], None]:
    """Mask secrets in every stdlib record as it is created, before any handler (ours or the
    project's) formats it. Returns the function that undoes it."""
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = _message(record)
        except Exception:
            message = str(record.msg)
        record.msg, record.args = redact.redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact.redact(text.rstrip("\n"))
        return record

    logging.setLogRecordFactory(factory)
    return lambda: logging.setLogRecordFactory(previous)


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """For tests: the events logged inside the block, as dicts (`event`, `level`, fields),
    instead of written."""
    previous, _pipeline.captured = _pipeline.captured, []
    try:
        yield _pipeline.captured
    finally:
        _pipeline.captured = previous


def bind_context(**fields: Any) -> None:
    """Add fields (pod name, namespace, job) to every following event."""
    _pipeline.context.update({k: v for k, v in fields.items() if v})


class _Log:
    """`log.info("event", key=value)`: the runner's logger, usable from any module."""

    def _emit(self, level: int, event: str, fields: dict[str, Any], always: bool = False) -> None:
        if _pipeline.stream is None:
            _pipeline.configure("auto", "info", None)
        _pipeline.emit(level, event, fields, always)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

    def summary(self, level: int, event: str, **fields: Any) -> None:
        """The run's one summary line: written at every MIGRATION_LOG_LEVEL (a pipeline that
        keeps only warnings still learns how the run ended)."""
        self._emit(level, event, fields, always=True)

    def is_debug(self) -> bool:
        return _pipeline.level <= logging.DEBUG


log = _Log()
