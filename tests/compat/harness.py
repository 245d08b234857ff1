"""Side-by-side runs: plain Alembic in one fresh database, migration-runner in another, and the
two databases compared. One function per scenario, each returning an `Outcome` that the
pytest module asserts on and the report renders.

Scenarios (each with a warm or a cold HOME):
- apply: from empty (after the project's seed) to head.
- noop: a second `upgrade` on a database at head: exit 0, nothing applied, nothing changed.
- downgrade: `downgrade REV --yes` then `upgrade`, each state compared with plain Alembic's
  `downgrade REV` and `upgrade` from the same start.
- concurrent: five `upgrade` processes started together on one database: all exit 0, exactly
  one applies, no revision is applied twice, the result equals plain Alembic's.

HOME: the runner keeps no state between runs (it has no cache), but a project's own code may
write to HOME. *warm*: every runner run of the project shares one HOME, first filled by an
upgrade on a scratch database (a note says what it left there), as on a developer's machine;
*cold*: an empty HOME per run, as a pod starts.

Every runner run is also checked for its output contract: every stderr line is a JSON object,
exactly one `run_finished` line whose `exit_code` is the process's, and (for `upgrade`) an
empty stdout. One exception, by the runner's design (README "Log events"): what the project
itself prints (a revision's `print()`, its own log handlers) stays the project's and is passed
through on stderr. A plain line is taken for the project's own only when plain Alembic printed
the same line (timestamps aside) for the same project and backend, and it is neither an Alembic
or SQLAlchemy record nor a Python warning (those the runner promises as JSON events); such
lines are listed in the case's notes.
Every subprocess has a timeout; every database is dropped in `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.compat import databases, envs
from tests.compat.databases import Database, fresh_database
from tests.compat.projects import PROJECTS, Project

SCENARIOS = ("apply", "noop", "downgrade", "concurrent")
HOMES = ("warm", "cold")
RUN_TIMEOUT_S = float(os.environ.get("MIGRATION_COMPAT_RUN_TIMEOUT", "600"))
CONCURRENT_RUNNERS = 5
DESCRIBE_DIFF_LINES = 80
DRIVER = Path(__file__).with_name("alembic_in_worker_thread.py")


@dataclass(frozen=True)
class Case:
    project: Project
    scenario: str
    backend: str
    home: str

    @property
    def id(self) -> str:
        return f"{self.project.key}-{self.scenario}-{self.backend}-{self.home}"


def all_cases() -> list[Case]:
    return [
        Case(project, scenario, backend, home)
        for project in PROJECTS
        for scenario in SCENARIOS
        for backend in project.backends
        for home in HOMES
        if (scenario, backend) not in project.not_run
    ]


@dataclass
class Run:
    """One finished process."""

    label: str
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float

    def tail(self, lines: int = 6) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])

    @property
    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
        return found

    @property
    def finished(self) -> dict[str, Any] | None:
        lines = [e for e in self.events if e.get("event") == "run_finished"]
        return lines[-1] if lines else None

    @property
    def applied(self) -> int | None:
        finished = self.finished
        if finished is None:
            return None
        value = finished.get("applied")
        return len(value) if isinstance(value, list) else value

    @property
    def applied_revisions(self) -> list[str]:
        return [str(e.get("revision")) for e in self.events if e.get("event") == "revision_applied"]

    @property
    def reason(self) -> str:
        """The runner's own one-line reason for a failure, else its last stderr lines."""
        finished = self.finished
        if finished and finished.get("reason"):
            return str(finished["reason"])
        return self.tail(3)


_SITE_PACKAGES = re.compile(r"/\S*?/site-packages/")


