"""Read a revision script's Alembic operations statically, with `ast`.

Pre-checks and lint both need "what will this revision do to which table" before it
runs. Alembic's operations are plain calls (``op.create_index("ix", "t", ["c"])``,
or ``batch.alter_column("c", nullable=False)`` inside ``with op.batch_alter_table("t")
as batch``), so their names, tables and literal arguments can be read from the source.
Arguments that are not literals are reported as unknown (None), never guessed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: positional parameters of the op.* form; the batch form has no table_name
PARAMS: dict[str, list[str]] = {
    "create_table": ["table_name"],
    "drop_table": ["table_name"],
    "rename_table": ["old_table_name", "new_table_name"],
    "add_column": ["table_name", "column"],
    "drop_column": ["table_name", "column_name"],
    "alter_column": ["table_name", "column_name"],
    "create_index": ["index_name", "table_name", "columns"],
    "drop_index": ["index_name", "table_name"],
    "create_unique_constraint": ["constraint_name", "table_name", "columns"],
    "create_check_constraint": ["constraint_name", "table_name", "condition"],
    "create_foreign_key": ["constraint_name", "source_table", "referent_table", "local_cols", "remote_cols"],
    "create_primary_key": ["constraint_name", "table_name", "columns"],
    "drop_constraint": ["constraint_name", "table_name", "type_"],
    "execute": ["sqltext"],
    "bulk_insert": ["table", "rows"],
}
_TABLE_PARAM = {"create_foreign_key": "source_table"}


@dataclass
class OpCall:
    """One Alembic operation in a function body, with its table resolved where it is a literal."""

    name: str
    line: int
    table: str | None
    batch: bool
    args: dict[str, ast.expr] = field(default_factory=dict)

    def literal(self, name: str, default: Any = None) -> Any:
        """The argument's literal value; default when absent, None when not a literal."""
        node = self.args.get(name)
        return default if node is None else literal(node)

    def has(self, name: str) -> bool:
        return name in self.args


@dataclass
class Revision:
    """A parsed revision script: its upgrade() and downgrade() operations."""

    path: Path
    tree: ast.Module
    functions: dict[str, ast.FunctionDef]

    def ops(self, function: str) -> list[OpCall]:
        func = self.functions.get(function)
        return _ops(func) if func is not None else []

    def uses_autocommit(self, function: str) -> bool:
        """True if the function opens op.get_context().autocommit_block() (e.g. CREATE INDEX CONCURRENTLY)."""
        func = self.functions.get(function)
        return func is not None and any(isinstance(n, ast.Attribute) and n.attr == "autocommit_block"
                                        for n in ast.walk(func))

    def writes_data(self, function: str) -> bool:
        """True if the function runs SQL or code of its own (op.execute, op.get_bind, bulk_insert)."""
        func = self.functions.get(function)
        if func is None:
            return False
        if any(op.name in ("execute", "bulk_insert") for op in _ops(func)):
            return True
        return any(isinstance(n, ast.Attribute) and n.attr == "get_bind" for n in ast.walk(func))


def parse(path: Path) -> Revision:
    """Parse a script (SyntaxError propagates, with its line)."""
    text = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    return Revision(Path(path), tree, functions)


def literal(node: ast.expr) -> Any:
    """A literal's value (strings, numbers, lists, True/False/None); None when it is not one."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def is_empty(func: ast.FunctionDef) -> bool:
    """A body of only a docstring, `pass` or `...`: the function does nothing."""
    for stmt in func.body:
        if isinstance(stmt, ast.Pass):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        return False
    return True


def _ops(func: ast.FunctionDef) -> list[OpCall]:
    batches: dict[str, str | None] = {}  # name bound by `with op.batch_alter_table(t) as name` -> t
    for node in ast.walk(func):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr == "batch_alter_table" and isinstance(item.optional_vars, ast.Name)):
                    table = call.args[0] if call.args else _kw(call, "table_name")
                    batches[item.optional_vars.id] = literal(table) if table is not None else None
    found: list[OpCall] = []
    for node in ast.walk(func):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = node.func.value
        name = node.func.attr
        if name not in PARAMS or not isinstance(receiver, ast.Name):
            continue
        if receiver.id == "op":
            batch, params, table = False, PARAMS[name], None
        elif receiver.id in batches:
            batch, table = True, batches[receiver.id]
            params = [p for p in PARAMS[name] if p != "table_name"]
        else:
            continue
        args: dict[str, ast.expr] = dict(zip(params, node.args, strict=False))
        if len(node.args) > len(params):
            args["*extra"] = ast.List(elts=list(node.args[len(params):]), ctx=ast.Load())
        args.update({k.arg: k.value for k in node.keywords if k.arg})
        if not batch:
            key = _TABLE_PARAM.get(name, "table_name")
            if key in args:
                value = literal(args[key])
                table = value if isinstance(value, str) else None
        found.append(OpCall(name, node.lineno, table, batch, args))
    found.sort(key=lambda o: o.line)
    return found


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def column_call(node: ast.expr) -> ast.Call | None:
    """The sa.Column(...) call an add_column passes, if written inline."""
    if isinstance(node, ast.Call):
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "Column") or (isinstance(f, ast.Name) and f.id == "Column"):
            return node
    return None


def column_kw(call: ast.Call, name: str) -> ast.expr | None:
    return _kw(call, name)
