"""Choose the rows to bring back: the named ones and everything that hangs on them.

The user's --where runs only in the past database (a sandbox), never on the live one.
From the chosen rows undo walks the relations down (rows that reference them, as far
as they go: contacts of the account, deals, activities of those ...) and up (rows they
reference that the live database no longer has), so the set can be written without
breaking a key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from crmops.errors import DatabaseError, UndoNothingSelected, UndoSelectionInvalid, db_said
from crmops.undo.catalog import Catalog, Relation

BATCH = 500

Key = tuple[Any, ...]


class Tables:
    """Reflected tables of one database, loaded on first use."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.meta = sa.MetaData()

    def __getitem__(self, name: str) -> sa.Table:
        if name not in self.meta.tables:
            sa.Table(name, self.meta, autoload_with=self.conn, resolve_fks=False)
        return self.meta.tables[name]


def batches(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def matching(table: sa.Table, columns: tuple[str, ...], values: list[Key]) -> sa.ColumnElement[bool]:
    """columns IN values, with bound parameters (a row value comparison for several columns)."""
    if len(columns) == 1:
        return table.c[columns[0]].in_([v[0] for v in values])
    return sa.tuple_(*(table.c[c] for c in columns)).in_(values)


@dataclass
class Selection:
    """Rows by table and primary key, with why each table is in the set."""

    rows: dict[str, dict[Key, dict[str, Any]]] = field(default_factory=dict)
    reasons: dict[str, set[str]] = field(default_factory=dict)
    #: relations to parents the live database lacks, not followed (--no-follow-fks): (table, key, text)
    missing_parents: list[tuple[str, Key, str]] = field(default_factory=list)

    def add(self, table: str, key: Key, row: dict[str, Any], reason: str) -> bool:
        rows = self.rows.setdefault(table, {})
        if key in rows:
            return False
        rows[key] = row
        self.reasons.setdefault(table, set()).add(reason)
        return True

    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())


def one_condition(where: str, engine: str) -> None:
    """--where must be one SQL condition: no second statement, no comment hiding the rest, no way out of the
    parentheses it is wrapped in. Quoted text ('...', "...", `...`) may hold anything; `#` starts a comment on
    MySQL/MariaDB only (PostgreSQL's #>> and # are operators)."""
    depth, i, quote = 0, 0, ""
    while i < len(where):
        c = where[i]
        if quote:
            if c == "\\" and where[i + 1:i + 2] == quote:
                # 'a\' ends there on PostgreSQL, E'a\'' and MySQL's do not: the servers disagree on where it ends
                why = "a backslash before a quote (servers read it differently)"
                break
            if c == quote:
                if where[i + 1:i + 2] == quote:  # a doubled quote stays inside
                    i += 1
                else:
                    quote = ""
        elif c in "'\"`":
            quote = c
        elif c == "$" and engine == "postgresql":
            why = "a '$' (a dollar-quoted string is not read here)"
            break
        elif c == ";":
            why = "a ';' (a second statement)"
            break
        elif where[i:i + 2] in ("--", "/*") or (c == "#" and engine == "mysql"):
            why = f"a comment ({where[i:i + 2] if c != '#' else '#'})"
            break
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                why = "a ')' closing more than it opened"
                break
        i += 1
    else:
        if quote:
            why = f"an unclosed {quote}"
        elif depth:
            why = "a '(' that is never closed"
        else:
            return
    raise UndoSelectionInvalid(f"--where must be one SQL condition on the table's columns; it holds {why}; "
                               f"nothing was changed", hint="e.g. --where \"id IN (42, 57)\"")


def check_where(conn: sa.Connection, table: str, where: str) -> None:
    """The condition against the live table before any sandbox starts: its columns exist, it parses.

    Runs in a READ ONLY transaction with LIMIT 0 (the server plans the query and reads no row), and
    is rolled back: a function in the condition can change nothing. A table the live database no
    longer has is left to the sandbox (the snapshot's copy of it).
    """
    one_condition(where, "mysql" if conn.dialect.name in ("mysql", "mariadb") else conn.dialect.name)
    name = table.removeprefix("public.")
    if not sa.inspect(conn).has_table(name):
        return
    t = Tables(conn)[name]
    kind = conn.dialect.name
    conn.rollback()  # reading the table's columns began a transaction: the read-only one must be new
    try:
        if kind == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        elif kind in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")  # the next (implicit) transaction
        elif kind == "sqlite":
            conn.exec_driver_sql("PRAGMA query_only = ON")
        conn.execute(sa.select(t).where(sa.text("(" + where.replace(":", "\\:") + ")")).limit(0)).all()
    except sa.exc.DBAPIError as e:
        conn.rollback()
        said = db_said(e.orig)
        message, hint = _where_problem(said, t, table)
        raise UndoSelectionInvalid(message, hint=hint) from None
    finally:
        if kind == "sqlite":
            conn.exec_driver_sql("PRAGMA query_only = OFF")
        conn.rollback()


def _where_problem(said: str, t: sa.Table, table: str) -> tuple[str, str]:
    """(message, hint) naming an unknown column with the closest of the table's, else the server's words."""
    import difflib
    import re

    m = re.search(r'column "?`?([\w.]+?)"?`? does not exist|Unknown column \'([^\']+)\'|no such column: ([\w.]+)',
                  said)
    if m:
        column = next(g for g in m.groups() if g).split(".")[-1]
        names = [c.name for c in t.columns]
        near = difflib.get_close_matches(column, names, n=1, cutoff=0.6)
        return (f"--where: table {table} has no column {column}; nothing was changed",
                f"did you mean {near[0]}?" if near else f"its columns: {', '.join(names[:12])}")
    return (f"--where does not work on table {table}: {said}; nothing was changed",
            "write an SQL condition on its columns, e.g. \"id IN (42, 57)\"")


