"""How `lint` reports: human text, one JSON document, SARIF 2.1.0 for code scanning, and under
GitHub Actions `::warning`/`::error` annotations on the revision file lines plus a step-summary
table. Also the SQL script `plan --sql` prints from a shadow run.

Every text that came from elsewhere (statements, revision errors) passes `redact` here, once,
before any of these outputs sees it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from runner import __version__, github, lint_git
from runner.errors import ExitCode
from runner.lint import LintResult
from runner.lint_rules import RULES, RevisionObservation, at_or_above
from runner.logs import log
from runner.redact import redact
from runner.report import RunReport
from runner.settings import Settings

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/migration-runner/migration-runner#lint"
_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
_ICON = {"error": "❌", "warning": "⚠️", "info": "\N{INFORMATION SOURCE}\N{VARIATION SELECTOR-16}"}


def relative(path: str | None, root: Path | None = None) -> str | None:
    """A revision file as the reader's tools name it: relative to `root` (the repository) or
    the working directory when it lies inside, else as it is."""
    if path is None:
        return None
    full = Path(path).resolve()
    for base in (root, Path.cwd()):
        if base is not None and full.is_relative_to(base.resolve()):
            return full.relative_to(base.resolve()).as_posix()
    return str(path)


def _cell(text: str | None) -> str:
    """A value safe inside a Markdown table cell: one line, pipes escaped."""
    if not text:
        return "-"
    return " ".join(text.split()).replace("|", "\\|")


def _short(sql: str | None, limit: int = 160) -> str:
    if not sql:
        return ""
    one = " ".join(sql.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def masked(result: LintResult) -> None:
    """Mask every text that came from the project or the database, once."""
    for item in result.findings:
        item.message = redact(item.message)
        item.statement = redact(item.statement) if item.statement else None
    for obs in result.observations:
        obs.error = redact(obs.error) if obs.error else None
        for st in obs.statements:
            st.sql = redact(st.sql)


# -- text ----------------------------------------------------------------------------------


def write_text(result: LintResult, fail_on: str, out: TextIO, root: Path | None = None) -> None:
    out.write(f"migration-runner lint: {result.scope}\n")
    for obs in result.observations:
        state = {"failed": " FAILED", "not_reached": " not reached"}.get(obs.status, "")
        out.write(
            f"  {obs.revision}  {obs.message or ''}  ({len(obs.statements)} statements, "
            f"{obs.duration_ms} ms){state}\n"
        )
    if result.findings:
        out.write("\n")
    for item in result.findings:
        where = relative(item.file, root) or "(graph)"
        if item.line:
            where += f":{item.line}"
        tag = "suppressed" if item.suppressed else item.severity
        lock = f" [{item.lock}" + (f" on {item.table}]" if item.table else "]") if item.lock else ""
        if not item.lock and item.table:
            lock = f" [{item.table}]"
        out.write(f"{where}: {tag}: {item.rule}{lock} revision {item.revision or '-'}\n")
        out.write(f"    why:  {item.message}\n")
        if item.statement:
            out.write(f"    sql:  {_short(item.statement)}\n")
        if item.suppressed:
            out.write(f"    suppressed: {item.suppression_reason}\n")
        else:
            out.write(f"    safe: {item.safe}\n")
    for note in result.notes:
        out.write(f"note: {note}\n")
    counts = result.counts()
    failing = any(not f.suppressed and at_or_above(f.severity, fail_on) for f in result.findings)
    out.write(
        f"\n{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info, "
        f"{counts['suppressed']} suppressed; --fail-on {fail_on}: "
        f"{'FAIL' if failing else 'ok'}\n"
    )


# -- JSON ----------------------------------------------------------------------------------


def document(result: LintResult, fail_on: str, root: Path | None = None) -> dict[str, Any]:
    findings = []
    for item in result.findings:
        entry = item.public()
        entry["file"] = relative(item.file, root)
        findings.append(entry)
    revisions = []
    for obs in result.observations:
        entry = obs.public()
        entry["file"] = relative(obs.path, root)
        revisions.append(entry)
    return {
        "scope": result.scope,
        "fail_on": fail_on,
        "counts": result.counts(),
        "findings": findings,
        "revisions": revisions,
        "notes": result.notes,
    }


def write_json(result: LintResult, fail_on: str, out: TextIO, root: Path | None = None) -> None:
    out.write(json.dumps(document(result, fail_on, root)) + "\n")


# -- SARIF ---------------------------------------------------------------------------------


def sarif(result: LintResult, root: Path | None = None) -> dict[str, Any]:
    """SARIF 2.1.0: one run, the runner's rules (plus Squawk's that fired) as the driver's
    rules, each finding a result on its revision file line; suppressed ones carry an
    in-source suppression with its reason."""
    rule_ids = list(RULES) + sorted({f.rule for f in result.findings if f.rule not in RULES})
    rules = []
    for rule_id in rule_ids:
        info = RULES.get(rule_id)
        if info is not None:
            rules.append(
                {
                    "id": rule_id,
                    "name": "".join(w.capitalize() for w in rule_id.split("-")),
                    "shortDescription": {"text": info.title},
                    "fullDescription": {"text": info.why},
                    "help": {"text": f"{info.why}. Safe: {info.safe}"},
                    "defaultConfiguration": {"level": _SARIF_LEVEL[info.severity]},
                }
            )
        else:
            rules.append(
                {
                    "id": rule_id,
                    "shortDescription": {"text": f"Squawk rule {rule_id.partition(':')[2]}"},
                    "helpUri": f"https://squawkhq.com/docs/{rule_id.partition(':')[2]}",
                    "defaultConfiguration": {"level": "note"},
                }
            )
    index = {rule_id: n for n, rule_id in enumerate(rule_ids)}
    results = []
    for item in result.findings:
        text = item.message
        if item.lock:
            text = f"{item.lock} on {item.table}: {text}" if item.table else f"{item.lock}: {text}"
        if item.revision:
            text = f"revision {item.revision}: {text}"
        entry: dict[str, Any] = {
            "ruleId": item.rule,
            "ruleIndex": index[item.rule],
            "level": _SARIF_LEVEL[item.severity],
            "message": {"text": f"{text}. Safe: {item.safe}"},
        }
        path = relative(item.file, root)
        if path:
            location: dict[str, Any] = {"artifactLocation": {"uri": path}}
            if not Path(path).is_absolute():
                location["artifactLocation"]["uriBaseId"] = "%SRCROOT%"
            if item.line:
                location["region"] = {"startLine": item.line}
            entry["locations"] = [{"physicalLocation": location}]
        props: dict[str, Any] = {}
        for key in ("revision", "lock", "table", "statement"):
            value = getattr(item, key)
            if value:
                props[key] = value
        if props:
            entry["properties"] = props
        if item.suppressed:
            entry["suppressions"] = [
                {"kind": "inSource", "justification": item.suppression_reason or ""}
            ]
        results.append(entry)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "migration-runner",
                        "version": __version__,
                        "informationUri": INFORMATION_URI,
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }


def write_sarif(result: LintResult, out: TextIO, root: Path | None = None) -> None:
    out.write(json.dumps(sarif(result, root), indent=2) + "\n")


# -- GitHub Actions ------------------------------------------------------------------------


def annotation_lines(result: LintResult, root: Path | None = None) -> list[str]:
    """`::error file=...,line=...,title=...::message` for every unsuppressed warning and
    error (info stays in the summary)."""
    lines = []
    for item in result.findings:
        if item.suppressed or item.severity == "info":
            continue
        props = []
        path = relative(item.file, root)
        if path:
            props.append(f"file={github.escape_property(path)}")
            if item.line:
                props.append(f"line={item.line}")
        title = f"{item.rule} ({item.revision})" if item.revision else item.rule
        props.append(f"title={github.escape_property(title)}")
        lock = f"{item.lock} on {item.table}: " if item.lock and item.table else ""
        message = f"{lock}{item.message}. Safe: {item.safe}"
        lines.append(f"::{item.severity} {','.join(props)}::{github.escape_data(message)}\n")
    return lines


def step_summary(result: LintResult, fail_on: str, root: Path | None = None) -> str:
    counts = result.counts()
    lines = [
        f"### migration-runner lint: {result.scope}",
        "",
        f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info, "
        f"{counts['suppressed']} suppressed (fails on {fail_on})",
        "",
    ]
    if result.findings:
        lines += [
            "| | Revision | Rule | Lock | Table | Where | Why / safe form |",
            "|---|---|---|---|---|---|---|",
        ]
        for item in result.findings:
            icon = "🔕" if item.suppressed else _ICON[item.severity]
            where = relative(item.file, root) or "-"
            if item.line:
                where += f":{item.line}"
            advice = (
                f"suppressed: {item.suppression_reason}"
                if item.suppressed
                else f"{item.message}. **Safe:** {item.safe}"
            )
            lines.append(
                f"| {icon} | `{_cell(item.revision)}` | `{item.rule}` "
                f"| {_cell(item.lock)} | {_cell(item.table)} "
                f"| `{_cell(where)}` | {_cell(advice)} |"
            )
    else:
        lines.append("No findings.")
    return "\n".join(lines) + "\n\n"


def write_github(
    result: LintResult,
    fail_on: str,
    stream: TextIO,
    summary_path: Path | None,
    root: Path | None = None,
) -> None:
    for line in annotation_lines(result, root):
        stream.write(line)
    stream.flush()
    if summary_path is not None:
        try:
            with summary_path.open("a", encoding="utf-8") as fh:
                fh.write(step_summary(result, fail_on, root))
        except OSError as exc:
            log.warning("github_step_summary_unwritable", path=str(summary_path), error=str(exc))


# -- plan --sql from a shadow run ----------------------------------------------------------


def sql_script(observations: list[RevisionObservation], out: TextIO) -> None:
    """The statements each revision sent, as a script: each revision's transaction between
    BEGIN and COMMIT, `autocommit_block()` statements outside."""
    out.write(
        "-- rendered from a shadow run (MIGRATION_SHADOW_URL): each statement as the "
        "revision sent it to PostgreSQL\n"
    )
    for obs in observations:
        if obs.status not in ("observed", "failed"):
            continue
        out.write(f"\n-- Running upgrade {obs.down_revision or ''} -> {obs.revision}\n")
        in_transaction = False
        for st in obs.statements:
            if st.autocommit and in_transaction:
                out.write("COMMIT;\n")
                in_transaction = False
            elif not st.autocommit and not in_transaction:
                out.write("BEGIN;\n")
                in_transaction = True
            out.write(redact(st.sql.rstrip().rstrip(";")) + ";\n")
        if in_transaction:
            out.write("COMMIT;\n")
        if obs.status == "failed":
            out.write(f"-- FAILED: {redact(obs.error or '')}\n")


# -- the command's ending --------------------------------------------------------------------


def finish(
    result: LintResult,
    args: argparse.Namespace,
    out: TextIO,
    settings: Settings,
    report: RunReport,
) -> int:
    """Print `result` in the asked format (and SARIF to `--sarif-file`, GitHub annotations and
    summary in Actions), record the outcome in the run's report, and return the exit code:
    4 when a finding at or above `--fail-on` is not suppressed."""
    masked(result)
    root = lint_git.repo_root(Path.cwd())
    fmt = args.format
    if fmt == "auto":
        fmt = "text" if out.isatty() or settings.github_actions else "json"
    fail_on = args.fail_on
    if fmt == "text":
        write_text(result, fail_on, out, root)
    elif fmt == "json":
        write_json(result, fail_on, out, root)
    else:
        write_sarif(result, out, root)
    out.flush()
    if args.sarif_file:
        with open(args.sarif_file, "w", encoding="utf-8") as fh:
            write_sarif(result, fh, root)
    if settings.github_actions:
        # Workflow commands are read from stdout and stderr alike: a JSON or SARIF document
        # on stdout stays whole.
        stream = out if fmt == "text" else sys.stderr
        write_github(result, fail_on, stream, settings.github_step_summary, root)
    counts = result.counts()
    failing = [f for f in result.findings if not f.suppressed and at_or_above(f.severity, fail_on)]
    report.outcome = "lint_failed" if failing else "lint_passed"
    log.info(
        "lint_finished",
        scope=result.scope,
        revisions=len(result.observations),
        errors=counts["error"],
        warnings=counts["warning"],
        info=counts["info"],
        suppressed=counts["suppressed"],
        fail_on=fail_on,
    )
    if not failing:
        return ExitCode.OK
    report.reason = redact(
        f"{len(failing)} finding(s) at or above {fail_on}: "
        + ", ".join(sorted({f"{f.rule} ({f.revision})" for f in failing}))[:500]
    )
    return ExitCode.LINT_FINDINGS
