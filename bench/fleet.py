"""A tenant fleet: one `migration-runner upgrade` against the loop teams write today.

Alembic's schema-per-tenant cookbook env.py, 3 revisions, against PostgreSQL
(MIGRATION_BENCH_POSTGRES_URL, default the local service), in one run:
  1. 300 tenant schemas with 3 pending revisions each: a shell-style loop of plain
     `alembic -x tenant=NAME upgrade head` (one process per tenant, one after the other) into
     one database, one fleet run (MIGRATION_TENANTS_FILE, default MIGRATION_PARALLEL) into
     another; bar: the fleet at least 5x faster;
  2. the same 300 tenants with nothing pending: the loop again, the fleet again; bar: 20x;
  3. memory: fleet runs over 100, 300 and 1,000 fresh tenant schemas, sampling the resident
     memory of the runner's whole process tree (the parent and its worker processes) every
     20 ms; bar: flat (the 1,000-tenant peak within 15 % of the 100-tenant peak).
Every run is checked: each tenant's version table at the head afterwards.
Prints a table and writes bench/fleet-results.md. BENCH_TENANTS / BENCH_MEMORY_TENANTS
override the sizes (e.g. for a quick try).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.support import INI, chain, cli_env, write_revision  # noqa: E402
from tests.test_alembic_parity import COOKBOOK_TENANT  # noqa: E402

ADMIN = make_url(
    os.environ.get("MIGRATION_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
).set(drivername="postgresql+psycopg2")
TENANTS = int(os.environ.get("BENCH_TENANTS", "300"))
MEMORY_TENANTS = [int(n) for n in os.environ.get("BENCH_MEMORY_TENANTS", "100,300,1000").split(",")]
BIN = Path(sys.executable).parent
REVISIONS = 3


def admin(sql: str) -> None:
    engine = create_engine(ADMIN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def fleet_db(tenants: list[str]) -> tuple[str, str]:
    """A fresh database holding one empty schema per tenant."""
    name = f"mr_fleet_bench_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE DATABASE "{name}"')
    url = ADMIN.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        for start in range(0, len(tenants), 500):
            conn.exec_driver_sql(
                "; ".join(f'CREATE SCHEMA "{t}"' for t in tenants[start : start + 500])
            )
    engine.dispose()
    try:
        admin("CHECKPOINT")
    except Exception as exc:  # not a superuser: measure with the noise
        print(f"note: CHECKPOINT not allowed ({type(exc).__name__})", file=sys.stderr)
    return name, url


def at_head(url: str, tenants: list[str]) -> int:
    """How many tenants' version tables say the head revision."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        count = sum(
            conn.exec_driver_sql(
                f'SELECT count(*) FROM "{t}".alembic_version WHERE version_num = '
                f"'r{REVISIONS - 1:04d}'"
            ).scalar()
            or 0
            for t in tenants
        )
    engine.dispose()
    return count


def drop(name: str) -> None:
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def project(root: Path) -> Path:
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text(INI)
    (root / "migrations" / "env.py").write_text(textwrap.dedent(COOKBOOK_TENANT))
    for index, rev in enumerate(chain(REVISIONS)):
        write_revision(root / "migrations" / "versions", rev, index)
    return root / "alembic.ini"


def plain_ini(ini: Path, url: str) -> Path:
    """A copy of alembic.ini with the URL in it, as a plain Alembic user has it."""
    copy = ini.with_name(f"alembic.{uuid.uuid4().hex[:6]}.ini")
    escaped = url.replace("%", "%%")
    copy.write_text(ini.read_text().replace("sqlalchemy.url =", f"sqlalchemy.url = {escaped}"))
    return copy


