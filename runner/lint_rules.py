"""What a shadow run observed of each revision, and the rules that judge it. No database here:
the observations come in as data (`Snapshot.from_json` reads what `runner.lint` queried), so
every rule is tested on its own and the output modules read plain dataclasses.

A rule judges what PostgreSQL *did* (the locks the revision's transaction held on relations
that existed before it, a relation file node that changed, a constraint that became valid),
and uses the statement text only to say which statement did it and whether it was written in
the safe form (`CONCURRENTLY`, `NOT VALID`, `USING INDEX`).

Severity: `error` when the revision holds a write-blocking lock (SHARE or stronger) on a table
that existed before it for longer than a catalog change (an index build, a validation scan, a
rewrite, a backfill), or rewrites such a table; `warning` for hazards that depend on the data
or the rollout (drop, rename, NOT NULL without a default, a brief ACCESS EXCLUSIVE that blocks
reads); `info` for brief catalog-only locks and Squawk's static advice.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")

#: PostgreSQL's table lock modes, weakest first (`pg_locks.mode`).
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
#: SHARE and stronger block writes (INSERT/UPDATE/DELETE) to the table.
WRITE_BLOCKING = LOCK_MODES.index("ShareLock")


def lock_rank(mode: str | None) -> int:
    return LOCK_MODES.index(mode) if mode in LOCK_MODES else -1


def lock_label(mode: str | None) -> str | None:
    """`AccessExclusiveLock` -> `ACCESS EXCLUSIVE`, as the PostgreSQL docs name it."""
    if not mode:
        return None
    words = re.findall(r"[A-Z][a-z]*", mode.removesuffix("Lock"))
    return " ".join(words).upper()


@dataclass(frozen=True)
class RuleInfo:
    id: str
    severity: str
    title: str
    why: str
    safe: str


RULES: dict[str, RuleInfo] = {
    r.id: r
    for r in [
        RuleInfo(
            "index-not-concurrent",
            "error",
            "index built without CONCURRENTLY on an existing table",
            "CREATE INDEX holds a SHARE lock for the whole build: writes to the table wait",
            "op.create_index(..., postgresql_concurrently=True) inside "
            "`with op.get_context().autocommit_block():`",
        ),
        RuleInfo(
            "concurrently-in-transaction",
            "error",
            "CONCURRENTLY outside autocommit_block()",
            "PostgreSQL refuses CONCURRENTLY inside a transaction block, and every revision "
            "runs in one: the deploy fails (removing CONCURRENTLY instead locks the table)",
            "keep CONCURRENTLY and run the statement inside "
            "`with op.get_context().autocommit_block():`",
        ),
        RuleInfo(
            "drop-index-not-concurrent",
            "warning",
            "DROP INDEX without CONCURRENTLY",
            "DROP INDEX takes ACCESS EXCLUSIVE on the table: reads and writes queue behind it "
            "and behind any long query it waits for",
            "op.drop_index(..., postgresql_concurrently=True) inside "
            "`with op.get_context().autocommit_block():`",
        ),
        RuleInfo(
            "reindex-not-concurrent",
            "error",
            "REINDEX without CONCURRENTLY",
            "REINDEX rebuilds the index holding a SHARE lock on the table (ACCESS EXCLUSIVE on "
            "the index): writes wait for the whole rebuild",
            "REINDEX INDEX CONCURRENTLY ... inside `with op.get_context().autocommit_block():`",
        ),
        RuleInfo(
            "add-column-rewrite",
            "error",
            "column added with a volatile default or as a stored generated column",
            "the table is rewritten under ACCESS EXCLUSIVE: reads and writes wait for the "
            "whole rewrite",
            "add the column nullable (or with a constant default), backfill it in batches in "
            "a later revision, then set the default",
        ),
        RuleInfo(
            "column-type-rewrite",
            "error",
            "column type change that rewrites the table",
            "the table (and its indexes) is rewritten under ACCESS EXCLUSIVE: reads and writes "
            "wait for the whole rewrite",
            "add a new column of the new type, backfill it in batches, switch the app, then "
            "drop the old one (or pick a binary-compatible type change)",
        ),
        RuleInfo(
            "table-rewrite",
            "error",
            "table rewritten",
            "the table was rewritten (its file node changed) under ACCESS EXCLUSIVE",
            "find the statement's online alternative; rewrite in batches into a new table",
        ),
        RuleInfo(
            "constraint-not-valid",
            "error",
            "foreign key or CHECK added without NOT VALID",
            "the constraint is validated while the ALTER TABLE lock is held: the whole table is "
            "scanned with writes blocked",
            "add it with NOT VALID in one revision, then `ALTER TABLE ... VALIDATE CONSTRAINT` "
            "in a later one (SHARE UPDATE EXCLUSIVE: writes go on)",
        ),
        RuleInfo(
            "set-not-null",
            "error",
            "SET NOT NULL without a validated CHECK",
            "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE (and fails if a row is "
            "NULL)",
            "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE it in a later revision, then SET "
            "NOT NULL (PostgreSQL 12+ skips the scan) and drop the CHECK",
        ),
        RuleInfo(
            "add-not-null-column",
            "warning",
            "NOT NULL column added without a default",
            "fails on a table that has rows, and the old pods of a rolling deploy insert "
            "without the column",
            "add it with a server_default (constant: no rewrite), or nullable and tighten later",
        ),
        RuleInfo(
            "unique-without-index",
            "error",
            "UNIQUE or PRIMARY KEY added without a prior concurrent index",
            "the unique index is built while ALTER TABLE holds ACCESS EXCLUSIVE: reads and "
            "writes wait for the whole build",
            "CREATE UNIQUE INDEX CONCURRENTLY in autocommit_block(), then "
            "`ALTER TABLE ... ADD CONSTRAINT name UNIQUE USING INDEX idx` in a later revision",
        ),
        RuleInfo(
            "ddl-with-backfill",
            "error",
            "DDL and a data backfill in one transaction",
            "the DDL's lock is held until the transaction commits, so for the whole backfill",
            "put the backfill in a revision of its own (in batches, ideally in "
            "autocommit_block()), after the DDL revision",
        ),
        RuleInfo(
            "drop-column",
            "warning",
            "column dropped",
            "the old pods of a rolling deploy still read or write it and fail",
            "stop using the column in a release first (SQLAlchemy: deferred/removed from the "
            "model), drop it in a later one",
        ),
        RuleInfo(
            "rename-column",
            "warning",
            "column renamed",
            "the old pods of a rolling deploy still use the old name and fail",
            "add the new column, write both, backfill, switch reads, drop the old one later",
        ),
        RuleInfo(
            "drop-table",
            "warning",
            "table dropped",
            "the old pods of a rolling deploy may still query it",
            "stop using the table in a release first, drop it in a later one",
        ),
        RuleInfo(
            "rename-table",
            "warning",
            "table renamed",
            "the old pods of a rolling deploy still use the old name and fail",
            "create the new table (or a view with the old name) and move over in steps",
        ),
        RuleInfo(
            "enum-value-used-in-transaction",
            "error",
            "enum value added and used in one transaction",
            "PostgreSQL refuses a new enum value before it is committed: the deploy fails",
            "add the value inside `with op.get_context().autocommit_block():` (or in an earlier "
            "revision), use it after",
        ),
        RuleInfo(
            "catalog-lock",
            "info",
            "brief catalog-only lock",
            "a write-blocking lock held only for a catalog change; it still queues behind long "
            "queries (the runner's lock_timeout and retries bound that)",
            "nothing to change",
        ),
        RuleInfo(
            "revision-failed",
            "error",
            "revision failed in the shadow run",
            "the revision fails on an empty database of this schema: it would fail the deploy",
            "fix the revision; the reason is PostgreSQL's or the revision's own",
        ),
        RuleInfo(
            "multiple-heads",
            "error",
            "revision graph has more than one head",
            "`upgrade head` refuses to run: the deploy fails",
            "`alembic merge heads`, or rebase the new revision onto the current head",
        ),
        RuleInfo(
            "revision-edited",
            "error",
            "revision already on the base branch was edited",
            "databases that applied it never run the new version: schemas drift apart",
            "put the change into a new revision",
        ),
        RuleInfo(
            "revision-reparented",
            "error",
            "revision already on the base branch was re-parented",
            "its down_revision changed: databases that applied it disagree about the graph",
            "keep down_revision as it was; add a merge revision instead",
        ),
        RuleInfo(
            "revision-deleted",
            "error",
            "revision already on the base branch was deleted",
            "databases at (or past) it become unknown to the code: `upgrade` cannot continue",
            "keep the revision file (an empty upgrade() is fine)",
        ),
    ]
}


# -- what was observed -------------------------------------------------------------------


@dataclass(frozen=True)
class Rel:
    oid: int
    kind: str
    schema: str
    name: str
    filenode: int
    #: For an index: the table it indexes.
    table: int | None = None

    @property
    def qualified(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Col:
    rel: int
    num: int
    name: str
    notnull: bool
    hasdef: bool
    dropped: bool
    generated: bool
    identity: bool


@dataclass(frozen=True)
class Con:
    oid: int
    rel: int
    name: str
    type: str
    validated: bool
    index: int
    references: int
    definition: str | None


@dataclass
class Snapshot:
    """The catalog as one connection saw it (PostgreSQL), and the relation locks its
    transaction held (only read inside the step's transaction)."""

    rels: dict[int, Rel] = field(default_factory=dict)
    cols: dict[tuple[int, int], Col] = field(default_factory=dict)
    cons: dict[int, Con] = field(default_factory=dict)
    locks: dict[int, str] = field(default_factory=dict)
    #: Live (not dropped) columns of each relation, in attribute order.
    columns_of: dict[int, list[Col]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data = json.loads(text)
        snap = cls()
        for oid, kind, schema, name, filenode, table in data.get("rels") or []:
            snap.rels[oid] = Rel(oid, kind, schema, name, filenode or 0, table)
        for row in data.get("cols") or []:
            col = Col(*row)
            snap.cols[(col.rel, col.num)] = col
            if not col.dropped:
                snap.columns_of.setdefault(col.rel, []).append(col)
        for row in data.get("cons") or []:
            con = Con(*row)
            snap.cons[con.oid] = con
        for rel, mode in data.get("locks") or []:
            if lock_rank(mode) > lock_rank(snap.locks.get(rel)):
                snap.locks[rel] = mode
        return snap

    def live_columns(self, rel: int) -> list[Col]:
        return sorted(self.columns_of.get(rel, []), key=lambda c: c.num)

    def version_tables(self) -> set[int]:
        """Alembic's version tables (one column, `version_num`): the runner's bookkeeping,
        not the revision's."""
        return {
            oid
            for oid, rel in self.rels.items()
            if rel.kind == "r" and [c.name for c in self.columns_of.get(oid, [])] == ["version_num"]
        }


@dataclass
class Statement:
    sql: str
    #: Line in the revision file of the call that sent it.
    line: int | None = None
    #: Sent outside a transaction (inside `autocommit_block()`).
    autocommit: bool = False
    duration_ms: float = 0.0


@dataclass
class RevisionObservation:
    revision: str
    down_revision: str | None
    message: str
    path: str | None
    #: observed | failed | replayed (applied unobserved) | not_reached
    status: str = "observed"
    statements: list[Statement] = field(default_factory=list)
    before: Snapshot | None = None
    after: Snapshot | None = None
    duration_ms: int = 0
    error: str | None = None
    sqlstate: str | None = None

    def facts(self) -> Facts:
        return Facts.of(self)

    def public(self) -> dict[str, Any]:
        """What `lint --format json` prints under `revisions`."""
        out: dict[str, Any] = {
            "revision": self.revision,
            "down_revision": self.down_revision,
            "message": self.message,
            "file": self.path,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "statements": [
                {"sql": s.sql, "line": s.line, "autocommit": s.autocommit} for s in self.statements
            ],
        }
        if self.error:
            out["error"] = self.error
            out["sqlstate"] = self.sqlstate
        if self.before is not None and self.after is not None:
            out.update(self.facts().public())
        return out


@dataclass
class Facts:
    """What changed between the snapshot before a revision and the one inside its
    transaction, for relations that existed before it."""

    before: Snapshot
    after: Snapshot
    #: Tables (and materialized views) that existed before the revision, by oid.
    tables: dict[int, Rel]
    indexes: dict[int, Rel]
    #: Strongest lock the revision's transaction held on each pre-existing table (a lock on
    #: one of its indexes counts for the table).
    locks: dict[int, str]
    rewritten: set[int]
    rewritten_indexes: set[int]
    new_constraints: list[Con]
    validated_constraints: list[Con]

    @classmethod
    def of(cls, obs: RevisionObservation) -> Facts:
        assert obs.before is not None and obs.after is not None
        before, after = obs.before, obs.after
        versions = before.version_tables() | after.version_tables()
        tables = {
            oid: r for oid, r in before.rels.items() if r.kind in "rpm" and oid not in versions
        }
        indexes = {oid: r for oid, r in before.rels.items() if r.kind in "iI" and r.table in tables}
        locks: dict[int, str] = {}
        for rel, mode in after.locks.items():
            owner = rel if rel in tables else (indexes[rel].table if rel in indexes else None)
            if owner is not None and lock_rank(mode) > lock_rank(locks.get(owner)):
                locks[owner] = mode
        rewritten = {
            oid
            for oid, r in tables.items()
            if oid in after.rels and r.filenode and after.rels[oid].filenode != r.filenode
        }
        rewritten_indexes = {
            oid
            for oid, r in indexes.items()
            if oid in after.rels and r.filenode and after.rels[oid].filenode != r.filenode
        }
        new = [c for oid, c in after.cons.items() if oid not in before.cons and c.rel in tables]
        validated = [
            c
            for oid, c in after.cons.items()
            if oid in before.cons and c.validated and not before.cons[oid].validated
        ]
        return cls(
            before, after, tables, indexes, locks, rewritten, rewritten_indexes, new, validated
        )

    def replaced(self, con: Con) -> Con | None:
        """The constraint of the same name and type on the same table that `con` took the
        place of in this revision (it is gone), if any."""
        same = (con.rel, con.name, con.type)
        for old in self.before.cons.values():
            if (old.rel, old.name, old.type) == same and old.oid not in self.after.cons:
                return old
        return None

    def name(self, oid: int) -> str:
        rel = self.tables.get(oid) or self.before.rels.get(oid) or self.after.rels.get(oid)
        return rel.qualified if rel else str(oid)

    def table_named(self, qname: str | None) -> Rel | None:
        return _named(self.tables.values(), qname)

    def index_named(self, qname: str | None) -> Rel | None:
        return _named(self.indexes.values(), qname)

    def public(self) -> dict[str, Any]:
        return {
            "locks": [
                {"table": self.name(oid), "mode": mode, "lock": lock_label(mode)}
                for oid, mode in sorted(self.locks.items(), key=lambda kv: self.name(kv[0]))
            ],
            "rewritten": sorted(self.name(o) for o in self.rewritten | self.rewritten_indexes),
            "constraints": [
                {
                    "name": c.name,
                    "table": self.name(c.rel),
                    "type": _CONTYPES.get(c.type, c.type),
                    "state": "added" if c in self.new_constraints else "validated",
                    "validated": c.validated,
                }
                for c in [*self.new_constraints, *self.validated_constraints]
            ],
        }


_CONTYPES = {"f": "foreign key", "c": "check", "u": "unique", "p": "primary key", "x": "exclude"}


# -- reading statements --------------------------------------------------------------------

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_QNAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"
_FLAGS = re.IGNORECASE | re.DOTALL
_CREATE_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?P<conc>CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?:{_IDENT}\s+)?ON\s+(?:ONLY\s+)?(?P<table>{_QNAME})",
    _FLAGS,
)
_DROP_INDEX = re.compile(
    rf"^DROP\s+INDEX\s+(?P<conc>CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?(?P<index>{_QNAME})", _FLAGS
)
_REINDEX = re.compile(
    rf"^REINDEX\s+(?:\([^)]*\)\s*)?(?P<what>INDEX|TABLE|SCHEMA|DATABASE|SYSTEM)\s+"
    rf"(?P<conc>CONCURRENTLY\s+)?(?P<name>{_QNAME})",
    _FLAGS,
)
_ALTER_TABLE = re.compile(
    rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>{_QNAME})\s*(?P<rest>.*)$", _FLAGS
)
_DML = re.compile(
    rf"^(?:UPDATE\s+(?:ONLY\s+)?(?P<u>{_QNAME})|DELETE\s+FROM\s+(?:ONLY\s+)?(?P<d>{_QNAME})"
    rf"|INSERT\s+INTO\s+(?P<i>{_QNAME})(?P<irest>.*)|MERGE\s+INTO\s+(?P<m>{_QNAME}))",
    _FLAGS,
)
_ADD_ENUM_VALUE = re.compile(
    rf"^ALTER\s+TYPE\s+{_QNAME}\s+ADD\s+VALUE\s+(?:IF\s+NOT\s+EXISTS\s+)?'(?P<value>(?:[^']|'')*)'",
    _FLAGS,
)
_CONCURRENTLY = re.compile(
    r"^(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX|REINDEX|REFRESH\s+MATERIALIZED\s+VIEW"
    r"|ALTER\s+TABLE).*\bCONCURRENTLY\b",
    _FLAGS,
)
_DDL = re.compile(r"^(?:CREATE|ALTER|DROP|TRUNCATE|REINDEX|CLUSTER|VACUUM|COMMENT)\b", _FLAGS)
_TRUNCATE = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?(?P<table>{_QNAME})", _FLAGS)
_NOT_NULL_CHECK = re.compile(r'^CHECK \(\(?"?(?P<col>[^)"]+)"? IS NOT NULL\)?\)$')


