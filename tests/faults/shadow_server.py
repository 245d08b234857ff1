"""`scripts/shadow-server.sh`: the suite's throwaway PostgreSQL as a shadow server for `lint`.

Runs in the foreground until interrupted (bounded by `--seconds` when given), then removes the
cluster. `--check` starts it, connects once and stops: the newcomer path, tested."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from tests.faults.private_pg import PrivateServer, can_run_here, server_bindir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/shadow-server.sh")
    parser.add_argument("--check", action="store_true", help="start, connect once, stop")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    args = parser.parse_args(argv)
    bindir = server_bindir()
    if bindir is None or not can_run_here():
        print("no PostgreSQL binaries usable here (pip install pgserver)", file=sys.stderr)
        return 1
    server = PrivateServer(bindir, Path(tempfile.mkdtemp(prefix="mr-shadow-server-")))
    stop = {"now": False}

    def on_signal(signum: int, _: FrameType | None) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.init()
        server.start()
        server.wait_ready()
        url = server.admin_url().replace("postgresql+psycopg2://", "postgresql://")
        engine = create_engine(server.admin_url(), poolclass=NullPool)
        with engine.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar()
        engine.dispose()
        print(f"export MIGRATION_SHADOW_URL={url}", flush=True)
        print(f"# PostgreSQL {version}; Ctrl-C stops it and removes {server.root}", file=sys.stderr)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while not args.check and not stop["now"]:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
