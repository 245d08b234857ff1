"""A transaction-mode PgBouncer between the runner and PostgreSQL: session advisory locks
cannot work there, so the runner refuses with 78, naming the fix (a direct connection URL),
and leaves no lock behind on the pooled server connections."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.faults.checks import assert_clean_outcome, version_heads
from tests.faults.private_pg import free_port
from tests.support import (
    CI,
    TCP_POSTGRES_HINT,
    chain,
    enable_hint,
    run_cli,
    write_project,
)

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@pytest.fixture
def bouncer_url(pg_url: str) -> Iterator[str]:
    """`pg_url` through a PgBouncer in transaction mode (trust auth, a pool of 4)."""
    if not os.path.exists(PGBOUNCER):
        if CI:
            pytest.fail(
                "CI must run the pooler test: install pgbouncer (scripts/install-system-tools.sh)"
            )
        pytest.skip(
            "pgbouncer is not installed" + enable_hint("sudo bash scripts/install-system-tools.sh")
        )
    target = make_url(pg_url)
    if not target.host or "host" in target.query:
        if CI:
            pytest.fail("CI must run the pooler test: MIGRATION_TEST_POSTGRES_URL must be TCP")
        pytest.skip("the pooler test needs PostgreSQL over TCP" + enable_hint(TCP_POSTGRES_HINT))
    host = target.host
    workdir = Path(tempfile.mkdtemp(prefix="mr-pgbouncer-"))
    port = free_port()
    (workdir / "users.txt").write_text(f'"{target.username}" ""\n')
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
* = host={host} port={target.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 50
ignore_startup_parameters = extra_float_digits,options
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
""")
    argv = [PGBOUNCER, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(workdir, "postgres")
        for f in workdir.iterdir():
            shutil.chown(f, "postgres")
        argv = ["runuser", "-u", "postgres", "--", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "pgbouncer did not start"
                time.sleep(0.1)
        yield target.set(host="127.0.0.1", port=port, query={}).render_as_string(
            hide_password=False
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.timeout(60)
def test_transaction_pooler_is_refused_with_78_naming_a_direct_url(
    tmp_path: Path, pg_url: str, bouncer_url: str
) -> None:
    ini = write_project(tmp_path, chain(2))
    password = "Bounc3r-s3cret/%?"
    from tests.support import with_credentials

    through_pool = with_credentials(
        bouncer_url, make_url(bouncer_url).username or "postgres", password
    )
    result = run_cli(["upgrade", "--config", str(ini)], through_pool)
    assert result.finished["outcome"] == "config_error", result.stderr
    reason = result.finished["reason"]
    assert "transaction-mode connection pooler" in reason and "directly" in reason
    assert version_heads(pg_url) == set(), "nothing may be migrated through the pooler"
    assert_clean_outcome(
        result,
        pg_url,
        78,
        password=password,
        applied=set(),
        revision_order=["r0000", "r0001"],
        config=ini,
    )
    # Nothing pending is still answered through the pooler: the read-only path stays usable.
    again = run_cli(["check", "--config", str(ini)], through_pool)
    assert again.returncode == 0, again.stderr
