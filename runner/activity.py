"""What other sessions on the server are doing, in words an operator can act on: who holds
the migration lock (and since when, from where), and who blocks a statement (their state, how
long their transaction has been open, the first line of their query).

`wait` logs it while an application pod waits for its migrations; the runner's own
`ddl_lock_timeout` event names the sessions that held the table. PostgreSQL says all of it;
MySQL/MariaDB say who holds a named lock; SQLite's file lock has no owner to name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from runner.redact import redact

#: How much of another session's query goes into a log line.
QUERY_CHARS = 160

_PG_COLUMNS = (
    "a.pid, a.application_name, host(a.client_addr), a.state,"
    " extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start)),"
    " left(a.query, 1000)"
)


@dataclass(frozen=True)
class SessionInfo:
    """Another session, as much as the server says of it."""

    pid: int
    application: str | None
    client: str | None
    state: str | None
    #: Seconds its current transaction (else its connection) has been open.
    open_s: float | None
    #: The first line of its current or last query, masked and shortened.
    query: str | None

    def describe(self) -> str:
        parts = [f"pid {self.pid}"]
        if self.application:
            parts.append(f"application {self.application!r}")
        if self.client:
            parts.append(f"from {self.client}")
        if self.state:
            parts.append(self.state)
        if self.open_s is not None:
            parts.append(f"for {self.open_s:.0f}s")
        if self.query:
            parts.append(f"query: {self.query}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _first_line(query: str | None) -> str | None:
    if not query:
        return None
    line = next((part.strip() for part in query.splitlines() if part.strip()), "")
    if len(line) > QUERY_CHARS:
        line = line[: QUERY_CHARS - 3] + "..."
    return redact(line) or None


def _pg_session(row: Any) -> SessionInfo:
    return SessionInfo(
        int(row[0]),
        row[1] or None,
        row[2] or None,
        row[3] or None,
        round(float(row[4]), 1) if row[4] is not None else None,
        _first_line(row[5]),
    )


def postgres_lock_holder(conn: Connection, key: int) -> SessionInfo | None:
    """The session holding the advisory lock `key` in this database, if any."""
    hi, lo = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    row = conn.execute(
        text(
            f"SELECT {_PG_COLUMNS} FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.classid = CAST(:hi AS oid) AND l.objid = CAST(:lo AS oid)"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " LIMIT 1"
        ),
        {"hi": hi, "lo": lo},
    ).first()
    return _pg_session(row) if row is not None else None


def postgres_blockers(conn: Connection, pid: int) -> list[SessionInfo]:
    """The sessions that session `pid` is waiting for (pg_blocking_pids), oldest first."""
    rows = conn.execute(
        text(
            f"SELECT {_PG_COLUMNS} FROM pg_stat_activity a"
            " WHERE a.pid = ANY(pg_blocking_pids(:pid))"
            " ORDER BY coalesce(a.xact_start, a.backend_start) LIMIT 5"
        ),
        {"pid": pid},
    ).all()
    return [_pg_session(row) for row in rows]


#: Between its lock-timeout retries a runner's session sits idle, blocked by nobody at that
#: moment; for the pause its application_name says who blocked it (`wait` in another pod reads
#: it, and so does an operator looking at pg_stat_activity).
RETRYING_PREFIX = "migration-runner: blocked by "
#: PostgreSQL keeps the first 63 bytes of an application_name.
APPLICATION_NAME_BYTES = 63


def retrying_name(blockers: list[SessionInfo]) -> str | None:
    """The application_name of a runner pausing behind these sessions: as many whole pids as
    fit (a cut pid would name the wrong session). None when there is no one to name."""
    name = RETRYING_PREFIX
    for blocker in blockers:
        more = f"{name}{',' if name != RETRYING_PREFIX else ''}{blocker.pid}"
        if len(more.encode()) > APPLICATION_NAME_BYTES:
            break
        name = more
    return name if name != RETRYING_PREFIX else None


def postgres_advertised_blockers(conn: Connection, holder: SessionInfo) -> list[SessionInfo]:
    """The sessions a runner pausing between retries names in its application_name, those of
    them still connected."""
    application = holder.application or ""
    if not application.startswith(RETRYING_PREFIX):
        return []
    pids = [int(p) for p in application[len(RETRYING_PREFIX) :].split(",") if p.isdigit()]
    if not pids:
        return []
    rows = conn.execute(
        text(
            f"SELECT {_PG_COLUMNS} FROM pg_stat_activity a WHERE a.pid = ANY(:pids)"
            " ORDER BY coalesce(a.xact_start, a.backend_start) LIMIT 5"
        ),
        {"pids": pids},
    ).all()
    return [_pg_session(row) for row in rows]


def mysql_lock_holder(conn: Connection, name: str) -> SessionInfo | None:
    """The connection holding the named lock `name` (GET_LOCK), if any."""
    holder = conn.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": name}).scalar()
    if holder is None:
        return None
    row = conn.execute(
        text(
            "SELECT ID, HOST, COMMAND, TIME, INFO FROM information_schema.PROCESSLIST"
            " WHERE ID = :id"
        ),
        {"id": int(holder)},
    ).first()
    if row is None:
        return SessionInfo(int(holder), None, None, None, None, None)
    return SessionInfo(
        int(row[0]), None, row[1] or None, row[2] or None, float(row[3]), _first_line(row[4])
    )
