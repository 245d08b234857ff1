"""Squawk's static advice on the SQL the shadow run captured.

Squawk (`squawk-cli` on PyPI, Apache-2.0/MIT; a single Rust binary, no GPL parser) lints
PostgreSQL statements. The runner already observes what Squawk can only guess (locks,
rewrites, validation), so the rules that say the same thing as an observed rule are switched
off, as are those the runner enforces itself (timeouts, via `lock_timeout` and retries; rerun
safety, via the dirty state). What is left (types to prefer, `TRUNCATE ... CASCADE`, ...) is
reported as `info`, under the rule id `squawk:<rule>`. Without the binary the lint goes on
without it and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from runner.lint_rules import Finding, RevisionObservation

TIMEOUT_S = 60.0

#: Squawk rules switched off, and why.
EXCLUDED = {
    # The runner enforces these itself.
    "require-timeout-settings": "the runner sets lock_timeout and retries",
    "require-lock-timeout": "the runner sets lock_timeout and retries",
    "require-statement-timeout": "MIGRATION_STATEMENT_TIMEOUT",
    "prefer-robust-stmts": "each revision runs in a transaction; partial work marks dirty",
    "transaction-nesting": "Alembic owns the transactions",
    # Observed, not guessed, by the runner's own rules.
    "require-concurrent-index-creation": "index-not-concurrent",
    "require-concurrent-index-deletion": "drop-index-not-concurrent",
    "ban-concurrent-index-creation-in-transaction": "concurrently-in-transaction",
    "constraint-missing-not-valid": "constraint-not-valid",
    "adding-foreign-key-constraint": "constraint-not-valid",
    "adding-field-with-default": "add-column-rewrite",
    "adding-not-nullable-field": "set-not-null",
    "adding-required-field": "add-not-null-column",
    "changing-column-type": "column-type-rewrite",
    "disallowed-unique-constraint": "unique-without-index",
    "adding-serial-primary-key-field": "unique-without-index",
    "renaming-column": "rename-column",
    "renaming-table": "rename-table",
    "ban-drop-column": "drop-column",
    "ban-drop-table": "drop-table",
    # Schema style, not deploy safety: a lint that fires on every table is a lint people
    # switch off.
    "prefer-bigint-over-int": "style",
    "prefer-bigint-over-smallint": "style",
    "prefer-identity": "style",
    "prefer-text-field": "style",
    "prefer-timestamptz": "style",
    "ban-char-field": "style",
}


def binary() -> str | None:
    """The squawk executable: next to this Python (a venv, the image), else on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file():
        return str(beside)
    return shutil.which("squawk")


def check(observations: list[RevisionObservation]) -> tuple[list[Finding], str | None]:
    """Squawk's findings on each observed revision's statements, and a note when it could
    not run."""
    exe = binary()
    if exe is None:
        return [], "squawk not installed (pip install squawk-cli): static SQL advice skipped"
    files: dict[str, tuple[RevisionObservation, list[int]]] = {}
    with tempfile.TemporaryDirectory(prefix="mr-squawk-") as tmp:
        for index, obs in enumerate(observations):
            if obs.status not in ("observed", "failed") or not obs.statements:
                continue
            starts: list[int] = []
            lines: list[str] = []
            for st in obs.statements:
                starts.append(len(lines))
                lines += (st.sql.rstrip().rstrip(";") + ";").splitlines()
            name = f"{index:04d}.sql"
            (Path(tmp) / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
            files[name] = (obs, starts)
        if not files:
            return [], None
        try:
            proc = subprocess.run(
                [
                    exe,
                    "--reporter",
                    "json",
                    "--exclude",
                    ",".join(sorted(EXCLUDED)),
                    *sorted(files),
                ],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [], f"squawk did not run ({type(exc).__name__}): static SQL advice skipped"
    try:
        results = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        results = None
    if not isinstance(results, list) or proc.returncode not in (0, 1):
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        return [], f"squawk failed ({first[:200]}): static SQL advice skipped"
    findings = []
    seen: set[tuple[str, str, int]] = set()
    for item in results:
        entry = files.get(Path(str(item.get("file", ""))).name)
        if (
            entry is None
            or item.get("rule_name") in EXCLUDED
            or item.get("rule_name") == "syntax-error"
        ):
            # syntax-error: a statement whose bind values could not be inlined (placeholders)
            continue
        obs, starts = entry
        line = int(item.get("line") or 0)
        index = max((i for i, start in enumerate(starts) if start <= line), default=0)
        st = obs.statements[index]
        rule = str(item.get("rule_name", "unknown"))
        if (rule, obs.revision, index) in seen:
            continue  # one finding per rule and statement
        seen.add((rule, obs.revision, index))
        findings.append(
            Finding(
                rule=f"squawk:{rule}",
                severity="info",
                revision=obs.revision,
                message=str(item.get("message") or "").strip(),
                safe=str(item.get("help") or "see https://squawkhq.com/docs/rules").strip(),
                statement=st.sql,
                file=obs.path,
                line=st.line,
            )
        )
    return findings, None
