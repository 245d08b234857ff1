"""Plain Alembic for an env.py that only runs inside an AnyIO worker thread (Prefect's).

Run with the project's venv Python: `python alembic_in_worker_thread.py INI COMMAND REVISION`.
It calls `alembic.command.<COMMAND>(Config(INI), REVISION)` in a worker thread of an AnyIO
event loop, which is what `prefect server database upgrade` does through
`prefect.server.database.alembic_commands`; nothing else is added.
"""

import sys

import anyio
from alembic import command
from alembic.config import Config
from anyio import to_thread


def main() -> None:
    ini, name, revision = sys.argv[1:4]

    def work() -> None:
        getattr(command, name)(Config(ini), revision)

    anyio.run(to_thread.run_sync, work)


if __name__ == "__main__":
    main()
