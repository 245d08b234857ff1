"""The rules on hand-made observations (no database): a constraint that ALTER COLUMN TYPE
re-created is not one the revision added, every finding points at the statement behind it,
and a suppression comment reaches only the operation it sits next to."""

from __future__ import annotations

import json
from typing import Any

from runner.lint_rules import (
    RevisionObservation,
    Snapshot,
    Statement,
    apply_suppressions,
    finding,
    judge,
)

TABLE = 20000


def _observation(
    before_cons: list[list[Any]],
    after_cons: list[list[Any]],
    statements: list[Statement],
    index_after: int,
) -> RevisionObservation:
    """Table `customers` (email, with a unique index 20001) before; the given constraints and
    the unique index under oid `index_after` (same file node) inside the transaction."""

    def snapshot(index: int, cons: list[list[Any]], locked: bool) -> Snapshot:
        data = {
            "rels": [
                [TABLE, "r", "public", "customers", TABLE, None],
                [index, "i", "public", "customers_email_key", 20001, TABLE],
            ],
            "cols": [[TABLE, 1, "email", False, False, False, False, False]],
            "cons": cons,
            "locks": [[TABLE, "AccessExclusiveLock"]] if locked else [],
        }
        return Snapshot.from_json(json.dumps(data))

    return RevisionObservation(
        "r1",
        None,
        "",
        "f.py",
        statements=statements,
        before=snapshot(20001, before_cons, False),
        after=snapshot(index_after, after_cons, True),
    )


def _unique(oid: int, name: str, index: int) -> list[Any]:
    return [oid, TABLE, name, "u", True, index, 0, None]


def test_a_unique_constraint_re_created_by_a_type_change_is_not_added() -> None:
    """varchar -> text: the constraint and its index come back under new oids and the same
    name; the finding is the brief lock, on the ALTER statement."""
    obs = _observation(
        [_unique(20002, "customers_email_key", 20001)],
        [_unique(20004, "customers_email_key", 20003)],
        [Statement("ALTER TABLE customers ALTER COLUMN email TYPE TEXT", 7)],
        index_after=20003,
    )
    found = [(f.rule, f.statement, f.line) for f in judge(obs)]
    assert found == [("catalog-lock", "ALTER TABLE customers ALTER COLUMN email TYPE TEXT", 7)]


def test_a_unique_constraint_dropped_and_added_again_by_name_is_added() -> None:
    """Same name, new constraint, but a statement adds it: the index is built under ACCESS
    EXCLUSIVE."""
    obs = _observation(
        [_unique(20002, "customers_email_key", 20001)],
        [_unique(20004, "customers_email_key", 20003)],
        [
            Statement("ALTER TABLE customers DROP CONSTRAINT customers_email_key", 7),
            Statement("ALTER TABLE customers ADD CONSTRAINT customers_email_key UNIQUE (email)", 8),
        ],
        index_after=20003,
    )
    found = [(f.rule, f.line) for f in judge(obs) if f.severity == "error"]
    assert found == [("unique-without-index", 8)]


def test_a_finding_whose_pattern_misses_still_points_at_a_statement() -> None:
    """A UNIQUE added by a statement the rule's pattern does not read (a function here) is
    still reported on the statement that ran, not on no line at all."""
    obs = _observation(
        [],
        [_unique(20004, "customers_email_key", 20003)],
        [Statement("SELECT add_the_constraints()", 9)],
        index_after=20003,
    )
    (item,) = judge(obs)
    assert (item.rule, item.statement, item.line) == (
        "unique-without-index",
        "SELECT add_the_constraints()",
        9,
    )


def test_each_dropped_column_points_at_the_statement_that_dropped_it() -> None:
    """Two columns dropped from one table by two statements: two findings on two lines (a
    suppression on one line must not silence the other)."""
    cols = [[TABLE, n, name, False, False, False, False, False] for n, name in ((1, "b"), (2, "c"))]
    rels = [[TABLE, "r", "public", "orders", TABLE, None]]
    before = Snapshot.from_json(json.dumps({"rels": rels, "cols": cols}))
    after = Snapshot.from_json(
        json.dumps(
            {
                "rels": rels,
                "cols": [[*col[:5], True, *col[6:]] for col in cols],
                "locks": [[TABLE, "AccessExclusiveLock"]],
            }
        )
    )
    statements = [
        Statement("ALTER TABLE orders DROP COLUMN b", 5),
        Statement("ALTER TABLE orders DROP COLUMN c", 6),
    ]
    obs = RevisionObservation(
        "r1", None, "", "f.py", statements=statements, before=before, after=after
    )
    found = [(f.rule, f.line, f.message[-3:]) for f in judge(obs)]
    assert found == [("drop-column", 5, "(b)"), ("drop-column", 6, "(c)")]


def _suppressed(source: str, *lines: int) -> list[tuple[int, str | None]]:
    """(line, reason) of each drop-column finding on `lines` that `source` suppresses."""
    items = [finding("drop-column", None, statement=Statement("ALTER TABLE", n)) for n in lines]
    for item in items:
        item.file = "f.py"
    apply_suppressions(items, {"f.py": source})
    return [(n, i.suppression_reason) for n, i in zip(lines, items, strict=True) if i.suppressed]


def test_a_trailing_suppression_comment_covers_only_its_own_statement() -> None:
    """The comment trails the statement above: it is that statement's, not the next one's."""
    source = (
        "def upgrade():\n"
        '    op.drop_column("orders", "status")  # migration-runner: ignore drop-column -- '
        "unused since 4.2\n"
        '    op.drop_column("customers", "full_name")\n'
    )
    assert _suppressed(source, 2, 3) == [(2, "unused since 4.2")]


def test_a_suppression_comment_alone_on_the_line_above_covers_the_next_statement() -> None:
    source = (
        "def upgrade():\n"
        "    # migration-runner: ignore drop-column -- unused since 4.2\n"
        "    op.drop_column(\n"
        '        "orders", "status"\n'
        "    )\n"
        '    op.drop_column("customers", "full_name")\n'
    )
    assert _suppressed(source, 4, 6) == [(4, "unused since 4.2")]
