"""The three-revision project most fault scenarios run: r0001 sleeps in a statement for
`FAULT_SLEEP` seconds, which gives a test time to cut, kill or signal mid-revision."""

from __future__ import annotations

from pathlib import Path

from tests.support import Rev, chain, write_project

ORDER3 = ["r0000", "r0001", "r0002"]
SLEEPY = Rev(
    "r0001",
    "r0000",
    message="long statement",
    upgrade="""
import os
op.create_table("t_r0001", sa.Column("id", sa.Integer))
op.execute(f"SELECT pg_sleep({os.environ.get('FAULT_SLEEP', '0')})")
""",
)


def sleepy_project(tmp_path: Path) -> Path:
    """r0000 and r0002 create small tables; r0001 sleeps; returns alembic.ini's path."""
    return write_project(tmp_path, [chain(1)[0], SLEEPY, chain(3)[2]])
