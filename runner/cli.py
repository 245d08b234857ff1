"""The command line: the only place that touches the process (arguments, standard streams,
signals, logging setup, exit codes). Each command runs in a worker thread so that
SIGTERM/SIGINT are handled at once by the main thread, which cancels the statement in flight
and waits, bounded, for the worker to roll back and release the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from runner import logs, redact
from runner.errors import ExitCode, Interrupted, RunnerError, UsageError
from runner.logs import log
from runner.report import RunReport

if TYPE_CHECKING:
    from runner.observers import RunObserver
    from runner.settings import Settings


#: Where the kubelet reads a container's termination message unless the pod says otherwise.
KUBELET_TERMINATION_LOG = Path("/dev/termination-log")

#: After SIGTERM, how long the worker gets to roll back and release the lock. Kubernetes
#: sends SIGKILL after terminationGracePeriodSeconds (30 s by default); stay well inside it.
SHUTDOWN_GRACE_S = 10.0

COMMAND_HELP = {
    "upgrade": "apply pending revisions up to REVISION (default: head), under the lock",
    "check": "exit 0 when the database is at head, 3 when revisions are pending",
    "wait": "block until the database is at head (for init containers), bounded",
    "plan": "list pending revisions; --sql prints the SQL upgrade would run",
    "current": "show the database's current revision(s)",
    "history": "show the project's revisions, newest first",
    "log": "show what the runner did to the database (the history table), newest first",
    "downgrade": "downgrade to REVISION (needs --yes), under the lock",
    "stamp": "set the version table to REVISION without running migrations, under the lock",
    "kube-run": "run the migration Job in Kubernetes and exit with its exit code",
    "lint": "apply the revisions to a throwaway database (MIGRATION_SHADOW_URL) and report "
    "what each would lock or rewrite",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _version() -> str:
    from importlib import metadata

    for name in ("alembic-migration-runner", "migration-runner"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    from runner import __version__

    return __version__


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked: reading the installed metadata costs ~40 ms,
    which every run would otherwise pay while building the parser."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        sys.stdout.write(f"{parser.prog} {_version()}\n")
        parser.exit()


def _alembic_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Alembic's own options, accepted before or after the command as `alembic` accepts
    them before it (`default`: SUPPRESS after the command, so it does not erase a value given
    before it)."""
    parser.add_argument(
        "-x",
        action="append",
        dest="x_args",
        metavar="KEY=VALUE",
        default=default,
        help="additional argument for env.py (context.get_x_argument()); repeatable "
        "(MIGRATION_X_ARGS)",
    )
    parser.add_argument(
        "-n",
        "--name",
        dest="ini_section",
        default=default,
        help="ini section env.py reads (MIGRATION_INI_SECTION; default: alembic)",
    )
    parser.add_argument(
        "--tag",
        default=default,
        help="tag for env.py (context.get_tag_argument()) (MIGRATION_TAG)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="migration-runner",
        description="Apply Alembic migrations safely: one runner at a time, JSON logs, "
        "documented exit codes. Settings come from MIGRATION_* environment variables; "
        "flags override them.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version")
    _alembic_options(parser, None)
    common = _Parser(add_help=False)
    common.add_argument("--config", help="path to alembic.ini (MIGRATION_CONFIG)")
    common.add_argument(
        "--script-location", help="migrations directory (MIGRATION_SCRIPT_LOCATION)"
    )
    common.add_argument(
        "--database-url",
        help="database URL (MIGRATION_DATABASE_URL); "
        "prefer the environment: flags are visible in the process list",
    )
    common.add_argument("--connect-timeout", type=float, help="seconds to retry connecting")
    common.add_argument("--lock-timeout", type=float, help="seconds to wait for the lock")
    common.add_argument("--ddl-lock-timeout", type=float, help="per-statement lock_timeout")
    common.add_argument("--ddl-retry-budget", type=float, help="seconds of lock-timeout retries")
    common.add_argument("--log-format", choices=["auto", "json", "console"])
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    common.add_argument("--on-db-ahead", choices=["warn", "fail"])
    _alembic_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], help=COMMAND_HELP[name], description=COMMAND_HELP[name]
        )

    revision_help = (
        "a revision as Alembic takes it: head, heads, an id, branch@head, +N/-N, head-N, base+N"
    )
    add("upgrade").add_argument("revision", nargs="?", default="head", help=revision_help)
    check = add("check")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    wait = add("wait")
    wait.add_argument(
        "--timeout",
        type=float,
        dest="wait_timeout",
        help="seconds to wait (MIGRATION_WAIT_TIMEOUT)",
    )
    plan = add("plan")
    plan.add_argument(
        "revision",
        nargs="?",
        default="head",
        help=f"{revision_help}; with --sql also a range FROM:TO",
    )
    plan.add_argument("--sql", action="store_true", help="print the SQL instead of the list")
    plan.add_argument("--json", action="store_true")
    add("current").add_argument("--json", action="store_true")
    add("history").add_argument("--json", action="store_true")
    log_cmd = add("log")
    log_cmd.add_argument("--json", action="store_true")
    log_cmd.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    down = add("downgrade")
    down.add_argument("revision", help=revision_help)
    down.add_argument("--yes", action="store_true", help="confirm: downgrades can lose data")
    stamp = add("stamp")
    stamp.add_argument("revision", nargs="+", help=revision_help)
    stamp.add_argument(
        "--purge", action="store_true", help="empty the version table first (alembic --purge)"
    )
    sub.add_parser("kube-run", help=COMMAND_HELP["kube-run"], add_help=False)
    _lint_arguments(add("lint"))
    return parser


