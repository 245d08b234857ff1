"""A fleet: one run over many *targets* (the tenants of a schema-per-tenant project, or a list
of databases), each migrated exactly as a run of its own would migrate it.

- **Targets** (`targets`): tenant names (`MIGRATION_TENANTS`, `..._FILE`, or the first column
  of `MIGRATION_TENANTS_QUERY` on the main database), each run with the x-argument
  `tenant=NAME` as `alembic -x tenant=NAME upgrade head` runs it; or the database URLs of
  `MIGRATION_DATABASE_URLS_FILE`, each run with its own URL. A shard (`in_shard`) keeps the
  targets whose name hashes to its index: a stable split, every target in exactly one shard,
  whatever the order of the list or what was added to it.
- **One target** (`TargetRunner.run`): a `drive.Run` of its own (its own lock, one transaction
  per revision, its own history rows), reusing the script directory the first target of this
  process loaded (`Run(project_of=...)`); a target at head costs env.py's connection and one
  read of its version table. Its outcome comes back as a small `TargetResult`, and two events:
  `target_started`, `target_finished`.
- **Parallelism**: Alembic's `context` and `op` are module globals, so two targets never run
  at once in one interpreter. With `MIGRATION_PARALLEL` > 1, that many worker processes each
  run their share of the targets one after the other; the parent hands out targets one at a
  time and collects the results (`_Processes`). The workers are forked once the parent has
  loaded the project: they start at once, with the revisions already loaded, the secrets to
  mask already known. The parent forks before any connection or other thread of its own
  exists (the CLI's main thread only waits), and each worker builds its own streams, logger
  and cancel token (runner/cli.py `fleet_worker`). A signal is passed on to the workers; each
  rolls back its current revision.
- **Scheduling** (`schedule`): a canary (the first N targets, alone, stopping on a failure),
  then the rest; no new target after `MIGRATION_MAX_FAILED` failures or a signal.

The fleet's exit code comes from its targets' (`errors.fleet_exit_code`).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing import connection as mpc
from typing import Any, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from runner import db, redact
from runner.cancel import CancelToken
from runner.drive import Run
from runner.errors import ConfigError, ExitCode, MigrationFailed, RunnerError, fleet_exit_code
from runner.logs import log
from runner.report import RunReport
from runner.settings import Secret, Settings, tenant_name_problem

#: After a signal, how long worker processes get to roll back and stop before they are
#: killed: inside the CLI's own shutdown grace (runner/cli.py, 10 s).
WORKER_GRACE_S = 7.0
_READY = "ready"


# -- targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetTarget:
    """One target: a tenant (the project runs with `-x tenant=NAME`) or a database (`url`)."""

    name: str
    url: Secret | None = None

    def settings_for(self, base: Settings) -> Settings:
        if self.url is not None:
            return replace(
                base, database_url=self.url, database_url_source="MIGRATION_DATABASE_URLS_FILE"
            )
        return replace(base, x_args=(*base.x_args, f"{base.tenant_arg}={self.name}"))


def shard_of(name: str, count: int) -> int:
    """The shard a target belongs to: a hash of its name, so it never moves between shards
    when the list is reordered or grows."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(name: str, settings: Settings) -> bool:
    if settings.shard_count <= 1:
        return True
    return shard_of(name, settings.shard_count) == settings.shard_index


def shard_label(settings: Settings) -> str | None:
    return f"{settings.shard_index}/{settings.shard_count}" if settings.shard_count > 1 else None


def database_label(url: str, index: int) -> str:
    """How a database target is named: `host:port/database`, never its credentials (a URL
    that does not parse: its place in the file, `url-3`)."""
    try:
        parsed = make_url(url)
    except Exception:
        return f"url-{index}"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.host or ''}{port}/{parsed.database or ''}"