def loop(ini: Path, url: str, tenants: list[str]) -> float:
    """`for t in $TENANTS; do alembic -x tenant=$t upgrade head; done`."""
    config = plain_ini(ini, url)
    env = cli_env(None)
    started = time.perf_counter()
    for tenant in tenants:
        proc = subprocess.run(
            [str(BIN / "alembic"), "-c", str(config), "-x", f"tenant={tenant}", "upgrade", "head"],
            env=env,
            cwd=ini.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"alembic failed for {tenant}:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def _tree_memory_kb(root: int) -> tuple[int, int, int]:
    """(RSS of `root`, RSS of `root` and all its descendants, their PSS), in KiB, from /proc.
    PSS counts a page shared by n processes as 1/n in each: the forked workers share the
    parent's pages, which the RSS sum counts again for each of them."""
    own = rss_total = pss_total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            # The children of every thread: the workers are forked by the CLI's worker thread.
            children = [
                child
                for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()
            ]
        except OSError:
            continue
        rss = _field_kb(status, "VmRSS:")
        rss_total += rss
        pss_total += _field_kb(rollup, "Pss:")
        own = own or rss
        todo += [int(c) for c in children]
    return own, rss_total, pss_total


def _field_kb(text: str, name: str) -> int:
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith(name)), 0)


def fleet(
    ini: Path, url: str, names_file: Path, expect_applied: int
) -> tuple[float, int, int, int]:
    """One `migration-runner upgrade` over the fleet: (seconds, and the peaks of the parent's
    RSS, the whole process tree's RSS and its PSS, in KiB)."""
    env = cli_env(url, MIGRATION_CONFIG=str(ini), MIGRATION_TENANTS_FILE=str(names_file))
    peaks = [0, 0, 0]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "migration-runner"), "upgrade"],
        env=env,
        cwd=ini.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for i, value in enumerate(_tree_memory_kb(proc.pid)):
                peaks[i] = max(peaks[i], value)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"migration-runner failed ({proc.returncode}):\n{stderr[-3000:]}")
    finished = [json.loads(line) for line in stderr.splitlines() if '"run_finished"' in line]
    if finished[-1]["applied"] != expect_applied:
        raise SystemExit(f"fleet applied {finished[-1]['applied']}, expected {expect_applied}")
    return elapsed, peaks[0], peaks[1], peaks[2]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mr-fleet-bench-"))
    ini = project(work / "project")
    load_before = os.getloadavg()
    tenants = [f"tenant_{i:04d}" for i in range(TENANTS)]
    names_file = work / "tenants.txt"
    names_file.write_text("\n".join(tenants) + "\n")
    rows: list[tuple[str, float, float, float]] = []

    # 1 and 2: the loop and the fleet side by side, each into a database of its own.
    loop_db, loop_url = fleet_db(tenants)
    fleet_db_name, fleet_url = fleet_db(tenants)
    try:
        print(f"loop of plain alembic over {TENANTS} tenants, {REVISIONS} pending each...")
        loop_apply = loop(ini, loop_url, tenants)
        print(f"  {loop_apply:.1f} s; fleet...")
        fleet_apply, *_ = fleet(ini, fleet_url, names_file, TENANTS * REVISIONS)
        print(f"  {fleet_apply:.1f} s")
        for url in (loop_url, fleet_url):
            assert at_head(url, tenants) == TENANTS
        rows.append(
            (f"{TENANTS} tenants, {REVISIONS} pending revisions each", loop_apply, fleet_apply, 5.0)
        )
        print("nothing pending: loop...")
        loop_noop = loop(ini, loop_url, tenants)
        print(f"  {loop_noop:.1f} s; fleet...")
        fleet_noop, *_ = fleet(ini, fleet_url, names_file, 0)
        print(f"  {fleet_noop:.1f} s")
        rows.append((f"{TENANTS} tenants, nothing pending", loop_noop, fleet_noop, 20.0))
    finally:
        drop(loop_db)
        drop(fleet_db_name)

    # 3: memory as the fleet grows.
    memory: list[tuple[int, float, int, int, int]] = []
    for count in MEMORY_TENANTS:
        names = [f"tenant_{i:04d}" for i in range(count)]
        path = work / f"tenants-{count}.txt"
        path.write_text("\n".join(names) + "\n")
        name, url = fleet_db(names)
        try:
            print(f"memory: fleet over {count} tenants...")
            seconds, parent, tree, pss = fleet(ini, url, path, count * REVISIONS)
            assert at_head(url, names) == count
        finally:
            drop(name)
        print(f"  {seconds:.1f} s, peak RSS {parent / 1024:.0f} MiB, PSS {pss / 1024:.0f} MiB")
        memory.append((count, seconds, parent, tree, pss))
    load_after = os.getloadavg()
    write_results(rows, memory, load_before, load_after)