def _lint_arguments(lint: argparse.ArgumentParser) -> None:
    which = lint.add_mutually_exclusive_group()
    which.add_argument(
        "--since",
        metavar="GIT_REF",
        help="lint the revisions added or changed since this git base (e.g. origin/main), "
        "and check that revisions already there were not edited, re-parented or deleted",
    )
    which.add_argument(
        "--from",
        dest="from_revision",
        metavar="REVISION",
        help="lint REVISION and every revision after it",
    )
    lint.add_argument(
        "--format",
        choices=["auto", "text", "json", "sarif"],
        default="auto",
        help="stdout format (auto: text on a terminal or in GitHub Actions, else json)",
    )
    lint.add_argument(
        "--fail-on",
        choices=["error", "warning", "info", "never"],
        default="error",
        help="exit 4 when a finding at or above this severity is not suppressed (default: error)",
    )
    lint.add_argument("--sarif-file", metavar="PATH", help="also write SARIF 2.1.0 to PATH")
    lint.add_argument(
        "--no-squawk", action="store_true", help="skip Squawk's static advice on the SQL"
    )


_SETTING_FLAGS = (
    "config",
    "script_location",
    "database_url",
    "connect_timeout",
    "lock_timeout",
    "ddl_lock_timeout",
    "ddl_retry_budget",
    "log_format",
    "log_level",
    "on_db_ahead",
    "wait_timeout",
    "x_args",
    "ini_section",
    "tag",
)


#: Signals that arrived before the supervisor took over (during start-up imports).
_early_signals: list[int] = []