@dataclass
class Outcome:
    case: Case
    #: "same" (identical to plain Alembic, contract kept), "different", "error" (the harness
    #: or plain Alembic could not run: no verdict about the runner) or "skipped".
    status: str = "same"
    problems: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def problem(self, text: str) -> None:
        # Paths into the venv say nothing the project column does not: keep the package path.
        self.problems.append(_SITE_PACKAGES.sub("", text))
        if self.status == "same":
            self.status = "different"

    @property
    def why(self) -> str:
        return self.problems[0].splitlines()[0] if self.problems else ""

    def describe(self) -> str:
        parts = [f"{self.case.id}: {self.status}", f"runner exit codes: {self.exit_codes}"]
        parts += [f"problem: {p}" for p in self.problems]
        parts += [f"note: {n}" for n in self.notes]
        for diff in self.diffs:
            lines = diff.splitlines()
            parts += lines[:DESCRIBE_DIFF_LINES]
            if len(lines) > DESCRIBE_DIFF_LINES:
                parts.append(f"... ({len(lines) - DESCRIBE_DIFF_LINES} more diff lines)")
        return "\n".join(parts)


class HarnessError(Exception):
    """Plain Alembic, a seed or an install failed: the case cannot be judged."""


# -- the project's files and environment --------------------------------------------------------


def _set_option(ini: str, option: str, value: str) -> str:
    """Set `option` in the [alembic] section, as Config.set_main_option would."""
    lines = ini.splitlines()
    section = None
    for index, line in enumerate(lines):
        header = re.match(r"\s*\[([^\]]+)\]", line)
        if header:
            section = header.group(1)
            continue
        if section == "alembic" and re.match(rf"{re.escape(option)}\s*=", line):
            lines[index] = f"{option} = {value}"
            return "\n".join(lines) + "\n"
    at = next(i for i, line in enumerate(lines) if line.strip() == "[alembic]")
    lines.insert(at + 1, f"{option} = {value}")
    return "\n".join(lines) + "\n"


def project_ini(project: Project, venv: envs.Venv, url: str | None) -> str:
    """The ini the package's own code would build; `url=None`: no URL in it (the runner's)."""
    shipped = (venv.site_packages / project.ini).read_text()
    script_dir = str(venv.site_packages / project.script_dir)
    escaped = (url or "").replace("%", "%%")
    if project.ini_style == "format":
        return shipped.format(alembic_dir=script_dir, db_url=escaped)
    if project.ini_style == "verbatim":
        return shipped
    ini = _set_option(shipped, "script_location", script_dir)
    return _set_option(ini, "sqlalchemy.url", escaped) if url is not None else ini


def workspace(project: Project) -> Path:
    path = envs.cache_root() / "work" / project.key
    path.mkdir(parents=True, exist_ok=True)
    return path


def runner_ini(project: Project, venv: envs.Venv) -> Path:
    """One ini per project, written once and byte-identical between runs."""
    path = workspace(project) / "runner-alembic.ini"
    wanted = project_ini(project, venv, None)
    if not path.is_file() or path.read_text() != wanted:
        path.write_text(wanted)
    return path


def project_env(project: Project, db: Database) -> dict[str, str]:
    env = dict(project.extra_env)
    if project.url_in.startswith("env:"):
        env[project.url_in.removeprefix("env:")] = db.project_url(project.async_driver)
    return env