def normalise(sql: str) -> str:
    """The statement without leading comments and surrounding space."""
    text = sql.strip()
    while True:
        if text.startswith("--"):
            text = text.partition("\n")[2].lstrip()
        elif text.startswith("/*"):
            text = text.partition("*/")[2].lstrip()
        else:
            return text


def split_name(qname: str) -> tuple[str | None, str]:
    parts = re.findall(_IDENT, qname)

    def unquote(part: str) -> str:
        return part[1:-1].replace('""', '"') if part.startswith('"') else part.lower()

    names = [unquote(p) for p in parts]
    return (names[0], names[1]) if len(names) == 2 else (None, names[0])


def _named(rels: Iterable[Rel], qname: str | None) -> Rel | None:
    if not qname:
        return None
    schema, name = split_name(qname)
    for rel in rels:
        if rel.name == name and (schema is None or rel.schema == schema):
            return rel
    return None


def _adds_constraint_named(name: str) -> str:
    """A pattern for `ADD CONSTRAINT name` (quoted or not)."""
    return rf'\bADD\s+CONSTRAINT\s+(?:{re.escape(name)}(?![\w$"])|"{re.escape(name)}")'


def _mentions(sql: str, name: str) -> bool:
    pattern = rf'(?<![\w$"]){re.escape(name)}(?![\w$"])|"{re.escape(name)}"'
    return re.search(pattern, sql, re.IGNORECASE) is not None