def _remember_early_signal(signum: int, _: FrameType | None) -> None:
    _early_signals.append(signum)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    # As PID 1 in a container, a signal without a handler is ignored; without PID 1 it kills
    # the process mid-import. Either way the run would not report; remember it instead.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _remember_early_signal)
    results, events = _claim_standard_streams()
    code = run(list(sys.argv[1:] if argv is None else argv), stdout=results, stderr=events)
    # Everything is closed and the lock released by now; skip the interpreter's teardown of
    # SQLAlchemy and Alembic (about 0.1 s that every deploy would pay).
    logging.shutdown()
    for stream in (results, events, sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _claim_standard_streams() -> tuple[TextIO, TextIO]:
    """The runner's own stdout (command results) and stderr (events), taken before any project
    code runs. Then whatever the project writes to file descriptor 1 (`print()`, a handler on
    `sys.stdout`, a C library) goes to stderr instead, and Python-level writes to
    `sys.stdout`/`sys.stderr` are masked: stdout carries command results alone, and no
    project output can carry a secret out."""
    sys.stdout.flush()
    results = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace")
    events = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace", buffering=1)
    os.dup2(2, 1)
    sys.stdout = redact.MaskedStream(sys.stdout)
    sys.stderr = redact.MaskedStream(sys.stderr)
    return results, events


def run(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    parser = build_parser()
    started = time.monotonic()
    # The command as far as it can be told before parsing (options may come first).
    report = RunReport(command=next((a for a in argv if a in COMMAND_HELP), ""))
    if argv[:1] == ["kube-run"]:
        return _kube_run(argv[1:], parser, report, started, stdout, stderr)
    try:
        # --help and --version print to the runner's stdout and end the run with exit 0.
        with contextlib.redirect_stdout(stdout):
            args = parser.parse_args(argv)
    except UsageError as exc:
        return _finish_early(parser, report, exc, started, stderr)
    except SystemExit as exc:
        stdout.flush()
        return int(exc.code or 0) if isinstance(exc.code, int | None) else ExitCode.USAGE
    if not args.command:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    report.command = args.command
    overrides = {k: getattr(args, k, None) for k in _SETTING_FLAGS}
    if overrides["x_args"] is not None:
        overrides["x_args"] = tuple(overrides["x_args"])
    from runner.settings import load_settings

    try:
        if args.command == "downgrade" and not args.yes:
            raise UsageError("downgrade can drop data: add --yes to confirm")
        settings = load_settings(overrides)
    except RunnerError as exc:
        return _finish_early(parser, report, exc, started, stderr)
    logs.configure_logging(settings.log_format, settings.log_level, stderr)
    unmask_records = logs.mask_log_records()
    if settings.in_kubernetes:
        logs.bind_context(
            pod=settings.pod_name, namespace=settings.pod_namespace, job=settings.job_name
        )
    # lint writes its own annotations (on the revision lines) and step summary.
    observers = observers_for(settings, stdout, github=args.command != "lint")
    _notify(observers, lambda o: o.run_started(args.command))

    from runner.cancel import CancelToken

    cancel = CancelToken()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["code"] = _dispatch(args, settings, cancel, observers, report, stdout)
        except BaseException as exc:  # handed to the main thread, which maps it
            outcome["error"] = exc

    try:
        code = _run_supervised(work, cancel, outcome)
    finally:
        unmask_records()
    if "error" in outcome:
        code = _record_error(report, outcome["error"])
    else:
        report.exit_code = code
    report.duration_ms = int((time.monotonic() - started) * 1000)
    _log_finished(report)
    _notify(observers, lambda o: o.run_finished(report))
    return report.exit_code


def _kube_run(
    argv: list[str],
    parser: argparse.ArgumentParser,
    report: RunReport,
    started: float,
    stdout: TextIO,
    stderr: TextIO | None,
) -> int:
    """`kube-run` parses its own flags; it shares only settings and the log pipeline."""
    from runner.settings import load_settings

    try:
        settings = load_settings()
    except RunnerError as exc:
        return _finish_early(parser, report, exc, started, stderr)
    logs.configure_logging(settings.log_format, settings.log_level, stderr)
    from runner import kube_cli

    interruption = kube_cli.Interruption()

    def on_signal(signum: int, _: FrameType | None) -> None:
        # Only a flag: kube-run works in this (the main) thread, which may hold any lock now.
        code = ExitCode.SIGTERM if signum == signal.SIGTERM else ExitCode.SIGINT
        interruption.request(signal.Signals(signum).name, code)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    for signum in _early_signals:
        on_signal(signum, None)
    try:
        return kube_cli.main(
            argv, stdout=getattr(stdout, "buffer", None), interruption=interruption
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_supervised(work: Callable[[], None], cancel: Any, outcome: dict[str, Any]) -> int:
    worker = threading.Thread(target=work, name="migration", daemon=True)

    def on_signal(signum: int, _: FrameType | None) -> None:
        name = signal.Signals(signum).name
        code = ExitCode.SIGTERM if signum == signal.SIGTERM else ExitCode.SIGINT
        if not cancel.cancelled:
            log.warning(
                "signal_received",
                signal=name,
                action="cancelling the statement in flight and rolling back",
            )
        cancel.cancel(name, code)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    for signum in _early_signals:
        on_signal(signum, None)
    try:
        worker.start()
        deadline: float | None = None
        while worker.is_alive():
            worker.join(0.1)
            if cancel.cancelled:
                if deadline is None:
                    deadline = time.monotonic() + SHUTDOWN_GRACE_S
                elif time.monotonic() > deadline:
                    outcome["error"] = Interrupted(cancel.signal_name, ExitCode(cancel.exit_code))
                    log.error(
                        "shutdown_grace_exceeded",
                        grace_s=SHUTDOWN_GRACE_S,
                        reason="the worker did not stop; the server releases the lock "
                        "when this process exits",
                    )
                    break
                # A cancel sent between two statements is lost; resend until the worker stops.
                cancel.cancel_statement()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return int(outcome.get("code", ExitCode.INTERNAL))


def _dispatch(
    args: argparse.Namespace,
    settings: Settings,
    cancel: Any,
    observers: Sequence[RunObserver],
    report: RunReport,
    stdout: TextIO,
) -> int:
    # Alembic and SQLAlchemy are imported here, in the worker: the signal handler is in place.
    from runner.commands import COMMANDS
    from runner.drive import Run

    if settings.fleet:
        from runner import fleet_commands

        if fleet_commands.on_fleet(args.command, args):
            spec = fleet_commands.spec_for(args.command, args, settings)
            return fleet_commands.run(spec, cancel, report, stdout, fleet_worker)
    run = Run(settings, cancel, observers, report)
    return COMMANDS[args.command](run, args, stdout)


def fleet_worker(channel: Any, spec: Any) -> None:
    """A fleet's worker process (runner/fleet.py), forked by the run: the same process edge as
    `main` around its share of the targets. It inherits the loaded project and the secrets to
    mask, and builds its own streams, logger and cancel token (nothing another thread of the
    parent may have held at the fork). A signal (the parent passes SIGTERM on) cancels the
    statement in flight; the target's revision rolls back and the worker stops."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    settings: Settings = spec.settings
    os.dup2(2, 1)  # the project's prints join the events on stderr, masked
    events = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace", buffering=1)
    sys.stdout = redact.MaskedStream(events)
    sys.stderr = redact.MaskedStream(events)
    logs.configure_logging(settings.log_format, settings.log_level, events)
    from runner.cancel import CancelToken

    cancel = CancelToken()

    def on_signal() -> None:
        signum = signal.sigwait({signal.SIGTERM, signal.SIGINT})
        code = ExitCode.SIGTERM if signum == signal.SIGTERM else ExitCode.SIGINT
        cancel.cancel(signal.Signals(signum).name, code)
        while True:  # a cancel sent between two statements is lost: resend until the end
            time.sleep(0.1)
            cancel.cancel_statement()

    threading.Thread(target=on_signal, name="signals", daemon=True).start()
    from runner import fleet_commands

    fleet_commands.serve(channel, spec, cancel)
    with contextlib.suppress(OSError, ValueError):
        events.flush()
    os._exit(0)


def _notify(observers: Sequence[RunObserver], call: Callable[[RunObserver], None]) -> None:
    if observers:  # no import of the observer machinery when nobody listens
        from runner.observers import notify

        notify(observers, call)


def observers_for(settings: Any, stdout: TextIO, github: bool = True) -> list[RunObserver]:
    """The reporters this process has: GitHub Actions, the pod's termination message, Events."""
    observers: list[RunObserver] = []
    if settings.github_actions and github:
        from runner.github import GitHubObserver

        observers.append(GitHubObserver(settings.github_step_summary, stdout))
    termination_path = settings.termination_message_path or (
        KUBELET_TERMINATION_LOG if settings.in_kubernetes else None
    )
    if termination_path is not None:
        from runner.termination import TerminationMessageObserver

        observers.append(TerminationMessageObserver(termination_path))
    wants_events = settings.kube_events == "on" or (
        settings.kube_events == "auto" and settings.in_kubernetes
    )
    if wants_events:
        from runner import kube  # imported only here: it costs a quarter second

        observer = kube.event_observer(settings)
        if observer is not None:
            observers.append(observer)
    return observers


def _record_error(report: RunReport, exc: BaseException) -> int:
    if isinstance(exc, RunnerError):
        report.exit_code = int(exc.exit_code)
        report.outcome = exc.outcome
        report.reason = redact.redact(exc.reason)
        report.failed_revision = exc.fields.get("revision")
        report.sqlstate = exc.fields.get("sqlstate")
        report.dirty = bool(exc.fields.get("dirty"))
    else:
        report.exit_code = ExitCode.INTERNAL
        report.outcome = "internal_error"
        text = str(exc).strip().splitlines()
        report.reason = redact.redact(
            f"internal error: {type(exc).__name__}" + (f": {text[0]}" if text else "")
        )
        log.debug("internal_error", exc_info=exc)
    return report.exit_code


def _log_finished(report: RunReport) -> None:
    fields = report.summary()
    ok = report.exit_code in (ExitCode.OK, ExitCode.PENDING)
    log.summary(logging.INFO if ok else logging.ERROR, "run_finished", **fields)


def _finish_early(
    parser: argparse.ArgumentParser,
    report: RunReport,
    exc: RunnerError,
    started: float,
    stderr: TextIO | None,
) -> int:
    """Usage and settings errors: logging uses its defaults, since settings did not load."""
    logs.configure_logging("auto", "info", stderr)
    if isinstance(exc, UsageError):
        parser.print_usage(stderr or sys.stderr)
    _record_error(report, exc)
    report.duration_ms = int((time.monotonic() - started) * 1000)
    _log_finished(report)
    return report.exit_code
