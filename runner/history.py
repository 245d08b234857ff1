"""The history table: what the runner did to this database, revision by revision, and whether
a revision stopped part-way (the database is *dirty*).

A runner-owned table next to the version table (same schema; `migration_runner_history` by
default, `MIGRATION_HISTORY_TABLE=off` to do without), written on the locked connection:

- a revision that runs in one transaction (PostgreSQL) gets its `applied` row inside that
  transaction, so the row and the revision commit or roll back together; a failure adds a
  `failed` row afterwards, and the database is clean;
- a revision that cannot be undone by a rollback (MySQL/MariaDB and SQLite DDL commits on its
  own; a PostgreSQL revision inside `autocommit_block()`) gets a `started` row committed
  *before* its work; success turns it `applied` in the revision's own transaction; a failure
  (or a crash) leaves it `started`/`dirty`, and the database is dirty at that revision;
- `stamp` adds a `stamped` row, which is how a person says "I fixed it, the schema is at X".

Golang-migrate's dirty flag, Flyway's failed history row and Prisma's P3009 make the same
state explicit; here it needs no new concept: the way out is Alembic's own `stamp`.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause

from runner.errors import DirtyDatabase

DEFAULT_TABLE = "migration_runner_history"

#: States of a row. `started` and `dirty` mark a revision that may be partly applied.
STARTED, APPLIED, FAILED, DIRTY, STAMPED = "started", "applied", "failed", "dirty", "stamped"


class Step(Protocol):
    """What a history row needs of a migration step (runner.revisions.PendingRevision)."""

    @property
    def revision(self) -> str: ...

    @property
    def down_revision(self) -> str | None: ...

    @property
    def kind(self) -> str: ...

    @property
    def path(self) -> str | None: ...


@dataclass(frozen=True)
class RunIdentity:
    """Who ran: recorded on every row, so a history reader can find the pod, Job or CI run."""

    run_id: str
    runner_version: str
    host: str | None = None
    pod: str | None = None
    job: str | None = None
    image: str | None = None

    @classmethod
    def new(cls, runner_version: str, **where: str | None) -> RunIdentity:
        return cls(str(uuid.uuid4()), runner_version, **where)


@dataclass(frozen=True)
class Entry:
    """One row, as `migration-runner log` prints it."""

    id: int
    version_table: str
    revision: str
    down_revision: str | None
    action: str
    state: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None
    checksum: str | None
    runner_version: str | None
    run_id: str | None
    host: str | None
    pod: str | None
    job: str | None
    image: str | None
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        for key in ("started_at", "finished_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        return out


@functools.lru_cache(maxsize=64)
def _table(name: str, schema: str | None) -> Table:
    """The table's definition: one object per name and schema for the whole process (a fleet
    worker reads the history of hundreds of targets)."""
    return Table(
        name,
        MetaData(schema=schema),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("version_table", String(255), nullable=False),
        Column("revision", String(255), nullable=False),
        Column("down_revision", String(255)),
        Column("action", String(16), nullable=False),
        Column("state", String(16), nullable=False),
        Column("started_at", DateTime(timezone=True), nullable=False),
        Column("finished_at", DateTime(timezone=True)),
        Column("duration_ms", Integer),
        Column("checksum", String(64)),
        Column("runner_version", String(32)),
        Column("run_id", String(36)),
        Column("host", String(255)),
        Column("pod", String(255)),
        Column("job", String(255)),
        Column("image", String(255)),
        Column("reason", Text),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _in_utc(row: Any) -> dict[str, Any]:
    """A row with its times in UTC. The runner writes UTC everywhere; MariaDB's DATETIME and
    SQLite hand it back without a zone, PostgreSQL's timestamptz with one."""
    out = dict(row)
    for key in ("started_at", "finished_at"):
        value = out.get(key)
        if isinstance(value, datetime) and value.tzinfo is None:
            out[key] = value.replace(tzinfo=UTC)
    return out


