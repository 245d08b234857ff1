"""A private PostgreSQL server that fault tests may stop, crash and restart at will.

The suite's shared server (`pg_server_url`) must never be restarted: other tests use it. This
one belongs to the tests that need it. It listens on TCP 127.0.0.1 on a free port, uses trust
authentication, and is started with the Debian PostgreSQL binaries when present (else the ones
bundled with `pgserver`). PostgreSQL refuses to run as root, so as root every server command
runs as the `postgres` OS user through `runuser`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from tests.support import enable_hint

_DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")


def can_run_here() -> bool:
    """PostgreSQL refuses to run as root: as root it needs the `postgres` OS user."""
    if os.geteuid() != 0:
        return True
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


def pgserver_bindir() -> Path | None:
    """The binaries bundled with `pgserver`. The suite's throwaway server uses these, so that
    it and tests/parity.py's pg_dump (pgserver's too) are the same PostgreSQL version."""
    try:
        import pgserver
    except ImportError:
        return None
    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return bundled if (bundled / "pg_ctl").exists() else None


def server_bindir() -> Path | None:
    """The PostgreSQL server binaries: Debian's, else the ones bundled with `pgserver`."""
    if (_DEBIAN_BIN / "pg_ctl").exists():
        return _DEBIAN_BIN
    return pgserver_bindir()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateServer:
    """One cluster in a temporary directory; `stop(mode)`/`start()` drive it like an operator."""

    def __init__(
        self,
        bindir: Path,
        root: Path,
        max_connections: int = 60,
        admin_password: str | None = None,
    ) -> None:
        """`admin_password`: TCP logins need a password (scram-sha-256), so a wrong one is
        refused as on a production server; otherwise trust."""
        self.bindir = bindir
        self.root = root
        self.admin_password = admin_password
        self.datadir = root / "data"
        self.logfile = root / "server.log"
        self.port = free_port()
        self.max_connections = max_connections
        self._as_postgres = os.geteuid() == 0

    def _cmd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            self.root.chmod(0o700)
        auth = ["--auth=trust"]
        if self.admin_password is not None:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.admin_password + "\n")
            if self._as_postgres:
                shutil.chown(pwfile, "postgres", "postgres")
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        done = self._cmd(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            *auth,
            "--no-sync",
            "-E",
            "UTF8",
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                f"max_connections = {self.max_connections}\nshared_buffers = 16MB\n"
            )

    def start(self, wait: bool = True) -> None:
        args = [
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            "-c log_min_messages=warning",
            "start",
        ]
        if not wait:
            args.insert(-1, "--no-wait")
        done = self._cmd(*args)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{self.log_tail()}"

    def stop(self, mode: str = "fast") -> None:
        done = self._cmd(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-t", "30", "stop"
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"

    def is_running(self) -> bool:
        done = self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status")
        return done.returncode == 0

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def admin_url(self, database: str = "postgres") -> str:
        login = f"postgres:{self.admin_password}" if self.admin_password else "postgres"
        return f"postgresql+psycopg2://{login}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh database on this server; returns its URL."""
        name = f"mr_fault_{uuid.uuid4().hex[:10]}"
        engine = create_engine(self.admin_url(), poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.admin_url(name)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self._cmd(
                str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), timeout=10
            )
            if done.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"private server not ready in {timeout}s\n{self.log_tail()}")

    def destroy(self) -> None:
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _private_server(admin_password: str | None = None) -> PrivateServer:
    bindir = server_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the private-server tests: no PostgreSQL binaries found")
        pytest.skip(
            "no PostgreSQL server binaries (Debian postgresql or pgserver) found"
            + enable_hint("scripts/test.sh (requirements-dev.lock installs pgserver)")
        )
    return PrivateServer(
        bindir, Path(tempfile.mkdtemp(prefix="mr-private-pg-")), admin_password=admin_password
    )


@pytest.fixture(scope="module", name="private_pg")
def private_pg_fixture() -> Iterator[PrivateServer]:
    """A PostgreSQL server the test module owns: it may be stopped, crashed and restarted."""
    server = _private_server()
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module", name="password_pg")
def password_pg_fixture() -> Iterator[PrivateServer]:
    """A private server that checks passwords over TCP (scram-sha-256), as production does."""
    server = _private_server(admin_password="admin-pw-for-tests")
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.destroy()