def base_env(venv: envs.Venv, home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{venv.path / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONUNBUFFERED": "1",
    }


def _spawn(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[str], float]:
    proc = subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return proc, time.monotonic()


def _collect(label: str, args: list[str], proc: subprocess.Popen[str], started: float) -> Run:
    """Wait for `proc` within RUN_TIMEOUT_S of its start; past it, kill its process group."""
    try:
        out, err = proc.communicate(timeout=max(1.0, RUN_TIMEOUT_S - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        err += f"\n[harness] killed after {RUN_TIMEOUT_S:g}s"
        return Run(label, args, -9, out, err, time.monotonic() - started)
    return Run(label, args, proc.returncode, out, err, time.monotonic() - started)


def _run(label: str, args: list[str], env: dict[str, str], cwd: Path) -> Run:
    proc, started = _spawn(args, env, cwd)
    return _collect(label, args, proc, started)


def _collect_together(
    started: list[tuple[str, list[str], subprocess.Popen[str], float]],
) -> list[Run]:
    """Wait for processes that run at the same time, draining all their pipes at once. Read
    one after another, a runner whose unread output fills its pipe blocks while it holds the
    migration lock, and the one being read waits for that lock until its lock timeout."""
    with ThreadPoolExecutor(max_workers=len(started)) as pool:
        futures = [pool.submit(_collect, *item) for item in started]
        return [future.result() for future in futures]


# -- plain Alembic ------------------------------------------------------------------------------


_BASELINES: dict[tuple[str, ...], tuple[str, ...] | HarnessError] = {}
#: Every line plain Alembic printed (stdout and stderr) per (project, backend): what the
#: project itself prints, against which a runner's plain stderr lines are checked.
_ALEMBIC_LINES: dict[tuple[str, str], set[str]] = {}
#: What the runner promises as JSON events, never as plain lines: a record of Alembic's or
#: SQLAlchemy's own loggers (in any format a project's ini gives it), and a Python warning as
#: `warnings` prints it (`path.py:23: SomeWarning: text`).
_RUNNERS_OWN = re.compile(r"\[(alembic|sqlalchemy)[.\]]|^\S+:\d+: \w*Warning: ")
#: A timestamp a project's log format puts in a line (ISO 8601, or logging's asctime).
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
)


def comparable(line: str) -> str:
    """A printed line as two runs can share it: stripped, timestamps replaced."""
    return _TIMESTAMP.sub("<time>", line.strip())


def project_lines(project: Project, backend: str) -> frozenset[str]:
    """The lines plain Alembic printed for this project and backend that are the project's
    own (not Alembic's or SQLAlchemy's records, not Python warnings)."""
    lines = _ALEMBIC_LINES.get((project.key, backend), set())
    return frozenset(line for line in lines if not _RUNNERS_OWN.search(line))


def _memo(key: tuple[str, ...], compute: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
    """Plain Alembic's result is the same for warm and cold: compute it once (a failure
    too, so that every case of the pair reports it without rerunning it)."""
    if key not in _BASELINES:
        try:
            _BASELINES[key] = compute()
        except HarnessError as exc:
            _BASELINES[key] = exc
    found = _BASELINES[key]
    if isinstance(found, HarnessError):
        raise found
    return found


def seed(project: Project, venv: envs.Venv, db: Database) -> None:
    if project.seed is None:
        return
    env = base_env(venv, envs.cache_root() / "homes" / f"{project.key}-seed")
    run = _run(
        "seed", [str(venv.python), "-c", project.seed, db.project_url()], env, workspace(project)
    )
    if run.returncode != 0:
        raise HarnessError(f"seed failed (exit {run.returncode}):\n{run.tail()}")


def alembic(project: Project, venv: envs.Venv, db: Database, *command: str) -> Run:
    folder = Path(tempfile.mkdtemp(prefix="mr-compat-ini-"))
    try:
        ini = folder / "alembic.ini"
        url = db.project_url(project.async_driver) if project.url_in == "ini" else None
        ini.write_text(project_ini(project, venv, url))
        if project.alembic_driver == "anyio-worker-thread":
            args = [str(venv.python), str(DRIVER), str(ini), *command]
        else:
            args = [str(venv.bin("alembic")), "-c", str(ini), *command]
        env = base_env(venv, envs.cache_root() / "homes" / f"{project.key}-alembic")
        env.update(project_env(project, db))
        run = _run(f"alembic {' '.join(command)}", args, env, workspace(project))
        printed = _ALEMBIC_LINES.setdefault((project.key, db.backend), set())
        printed.update(comparable(line) for line in (run.stdout + "\n" + run.stderr).splitlines())
        return run
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _alembic_ok(project: Project, venv: envs.Venv, db: Database, *command: str) -> None:
    run = alembic(project, venv, db, *command)
    if run.returncode != 0:
        raise HarnessError(
            f"plain Alembic `{' '.join(command)}` failed (exit {run.returncode}):\n{run.tail()}"
        )


def alembic_upgraded(project: Project, venv: envs.Venv, backend: str) -> str:
    """Plain Alembic's database at head, as a snapshot (checked to be reproducible)."""

    def once() -> str:
        with fresh_database(backend, f"{project.key}_alembic") as db:
            seed(project, venv, db)
            _alembic_ok(project, venv, db, "upgrade", project.target)
            return databases.snapshot(db)

    def compute() -> tuple[str, ...]:
        # Twice: a difference the comparison would report must not be one that plain Alembic
        # also shows between two of its own runs.
        first, second = once(), once()
        if first != second:
            raise HarnessError(
                "plain Alembic gives different databases on two runs; the comparison "
                "cannot judge this pair until the snapshot normalises it:\n"
                + databases.diff(first, second, "alembic run 1", "alembic run 2")[:3000]
            )
        return (first,)

    return _memo((project.key, backend, "upgrade"), compute)[0]


def alembic_downgraded(project: Project, venv: envs.Venv, backend: str) -> tuple[str, str]:
    """Plain Alembic's database after `downgrade REV` from head, and after upgrading again."""

    def compute() -> tuple[str, ...]:
        with fresh_database(backend, f"{project.key}_alembic") as db:
            seed(project, venv, db)
            _alembic_ok(project, venv, db, "upgrade", project.target)
            _alembic_ok(project, venv, db, "downgrade", project.downgrade_to[backend])
            downgraded = databases.snapshot(db)
            _alembic_ok(project, venv, db, "upgrade", project.target)
            return downgraded, databases.snapshot(db)

    down, again = _memo((project.key, backend, "downgrade"), compute)
    return down, again


# -- migration-runner ---------------------------------------------------------------------------


@dataclass
class RunnerSetup:
    """How this case starts the runner: with the project's shared HOME (warm) or an empty one
    per run (cold). The runner's own settings are its defaults but for the URL, the ini and
    JSON logs; its history table is left out of every comparison (databases.py)."""

    project: Project
    venv: envs.Venv
    home: str
    notes: list[str] = field(default_factory=list)

    def home_dir(self) -> Path:
        if self.home == "warm":
            return envs.cache_root() / "homes" / f"{self.project.key}-warm"
        return Path(tempfile.mkdtemp(prefix="mr-compat-cold-")) / "home"

    def env(self, db: Database, home: Path) -> dict[str, str]:
        env = base_env(self.venv, home)
        env.update(project_env(self.project, db))
        env["MIGRATION_DATABASE_URL"] = db.project_url(self.project.async_driver)
        env["MIGRATION_CONFIG"] = str(runner_ini(self.project, self.venv))
        env["MIGRATION_LOG_FORMAT"] = "json"
        return env

    def start(
        self, db: Database, *command: str
    ) -> tuple[subprocess.Popen[str], float, list[str], Path | None]:
        """Start one runner; also returns the cold run's directory to remove once it ends."""
        home = self.home_dir()
        args = [str(self.venv.bin("migration-runner")), *command]
        proc, started = _spawn(args, self.env(db, home), workspace(self.project))
        cold_root = home.parent if self.home == "cold" else None
        return proc, started, args, cold_root

    def run(self, db: Database, *command: str) -> Run:
        proc, started, args, cold_root = self.start(db, *command)
        try:
            return _collect(f"migration-runner {' '.join(command)}", args, proc, started)
        finally:
            if cold_root is not None:
                shutil.rmtree(cold_root, ignore_errors=True)


def check_contract(
    run: Run,
    outcome: Outcome,
    expect_empty_stdout: bool = True,
    projects_own: frozenset[str] = frozenset(),
) -> None:
    """The runner's output contract, whatever the run's result. `projects_own`: plain lines
    that are the project's own output (see the module docstring), passed through on stderr."""
    where = run.label
    bad = []
    passed = []
    for number, line in enumerate(run.stderr.splitlines(), 1):
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict) and "event" in value:
            continue
        if line.strip() and comparable(line) in projects_own:
            passed.append(line.strip())
        else:
            bad.append(f"{number}: {line[:160]}")
    if bad:
        outcome.problem(f"{where}: {len(bad)} stderr line(s) not JSON events, first: {bad[0]}")
    if passed:
        outcome.notes.append(
            f"{where}: {len(passed)} line(s) of the project's own output passed through on "
            f"stderr (plain Alembic prints them too), first: {passed[0][:120]}"
        )
    finished = [e for e in run.events if e.get("event") == "run_finished"]
    if len(finished) != 1:
        outcome.problem(f"{where}: {len(finished)} run_finished lines (want exactly 1)")
    elif finished[0].get("exit_code") != run.returncode:
        outcome.problem(
            f"{where}: run_finished exit_code {finished[0].get('exit_code')} "
            f"but the process exited {run.returncode}"
        )
    if expect_empty_stdout and run.stdout.strip():
        outcome.problem(f"{where}: stdout not empty: {run.stdout.strip()[:200]}")


def _runner_step(
    setup: RunnerSetup, db: Database, outcome: Outcome, *command: str, applies: bool | None = None
) -> Run:
    """Run one runner command, check exit 0 and its contract; `applies`: expect applied > 0
    (True) or == 0 (False)."""
    run = setup.run(db, *command)
    outcome.exit_codes.append(run.returncode)
    if run.returncode != 0:
        outcome.problem(f"{run.label}: exit {run.returncode}: {run.reason}")
    own = project_lines(setup.project, db.backend)
    check_contract(run, outcome, expect_empty_stdout=command[0] == "upgrade", projects_own=own)
    if run.returncode == 0 and applies is True and not run.applied:
        outcome.problem(f"{run.label}: run_finished reports applied={run.applied}, want > 0")
    if run.returncode == 0 and applies is False and run.applied != 0:
        outcome.problem(f"{run.label}: run_finished reports applied={run.applied}, want 0")
    return run


def _compare(outcome: Outcome, expected: str, db: Database, what: str) -> str:
    actual = databases.snapshot(db)
    if actual != expected:
        changed = ", ".join(_changed_sections(expected, actual))
        outcome.problem(f"{what}: database differs from plain Alembic's ({changed})")
        outcome.diffs.append(
            databases.diff(expected, actual, f"alembic ({what})", f"migration-runner ({what})")
        )
    return actual


def _sections(snapshot: str) -> dict[str, str]:
    out: dict[str, str] = {}
    title = ""
    for line in snapshot.splitlines():
        if line.startswith("==== "):
            title = line.removeprefix("==== ")
            out[title] = ""
        else:
            out[title] = out.get(title, "") + line + "\n"
    return out


def _changed_sections(expected: str, actual: str) -> list[str]:
    a, b = _sections(expected), _sections(actual)
    return [title for title in a | b if a.get(title) != b.get(title)]


# -- scenarios ----------------------------------------------------------------------------------


# Each scenario takes plain Alembic's result first: what it printed is what the runner's
# contract check allows as the project's own lines.


def _apply(setup: RunnerSetup, outcome: Outcome) -> None:
    case = outcome.case
    expected = alembic_upgraded(case.project, setup.venv, case.backend)
    with fresh_database(case.backend, f"{case.project.key}_runner") as db:
        seed(case.project, setup.venv, db)
        _runner_step(setup, db, outcome, "upgrade", applies=True)
        _compare(outcome, expected, db, "after upgrade")


def _noop(setup: RunnerSetup, outcome: Outcome) -> None:
    case = outcome.case
    expected = alembic_upgraded(case.project, setup.venv, case.backend)
    with fresh_database(case.backend, f"{case.project.key}_runner") as db:
        seed(case.project, setup.venv, db)
        first = _runner_step(setup, db, outcome, "upgrade", applies=True)
        if first.returncode != 0:
            outcome.notes.append("the first upgrade failed, so the rerun starts from its state")
        before = databases.snapshot(db)
        _runner_step(setup, db, outcome, "upgrade", applies=False)
        after = _compare(outcome, expected, db, "after the rerun")
        if after != before:
            outcome.problem("the no-op rerun changed the database")
            outcome.diffs.append(databases.diff(before, after, "before rerun", "after rerun"))


def _downgrade(setup: RunnerSetup, outcome: Outcome) -> None:
    case = outcome.case
    target = case.project.downgrade_to[case.backend]
    downgraded, upgraded_again = alembic_downgraded(case.project, setup.venv, case.backend)
    with fresh_database(case.backend, f"{case.project.key}_runner") as db:
        seed(case.project, setup.venv, db)
        _runner_step(setup, db, outcome, "upgrade", applies=True)
        _runner_step(setup, db, outcome, "downgrade", target, "--yes")
        _compare(outcome, downgraded, db, f"after downgrade {target}")
        _runner_step(setup, db, outcome, "upgrade", applies=True)
        _compare(outcome, upgraded_again, db, "after upgrading again")


def _concurrent(setup: RunnerSetup, outcome: Outcome) -> None:
    case = outcome.case
    expected = alembic_upgraded(case.project, setup.venv, case.backend)
    own = project_lines(case.project, case.backend)
    with fresh_database(case.backend, f"{case.project.key}_runner") as db:
        seed(case.project, setup.venv, db)
        started = [setup.start(db, "upgrade") for _ in range(CONCURRENT_RUNNERS)]
        try:
            runs = _collect_together(
                [
                    (f"runner #{number} of {CONCURRENT_RUNNERS}", args, proc, t0)
                    for number, (proc, t0, args, _) in enumerate(started, 1)
                ]
            )
        finally:
            for *_, cold_root in started:
                if cold_root is not None:
                    shutil.rmtree(cold_root, ignore_errors=True)
        for run in runs:
            outcome.exit_codes.append(run.returncode)
            if run.returncode != 0:
                outcome.problem(f"{run.label}: exit {run.returncode}: {run.reason}")
            check_contract(run, outcome, projects_own=own)
        appliers = [run for run in runs if run.applied]
        if len(appliers) != 1:
            outcome.problem(
                f"{len(appliers)} of {CONCURRENT_RUNNERS} runners report applied > 0 (want 1): "
                f"{[run.applied for run in runs]}"
            )
        seen: dict[str, int] = {}
        for run in runs:
            for revision in run.applied_revisions:
                seen[revision] = seen.get(revision, 0) + 1
        twice = sorted(r for r, n in seen.items() if n > 1)
        if twice:
            outcome.problem(f"revisions applied more than once: {twice[:5]}")
        _compare(outcome, expected, db, f"after {CONCURRENT_RUNNERS} concurrent upgrades")


SCENARIO_FUNCTIONS: dict[str, Callable[[RunnerSetup, Outcome], None]] = {
    "apply": _apply,
    "noop": _noop,
    "downgrade": _downgrade,
    "concurrent": _concurrent,
}

_PRIMED: set[str] = set()


def _home_entries(home: Path) -> list[str]:
    """What a HOME holds, two levels deep (`airflow/airflow.cfg`), for the notes."""
    if not home.is_dir():
        return []
    found = []
    for entry in sorted(home.iterdir()):
        children = sorted(c.name for c in entry.iterdir()) if entry.is_dir() else []
        found += [f"{entry.name}/{c}" for c in children] if children else [entry.name]
    return found


def _prime_warm_home(setup: RunnerSetup, backend: str) -> None:
    """A warm case runs with what an earlier run left in HOME: once per project per process,
    one upgrade on a scratch database with the shared HOME (what it leaves there is noted)."""
    project = setup.project
    if project.key in _PRIMED:
        return
    _PRIMED.add(project.key)
    with fresh_database(backend, f"{project.key}_prime") as db:
        seed(project, setup.venv, db)
        run = setup.run(db, "upgrade")
    entries = _home_entries(setup.home_dir())
    held = ", ".join(entries[:12]) + (" ..." if len(entries) > 12 else "") if entries else "empty"
    setup.notes.append(
        f"warm HOME primed by an upgrade on a scratch database (exit {run.returncode}); "
        f"HOME then held: {held}"
    )


def run_case(case: Case) -> Outcome:
    """Run one case; never raises for a runner problem (they are in the outcome)."""
    outcome = Outcome(case)
    started = time.monotonic()
    try:
        databases.admin_url(case.backend)
        venv = envs.ensure_venv(case.project)
        setup = RunnerSetup(case.project, venv, case.home)
        if case.home == "warm":
            _prime_warm_home(setup, case.backend)
        SCENARIO_FUNCTIONS[case.scenario](setup, outcome)
        outcome.notes.extend(setup.notes)
    except databases.BackendUnavailable as exc:
        outcome.status = "skipped"
        outcome.notes.append(str(exc))
    except (HarnessError, envs.InstallError, subprocess.TimeoutExpired, RuntimeError) as exc:
        outcome.status = "error"
        outcome.problems.insert(0, _SITE_PACKAGES.sub("", str(exc)))
    outcome.duration_s = time.monotonic() - started
    return outcome