def checksum(path: str | None) -> str | None:
    """sha256 of a revision file, so an edited revision can be told from the one applied."""
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class History:
    """The history of one version table, on one adopted connection."""

    def __init__(
        self,
        conn: Connection,
        table_name: str,
        version_table: str,
        schema: str | None,
        identity: RunIdentity,
    ) -> None:
        self.conn = conn
        self.table = _table(table_name, schema)
        self.version_table = version_table
        self.identity = identity
        self._open_row: int | None = None

    @property
    def open_row(self) -> int | None:
        """The `started` row of the running step, when it has one."""
        return self._open_row

    # -- reading -----------------------------------------------------------------------

    # Reads are plain SQL text on purpose: every target of a fleet brings a new engine from
    # its env.py, and SQLAlchemy compiles a reflection query or a select() once per engine
    # (about 10 ms a target for the two, more than the rest of a target at head).

    def exists(self) -> bool:
        conn, name, schema = self.conn, self.table.name, self.table.schema
        backend = conn.dialect.name
        if backend == "postgresql":
            # Resolved like the unqualified name in a statement (the search_path).
            qualified = conn.dialect.identifier_preparer.format_table(self.table)
            query = text("SELECT to_regclass(:name) IS NOT NULL")
            return bool(conn.execute(query, {"name": qualified}).scalar())
        if backend in ("mysql", "mariadb"):
            query = text(
                "SELECT COUNT(*) FROM information_schema.tables "
                "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :name"
            )
            return bool(conn.execute(query, {"schema": schema, "name": name}).scalar())
        return bool(conn.dialect.has_table(conn, name, schema=schema))

    def latest_state(self) -> str | None:
        """The state of the newest row of this version table (None: no table, no row): the
        one column a run at its destination needs to know it is not dirty."""
        if not self.exists():
            return None
        query = self._newest_first(["state"], limit=1)
        state = self.conn.execute(query, {"vt": self.version_table}).scalar()
        return str(state) if state is not None else None

    def latest(self) -> Entry | None:
        """The newest row of this version table, or None (no table, no row)."""
        rows = self.entries(limit=1)
        return rows[0] if rows else None

    def entries(self, limit: int | None = None) -> list[Entry]:
        if not self.exists():
            return []
        # Typed columns: SQLite hands back times as text, which the column types turn back.
        query = self._newest_first([c.name for c in self.table.c], limit).columns(*self.table.c)
        rows = self.conn.execute(query, {"vt": self.version_table}).mappings()
        return [Entry(**_in_utc(row)) for row in rows]

    def _newest_first(self, columns: list[str], limit: int | None) -> TextClause:
        """`columns` of this version table's rows, newest first (bound parameter `vt`)."""
        preparer = self.conn.dialect.identifier_preparer
        names = ", ".join(preparer.quote(name) for name in columns)
        sql = (
            f"SELECT {names} FROM {preparer.format_table(self.table)} "
            "WHERE version_table = :vt ORDER BY id DESC"
        )
        return text(sql + (f" LIMIT {int(limit)}" if limit is not None else ""))

    def dirty(self) -> DirtyDatabase | None:
        """The refusal to give when the newest row says a revision may be partly applied."""
        entry = self.latest()
        if entry is None or entry.state not in (STARTED, DIRTY):
            return None
        return dirty_error(entry)

    # -- writing -----------------------------------------------------------------------

    def create(self) -> None:
        self.table.create(self.conn, checkfirst=True)

    def started(self, step: Step) -> None:
        """A `started` row for a step a rollback cannot undo: written and committed (by the
        caller) before the step's work begins."""
        self._open_row = self._insert(step, STARTED)

    def applied(self, step: Step, duration_ms: int) -> None:
        """Inside the step's own transaction: the step is done (or stamped)."""
        state = STAMPED if step.kind == "stamp" else APPLIED
        if self._open_row is None:
            self._insert(step, state, duration_ms=duration_ms, finished=True)
            return
        self.conn.execute(
            update(self.table)
            .where(self.table.c.id == self._open_row)
            .values(state=state, finished_at=_now(), duration_ms=duration_ms)
        )
        self._open_row = None

    def failed(self, step: Step, reason: str, partial: bool, duration_ms: int) -> None:
        """After the step's transaction ended in failure (the caller commits): `dirty` when
        part of it may have stayed, `failed` when it was rolled back whole."""
        if self._open_row is not None:
            self.conn.execute(
                update(self.table)
                .where(self.table.c.id == self._open_row)
                .values(
                    state=DIRTY if partial else FAILED,
                    finished_at=_now(),
                    duration_ms=duration_ms,
                    reason=reason,
                )
            )
            self._open_row = None
            return
        self._insert(
            step,
            DIRTY if partial else FAILED,
            duration_ms=duration_ms,
            finished=True,
            reason=reason,
        )

    def forget_open_row(self) -> None:
        """The step's `started` row was rolled back with it (a transaction of env.py's)."""
        self._open_row = None

    def _insert(
        self,
        step: Step,
        state: str,
        duration_ms: int | None = None,
        finished: bool = False,
        reason: str | None = None,
    ) -> int:
        now = _now()
        # A row written once the step is over (a transactional revision's, in its own
        # transaction) started its duration before now.
        started = now - timedelta(milliseconds=duration_ms) if duration_ms is not None else now
        who = self.identity
        # The row as parameters of the one cached INSERT: building `.values()` with sixteen
        # literals per revision cost more than the server's insert itself.
        result = self.conn.execute(
            self.table.insert(),
            dict(
                version_table=self.version_table,
                revision=step.revision,
                down_revision=step.down_revision,
                action=step.kind,
                state=state,
                started_at=started,
                finished_at=now if finished else None,
                duration_ms=duration_ms,
                checksum=checksum(step.path),
                runner_version=who.runner_version,
                run_id=who.run_id,
                host=who.host,
                pod=who.pod,
                job=who.job,
                image=who.image,
                reason=reason,
            ),
        )
        key = result.inserted_primary_key
        return int(key[0]) if key and key[0] is not None else 0


def dirty_error(entry: Entry) -> DirtyDatabase:
    """The refusal, naming the revision and the way out (Alembic's own `stamp`)."""
    undone = entry.down_revision or "base"
    if entry.action == "downgrade":
        undone, completed = entry.revision, entry.down_revision or "base"
    else:
        completed = entry.revision
    when = entry.started_at.isoformat(timespec="seconds") if entry.started_at else "?"
    why = f": {entry.reason}" if entry.reason else " (the run stopped before it finished)"
    return DirtyDatabase(
        f"the database is dirty: revision {entry.revision} ({entry.action}, {when}) may be "
        f"partly applied{why}. Fix the schema by hand, then run `migration-runner stamp "
        f"{undone}` if you undid the revision's changes, or `migration-runner stamp "
        f"{completed}` if you completed them",
        revision=entry.revision,
        dirty_revision=entry.revision,
    )
