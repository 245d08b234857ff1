"""The checks every fault scenario ends with, in one place.

`assert_clean_outcome` asserts, for one finished CLI run against PostgreSQL:
- the documented exit code, and exactly one `run_finished` line that carries it;
- no runner advisory lock left in `pg_locks` (the server let go of it);
- no INVALID index (`pg_index.indisvalid`) unless the scenario expects one, by name;
- `alembic_version` consistent with the schema: every revision the version table claims is
  really applied (each test revision leaves a table `t_<rev>` or a marker the caller names),
  and nothing the version table does not claim exists;
- the sentinel password absent from every byte of stdout and stderr, raw and URL-encoded;
and, unless told otherwise, that a rerun (after the caller removed the fault) exits 0 at head.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.support import CliResult, run_cli

SENTINEL_PASSWORD = "S3ntinel p@ss:/%#?&=word"


def query(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def scalar(url: str, sql: str, **params: object) -> object:
    rows = query(url, sql, **params)
    return rows[0][0] if rows else None


def runner_locks(url: str) -> list[tuple[object, ...]]:
    """Advisory locks held on this database by anyone (the runner's, or leftovers)."""
    database = make_url(url).database
    return query(
        url,
        "SELECT l.pid, l.classid, l.objid FROM pg_locks l "
        "JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = :db",
        db=database,
    )


def wait_no_runner_lock(url: str, timeout: float = 10.0) -> float:
    """Seconds until no advisory lock is left on the database; fails after `timeout`."""
    started = time.monotonic()
    while True:
        held = runner_locks(url)
        if not held:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"advisory lock still held after {timeout}s: {held}")
        time.sleep(0.1)


def invalid_indexes(url: str) -> set[str]:
    return {
        str(r[0])
        for r in query(
            url,
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE NOT i.indisvalid",
        )
    }


def version_heads(url: str, table: str = "alembic_version") -> set[str]:
    if scalar(url, "SELECT to_regclass(:t) IS NOT NULL", t=table) is not True:
        return set()
    return {str(r[0]) for r in query(url, f"SELECT version_num FROM {table}")}


def unfinished_history(url: str, table: str = "migration_runner_history") -> list[object]:
    """Rows of the runner's history that say a revision may be partly applied. A revision in
    one PostgreSQL transaction never leaves one: it rolls back with its row."""
    if scalar(url, "SELECT to_regclass(:t) IS NOT NULL", t=table) is not True:
        return []
    return [
        r[0]
        for r in query(url, f"SELECT revision FROM {table} WHERE state IN ('started', 'dirty')")
    ]


def leaked(password: str, output: str) -> list[str]:
    """Every form of `password` that appears in `output`."""
    forms = {password, quote(password, safe=""), quote_plus(password), quote(password)}
    return sorted(f for f in forms if f and f in output)


def assert_clean_outcome(
    result: CliResult,
    url: str,
    expected_code: int,
    *,
    applied: Iterable[str] | None = None,
    revision_order: list[str] | None = None,
    password: str | None = SENTINEL_PASSWORD,
    expect_invalid: Iterable[str] = (),
    expect_dirty: Iterable[str] = (),
    lock_release_timeout: float = 10.0,
    remove_fault: Callable[[], None] | None = None,
    rerun: Callable[[], CliResult] | None = None,
    config: Path | None = None,
    rerun_url: str | None = None,
    rerun_env: dict[str, str] | None = None,
) -> CliResult | None:
    """The common ending of every fault scenario (see the module docstring).

    `url` is an admin URL of the scenario's database (direct, not through the fault).
    `applied` names the revisions the version table must be at (a head set); with
    `revision_order` (the project's chain), every revision up to the head must have left its
    table `t_<rev>` and none after it. For the rerun give `config` (and `rerun_url` when the run
    went through a proxy or another role), or a `rerun` callable; it must exit 0 at head.
    """
    __tracebackhide__ = True
    context = f"exit {result.returncode}\n--- stderr ---\n{result.stderr[-3000:]}"
    assert result.returncode == expected_code, context
    finished = result.named("run_finished")
    assert len(finished) == 1, f"expected exactly one run_finished line\n{context}"
    assert finished[0]["exit_code"] == expected_code, context
    if password:
        found = leaked(password, result.output)
        assert not found, f"password leaked in the output: {found}"
    wait_no_runner_lock(url, lock_release_timeout)
    assert invalid_indexes(url) == set(expect_invalid), context
    assert unfinished_history(url) == list(expect_dirty), (
        f"the history table's started/dirty rows are not as expected\n{context}"
    )
    heads = version_heads(url)
    if applied is not None:
        assert heads == set(applied), f"version at {heads}, expected {set(applied)}\n{context}"
    if revision_order is not None:
        _assert_schema_matches_version(url, heads, revision_order)
    if remove_fault is not None:
        remove_fault()
    if rerun is None and config is None:
        return None
    again = (
        rerun()
        if rerun is not None
        else run_cli(["upgrade", "--config", str(config)], rerun_url or url, **(rerun_env or {}))
    )
    assert again.returncode == 0, f"rerun failed: {again.stderr[-3000:]}"
    assert len(again.named("run_finished")) == 1
    if password:
        assert not leaked(password, again.output)
    wait_no_runner_lock(url, lock_release_timeout)
    assert not invalid_indexes(url), "rerun left an INVALID index"
    if revision_order is not None:
        assert version_heads(url) == {revision_order[-1]}
        _assert_schema_matches_version(url, version_heads(url), revision_order)
    return again


def _assert_schema_matches_version(url: str, heads: set[str], order: list[str]) -> None:
    """Revisions up to the recorded head left their table; later ones left nothing."""
    assert len(heads) <= 1, heads
    upto = order.index(next(iter(heads))) + 1 if heads else 0
    present = {
        str(r[0])
        for r in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    }
    for index, rev in enumerate(order):
        table = f"t_{rev}"
        if index < upto:
            assert table in present, f"version says {heads} but {table} is missing"
        else:
            assert table not in present, f"{table} exists but version says {heads}"


def with_sentinel(url: str) -> str:
    """The same database, logging in as a role whose password is the sentinel.

    The role (cluster-wide, owning nothing once the test database is dropped) is created if
    missing and granted all on this database and its public schema so it can migrate.
    """
    from tests.support import with_credentials

    database = make_url(url).database
    role = "mr_sentinel"
    pw = SENTINEL_PASSWORD.replace("'", "''")
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
            ).scalar()
            verb = "ALTER" if exists else "CREATE"
            # The DBAPI cursor directly: no parameter substitution that would read the `%`.
            conn.connection.dbapi_connection.cursor().execute(  # type: ignore[union-attr]
                f"{verb} ROLE {role} LOGIN PASSWORD '{pw}'"
            )
            conn.exec_driver_sql(f'GRANT ALL ON DATABASE "{database}" TO {role}')
        with create_engine(url, poolclass=NullPool).begin() as conn:
            conn.exec_driver_sql(f"GRANT ALL ON SCHEMA public TO {role}")
    finally:
        engine.dispose()
    return with_credentials(url, role, SENTINEL_PASSWORD)