def select(conn: sa.Connection, catalog: Catalog, table: str, where: str, *, follow: bool,
           live_present: Callable[[str, tuple[str, ...], list[Key]], set[Key]]) -> Selection:
    """The rows of table matching where in the past database, and (follow) all that hangs on them.

    live_present(table, columns, values) says which values the live database has.
    """
    source, table = table, catalog.partitions.get(table, table)  # a partition's rows are its table's
    if table not in catalog.tables:
        import difflib

        near = difflib.get_close_matches(table, catalog.tables, n=1, cutoff=0.6)
        listed = ", ".join(catalog.tables[:8]) + (" ..." if len(catalog.tables) > 8 else "")
        raise UndoSelectionInvalid(f"--table {table}: no such table in the snapshot",
                                   hint=f"did you mean {near[0]}?" if near else f"it has: {listed}")
    tables = Tables(conn)
    t = tables[source]
    # the condition is the user's text: its colons are not bind parameters (x::text, '10:30')
    stmt = sa.select(t).where(sa.text("(" + where.replace(":", "\\:") + ")"))
    try:
        found = conn.execute(stmt).mappings().all()
    except sa.exc.DBAPIError as e:
        conn.rollback()
        first = db_said(e.orig)
        raise UndoSelectionInvalid(f"--where does not work on table {source}: {first}",
                                   hint="write an SQL condition on its columns, e.g. \"id IN (42, 57)\"") from None
    if not found:
        raise UndoNothingSelected(f"no row of {source} in the snapshot matches --where {where}",
                                  hint="check the condition, or choose an older snapshot with --from")
    sel = Selection()
    frontier: dict[str, set[Key]] = {table: set()}
    rows = [dict(r) for r in found]
    for key, row in zip(catalog.keys(table, rows), rows, strict=True):
        if sel.add(table, key, row, "selected"):
            frontier[table].add(key)
    if follow:
        _follow_down(conn, catalog, tables, sel, frontier)
    _follow_up(conn, catalog, tables, sel, follow, live_present)
    return sel


def _values(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> set[Key]:
    out = set()
    for row in rows:
        v = tuple(row[c] for c in columns)
        if all(x is not None for x in v):
            out.add(v)
    return out


def _fetch(conn: sa.Connection, tables: Tables, table: str, columns: tuple[str, ...],
           values: Iterable[Key], rel: Relation | None = None) -> Iterator[dict[str, Any]]:
    """Rows of table whose columns hold one of values (and, for a polymorphic rel, its type value)."""
    t = tables[table]
    for batch in batches(sorted(values, key=repr)):
        stmt = sa.select(t).where(matching(t, columns, batch))
        if rel is not None and rel.type_column:
            stmt = stmt.where(t.c[rel.type_column] == rel.type_value)
        try:
            yield from (dict(r) for r in conn.execute(stmt).mappings())
        except sa.exc.DBAPIError as e:
            raise DatabaseError(f"reading {table} in the past database failed: {db_said(e.orig)}"
                                ) from None


def _follow_down(conn: sa.Connection, catalog: Catalog, tables: Tables, sel: Selection,
                 frontier: dict[str, set[Key]]) -> None:
    while frontier:
        nxt: dict[str, set[Key]] = {}
        for parent, keys in frontier.items():
            parent_rows = [sel.rows[parent][k] for k in keys]
            for rel in catalog.children_of(parent):
                values = _values(parent_rows, rel.ref_columns)
                if not values:
                    continue
                rows = list(_fetch(conn, tables, rel.child, rel.columns, values, rel))
                for key, row in zip(catalog.keys(rel.child, rows), rows, strict=True):
                    if sel.add(rel.child, key, row, f"references {parent}"):
                        nxt.setdefault(rel.child, set()).add(key)
        frontier = nxt


def _follow_up(conn: sa.Connection, catalog: Catalog, tables: Tables, sel: Selection, follow: bool,
               live_present: Callable[[str, tuple[str, ...], list[Key]], set[Key]]) -> None:
    pending = {t: set(rows) for t, rows in sel.rows.items()}
    while pending:
        nxt: dict[str, set[Key]] = {}
        for child, keys in pending.items():
            child_rows = {k: sel.rows[child][k] for k in keys}
            for rel in catalog.parents_of(child):
                wanted = _values([r for r in child_rows.values() if rel.holds_for(r)], rel.columns)
                have = _values(sel.rows.get(rel.parent, {}).values(), rel.ref_columns)
                wanted -= have
                if not wanted:
                    continue
                present = live_present(rel.parent, rel.ref_columns, sorted(wanted, key=repr))
                missing = wanted - present
                if not missing:
                    continue
                if not follow:
                    for k, row in child_rows.items():
                        v = tuple(row[c] for c in rel.columns)
                        if v in missing and rel.holds_for(row):
                            sel.missing_parents.append((child, k, f"needs {rel.parent} "
                                                        f"{_pairs(rel.ref_columns, v)}, missing from live"))
                    continue
                rows = list(_fetch(conn, tables, rel.parent, rel.ref_columns, missing))
                for key, row in zip(catalog.keys(rel.parent, rows), rows, strict=True):
                    if sel.add(rel.parent, key, row, f"referenced by {child}, missing from live"):
                        nxt.setdefault(rel.parent, set()).add(key)
        pending = nxt


def _pairs(columns: tuple[str, ...], values: Key) -> str:
    return ", ".join(f"{c}={v!r}" for c, v in zip(columns, values, strict=True))


def relation_texts(relations: list[Relation], tables: set[str]) -> list[str]:
    return [r.describe() + (" (configured)" if r.origin == "configuration" else "")
            for r in relations if r.child in tables or r.parent in tables]