def targets(settings: Settings, cancel: CancelToken) -> list[FleetTarget]:
    """This shard's targets, in the order of their source."""
    found: list[FleetTarget] = []
    if settings.database_urls or settings.database_urls_file:
        seen: set[str] = set()
        for index, url in enumerate(settings.database_urls, 1):
            name = database_label(url.get_secret_value(), index)
            if name in seen:
                name = f"{name}#{index}"
            seen.add(name)
            found.append(FleetTarget(name, url))
    else:
        names = tenants_from_query(settings, cancel) if settings.tenants_query else settings.tenants
        found = [FleetTarget(name) for name in names]
    return [target for target in found if in_shard(target.name, settings)]


def tenants_from_query(settings: Settings, cancel: CancelToken) -> list[str]:
    """The first column of MIGRATION_TENANTS_QUERY on the main database, as tenant names."""
    url = settings.database().url
    engine = db.runner_engine(url)
    connects = db.RetryingConnects(settings.connect_timeout, cancel)
    try:
        with connects, engine.connect() as conn:
            # No parameters at all: a `%` in the query (LIKE 'tenant_%') is SQL.
            quoted = conn.execution_options(no_parameters=True)
            rows = quoted.exec_driver_sql(str(settings.tenants_query)).all()
    except DBAPIError as exc:
        explained = connects.explain(exc)
        if explained is not None:
            raise explained from None
        error = db.classify(exc, url.get_backend_name())
        if isinstance(error, MigrationFailed):
            raise ConfigError(f"MIGRATION_TENANTS_QUERY failed: {error.reason}") from None
        raise error from None
    finally:
        engine.dispose()
    names = (str(row[0]).strip() for row in rows if row and row[0] is not None)
    return list(dict.fromkeys(name for name in names if name))


# -- one target ---------------------------------------------------------------------------


