"""Run the compatibility matrix and write the result table to docs/compatibility.md.

    MIGRATION_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
    MIGRATION_TEST_MARIADB_URL=mysql+pymysql://root@127.0.0.1:3306/ \\
        .venv/bin/python -m tests.compat.report [--project KEY] [--backend B] [--scenario S]

The same cases as `MIGRATION_TEST_COMPAT=1 pytest tests/compat`, run in order, one line of
progress each on stderr. The page is rewritten from the cases run (a filtered run says so in
its header).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from tests.compat import envs
from tests.compat.harness import HOMES, SCENARIOS, Case, Outcome, all_cases, run_case
from tests.compat.projects import DROPPED, PROJECTS, Project, by_key

DOC = envs.REPO / "docs" / "compatibility.md"
DIFF_LINES = 40
NOTES_START = "<!-- findings:start (kept by the report; edit freely) -->"
NOTES_END = "<!-- findings:end -->"


def _kept_findings(path: Path) -> str:
    """The hand-written findings section of the current page, carried over on a rewrite."""
    text = path.read_text() if path.is_file() else ""
    if NOTES_START in text and NOTES_END in text:
        return text[text.index(NOTES_START) : text.index(NOTES_END) + len(NOTES_END)]
    return f"{NOTES_START}\n_No findings written yet._\n{NOTES_END}"


def _saved(outcome: Outcome) -> dict[str, object]:
    return {
        "id": outcome.case.id,
        "project": outcome.case.project.key,
        "scenario": outcome.case.scenario,
        "backend": outcome.case.backend,
        "home": outcome.case.home,
        "status": outcome.status,
        "problems": outcome.problems,
        "diffs": outcome.diffs,
        "exit_codes": outcome.exit_codes,
        "notes": outcome.notes,
        "duration_s": outcome.duration_s,
    }


def _loaded(item: dict[str, object]) -> Outcome:
    case = Case(
        by_key(str(item["project"])),
        str(item["scenario"]),
        str(item["backend"]),
        str(item["home"]),
    )
    return Outcome(
        case,
        status=str(item["status"]),
        problems=list(item["problems"]),  # type: ignore[call-overload]
        diffs=list(item["diffs"]),  # type: ignore[call-overload]
        exit_codes=list(item["exit_codes"]),  # type: ignore[call-overload]
        notes=list(item["notes"]),  # type: ignore[call-overload]
        duration_s=float(item["duration_s"]),  # type: ignore[arg-type]
    )


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=envs.REPO, capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def _cell(outcome: Outcome | None) -> str:
    if outcome is None:
        return "-"
    codes = ",".join(str(c) for c in outcome.exit_codes) or "none"
    if outcome.status == "same":
        return f"same (exit {codes})"
    if outcome.status == "skipped":
        return "skipped"
    why = outcome.why.replace("|", "\\|")
    if len(why) > 110:
        why = why[:107] + "..."
    label = "different" if outcome.status == "different" else "not judged"
    return f"**{label}** (exit {codes}): {why}"


def _project_table(projects: Sequence[Project], versions: dict[str, dict[str, str]]) -> list[str]:
    lines = [
        "| project | package | migrations | env.py (what differs from the template) | "
        "plain Alembic | ini handed to both | seed before either tool | resolved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in projects:
        resolved = ", ".join(f"{k} {v}" for k, v in sorted(versions.get(p.key, {}).items()))
        lines.append(
            f"| {p.key} | `{p.requirement}` | `{p.script_dir}` | {p.env_py} | "
            f"{p.alembic_invocation} | {p.ini_origin} | {p.seed_origin or 'none (empty database)'}"
            f" | {resolved or '?'} |"
        )
    return lines


def run_identity() -> str:
    """When, and with which runner, this run ran (the page may merge several runs)."""
    dirty = (
        ", uncommitted changes in runner/" if _git("status", "--porcelain", "--", "runner") else ""
    )
    return (
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} at "
        f"`{_git('rev-parse', '--short', 'HEAD')}` (branch "
        f"`{_git('rev-parse', '--abbrev-ref', 'HEAD')}`{dirty}, runner digest "
        f"`{envs.runner_digest()}`, Python {platform.python_version()})"
    )


def render(
    outcomes: list[Outcome], filters: str, elapsed_s: float, findings: str, runs: list[str]
) -> str:
    by_key = {
        (o.case.project.key, o.case.backend, o.case.home, o.case.scenario): o for o in outcomes
    }
    projects = [p for p in PROJECTS if any(o.case.project.key == p.key for o in outcomes)]
    versions: dict[str, dict[str, str]] = {}
    for p in projects:
        try:
            versions[p.key] = envs.ensure_venv(p).versions
        except envs.InstallError:
            versions[p.key] = {"install": "failed"}
    counts = {
        s: sum(1 for o in outcomes if o.status == s)
        for s in ("same", "different", "error", "skipped")
    }
    out = [
        "# Compatibility with real projects",
        "",
        "<!-- written by `python -m tests.compat.report`; do not edit by hand -->",
        "",
        "The first rule of migration-runner: for any project, `migration-runner upgrade` leaves",
        "the database exactly as `alembic upgrade head` does. This page records that rule checked",
        "against packages from PyPI that ship Alembic migrations inside their distributions, each",
        "with an `env.py` that is not Alembic's template. Every case runs plain Alembic and the",
        "runner side by side in two fresh databases and compares `pg_dump --schema-only",
        "--no-owner` (normalised), object owners, the version tables' rows and every table's row",
        "count (SQLite: `sqlite_master`; MariaDB: `SHOW CREATE`). The runner's own history table",
        "(`migration_runner_history`, next to the version table; plain Alembic has none) is left",
        "out of every comparison, by exact name, as the default suite's parity tests leave it out.",
        "A case is *same* only when the databases are identical **and** every runner run exited 0",
        "with JSON events on stderr, exactly one `run_finished` line and (for `upgrade`) an empty",
        "stdout. The one kind of plain line allowed on stderr is the project's own output, which",
        "the runner passes through there by design (README, *Log events*): a line that plain",
        "Alembic also printed for the same project and backend (timestamps aside), and that is",
        "not a record of Alembic's or SQLAlchemy's loggers (those must come as JSON events).",
        "",
        "Run it: `MIGRATION_TEST_COMPAT=1 .venv/bin/python -m pytest tests/compat` (one test per",
        "cell below), or `.venv/bin/python -m tests.compat.report` to rewrite this page. Both need",
        "PyPI, `MIGRATION_TEST_POSTGRES_URL` (and `pg_dump`), optionally",
        "`MIGRATION_TEST_MARIADB_URL`. Venvs are cached under `$MIGRATION_COMPAT_CACHE` (default",
        "`/tmp/migration-runner-compat`); the runner in them is rebuilt from the checkout whenever",
        "`runner/` or `pyproject.toml` changes, so the same matrix tests any core. A full run",
        "took about 12 minutes on the 2-core development machine with the venvs in place (the",
        "line below says how long the recorded run took); the first run adds about 3 minutes of",
        "installs (about 1.9 GB of venvs). It is not part of the default suite or CI: the",
        "default suite skips it, naming the switch.",
        "",
        "Scenarios: **apply** (empty or seeded database to head); **noop** (a second",
        "`upgrade`: exit 0, `applied` 0, nothing changed); **downgrade** (`downgrade REV --yes`,",
        "compared, then `upgrade`, compared, against plain Alembic doing the same);",
        "**concurrent** (five `upgrade` processes on one database: all exit 0, exactly one",
        "reports `applied` > 0, no revision applied twice, result equals plain Alembic's).",
        "HOME: the runner keeps nothing between runs (it has no cache), but a project's own code",
        "may write to HOME. **warm**: one `HOME` per project shared by all its runner runs, first",
        "filled by an upgrade on a scratch database (the note of the project's first warm case",
        "says what that left there), as on a developer's machine; **cold**: an empty `HOME` per",
        "run, as a pod starts. Exit codes are the runner's, in order of its runs in the case.",
        "",
        f"Runs: {'; '.join(runs)}. ",
        f"{len(outcomes)} cases in {elapsed_s / 60:.1f} min: {counts['same']} same, "
        f"{counts['different']} different, {counts['error']} not judged, "
        f"{counts['skipped']} skipped.{' Filter: ' + filters if filters else ''}",
        "",
        "## Findings",
        "",
        findings,
        "",
        "## Projects",
        "",
        *_project_table(projects, versions),
        "",
        "## Results",
        "",
        "| project | version | env.py | backend | HOME | " + " | ".join(SCENARIOS) + " |",
        "|---|---|---|---|---|" + "---|" * len(SCENARIOS),
    ]
    for p in projects:
        for backend in p.backends:
            for home in HOMES:
                cells = [by_key.get((p.key, backend, home, s)) for s in SCENARIOS]
                if all(c is None for c in cells):
                    continue
                out.append(
                    f"| {p.key} | {p.version} | {p.pattern} | {backend} | {home} | "
                    + " | ".join(_cell(c) for c in cells)
                    + " |"
                )
    out += [
        "",
        "## Details of the cases that are not *same*",
        "",
        "Cases with the same problems are shown once. Diffs are plain Alembic's database (`-`)",
        f"against the runner's (`+`), cut at {DIFF_LINES} lines; after a failed runner run they",
        "mostly show what it did not apply.",
        "",
    ]
    groups: dict[tuple[str, ...], list[Outcome]] = {}
    for o in outcomes:
        if o.status not in ("same", "skipped"):
            groups.setdefault((*o.problems, *o.diffs), []).append(o)
    for members in groups.values():
        first = members[0]
        out += [f"### {', '.join(m.case.id for m in members)}", ""]
        out += [f"Runner exit codes: {first.exit_codes}", ""]
        out += [f"- {p}" for p in first.problems]
        notes = sorted({n for m in members for n in m.notes})
        out += [f"- note: {n}" for n in notes]
        out += [""]
        for d in first.diffs:
            lines = d.splitlines()
            cut = [f"... ({len(lines) - DIFF_LINES} more lines)"] if len(lines) > DIFF_LINES else []
            out += ["```diff", *lines[:DIFF_LINES], *cut, "```", ""]
    out += ["## Tried and not kept", ""]
    out += [f"- **{name}**: {why}" for name, why in DROPPED] or ["- none"]
    out += ["", "Cases not run (plain Alembic itself cannot do them, so there is no baseline):", ""]
    out += [
        f"- **{p.key}** {scenario} on {backend}: {why}"
        for p in PROJECTS
        for (scenario, backend), why in p.not_run.items()
    ] or ["- none"]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.compat.report", description=__doc__)
    parser.add_argument("--project", action="append", help="project key (repeatable)")
    parser.add_argument("--backend", action="append", help="postgresql, sqlite, mariadb")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--home", action="append", choices=HOMES)
    parser.add_argument("--output", type=Path, default=DOC)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the page from the outcomes the last run saved, without running",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the last run's saved outcomes of the cases this run does not run",
    )
    args = parser.parse_args(argv)
    saved = envs.cache_root() / "report-outcomes.json"
    if args.render_only:
        state = json.loads(saved.read_text())
        valid = {c.id for c in all_cases()}
        outcomes = [_loaded(item) for item in state["outcomes"] if item["id"] in valid]
        args.output.write_text(
            render(
                outcomes,
                state["filters"],
                state["elapsed_s"],
                _kept_findings(args.output),
                state.get("runs", []),
            )
        )
        print(f"wrote {args.output} from {saved}", file=sys.stderr)
        return 0
    cases: list[Case] = [
        c
        for c in all_cases()
        if (not args.project or c.project.key in args.project)
        and (not args.backend or c.backend in args.backend)
        and (not args.scenario or c.scenario in args.scenario)
        and (not args.home or c.home in args.home)
    ]
    filters = " ".join(
        f"--{name} {v}"
        for name in ("project", "backend", "scenario", "home")
        for v in getattr(args, name) or []
    )
    previous = json.loads(saved.read_text()) if args.merge and saved.is_file() else None
    order = {c.id: n for n, c in enumerate(all_cases())}

    def merged(ran: list[Outcome]) -> tuple[list[Outcome], float, str]:
        """This run's outcomes, with --merge the last run's others too, in matrix order."""
        elapsed = time.monotonic() - started
        if previous is None:
            return ran, elapsed, filters
        ids = {o.case.id for o in ran}
        kept = [_loaded(i) for i in previous["outcomes"] if i["id"] not in ids and i["id"] in order]
        everything = sorted(kept + ran, key=lambda o: order.get(o.case.id, len(order)))
        return everything, elapsed + float(previous["elapsed_s"]), previous["filters"]

    this_run = run_identity()
    runs = [*(previous or {}).get("runs", []), this_run]

    started = time.monotonic()
    outcomes: list[Outcome] = []
    for number, case in enumerate(cases, 1):
        try:
            outcome = run_case(case)
        except Exception as exc:  # the table must still be written; the error is its row
            outcome = Outcome(
                case, status="error", problems=[f"harness: {type(exc).__name__}: {exc}"]
            )
        outcomes.append(outcome)
        everything, elapsed, shown_filters = merged(outcomes)
        state = {
            "runs": runs,
            "filters": shown_filters,
            "elapsed_s": elapsed,
            "outcomes": [_saved(o) for o in everything],
        }
        saved.write_text(json.dumps(state, indent=1))
        print(
            f"[{number}/{len(cases)}] {case.id}: {outcome.status} {outcome.exit_codes} "
            f"{outcome.duration_s:.1f}s {outcome.why[:120]}",
            file=sys.stderr,
            flush=True,
        )
    everything, elapsed, shown_filters = merged(outcomes)
    args.output.write_text(
        render(everything, shown_filters, elapsed, _kept_findings(args.output), runs)
    )
    print(f"wrote {args.output} ({len(everything)} cases, {elapsed / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
