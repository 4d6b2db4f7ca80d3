"""Data pre-checks derived from the pending revisions themselves.

A unique constraint or a NOT NULL column added to a table whose rows already break it
fails in the middle of a migration; on MySQL/MariaDB that leaves the revision half
applied. So before a revision adds one, the violating rows are counted with SQL and
the run is refused, naming the offending keys (e.g. the duplicate e-mails).

A check runs up front, before the safety snapshot and before anything changes, when no
earlier revision of the same run can change its table; otherwise it runs just before
its revision, against the data as the earlier revisions left it (e.g. after a data
step merged duplicates), inside the run's transaction where the engine has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from crmops.errors import MigrationRefused
from crmops.migrations import source
from crmops.migrations.scripts import Step

SAMPLES = 10


@dataclass(frozen=True)
class Check:
    revision: str
    line: int
    kind: str  # "unique" | "not-null"
    table: str
    columns: tuple[str, ...]

    def describe(self) -> str:
        what = f"unique ({', '.join(self.columns)})" if self.kind == "unique" else f"NOT NULL on {self.columns[0]}"
        return f"revision {self.revision} (line {self.line}) adds {what} on {self.table}"


@dataclass
class Violation:
    check: Check
    count: int
    samples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        shown = ", ".join(self.samples) + (f" (+{self.count - len(self.samples)} more)"
                                           if self.count > len(self.samples) else "")
        if self.check.kind == "unique":
            return f"{self.check.describe()}, but {self.count} value(s) occur more than once: {shown}"
        return f"{self.check.describe()}, but {self.count} row(s) hold NULL there (keys: {shown})"

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.check.revision, "line": self.check.line, "kind": self.check.kind,
                "table": self.check.table, "columns": list(self.check.columns), "count": self.count,
                "samples": self.samples}


@dataclass
class CheckPlan:
    """Which checks run before anything changes, and which just before their revision."""

    upfront: list[Check] = field(default_factory=list)
    deferred: dict[str, list[Check]] = field(default_factory=dict)


def checks_of(step: Step) -> list[Check]:
    """The unique / NOT NULL additions a step makes to tables that already exist before it."""
    try:
        rev = source.parse(step.path)
    except SyntaxError:
        return []  # lint reports it; Alembic fails on it before any statement
    ops = rev.ops(step.function)
    created = {o.table for o in ops if o.name == "create_table" and o.table}
    added: set[tuple[str, str]] = set()
    for o in ops:
        if o.name == "add_column" and o.table:
            col = source.column_call(o.args.get("column")) if o.args.get("column") is not None else None
            name = source.literal(col.args[0]) if col is not None and col.args else None
            if isinstance(name, str):
                added.add((o.table, name))
    checks: list[Check] = []
    for o in ops:
        if not o.table or o.table in created:
            continue
        if o.name == "create_unique_constraint" or (o.name == "create_index" and o.literal("unique") is True):
            cols = o.literal("columns")
            if (isinstance(cols, list | tuple) and cols and all(isinstance(c, str) for c in cols)
                    and not any((o.table, c) in added for c in cols)):
                checks.append(Check(step.revision, o.line, "unique", o.table, tuple(cols)))
        elif o.name == "alter_column" and o.literal("nullable") is False and o.has("nullable"):
            col = o.literal("column_name")
            if isinstance(col, str) and (o.table, col) not in added:
                checks.append(Check(step.revision, o.line, "not-null", o.table, (col,)))
    return checks


def plan(steps: list[Step]) -> CheckPlan:
    """Split the run's checks into up-front and just-in-time ones (see the module docstring)."""
    result = CheckPlan()
    touched: set[str] = set()
    anything = False  # an earlier step runs SQL of its own: it may change any table
    for step in steps:
        for check in checks_of(step):
            if anything or check.table in touched:
                result.deferred.setdefault(step.revision, []).append(check)
            else:
                result.upfront.append(check)
        try:
            rev = source.parse(step.path)
        except SyntaxError:
            anything = True
            continue
        anything = anything or rev.writes_data(step.function)
        touched.update(o.table for o in rev.ops(step.function) if o.table)
        if any(o.table is None and o.name != "execute" for o in rev.ops(step.function)):
            anything = True
    return result


def run(checks: list[Check], conn: Connection) -> list[Violation]:
    """Count the rows that would break each check; checks on tables or columns not there yet are skipped."""
    inspector = sa.inspect(conn)
    violations = []
    for check in checks:
        if not inspector.has_table(check.table):
            continue
        columns = {c["name"] for c in inspector.get_columns(check.table)}
        if not set(check.columns) <= columns:
            continue
        found = _unique(check, conn) if check.kind == "unique" else _not_null(check, conn, inspector)
        if found is not None:
            violations.append(found)
    return violations


def refusal(violations: list[Violation], *, changed: str) -> MigrationRefused:
    """One error line for the violations; changed says what state the database was left in."""
    text = "; ".join(v.describe() for v in violations)
    error = MigrationRefused(text, hint=f"fix or merge these rows, then run again; {changed}")
    error.violations = [v.to_dict() for v in violations]  # type: ignore[attr-defined]
    return error


def _q(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _unique(check: Check, conn: Connection) -> Violation | None:
    cols = ", ".join(_q(conn, c) for c in check.columns)
    present = " AND ".join(f"{_q(conn, c)} IS NOT NULL" for c in check.columns)
    groups = f"SELECT {cols}, COUNT(*) AS n FROM {_q(conn, check.table)} WHERE {present} GROUP BY {cols} " \
             "HAVING COUNT(*) > 1"
    count = conn.execute(sa.text(f"SELECT COUNT(*) FROM ({groups}) dup")).scalar_one()
    if not count:
        return None
    rows = conn.execute(sa.text(f"{groups} ORDER BY n DESC, {cols} LIMIT {SAMPLES}")).all()
    samples = [f"{', '.join(repr(v) for v in row[:-1])} ({row[-1]} rows)" for row in rows]
    return Violation(check, int(count), samples)


def _not_null(check: Check, conn: Connection, inspector: Any) -> Violation | None:
    table, col = _q(conn, check.table), _q(conn, check.columns[0])
    count = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE {col} IS NULL")).scalar_one()
    if not count:
        return None
    pk = inspector.get_pk_constraint(check.table).get("constrained_columns") or []
    samples: list[str] = []
    if pk:
        keys = ", ".join(_q(conn, c) for c in pk)
        rows = conn.execute(sa.text(f"SELECT {keys} FROM {table} WHERE {col} IS NULL ORDER BY {keys} "
                                    f"LIMIT {SAMPLES}")).all()
        samples = [", ".join(f"{c}={v!r}" for c, v in zip(pk, row, strict=True)) for row in rows]
    return Violation(check, int(count), samples)
