"""Side-by-side timing of `migration-runner lint` and `migration-runner upgrade`.

The issue's bar: linting the 100-revision benchmark project (bench/bench.py's) costs at most 2x
applying it. In one run, alternating, each in a fresh process: `upgrade` applying all 100
revisions to a fresh database, and `lint` (every revision: a throwaway database created on the
shadow server, the 100 revisions applied and observed, Squawk on the captured SQL, the database
dropped). Everything lint does is inside its measurement, the creation and the drop of its
database included; the apply's fresh database is created before its clock starts.

    python bench/lint.py      # MIGRATION_BENCH_POSTGRES_URL, BENCH_RUNS (default 9)

Writes bench/lint-results.md next to bench/results.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ADMIN, BIN, REPO, drop, fresh_db, spread
from tests.support import chain, cli_env, write_project

RUNS = int(os.environ.get("BENCH_RUNS", "9"))
BAR = 2.0


def timed(cmd: list[str], env: dict[str, str], cwd: Path, expect: int) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != expect:
        raise SystemExit(f"{cmd[1]} exited {proc.returncode}, expected {expect}:\n{proc.stderr}")
    return elapsed, proc.stdout


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mr-bench-lint-"))
    ini = write_project(work / "project", chain(100))
    shadow = ADMIN.render_as_string(hide_password=False)
    runner = str(BIN / "migration-runner")
    apply_runs: list[float] = []
    lint_runs: list[float] = []
    observed = 0
    for _ in range(RUNS):
        name, url = fresh_db()
        elapsed, _ = timed(
            [runner, "upgrade"], cli_env(url, MIGRATION_CONFIG=str(ini)), ini.parent, 0
        )
        apply_runs.append(elapsed)
        drop(name)
        env = cli_env(None, MIGRATION_CONFIG=str(ini), MIGRATION_SHADOW_URL=shadow)
        elapsed, out = timed([runner, "lint", "--format", "json"], env, ini.parent, 0)
        lint_runs.append(elapsed)
        observed = len([r for r in json.loads(out)["revisions"] if r["status"] == "observed"])
    if observed != 100:
        raise SystemExit(f"lint observed {observed} revisions, expected 100")
    apply_ms, lint_ms = statistics.median(apply_runs), statistics.median(lint_runs)
    ratio = lint_ms / apply_ms
    verdict = "PASS" if ratio <= BAR else "FAIL"
    lines = [
        "# Lint benchmark",
        "",
        f"`python bench/lint.py` on {os.cpu_count()} cores, PostgreSQL at "
        f"{ADMIN.host or 'socket'}, the 100-revision project of bench/bench.py, median of "
        f"{RUNS} runs each, alternating, each a fresh process ({time.strftime('%Y-%m-%d')}). "
        "Lint's time includes creating and dropping its throwaway database, observing every "
        "revision (a catalog snapshot and `pg_locks` inside its transaction) and Squawk; the "
        "apply's fresh "
        "database is made before its clock starts.",
        "",
        "| scenario | migration-runner upgrade (apply 100) | migration-runner lint (all 100) "
        "| ratio | bar |",
        "|---|---|---|---|---|",
        f"| lint vs apply | {apply_ms * 1000:.0f} ms ({spread(apply_runs)}) "
        f"| {lint_ms * 1000:.0f} ms ({spread(lint_runs)}) | {ratio:.2f}x "
        f"| <= {BAR:.2f}x {verdict} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if os.environ.get("BENCH_WRITE", "1") == "1":
        (REPO / "bench" / "lint-results.md").write_text(text)
    sys.exit(0 if ratio <= BAR else 1)


if __name__ == "__main__":
    main()
