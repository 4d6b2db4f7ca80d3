"""Static checks of revision scripts for operations that hurt a live CRM.

Each finding names the revision, the line and why it hurts. Rules and their default
severities are in RULES; migrations.lint in the configuration may change a rule's
severity or turn it off. Operations on a table created earlier in the same revision
are never flagged: that table is new and empty, nobody else uses it yet.
"""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crmops.migrations import source

ERROR, WARNING, OFF = "error", "warning", "off"

#: rule -> (default severity, why)
RULES: dict[str, tuple[str, str]] = {
    "drop-table": (ERROR, "drops a table and its data; the running CRM version still reads it"),
    "drop-column": (ERROR, "drops a column and its data; the running CRM version still reads it"),
    "rename-table": (ERROR, "renames a table under the running CRM version, whose queries then fail"),
    "rename-column": (ERROR, "renames a column under the running CRM version, whose queries then fail"),
    "not-null-without-default": (ERROR, "adds a NOT NULL column without a server default: fails on a table with "
                                        "rows (or rewrites it), and the running CRM's INSERTs fail"),
    "set-not-null": (WARNING, "makes a column NOT NULL: scans the whole table under an exclusive lock and fails "
                              "if any row holds NULL (the pre-check counts them)"),
    "type-change": (ERROR, "changes a column's type: rewrites the whole table under an exclusive lock on "
                           "PostgreSQL and MySQL"),
    "index-not-concurrent": (WARNING, "creates an index without CONCURRENTLY on PostgreSQL: writes to the table "
                                      "block until the index is built; use postgresql_concurrently=True inside "
                                      "op.get_context().autocommit_block()"),
    "raw-sql-danger": (WARNING, "raw SQL that drops, renames or truncates; review it by hand"),
    "missing-downgrade": (ERROR, "no downgrade(): the revision cannot be rolled back except by a restore"),
    "empty-downgrade": (WARNING, "downgrade() does nothing: rolling this revision back needs the safety snapshot"),
    "syntax": (ERROR, "the script does not parse"),
}

_DANGEROUS_SQL = re.compile(r"\b(DROP\s+(TABLE|COLUMN)|RENAME\s+(TO|COLUMN)|TRUNCATE|ALTER\s+TABLE\s+\S+\s+RENAME)\b",
                            re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    revision: str
    path: str
    line: int
    severity: str
    rule: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.revision} {Path(self.path).name}:{self.line}: {self.severity}: {self.rule}: {self.why}"


def lint_script(revision: str, path: Path, *, engine: str, severities: dict[str, str] | None = None) -> list[Finding]:
    """Findings for one revision script's upgrade() (and whether it can be rolled back)."""
    levels = {rule: default for rule, (default, _) in RULES.items()}
    levels.update(severities or {})
    found: list[Finding] = []

    def flag(rule: str, line: int, detail: str = "") -> None:
        if levels.get(rule, ERROR) == OFF:
            return
        why = RULES[rule][1] + (f" ({detail})" if detail else "")
        found.append(Finding(revision, str(path), line, levels[rule], rule, why))

    try:
        rev = source.parse(path)
    except SyntaxError as e:
        flag("syntax", e.lineno or 1, e.msg)
        return found
    down = rev.functions.get("downgrade")
    if down is None:
        flag("missing-downgrade", 1)
    elif source.is_empty(down):
        flag("empty-downgrade", down.lineno)
    created: set[str] = set()
    for op in rev.ops("upgrade"):
        table = op.table or "?"
        if op.name == "create_table" and op.table:
            created.add(op.table)
            continue
        if op.table in created:
            continue
        if op.name == "drop_table":
            flag("drop-table", op.line, table)
        elif op.name == "drop_column":
            flag("drop-column", op.line, f"{table}.{op.literal('column_name') or '?'}")
        elif op.name == "rename_table":
            flag("rename-table", op.line, f"{table} -> {op.literal('new_table_name') or '?'}")
        elif op.name == "add_column":
            _add_column(op, flag)
        elif op.name == "alter_column":
            column = f"{table}.{op.literal('column_name') or '?'}"
            if op.has("new_column_name"):
                flag("rename-column", op.line, f"{column} -> {op.literal('new_column_name') or '?'}")
            if op.has("type_"):
                flag("type-change", op.line, column)
            if op.has("nullable") and op.literal("nullable") is False:
                flag("set-not-null", op.line, column)
        elif op.name == "create_index" and engine == "postgresql":
            if op.literal("postgresql_concurrently") is not True:
                flag("index-not-concurrent", op.line, f"{op.literal('index_name') or '?'} on {table}")
        elif op.name == "execute":
            sql = _strings(op.args.get("sqltext"))
            match = _DANGEROUS_SQL.search(sql)
            if match:
                flag("raw-sql-danger", op.line, match.group(0))
    return found


def _add_column(op: source.OpCall, flag: Any) -> None:
    node = op.args.get("column")
    col = source.column_call(node) if node is not None else None
    if col is None:
        return
    nullable = source.column_kw(col, "nullable")
    primary = source.column_kw(col, "primary_key")
    not_null = (nullable is not None and source.literal(nullable) is False) or (
        primary is not None and source.literal(primary) is True)
    if not_null and source.column_kw(col, "server_default") is None:
        name = source.literal(col.args[0]) if col.args else None
        flag("not-null-without-default", op.line, f"{op.table or '?'}.{name or '?'}")


def _strings(node: ast.expr | None) -> str:
    """Every string constant inside an expression (an f-string's literal parts too)."""
    if node is None:
        return ""
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def failing(findings: list[Finding], fail_on: str = ERROR) -> list[Finding]:
    """The findings that make lint fail: errors, or warnings too when fail_on is 'warning'."""
    levels = {ERROR} if fail_on == ERROR else {ERROR, WARNING}
    return [f for f in findings if f.severity in levels]