# -- findings ----------------------------------------------------------------------------


@dataclass
class Finding:
    rule: str
    severity: str
    revision: str | None
    message: str
    safe: str
    lock: str | None = None
    table: str | None = None
    statement: str | None = None
    file: str | None = None
    line: int | None = None
    suppressed: bool = False
    suppression_reason: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "rule": self.rule,
            "severity": self.severity,
            "lock": self.lock,
            "table": self.table,
            "statement": self.statement,
            "message": self.message,
            "safe": self.safe,
            "file": self.file,
            "line": self.line,
            "suppressed": self.suppressed,
            "suppression_reason": self.suppression_reason,
        }


def finding(
    rule: str,
    obs: RevisionObservation | None,
    *,
    statement: Statement | None = None,
    table: str | None = None,
    mode: str | None = None,
    detail: str = "",
    severity: str | None = None,
) -> Finding:
    info = RULES[rule]
    why = info.why + (f" ({detail})" if detail else "")
    return Finding(
        rule=rule,
        severity=severity or info.severity,
        revision=obs.revision if obs else None,
        message=why,
        safe=info.safe,
        lock=lock_label(mode),
        table=table,
        statement=statement.sql if statement else None,
        file=obs.path if obs else None,
        line=statement.line if statement else None,
    )


def judge(obs: RevisionObservation) -> list[Finding]:
    """Every finding for one observed (or failed) revision."""
    if obs.status == "failed":
        return _judge_failure(obs)
    if obs.before is None or obs.after is None:
        return []
    return _Judge(obs).run()