NOTE = (
    "What grows, and where it stops: each process keeps at most 128 SQLAlchemy PostgreSQL "
    "dialects alive (the dialect's `@lru_cache()` methods, keyed by the dialect instance; "
    "env.py builds an engine, hence a dialect, per tenant, and so does the runner's pooler "
    "check when a tenant has work), about 90 KiB each. A worker's "
    "memory stops growing after its 128th target; the parent runs no target."
)


def write_results(
    rows: list[tuple[str, float, float, float]],
    memory: list[tuple[int, float, int, int, int]],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    parallel = os.environ.get("MIGRATION_PARALLEL", "4 (default)")
    lines = [
        "# Fleet benchmark",
        "",
        f"`python bench/fleet.py` on {os.cpu_count()} cores, PostgreSQL at {ADMIN.host}, Alembic's "
        f"schema-per-tenant cookbook env.py, {REVISIONS} revisions (one table each), "
        f"MIGRATION_PARALLEL={parallel} ({datetime.now(UTC):%Y-%m-%d}). The loop is what teams "
        "write today: `for t in $TENANTS; do alembic -x tenant=$t upgrade head; done`. "
        f"Machine load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after: "
        "the machine is shared, both sides ran under the same load, one after the other.",
        "",
        "| scenario | loop of plain alembic | one fleet run | speed-up | bar |",
        "|---|---|---|---|---|",
    ]
    for label, plain, ours, bar in rows:
        ratio = plain / ours
        verdict = "PASS" if ratio >= bar else "FAIL"
        lines.append(
            f"| {label} | {plain:.1f} s ({plain / TENANTS * 1000:.0f} ms/tenant) "
            f"| {ours:.1f} s ({ours / TENANTS * 1000:.0f} ms/tenant) "
            f"| {ratio:.1f}x | >= {bar:.0f}x {verdict} |"
        )
    lines += [
        "",
        "Memory of one fleet run (`upgrade`, fresh schemas, "
        f"{REVISIONS} revisions each), peak resident set sampled every 20 ms:",
        "",
        "| tenants | wall time | peak RSS, parent | peak RSS, parent + workers (sum) "
        "| peak PSS, parent + workers |",
        "|---|---|---|---|---|",
    ]
    for count, seconds, parent, tree, pss in memory:
        lines.append(
            f"| {count} | {seconds:.1f} s | {parent / 1024:.0f} MiB | {tree / 1024:.0f} MiB "
            f"| {pss / 1024:.0f} MiB |"
        )
    if len(memory) > 1:
        first, last = memory[0][3], memory[-1][3]
        growth = (last - first) / first
        verdict = "PASS" if growth <= 0.15 else "FAIL"
        lines += [
            "",
            f"From {memory[0][0]} to {memory[-1][0]} tenants the whole tree's peak RSS grows "
            f"{growth * 100:+.0f} % (bar: flat, within +15 %): {verdict}. Workers are forked "
            "from the parent once it loaded the project, so the RSS sum counts the pages they "
            "share with it once per process; PSS counts each page once.",
            "",
            NOTE,
        ]
    text = "\n".join(lines) + "\n"
    (REPO / "bench" / "fleet-results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