@dataclass
class TargetResult:
    """What became of one target; small, so a fleet of any size keeps little of each."""

    target: str
    exit_code: int
    outcome: str
    applied: int = 0
    from_revision: str | None = None
    to_revision: str | None = None
    duration_ms: int = 0
    #: One line, masked.
    reason: str | None = None
    revision: str | None = None
    sqlstate: str | None = None
    dirty: bool = False
    #: What `check`, `current` and `plan` found (one entry per database env.py configured).
    states: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.exit_code not in (ExitCode.OK, ExitCode.PENDING)

    @property
    def behind(self) -> bool:
        return self.exit_code == ExitCode.PENDING

    def event(self) -> dict[str, Any]:
        """The fields of `target_finished`."""
        out: dict[str, Any] = {
            "target": self.target,
            "exit_code": self.exit_code,
            "outcome": self.outcome,
            "applied": self.applied,
            "from_revision": self.from_revision,
            "to_revision": self.to_revision,
            "duration_ms": self.duration_ms,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.revision:
            out["revision"] = self.revision
        if self.sqlstate:
            out["sqlstate"] = self.sqlstate
        if self.dirty:
            out["dirty"] = True
        return out


class TargetWork(Protocol):
    """What a command does to each target (runner/fleet_commands.py)."""

    command: str

    def settings(self, settings: Settings) -> Settings:
        """The target's settings, adjusted for the command (`wait`: the time left)."""

    def __call__(self, run: Run) -> tuple[int, list[dict[str, Any]]]:
        """Run the command on the target: its exit code, and what it found (`states`)."""


class TargetRunner:
    """Runs targets one after another in this process, loading the project once."""

    def __init__(
        self,
        settings: Settings,
        cancel: CancelToken,
        work: TargetWork,
        project: Run | None = None,
    ) -> None:
        self.settings = settings
        self.cancel = cancel
        self.work = work
        #: The run whose script directory every target reuses.
        self.project = project

    def load_project(self, target: FleetTarget) -> Run:
        """Load the project (alembic.ini, the revisions) once, as `target` would."""
        if self.project is None:
            settings = self.work.settings(target.settings_for(self.settings))
            self.project = Run(settings, self.cancel, (), RunReport(command=self.work.command))
        return self.project

    def run(self, target: FleetTarget) -> TargetResult:
        started = time.monotonic()
        log.info("target_started", target=target.name)
        report = RunReport(command=self.work.command)
        states: list[dict[str, Any]] = []
        try:
            self.cancel.check()
            if target.url is not None:
                redact.register_url_text(target.url.get_secret_value())
            elif (problem := tenant_name_problem(target.name)) is not None:
                raise ConfigError(f"tenant name {problem}")
            settings = self.work.settings(target.settings_for(self.settings))
            run = Run(settings, self.cancel, (), report, project_of=self.project)
            self.project = self.project or run
            report.exit_code, states = self.work(run)
        except RunnerError as exc:
            report.exit_code, report.outcome = int(exc.exit_code), exc.outcome
            report.reason = redact.redact(exc.reason)
            report.failed_revision = exc.fields.get("revision")
            report.sqlstate = exc.fields.get("sqlstate")
            report.dirty = bool(exc.fields.get("dirty"))
        except Exception as exc:  # a bug: this target fails, the fleet goes on
            text = str(exc).strip().splitlines()
            report.exit_code, report.outcome = ExitCode.INTERNAL, "internal_error"
            report.reason = redact.redact(
                f"internal error: {type(exc).__name__}" + (f": {text[0]}" if text else "")
            )
            log.debug("internal_error", exc_info=exc)
        result = TargetResult(
            target.name,
            report.exit_code,
            report.outcome,
            applied=len(report.applied),
            from_revision=report.from_revision,
            to_revision=report.to_revision,
            duration_ms=int((time.monotonic() - started) * 1000),
            reason=report.reason,
            revision=report.failed_revision,
            sqlstate=report.sqlstate,
            dirty=report.dirty,
            states=states,
        )
        if result.failed:
            log.error("target_finished", **result.event())
        else:
            log.info("target_finished", **result.event())
        return result


# -- running targets: in this process, or in worker processes -----------------------------


class Executor(Protocol):
    @property
    def busy(self) -> int:
        """Targets handed out and not yet finished."""

    def free(self) -> bool:
        """Whether a target can be handed out now."""

    @property
    def broken(self) -> bool:
        """No target can ever be handed out again (every worker failed to start)."""

    def submit(self, target: FleetTarget) -> None: ...

    def next_result(self) -> TargetResult | None:
        """A finished target, or None when nothing finished yet (call again)."""

    def close(self) -> None: ...


class _InProcess:
    """`MIGRATION_PARALLEL=1`: the targets run one after another in this thread."""

    def __init__(self, runner: TargetRunner) -> None:
        self._runner = runner
        self._queued: FleetTarget | None = None

    @property
    def busy(self) -> int:
        return 0 if self._queued is None else 1

    def free(self) -> bool:
        return self._queued is None

    @property
    def broken(self) -> bool:
        return False

    def submit(self, target: FleetTarget) -> None:
        self._queued = target

    def next_result(self) -> TargetResult | None:
        target, self._queued = self._queued, None
        return None if target is None else self._runner.run(target)

    def close(self) -> None:
        return None


@dataclass
class _Slot:
    process: Any
    channel: Any
    ready: bool = False
    target: FleetTarget | None = None
    alive: bool = True


class _Processes:
    """Worker processes, each running the targets it is handed one at a time.

    `entry(channel, spec)` is the worker's main function (the CLI's: it sets up the process as
    `main` does, then calls `serve`); `spec` is what it needs to run the command's work.
    """

    def __init__(
        self, size: int, entry: Callable[[Any, Any], None], spec: Any, cancel: CancelToken
    ) -> None:
        self._context = multiprocessing.get_context("fork")
        self._entry, self._spec, self._cancel = entry, spec, cancel
        self._signalled_at: float | None = None
        self._orphans: list[TargetResult] = []
        self._slots = [self._start(i) for i in range(size)]

    def _start(self, index: int) -> _Slot:
        mine, theirs = self._context.Pipe()
        process = self._context.Process(
            target=self._entry,
            args=(theirs, self._spec),
            name=f"migration-runner-fleet-{index}",
            daemon=True,
        )
        # The worker is born with SIGTERM/SIGINT blocked (a thread of its own takes them with
        # sigwait), so that one arriving before it is set up waits for it instead of running
        # the parent's handler in the child. This thread's mask only: the CLI's main thread
        # keeps handling them for the parent.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork() with threads: the CLI's main thread only
                # waits, and the worker touches nothing of the parent's that it could lock.
                warnings.simplefilter("ignore", DeprecationWarning)
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        theirs.close()
        return _Slot(process, mine)

    @property
    def busy(self) -> int:
        """Targets out, including those whose worker was lost and not yet reported."""
        return sum(1 for slot in self._slots if slot.target is not None) + len(self._orphans)

    def free(self) -> bool:
        return self._idle() is not None

    @property
    def broken(self) -> bool:
        return not any(slot.alive for slot in self._slots)

    def _idle(self) -> _Slot | None:
        for slot in self._slots:
            if slot.alive and slot.ready and slot.target is None:
                return slot
        return None

    def submit(self, target: FleetTarget) -> None:
        slot = self._idle()
        assert slot is not None
        slot.target = target
        try:
            slot.channel.send(target)
        except OSError:
            self._orphans.append(self._lost(slot))

    def next_result(self) -> TargetResult | None:
        self._pass_on_signal()
        if self._orphans:
            return self._orphans.pop()
        live = [slot for slot in self._slots if slot.alive]
        if not live:
            time.sleep(0.05)
            return None
        for channel in mpc.wait([slot.channel for slot in live], timeout=0.1):
            slot = next(s for s in live if s.channel is channel)
            try:
                message = slot.channel.recv()
            except (EOFError, OSError):
                lost = self._lost(slot)
                if lost.target:
                    return lost
                continue
            if message == _READY:
                slot.ready = True
                continue
            slot.target = None
            assert isinstance(message, TargetResult)
            return message
        return None

    def _lost(self, slot: _Slot) -> TargetResult:
        """A worker that ended without answering (killed, out of memory): its target failed,
        and unless the fleet is stopping, a new worker takes its place."""
        slot.alive = False
        slot.process.join(1)
        code = slot.process.exitcode
        target, slot.target = slot.target, None
        if slot.ready and not self._cancel.cancelled:  # one that never started: do not retry
            index = self._slots.index(slot)
            self._slots[index] = self._start(index)
        how = f"was killed by signal {-code}" if code is not None and code < 0 else "exited"
        result = TargetResult(
            target.name if target else "",
            self._cancel.exit_code if self._cancel.cancelled else ExitCode.INTERNAL,
            "interrupted" if self._cancel.cancelled else "worker_lost",
            reason=f"the worker process migrating it {how} (exit code {code}); the database "
            "rolls back the revision it was running",
        )
        if target is not None:
            log.error("target_finished", **result.event())  # the worker could not say it
        return result

    def _pass_on_signal(self) -> None:
        """The run was cancelled: ask every worker to stop (each rolls back its current
        revision), and kill those still running after the grace period."""
        if not self._cancel.cancelled:
            return
        now = time.monotonic()
        if self._signalled_at is None:
            self._signalled_at = now
            sig = signal.SIGINT if self._cancel.exit_code == ExitCode.SIGINT else signal.SIGTERM
            for slot in self._slots:
                if slot.alive and slot.process.pid is not None:
                    _kill(slot.process.pid, sig)
            return
        if now - self._signalled_at < WORKER_GRACE_S:
            return
        for slot in self._slots:
            if not slot.alive:
                continue
            slot.process.kill()
            slot.alive = False
            if slot.target is not None:
                killed = TargetResult(
                    slot.target.name,
                    self._cancel.exit_code,
                    "interrupted",
                    reason=f"still running {WORKER_GRACE_S:g}s after the signal: killed; "
                    "the database rolls back the revision it was running",
                )
                log.error("target_finished", **killed.event())
                self._orphans.append(killed)
                slot.target = None

    def close(self) -> None:
        for slot in self._slots:
            if slot.alive:
                with contextlib.suppress(OSError):
                    slot.channel.send(None)
        deadline = time.monotonic() + 5.0
        for slot in self._slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(1)
            slot.channel.close()


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def serve(channel: Any, runner: TargetRunner, cancel: CancelToken) -> None:
    """A worker process's loop: run each target the parent hands over and send its result,
    until told to stop (None), the parent is gone, or a signal cancelled the run."""
    channel.send(_READY)
    while not cancel.cancelled:
        if not channel.poll(0.1):
            continue
        try:
            target = channel.recv()
        except (EOFError, OSError):
            return
        if target is None:
            return
        channel.send(runner.run(target))


# -- the whole fleet ----------------------------------------------------------------------


@dataclass
class FleetOutcome:
    exit_code: int
    #: Why targets were left unstarted (None: every target ran).
    stopped: str | None
    failed: int
    behind: int


def schedule(
    todo: Sequence[FleetTarget],
    executor: Executor,
    settings: Settings,
    cancel: CancelToken,
    on_result: Callable[[TargetResult], None],
    on_skipped: Callable[[FleetTarget], None],
) -> FleetOutcome:
    """Hand the targets out in order: the canary first (`MIGRATION_CANARY` targets, then
    nothing more until all of them finished, and nothing at all if one failed), then the rest;
    no new target once `MIGRATION_MAX_FAILED` targets failed or the run was cancelled."""
    canary = min(settings.canary, len(todo))
    next_index = 0
    failure_codes: set[int] = set()
    failed = behind = 0
    stopped: str | None = None
    while True:
        if stopped is None and cancel.cancelled:
            stopped = "interrupted"
        while stopped is None and next_index < len(todo) and executor.free():
            if next_index == canary and canary and executor.busy:
                break  # the canary is still running
            executor.submit(todo[next_index])
            next_index += 1
        if executor.busy == 0 and (stopped is not None or next_index == len(todo)):
            break
        if stopped is None and executor.broken:
            stopped = "workers_failed"
            log.error("fleet_workers_failed", reason="no worker process could start; see above")
            continue
        result = executor.next_result()
        if result is None:
            continue
        on_result(result)
        behind += result.behind
        if not result.failed:
            continue
        failed += 1
        failure_codes.add(result.exit_code)
        if stopped is None and next_index <= canary:
            stopped = "canary_failed"
            log.error(
                "canary_failed",
                target=result.target,
                reason=f"canary target {result.target} failed: no further target is started",
            )
        elif stopped is None and settings.max_failed and failed >= settings.max_failed:
            stopped = "max_failed"
            log.error(
                "max_failed_reached",
                failed=failed,
                max_failed=settings.max_failed,
                reason="no further target is started (MIGRATION_MAX_FAILED)",
            )
    for target in todo[next_index:]:
        on_skipped(target)
    if cancel.cancelled:
        code = ExitCode(cancel.exit_code)
    elif next_index < len(todo) and not failure_codes:
        code = ExitCode.INTERNAL  # targets left behind with no failure to blame: never exit 0
    else:
        code = fleet_exit_code(failure_codes, behind > 0)
    return FleetOutcome(int(code), stopped if next_index < len(todo) else None, failed, behind)


def run_fleet(
    todo: Sequence[FleetTarget],
    settings: Settings,
    cancel: CancelToken,
    runner: TargetRunner,
    worker: tuple[Callable[[Any, Any], None], Any] | None,
    on_result: Callable[[TargetResult], None],
    on_skipped: Callable[[FleetTarget], None],
) -> FleetOutcome:
    """Migrate `todo`: in this process, or (`worker`: the worker processes' entry and what
    it needs) in up to `MIGRATION_PARALLEL` worker processes."""
    size = min(settings.parallel, len(todo))
    log.info(
        "fleet_started",
        targets=len(todo),
        shard=shard_label(settings),
        parallel=max(size, 1),
        canary=settings.canary,
        max_failed=settings.max_failed,
    )
    executor: Executor
    if size > 1 and worker is not None:
        executor = _Processes(size, worker[0], worker[1], cancel)
    else:
        executor = _InProcess(runner)
    try:
        return schedule(todo, executor, settings, cancel, on_result, on_skipped)
    finally:
        executor.close()
