"""Side-by-side timing of migration-runner and plain `alembic upgrade head`.

On a 100-revision project against a PostgreSQL server (MIGRATION_BENCH_POSTGRES_URL, default
the local service), in one run, each tool in a fresh process per run:
  1. no-op upgrade (database already at head), in two shapes, runner vs alembic:
     - deployment: what every pod pays. A new HOSTNAME and an empty HOME/XDG_CACHE_HOME per
       run, and the project's revision files never compiled before (a fresh copy per run, no
       __pycache__ written: a read-only container whose image did not precompile them);
     - warm: a developer's machine: the same directory each time, bytecode cached;
  2. applying all 100 revisions: runner vs alembic, median of N fresh databases;
  3. 10 runners started together on a fresh database vs one runner's apply time.
  4. for context, 10 `alembic current` started together: the start-up every runner pays.
Prints a table and writes bench/results.md. The bars come from the issues:
  no-op <= alembic (both shapes), apply <= 1.25x alembic, 10 together <= single apply + 1 s.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.support import chain, cli_env, write_project  # noqa: E402

ADMIN = make_url(
    os.environ.get("MIGRATION_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
).set(drivername="postgresql+psycopg2")
RUNS = int(os.environ.get("BENCH_RUNS", "15"))
BIN = Path(sys.executable).parent


def admin(sql: str) -> None:
    engine = create_engine(ADMIN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def fresh_db() -> tuple[str, str]:
    name = f"mr_bench_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}"')
    # CREATE DATABASE leaves the new database's pages in the WAL; flush them now so that the
    # first durable commit of the measured run (alembic's or the runner's) does not pay it.
    try:
        admin("CHECKPOINT")
    except Exception as exc:  # not a superuser: measure with the noise
        print(f"note: CHECKPOINT not allowed ({type(exc).__name__})", file=sys.stderr)
    return name, ADMIN.set(database=name).render_as_string(hide_password=False)


def drop(name: str) -> None:
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def timed(
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    expect_applied: int | None = None,
) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    if expect_applied is not None and "migration-runner" in cmd[0]:
        finished = [
            json.loads(line) for line in proc.stderr.splitlines() if '"run_finished"' in line
        ]
        applied = finished[-1]["applied"]
        if applied != expect_applied:
            raise SystemExit(
                f"runner applied {applied}, expected {expect_applied}:\n{proc.stderr[-3000:]}"
            )
    return elapsed


def spread(samples: list[float]) -> str:
    return f"{min(samples) * 1000:.0f}-{max(samples) * 1000:.0f}"


def runner_cmd() -> list[str]:
    return [str(BIN / "migration-runner"), "upgrade"]


def alembic_cmd() -> list[str]:
    return [str(BIN / "alembic"), "upgrade", "head"]


def deployment_shape(work: Path, run: int) -> tuple[Path, dict[str, str]]:
    """A fresh copy of the project (no bytecode yet), a new HOSTNAME, an empty home: what a
    new pod starts with. Returns the copy's directory and the environment additions."""
    pod = work / f"pod-{run}"
    shutil.copytree(work / "project", pod / "project")
    home = pod / "home"
    home.mkdir()
    extra = {
        "HOSTNAME": f"app-migrate-{uuid.uuid4().hex[:5]}",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return pod / "project", extra


def compile_tools() -> None:
    """Bytecode for both tools' own code, as an image has it (pip compiles what it installs;
    the runner may be installed editable here)."""
    import compileall

    compileall.compile_dir(str(REPO / "runner"), quiet=1)


def main() -> None:
    compile_tools()
    work = Path(tempfile.mkdtemp(prefix="mr-bench-"))
    ini = write_project(work / "project", chain(100))
    # The alembic baseline reads its URL from alembic.ini, as plain alembic users do.
    name, url = fresh_db()
    ini_text = ini.read_text()
    ini.write_text(ini_text.replace("sqlalchemy.url =", f"sqlalchemy.url = {url}"))
    env = cli_env(url, MIGRATION_CONFIG=str(ini))
    timed(alembic_cmd(), env, ini.parent)  # brings the database to head
    rows: list[tuple[str, list[float], list[float], float]] = []

    deploy_alembic, deploy_runner = [], []
    for run in range(RUNS):
        for tool, samples in ((alembic_cmd, deploy_alembic), (runner_cmd, deploy_runner)):
            project, extra = deployment_shape(work, len(samples) + run * 2)
            copy_ini = project / "alembic.ini"
            samples.append(
                timed(
                    tool(),
                    {**cli_env(url, MIGRATION_CONFIG=str(copy_ini)), **extra},
                    project,
                    expect_applied=0,
                )
            )
            shutil.rmtree(project.parent)
    rows.append(
        ("no-op upgrade, deployment shape (new pod each run)", deploy_alembic, deploy_runner, 1.0)
    )

    timed(alembic_cmd(), env, ini.parent)  # writes the bytecode of the warm case
    noop_alembic = [timed(alembic_cmd(), env, ini.parent) for _ in range(RUNS)]
    noop_runner = [timed(runner_cmd(), env, ini.parent, expect_applied=0) for _ in range(RUNS)]
    drop(name)
    rows.append(
        ("no-op upgrade, warm (same machine and directory)", noop_alembic, noop_runner, 1.0)
    )

    apply_alembic, apply_runner = [], []
    for _ in range(RUNS):
        name, url = fresh_db()
        ini.write_text(ini_text.replace("sqlalchemy.url =", f"sqlalchemy.url = {url}"))
        apply_alembic.append(timed(alembic_cmd(), cli_env(url), ini.parent))
        drop(name)
        name, url = fresh_db()
        apply_runner.append(
            timed(
                runner_cmd(),
                cli_env(url, MIGRATION_CONFIG=str(ini)),
                ini.parent,
                expect_applied=100,
            )
        )
        drop(name)
    single = statistics.median(apply_runner)
    rows.append(("apply 100 revisions", apply_alembic, apply_runner, 1.25))
    print(
        "apply samples (s): alembic",
        [round(x, 3) for x in apply_alembic],
        "runner",
        [round(x, 3) for x in apply_runner],
        file=sys.stderr,
    )

    together = []
    for _ in range(max(3, RUNS // 2)):
        name, url = fresh_db()
        env = cli_env(url, MIGRATION_CONFIG=str(ini))
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                runner_cmd(),
                env=env,
                cwd=ini.parent,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(10)
        ]
        codes = [p.wait() for p in procs]
        together.append(time.perf_counter() - started)
        drop(name)
        if codes != [0] * 10:
            raise SystemExit(f"10 runners: exit codes {codes}")
    ten = statistics.median(together)

    # Context for the bar above, not a bar: ten Alembic processes started together on this
    # machine, each loading the project and reading the version (`alembic current`). Every
    # runner pays this start-up too; what the runner controls is the rest.
    floor = []
    name, url = fresh_db()
    ini.write_text(ini_text.replace("sqlalchemy.url =", f"sqlalchemy.url = {url}"))
    timed(alembic_cmd(), cli_env(url), ini.parent)
    for _ in range(max(3, RUNS // 2)):
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [str(BIN / "alembic"), "current"],
                env=cli_env(url),
                cwd=ini.parent,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(10)
        ]
        codes = [p.wait() for p in procs]
        floor.append(time.perf_counter() - started)
        if codes != [0] * 10:
            raise SystemExit(f"10 x alembic current: exit codes {codes}")
    drop(name)
    start_up = statistics.median(floor)

    lines = [
        "# Benchmark results",
        "",
        f"`python bench/bench.py` on {os.cpu_count()} cores, PostgreSQL at "
        f"{ADMIN.host or 'socket'}, 100 revisions, median of {RUNS} runs "
        f"({time.strftime('%Y-%m-%d')}), each run a fresh process. Medians decide; the range "
        "(min-max) shows how noisy a 2-core machine is. The deployment shape is what a new pod "
        "pays: a new HOSTNAME, an empty home and cache directory, and revision files never "
        "compiled before (no `__pycache__`, none written); warm is a developer's second run.",
        "",
        "| scenario | alembic upgrade head | migration-runner | ratio | bar |",
        "|---|---|---|---|---|",
    ]
    ok = True
    for label, base_runs, our_runs, bar in rows:
        base, ours = statistics.median(base_runs), statistics.median(our_runs)
        ratio = ours / base
        ok &= ratio <= bar
        lines.append(
            f"| {label} | {base * 1000:.0f} ms ({spread(base_runs)}) "
            f"| {ours * 1000:.0f} ms ({spread(our_runs)}) | {ratio:.2f}x "
            f"| <= {bar:.2f}x {'PASS' if ratio <= bar else 'FAIL'} |"
        )
    ten_ok = ten <= single + 1.0
    ok &= ten_ok
    lines.append(
        f"| 10 runners together, all exit 0 | single runner apply {single * 1000:.0f} ms "
        f"| {ten * 1000:.0f} ms ({spread(together)}) | +{(ten - single) * 1000:.0f} ms "
        f"| <= +1000 ms {'PASS' if ten_ok else 'FAIL'} |"
    )
    lines += [
        f"| 10 x `alembic current` together (start-up only, context, no bar) "
        f"| {start_up * 1000:.0f} ms ({spread(floor)}) | | | |",
        "",
        f"Ten processes started together on {os.cpu_count()} cores spend "
        f"{start_up * 1000:.0f} ms just starting Alembic and loading the project; the ten "
        f"runners finish {abs(ten - start_up) * 1000:.0f} ms "
        f"{'after' if ten >= start_up else 'before'} that, while one of them "
        f"applies the 100 revisions (alone: {single * 1000:.0f} ms).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if os.environ.get("BENCH_WRITE", "1") == "1":
        (REPO / "bench" / "results.md").write_text(text)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
