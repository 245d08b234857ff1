"""The migration lock: the shared contract for every backend, and many runners at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from runner.db import CancelToken, SessionSettings
from runner.errors import LockLost, LockTimeout
from runner.lock import acquire, derive_key, lock_for
from runner.session import AdoptedConnection, VersionTable
from runner.urls import parse_database_url
from tests.support import Rev, chain, finish, run_cli, start_cli, write_project
from tests.test_upgrade import scalar


def test_key_is_deterministic_and_depends_on_database_schema_and_table() -> None:
    key = derive_key("app", None, "alembic_version")
    assert key == derive_key("app", None, "alembic_version")
    assert -(2**63) <= key < 2**63
    assert (
        len(
            {
                key,
                derive_key("app2", None, "alembic_version"),
                derive_key("app", "meta", "alembic_version"),
                derive_key("app", None, "versions"),
            }
        )
        == 4
    )


def _locks(url: str):  # type: ignore[no-untyped-def]
    db = parse_database_url(url, source="test")
    engines = [create_engine(db.url, poolclass=NullPool) for _ in range(2)]
    conns = [e.connect() for e in engines]
    key = derive_key(db.database, None, "alembic_version")
    return db, engines, conns, [lock_for(c, db.backend, db.database, key) for c in conns]


def test_every_backend_keeps_the_lock_contract(any_db_url: str) -> None:
    """Exclusive, non-blocking, never leaves a transaction open, released idempotently."""
    _, engines, conns, (first, second) = _locks(any_db_url)
    try:
        assert first.try_acquire() is True
        assert first.is_held()
        assert not conns[0].in_transaction(), "a poll must not leave a transaction open"
        started = time.monotonic()
        assert second.try_acquire() is False
        assert time.monotonic() - started < 1, "try_acquire must not block"
        with pytest.raises(LockTimeout):
            acquire(second, 0.3, CancelToken())
        first.release()
        first.release()  # idempotent
        assert second.try_acquire() is True
        second.release()
    finally:
        for conn in conns:
            conn.close()
        for engine in engines:
            engine.dispose()


def test_terminated_backend_loses_the_lock_and_is_held_says_so(pg_url: str) -> None:
    _, engines, conns, (first, _) = _locks(pg_url)
    try:
        assert first.try_acquire()
        pid = conns[0].execute(text("SELECT pg_backend_pid()")).scalar()
        conns[0].commit()
        scalar(pg_url, f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(Exception):  # noqa: B017 - the connection is gone
            first.is_held()
    finally:
        for engine in engines:
            engine.dispose()


def test_adopted_connection_checks_its_lock_without_a_round_trip_and_sees_it_go(
    pg_url: str,
) -> None:
    """Before each revision the runner checks that its lock is still held: the lock is the
    session's, so the check is that the connection still sits on the DBAPI connection the lock
    was taken on (no statement sent), and it fails once that session is gone."""
    engine = create_engine(parse_database_url(pg_url, source="test").url, poolclass=NullPool)
    conn = engine.connect()
    adopted = AdoptedConnection(
        conn, VersionTable("alembic_version"), SessionSettings(2.0, 0.0, 60.0), CancelToken()
    )
    sent: list[str] = []
    try:
        assert adopted.take_lock(5.0, None, lambda key, waited: None, lambda: False)
        event.listen(conn, "before_cursor_execute", lambda *args: sent.append(args[2]))
        adopted.verify_lock()
        assert sent == []
        scalar(pg_url, f"SELECT pg_terminate_backend({adopted.facts.server_id})")
        with pytest.raises(OperationalError):  # SQLAlchemy sees the disconnect, invalidates
            conn.execute(text("SELECT 1"))
        with pytest.raises(LockLost, match="was lost"):
            adopted.verify_lock()
    finally:
        conn.close()
        engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ten_runners_at_once_apply_exactly_once_and_all_exit_0(
    tmp_path: Path, any_db_url: str
) -> None:
    counter = Rev(
        "count",
        "r0004",
        message="counts its own executions",
        upgrade="""
op.create_table("applied_count", sa.Column("n", sa.Integer))
op.execute("INSERT INTO applied_count VALUES (1)")
""",
    )
    ini = write_project(tmp_path, [*chain(5), counter])
    procs = [start_cli(["upgrade", "--config", str(ini)], any_db_url) for _ in range(10)]
    results = [finish(p, timeout=150) for p in procs]
    assert [r.returncode for r in results] == [0] * 10, [r.stderr[-500:] for r in results]
    assert sum(r.finished["applied"] for r in results) == 6
    assert scalar(any_db_url, "SELECT count(*) FROM applied_count") == 1
    assert sum(1 for r in results if r.finished["outcome"] == "success") == 1


def test_lock_held_elsewhere_past_the_timeout_exits_75(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(1))
    db = parse_database_url(pg_url, source="test")
    engine = create_engine(db.url, poolclass=NullPool)
    with engine.connect() as holder:
        holder.execute(
            text("SELECT pg_advisory_lock(:k)"),
            {"k": derive_key(db.database, None, "alembic_version")},
        )
        holder.commit()
        result = run_cli(["upgrade", "--config", str(ini)], pg_url, MIGRATION_LOCK_TIMEOUT="1")
    engine.dispose()
    assert result.returncode == 75
    assert result.finished["outcome"] == "lock_timeout"
    assert result.named("lock_waiting"), "the wait is announced"
    assert scalar(pg_url, "SELECT to_regclass('alembic_version') IS NULL") is True


def test_lock_key_override_is_used_and_logged(tmp_path: Path, pg_url: str) -> None:
    ini = write_project(tmp_path, chain(1))
    result = run_cli(["upgrade", "--config", str(ini)], pg_url, MIGRATION_LOCK_KEY="4242")
    assert result.returncode == 0
    assert result.named("lock_acquired")[0]["key"] == "4242"


def test_sqlite_lock_file_lives_next_to_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    db = parse_database_url(url, source="test")
    lock = lock_for(None, db.backend, db.database, 0)  # type: ignore[arg-type]
    assert lock.key == str(tmp_path / "x.db.migration-lock")
    assert make_url(url).database


def test_waiter_after_the_holder_finishes_exits_0_at_once(tmp_path: Path, pg_url: str) -> None:
    slow = Rev("slow", None, upgrade='op.execute("SELECT pg_sleep(2)")')
    ini = write_project(tmp_path, [slow])
    first = start_cli(["upgrade", "--config", str(ini)], pg_url)
    time.sleep(1.2)
    second = run_cli(["upgrade", "--config", str(ini)], pg_url)
    assert finish(first).returncode == 0
    assert second.returncode == 0
    assert second.finished["applied"] == 0 and second.named("lock_waiting")
