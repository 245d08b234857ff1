"""`lint`: what each revision will lock, found by running it.

The shadow run applies the revisions to a throwaway database on the shadow server
(`runner.shadow`), each exactly as `upgrade` runs it: the project's env.py through `drive.Run`
(env.py's own connection, `-x` passed through, one transaction per revision, the runner's
session settings), pointed at the throwaway database by a copy of the settings. A
`ShadowObserver` watches every step on the migration's own connection:

- before the step: a snapshot of the catalog (relations and their file nodes, columns,
  constraints);
- every statement the step sends (SQLAlchemy's `before_cursor_execute`), with the line of the
  revision file that sent it and whether it ran inside `autocommit_block()`;
- inside the step's transaction, before it commits: the relation locks that transaction holds
  (`pg_locks` for `pg_backend_pid()`) and the catalog again.

`runner.lint_rules` judges the difference. Revisions not under review (applied on the target
already, before `--from`, unchanged since the git base) are applied first, unobserved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from runner import lint_git, lint_rules, shadow, squawk
from runner.drive import Run, Work
from runner.errors import ConfigError, Interrupted, RunnerError, UsageError
from runner.lint_rules import Finding, RevisionObservation, Snapshot, Statement
from runner.logs import log
from runner.redact import redact
from runner.report import RunReport
from runner.revisions import PendingRevision, upgrade_steps
from runner.settings import Secret

#: The catalog, in one round trip (oids as numbers: JSON renders an `oid` as a string). No
#: `%` in it: psycopg2 would read one as a placeholder.
_CATALOG = """
 'rels', (SELECT coalesce(json_agg(json_build_array(c.oid::bigint, c.relkind, n.nspname, c.relname,
            c.relfilenode::bigint, i.indrelid::bigint)), '[]')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_index i ON i.indexrelid = c.oid
    WHERE c.oid >= 16384 AND c.relkind IN ('r', 'p', 'm', 'i', 'I')
      AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'),
 'cols', (SELECT coalesce(json_agg(json_build_array(a.attrelid::bigint, a.attnum, a.attname,
            a.attnotnull, a.atthasdef, a.attisdropped, a.attgenerated <> '',
            a.attidentity <> '')), '[]')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid >= 16384 AND c.relkind IN ('r', 'p') AND a.attnum > 0
      AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'),
 'cons', (SELECT coalesce(json_agg(json_build_array(k.oid::bigint, k.conrelid::bigint,
            k.conname, k.contype, k.convalidated, k.conindid::bigint, k.confrelid::bigint,
            CASE WHEN k.contype = 'c' THEN pg_get_constraintdef(k.oid) END)), '[]')
    FROM pg_constraint k WHERE k.conrelid >= 16384)
"""
SNAPSHOT_SQL = f"SELECT json_build_object({_CATALOG})::text"
SNAPSHOT_WITH_LOCKS_SQL = f"""SELECT json_build_object({_CATALOG},
 'locks', (SELECT coalesce(json_agg(json_build_array(l.relation::bigint, l.mode)), '[]')
    FROM pg_locks l WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation'
      AND l.granted AND l.relation >= 16384))::text"""


class ShadowObserver:
    """A `drive.StepObserver`: records what each upgrade step does on its connection.

    `review`: the revisions to observe (None: all); the others are applied unobserved.
    `keep_all`: keep every statement of an observed step, also those the revision did not
    send itself (Alembic's version-table updates), as `plan --sql` prints them."""

    def __init__(self, review: set[str] | None, keep_all: bool = False) -> None:
        self.review = review
        self.keep_all = keep_all
        self.observations: list[RevisionObservation] = []
        self.open: RevisionObservation | None = None
        self._path: str | None = None
        self._own = False
        self._watched: set[int] = set()
        self._statement_started: float | None = None
        self._last_after: Snapshot | None = None

    # -- StepObserver ----------------------------------------------------------------------

    def before_step(self, conn: Connection, step: PendingRevision) -> None:
        self._watch(conn)
        observe = step.kind == "upgrade" and (self.review is None or step.revision in self.review)
        obs = RevisionObservation(
            step.revision,
            step.down_revision,
            step.message,
            step.path,
            status="observed" if observe else "replayed",
        )
        self.open = obs
        self._path = os.path.realpath(step.path) if step.path else None
        previous, self._last_after = self._last_after, None
        if observe:
            # What the previous step's transaction saw just before it committed is the catalog
            # now (nothing runs between its commit and this step): read it only when unknown.
            obs.before = previous or self._snapshot(conn, SNAPSHOT_SQL)

    def in_step_transaction(self, conn: Connection, step: PendingRevision) -> None:
        obs = self.open
        if obs is not None and obs.status == "observed":
            obs.after = self._snapshot(conn, SNAPSHOT_WITH_LOCKS_SQL)
            self._last_after = dataclasses.replace(obs.after, locks={})

    def after_step(self, conn: Connection, step: PendingRevision, duration_ms: int) -> None:
        obs, self.open = self.open, None
        if obs is None:
            return
        obs.duration_ms = duration_ms
        self.observations.append(obs)

    # -- failure ---------------------------------------------------------------------------

    def failed(self, error: RunnerError) -> bool:
        """The open step failed with `error`: record it. False when no step was open (the
        failure is env.py's or the connection's, not a revision's)."""
        obs, self.open = self.open, None
        self._last_after = None
        if obs is None:
            return False
        obs.status = "failed"
        obs.error = redact(error.reason)
        obs.sqlstate = error.fields.get("sqlstate")
        self.observations.append(obs)
        return True

    # -- the connection ------------------------------------------------------------------

    def _watch(self, conn: Connection) -> None:
        if id(conn) in self._watched:
            return
        self._watched.add(id(conn))
        event.listen(conn, "before_cursor_execute", self._before_execute)
        event.listen(conn, "after_cursor_execute", self._after_execute)

    def _snapshot(self, conn: Connection, sql: str) -> Snapshot:
        self._own = True
        try:
            owned = not conn.in_transaction()
            text = conn.exec_driver_sql(sql).scalar()
            if owned:
                conn.commit()
        finally:
            self._own = False
        return Snapshot.from_json(str(text))

    def _before_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        obs = self.open
        if obs is None or self._own or obs.status != "observed":
            return
        line = self._revision_line()
        if line is None and not self.keep_all:
            return  # Alembic's own bookkeeping (the version table), not the revision's
        sql = _render(cursor, statement, parameters, context, executemany)
        obs.statements.append(Statement(sql, line, _autocommit(conn, cursor)))
        self._statement_started = time.perf_counter()

    def _after_execute(self, *_: Any) -> None:
        obs = self.open
        if obs is None or self._statement_started is None or not obs.statements:
            return
        obs.statements[-1].duration_ms = round(
            (time.perf_counter() - self._statement_started) * 1000, 3
        )
        self._statement_started = None

    def _revision_line(self) -> int | None:
        """The line of the revision file whose code sent the statement (through any helper)."""
        if self._path is None:
            return None
        frame = inspect.currentframe()
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename == self._path or (
                filename.endswith(os.path.basename(self._path))
                and os.path.realpath(filename) == self._path
            ):
                return frame.f_lineno
            frame = frame.f_back
        return None


def _autocommit(conn: Connection, cursor: Any) -> bool:
    """Whether the statement runs outside a transaction: inside `autocommit_block()` (Alembic
    sets the AUTOCOMMIT isolation level on the connection), or on a driver connection in
    autocommit mode."""
    level = conn.get_execution_options().get("isolation_level")
    if str(level or "").upper() == "AUTOCOMMIT":
        return True
    return getattr(getattr(cursor, "connection", None), "autocommit", False) is True


def _render(cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> str:
    """The statement as the server ran it, bind parameters inlined where possible: by the
    driver (psycopg2's `mogrify`), else by SQLAlchemy's literal rendering of the compiled
    statement; a statement whose values cannot be inlined keeps its placeholders."""
    if not parameters:
        return statement.strip()
    rows = parameters if executemany else [parameters]
    mogrify = getattr(cursor, "mogrify", None)
    if mogrify is not None:
        try:
            rendered = [mogrify(statement, row) for row in rows]
            return ";\n".join(
                (r.decode("utf-8", "replace") if isinstance(r, bytes) else str(r)).strip()
                for r in rendered
            )
        except Exception:  # noqa: S110 - fall back to SQLAlchemy's rendering
            pass
    compiled = getattr(context, "compiled", None)
    if compiled is not None and not executemany:
        try:
            literal = compiled.statement.compile(
                dialect=context.dialect, compile_kwargs={"literal_binds": True}
            )
            return str(literal).strip()
        except Exception:  # noqa: S110 - a type without a literal form: keep placeholders
            pass
    return statement.strip()


@contextmanager
def only_the_shadow(database: str) -> Iterator[None]:
    """While the shadow run drives env.py, every connection this thread opens must go to the
    throwaway database: an env.py that ignores the URL it is given (a hard-coded one, a
    variable the runner does not know) is refused before it connects anywhere else."""
    thread = threading.current_thread()

    def guard(dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        if threading.current_thread() is not thread:
            return None
        name = cparams.get("dbname") or cparams.get("database")
        if name != database:
            raise ConfigError(
                f"env.py opened a connection to database {name!r} during the shadow run, not "
                f"to the throwaway database: lint runs the revisions only where it may drop "
                "them. Let env.py take its URL from sqlalchemy.url (or name its own variable "
                "in MIGRATION_EXPORT_URL_AS)"
            )
        return None

    event.listen(Engine, "do_connect", guard)
    try:
        yield
    finally:
        event.remove(Engine, "do_connect", guard)


def shadow_run(
    run: Run,
    review: set[str] | None,
    destination: str = "heads",
    keep_all: bool = False,
) -> list[RevisionObservation]:
    """Apply the project's revisions up to `destination` to a throwaway database on the shadow
    server, observing those in `review`; the database is dropped whatever happens."""
    if run.settings.shadow_url is None:
        raise ConfigError(
            "no shadow server: set MIGRATION_SHADOW_URL to a PostgreSQL server where the "
            "runner may create and drop a throwaway database (in CI, a postgres service "
            "container; in a checkout of the runner, `bash scripts/shadow-server.sh` starts one)"
        )
    observer = ShadowObserver(review, keep_all)
    script = run.script

    def fn(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        return upgrade_steps(script, destination, heads)

    server = run.settings.shadow_url.get_secret_value()
    with shadow.throwaway(server, run.cancel, run.settings.connect_timeout) as db:
        settings = dataclasses.replace(
            run.settings,
            database_url=Secret(db.url.render_as_string(hide_password=False)),
            database_url_source=shadow.SOURCE,
            history_table="off",
        )
        shadow_run_ = Run(
            settings,
            run.cancel,
            [],
            RunReport(command="shadow"),
            project_of=run,
            step_observers=[observer],
        )
        started = time.monotonic()
        try:
            with only_the_shadow(db.name):
                shadow_run_.drive(
                    Work(
                        "upgrade",
                        fn,
                        writes=True,
                        destination_rev=destination,
                        target=destination,
                    )
                )
        except RunnerError as error:
            if isinstance(error, Interrupted) or not observer.failed(error):
                raise
            log.warning(
                "shadow_revision_failed",
                revision=observer.observations[-1].revision,
                reason=observer.observations[-1].error,
            )
        log.info(
            "shadow_run_finished",
            database=db.name,
            applied=len([o for o in observer.observations if o.status != "failed"]),
            observed=len([o for o in observer.observations if o.status == "observed"]),
            duration_ms=int((time.monotonic() - started) * 1000),
        )
    return observer.observations


# -- what to lint --------------------------------------------------------------------------


@dataclass
class LintOptions:
    since: str | None = None
    from_revision: str | None = None
    use_squawk: bool = True


@dataclass
class LintResult:
    #: What is under review, in words ("3 revisions pending on app", ...).
    scope: str
    observations: list[RevisionObservation] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in lint_rules.SEVERITIES}
        out["suppressed"] = 0
        for item in self.findings:
            out["suppressed" if item.suppressed else item.severity] += 1
        return out

    def worst(self) -> str | None:
        active = [f.severity for f in self.findings if not f.suppressed]
        return max(active, key=lint_rules.SEVERITIES.index) if active else None


def _in_upgrade_order(run: Run) -> list[str]:
    return [s.revision for s in reversed(list(run.script.walk_revisions()))]


def _descendants(run: Run, revision: str) -> set[str]:
    try:
        start = run.script.get_revision(revision)
    except Exception as exc:
        raise UsageError(f"--from {revision!r}: {str(exc).splitlines()[0]}") from None
    if start is None:
        raise UsageError(f"--from {revision!r}: no such revision")
    found = {start.revision}
    todo = [start.revision]
    while todo:
        current = run.script.get_revision(todo.pop())
        for child in current.nextrev if current is not None else ():
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def lint(
    run: Run,
    options: LintOptions,
    pending_on_target: list[PendingRevision] | None = None,
    target_label: str | None = None,
) -> LintResult:
    """Everything `migration-runner lint` reports, for the revisions the options select."""
    graph = run.graph
    heads = graph.heads
    findings: list[Finding] = []
    if len(heads) > 1:
        findings.append(lint_rules.finding("multiple-heads", None, detail=", ".join(sorted(heads))))
    review: set[str] | None
    if options.since is not None:
        changes = lint_git.changes_since(options.since, run.script)
        review = changes.added | changes.edited | changes.reparented
        findings += changes.findings()
        scope = (
            f"{len(review)} revision(s) added or changed since {options.since}"
            f" (merge base {changes.merge_base[:12]})"
        )
    elif options.from_revision is not None:
        review = _descendants(run, options.from_revision)
        scope = f"{len(review)} revision(s) from {options.from_revision}"
    elif pending_on_target is not None:
        review = {p.revision for p in pending_on_target}
        scope = f"{len(review)} revision(s) pending on {target_label or 'the target'}"
    else:
        review = None
        scope = "every revision"
    result = LintResult(scope)
    order = _in_upgrade_order(run)
    if review is None or review:
        observations = shadow_run(run, review)
        seen = {o.revision for o in observations}
        wanted = order if review is None else [r for r in order if r in review]
        observations += [_not_reached(run, rev) for rev in wanted if rev not in seen]
        result.observations = [
            o for o in observations if o.status != "replayed" or o.revision in (review or ())
        ]
        for obs in result.observations:
            findings += lint_rules.judge(obs)
        if options.use_squawk:
            found, note = squawk.check(result.observations)
            findings += found
            if note:
                result.notes.append(note)
    else:
        result.notes.append("nothing to lint: no revision selected")
    sources = _sources(result.observations, findings)
    lint_rules.apply_suppressions(findings, sources)
    rank = {rev: index for index, rev in enumerate(order)}
    findings.sort(
        key=lambda f: (
            rank.get(f.revision or "", -1),
            f.line or 0,
            -lint_rules.SEVERITIES.index(f.severity),
        )
    )
    result.findings = findings
    return result


def _not_reached(run: Run, revision: str) -> RevisionObservation:
    script = run.script.get_revision(revision)
    info = PendingRevision.of(script) if script is not None else None
    return RevisionObservation(
        revision,
        info.down_revision if info else None,
        info.message if info else "",
        info.path if info else None,
        status="not_reached",
    )


def _sources(observations: list[RevisionObservation], findings: list[Finding]) -> dict[str, str]:
    paths = {o.path for o in observations if o.path} | {f.file for f in findings if f.file}
    sources = {}
    for path in paths:
        with contextlib.suppress(OSError), open(path, encoding="utf-8") as fh:
            sources[path] = fh.read()
    return sources