def _judge_failure(obs: RevisionObservation) -> list[Finding]:
    last = obs.statements[-1] if obs.statements else None
    if (
        obs.sqlstate == "25001"
        and last is not None
        and re.search(r"\bCONCURRENTLY\b", last.sql, re.IGNORECASE)
    ):
        return [finding("concurrently-in-transaction", obs, statement=last)]
    if obs.sqlstate == "55P04":
        return [finding("enum-value-used-in-transaction", obs, statement=last)]
    return [
        finding(
            "revision-failed",
            obs,
            statement=last if obs.sqlstate else None,
            detail=obs.error or "failed",
        )
    ]


class _Judge:
    def __init__(self, obs: RevisionObservation) -> None:
        self.obs = obs
        self.facts = obs.facts()
        self.findings: list[Finding] = []
        #: Pre-existing tables a finding already speaks for.
        self.explained: set[int] = set()

    def add(
        self,
        rule: str,
        *,
        statement: Statement | None = None,
        table: Rel | None = None,
        mode: str | None = None,
        detail: str = "",
        severity: str | None = None,
    ) -> None:
        if table is not None:
            self.explained.add(table.oid)
            mode = mode or self.facts.locks.get(table.oid)
            # A finding is only actionable when it points at code: a rule's own pattern may
            # miss (a statement in a form it does not read), so fall back rather than print none.
            statement = statement or self.statement_about(table)
        self.findings.append(
            finding(
                rule,
                self.obs,
                statement=statement,
                table=table.qualified if table else None,
                mode=mode,
                detail=detail,
                severity=severity,
            )
        )

    def run(self) -> list[Finding]:
        self.statements()
        self.constraints()
        self.columns()
        self.tables()
        self.backfill()
        self.rewrites()
        self.catalog_locks()
        return self.findings

    def statement_for(self, table: Rel, *patterns: str) -> Statement | None:
        """The first statement naming `table` (by its name before the revision) that
        matches one of `patterns`."""
        for st in self.obs.statements:
            text = normalise(st.sql)
            if _mentions(text, table.name) and any(
                re.search(p, text, _FLAGS) for p in patterns or (".",)
            ):
                return st
        return None

    def statement_for_column(self, table: Rel, column: str, pattern: str) -> Statement | None:
        """The first statement on `table` matching `pattern` that names `column` (two columns
        dropped from one table are two statements), else the first matching `pattern`."""
        for st in self.obs.statements:
            text = normalise(st.sql)
            names_both = _mentions(text, table.name) and _mentions(text, column)
            if names_both and re.search(pattern, text, _FLAGS):
                return st
        return self.statement_for(table, pattern)

    def statement_about(self, table: Rel) -> Statement | None:
        """The statement a finding on `table` points at when its rule's own patterns found
        none: the first DDL naming the table, else any statement naming it, else (the lock came
        from a statement that does not name it: a function, a cascade) the revision's first
        DDL, else its first statement."""
        in_revision = self.obs.statements
        return (
            self.statement_for(table, _DDL.pattern)
            or self.statement_for(table)
            or next((st for st in in_revision if _DDL.match(normalise(st.sql))), None)
            or next(iter(in_revision), None)
        )

    # -- statement by statement ----------------------------------------------------------

    def statements(self) -> None:
        facts = self.facts
        for st in self.obs.statements:
            text = normalise(st.sql)
            if _CONCURRENTLY.match(text) and not st.autocommit:
                self.add("concurrently-in-transaction", statement=st)
                continue
            if m := _CREATE_INDEX.match(text):
                table = facts.table_named(m["table"])
                if table is not None and not m["conc"]:
                    self.add("index-not-concurrent", statement=st, table=table)
            elif m := _DROP_INDEX.match(text):
                index = facts.index_named(m["index"])
                if index is not None and not m["conc"] and index.table is not None:
                    self.add(
                        "drop-index-not-concurrent",
                        statement=st,
                        table=facts.tables[index.table],
                        mode="AccessExclusiveLock",
                    )
            elif m := _REINDEX.match(text):
                if m["conc"]:
                    continue
                if m["what"].upper() == "INDEX":
                    index = facts.index_named(m["name"])
                    table = facts.tables.get(index.table) if index and index.table else None
                else:
                    table = facts.table_named(m["name"])
                if table is not None:
                    self.add("reindex-not-concurrent", statement=st, table=table)
            elif m := _ALTER_TABLE.match(text):
                table = facts.table_named(m["table"])
                if table is None:
                    continue
                rest = m["rest"]
                rewrites = table.oid in facts.rewritten
                adds_column = re.search(
                    r"\bADD\s+(?!(?:CONSTRAINT|PRIMARY|UNIQUE|CHECK|FOREIGN|EXCLUDE)\b)",
                    rest,
                    _FLAGS,
                )
                if rewrites and adds_column:
                    self.add("add-column-rewrite", statement=st, table=table)
                elif rewrites and re.search(r"\bTYPE\b", rest, _FLAGS):
                    self.add("column-type-rewrite", statement=st, table=table)
            self.enum_values(st, text)

    def enum_values(self, st: Statement, text: str) -> None:
        """A value added in a transaction and used again before it commits (PostgreSQL
        refuses; caught here too when the use did not reach the server as an enum)."""
        if st.autocommit:
            return
        if (m := _ADD_ENUM_VALUE.match(text)) is None:
            return
        literal = "'" + m["value"] + "'"
        index = self.obs.statements.index(st)
        for later in self.obs.statements[index + 1 :]:
            if later.autocommit:
                return
            if literal in later.sql:
                self.add("enum-value-used-in-transaction", statement=later)
                return

    # -- the catalog ---------------------------------------------------------------------

    def constraints(self) -> None:
        facts = self.facts
        for con in facts.new_constraints:
            table = facts.tables[con.rel]
            named = self.statement_for(table, _adds_constraint_named(con.name))
            st = named or self.statement_for(
                table, r"\bADD\b.*\b(FOREIGN\s+KEY|REFERENCES|CHECK|UNIQUE|PRIMARY\s+KEY)\b"
            )
            if con.type in "fc" and con.validated:
                detail = (
                    "validated in the same transaction"
                    if st and "NOT VALID" in st.sql.upper()
                    else ""
                )
                self.add("constraint-not-valid", statement=st, table=table, detail=detail)
                if con.references in facts.tables:
                    self.explained.add(con.references)
            elif con.type in "up":
                if named is None and facts.replaced(con) is not None:
                    # ALTER COLUMN TYPE drops and re-creates the constraints on the column
                    # under the same name (new oids, its index too, kept on disk when the
                    # change is binary-coercible): not a UNIQUE the revision added. A rewrite
                    # that comes with it is column-type-rewrite's.
                    continue
                using_index = st is not None and re.search(r"\bUSING\s+INDEX\b", st.sql, _FLAGS)
                if not using_index and con.index not in facts.before.rels:
                    self.add("unique-without-index", statement=st, table=table)

    def columns(self) -> None:
        facts = self.facts
        before, after = facts.before, facts.after
        new_pk_tables = {c.rel for c in facts.new_constraints if c.type == "p"}
        for (rel, num), col in after.cols.items():
            table = facts.tables.get(rel)
            if table is None:
                continue
            old = before.cols.get((rel, num))
            if old is None:
                if col.dropped:
                    continue
                if col.notnull and not col.hasdef and not col.generated and not col.identity:
                    st = self.statement_for(table, rf"\bADD\b.*{re.escape(col.name)}")
                    self.add("add-not-null-column", statement=st, table=table, detail=col.name)
                continue
            if old.dropped:
                continue
            if col.dropped:
                st = self.statement_for_column(table, old.name, r"\bDROP\b")
                self.add("drop-column", statement=st, table=table, detail=old.name)
            elif col.name != old.name:
                st = self.statement_for_column(table, old.name, r"\bRENAME\b")
                self.add(
                    "rename-column", statement=st, table=table, detail=f"{old.name} -> {col.name}"
                )
            elif (
                col.notnull
                and not old.notnull
                and rel not in new_pk_tables
                and not self._proven_not_null(rel, old.name)
            ):
                st = self.statement_for_column(table, col.name, r"\bSET\s+NOT\s+NULL\b")
                self.add("set-not-null", statement=st, table=table, detail=col.name)
        for (rel, num), old in before.cols.items():
            table = facts.tables.get(rel)
            if table is None or old.dropped or rel not in after.rels:
                continue
            if (rel, num) not in after.cols:
                st = self.statement_for_column(table, old.name, r"\bDROP\b")
                self.add("drop-column", statement=st, table=table, detail=old.name)

    def _proven_not_null(self, rel: int, column: str) -> bool:
        for con in self.facts.before.cons.values():
            if con.rel != rel or con.type != "c" or not con.validated or not con.definition:
                continue
            m = _NOT_NULL_CHECK.match(con.definition)
            if m and m["col"] == column:
                return True
        return False

    def tables(self) -> None:
        facts = self.facts
        for oid, table in facts.tables.items():
            now = facts.after.rels.get(oid)
            if now is None:
                st = self.statement_for(table, r"^DROP\s+(TABLE|MATERIALIZED\s+VIEW)\b")
                self.add("drop-table", statement=st, table=table)
            elif now.name != table.name or now.schema != table.schema:
                st = self.statement_for(table, r"\bRENAME\b|\bSET\s+SCHEMA\b")
                self.add("rename-table", statement=st, table=table, detail=f"-> {now.qualified}")

    def backfill(self) -> None:
        """DDL holding a write-blocking lock on a pre-existing table and a data change (UPDATE,
        DELETE, INSERT ... SELECT, MERGE) in the same transaction."""
        facts = self.facts
        segment: list[Statement] = []
        segments = [segment]
        for st in self.obs.statements:
            if st.autocommit:
                segment = []
                segments.append(segment)
            else:
                segment.append(st)
        for part in segments:
            ddl: list[tuple[int, Rel, Statement]] = []
            dml: list[tuple[int, Statement]] = []
            for index, st in enumerate(part):
                text = normalise(st.sql)
                if _DDL.match(text):
                    for table in facts.tables.values():
                        mode = facts.locks.get(table.oid)
                        if lock_rank(mode) >= WRITE_BLOCKING and _mentions(text, table.name):
                            ddl.append((index, table, st))
                elif (m := _DML.match(text)) is not None:
                    if m["i"] and not re.search(r"\bSELECT\b", m["irest"] or "", _FLAGS):
                        continue  # a few rows of VALUES: seed data, not a backfill
                    target = facts.table_named(m["u"] or m["d"] or m["i"] or m["m"])
                    if target is not None:
                        dml.append((index, st))
            if not ddl or not dml:
                continue
            first_ddl, table, ddl_st = ddl[0]
            last_dml, dml_st = dml[-1]
            if first_ddl < last_dml:
                self.add(
                    "ddl-with-backfill",
                    statement=dml_st,
                    table=table,
                    detail=f"{lock_label(facts.locks.get(table.oid))} on {table.qualified} "
                    "held through the data change",
                )
            else:
                self.add(
                    "ddl-with-backfill",
                    statement=ddl_st,
                    table=table,
                    severity="warning",
                    detail="the data change's row locks are held until the DDL commits",
                )

    def rewrites(self) -> None:
        facts = self.facts
        for oid in sorted(facts.rewritten):
            if oid in self.explained:
                continue
            table = facts.tables[oid]
            if self.statement_for(table, _TRUNCATE.pattern) is not None:
                continue  # TRUNCATE empties the table: a new file node, no rewrite
            st = self.statement_for(table, r"^(ALTER|CLUSTER|VACUUM|REFRESH)\b")
            self.add("table-rewrite", statement=st, table=table)

    def catalog_locks(self) -> None:
        facts = self.facts
        for oid, mode in sorted(facts.locks.items()):
            if oid in self.explained or lock_rank(mode) < WRITE_BLOCKING:
                continue
            table = facts.tables[oid]
            st = self.statement_for(table, _DDL.pattern)
            self.add("catalog-lock", statement=st, table=table, mode=mode)


