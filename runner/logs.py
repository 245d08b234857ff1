"""Structured logging: one JSON object per line on stderr, for our events and for the stdlib
loggers of Alembic and SQLAlchemy alike. Every value passes the secret redaction on its way out.

structlog costs ~80 ms to import, which every runner started at once on one machine pays before
it can even try the lock; so the CLI only records the wanted format (`defer_configuration`) and
the pipeline is built at the first log line (`log` is a proxy that does that).
"""

from __future__ import annotations

import logging
import sys
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


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact.redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return {key: _scrub(value) for key, value in event_dict.items()}


def _rename_stdlib_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # Stdlib records (alembic, sqlalchemy) carry a logger name; keep it as a field so a reader
    # can tell "Running upgrade" from alembic apart from our own events.
    record = event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    if record is not None and "logger" not in event_dict:
        event_dict["logger"] = record.name
    return event_dict


def _drop_tracebacks(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # Tracebacks go out only at debug level; otherwise a one-line reason is the contract.
    exc_info = event_dict.pop("exc_info", None)
    if exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
        event_dict["exc_info"] = exc_info
    return event_dict


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


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging through one renderer writing to `stream` (stderr)."""
    import structlog

    global _configured
    _configured = True
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_tracebacks,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            _rename_stdlib_fields,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # SQLAlchemy at INFO echoes every statement; only debug users want that.
    logging.getLogger("sqlalchemy").setLevel(logging.INFO if level == "debug" else logging.WARNING)
    logging.getLogger("alembic").setLevel(_LEVELS[level])
    migration_logger = logging.getLogger("alembic.runtime.migration")
    migration_logger.filters[:] = [_OncePerMessage()]
    # Alembic announces each autogenerate plugin at INFO on every run: noise for a deploy job.
    logging.getLogger("alembic.runtime.plugins").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )


_pending: tuple[str, str] | None = None
_configured = False


def defer_configuration(fmt: str, level: str) -> None:
    """Remember the settings; the pipeline is built at the first log line."""
    global _pending
    _pending = (fmt, level)


def ensure_configured() -> None:
    if not _configured:
        fmt, level = _pending or ("auto", "info")
        configure_logging(fmt, level)


class _LazyLogger:
    """`log.info(...)` for modules on the fast path: configures logging on first use."""

    def __getattr__(self, name: str) -> Any:
        ensure_configured()
        import structlog

        return getattr(structlog.get_logger("runner"), name)


log: Any = _LazyLogger()


def bind_context(**fields: Any) -> None:
    """Add fields (pod name, namespace, job) to every following log line."""
    ensure_configured()
    import structlog

    structlog.contextvars.bind_contextvars(**{k: v for k, v in fields.items() if v})