# -- suppression -------------------------------------------------------------------------

_SUPPRESS = re.compile(
    r"#\s*migration-runner:\s*ignore\s+(?P<rules>[\w:,\s/-]+?)\s*(?:--\s*(?P<reason>.*?))?\s*$"
)


@dataclass(frozen=True)
class Suppression:
    rules: frozenset[str]
    reason: str
    line: int


def suppressions(source: str) -> list[Suppression]:
    """`# migration-runner: ignore RULE[,RULE] -- reason` comments in a revision file."""
    found = []
    for number, text in enumerate(source.splitlines(), start=1):
        m = _SUPPRESS.search(text)
        if m:
            rules = frozenset(r for r in re.split(r"[\s,]+", m["rules"]) if r)
            found.append(Suppression(rules, (m["reason"] or "").strip(), number))
    return found


def _statement_spans(source: str) -> list[tuple[int, int]]:
    """(first line, last line) of every statement in the file (innermost last)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.stmt) and not isinstance(node, ast.FunctionDef | ast.ClassDef)
    ]


def _lines_next_to(source: str, line: int) -> set[int]:
    """The lines whose suppression comment reaches the operation on `line`: the (innermost)
    statement holding it, and the line above that statement when it holds nothing but a
    comment (a comment trailing the statement above belongs to that statement)."""
    spans = [s for s in _statement_spans(source) if s[0] <= line <= s[1]]
    first, last = min(spans, key=lambda s: s[1] - s[0]) if spans else (line, line)
    near = set(range(first, last + 1))
    lines = source.splitlines()
    if first >= 2 and lines[first - 2].lstrip().startswith("#"):
        near.add(first - 1)
    return near


def apply_suppressions(findings: list[Finding], sources: dict[str, str]) -> None:
    """Mark each finding that a comment next to its operation suppresses: on its line, on
    a comment-only line above, or anywhere inside the (innermost) statement holding it. A
    finding that points at no line (graph checks) is suppressed by such a comment anywhere
    in the file."""
    for item in findings:
        source = sources.get(item.file or "")
        if source is None:
            continue
        marks = [s for s in suppressions(source) if item.rule in s.rules or "all" in s.rules]
        if not marks:
            continue
        if item.line is None:
            hit: Suppression | None = marks[0]
        else:
            near = _lines_next_to(source, item.line)
            hit = next((s for s in marks if s.line in near), None)
        if hit is not None:
            item.suppressed = True
            item.suppression_reason = hit.reason or "(no reason given)"


def at_or_above(severity: str, threshold: str) -> bool:
    if threshold == "never":
        return False
    return SEVERITIES.index(severity) >= SEVERITIES.index(threshold)
