"""What an undo knows about a schema: primary keys, relations and unique keys.

Relations come from the foreign keys the past database declares, plus those the
configuration names (undo.relations) for schemas that declare none. A column named like
`<table>_id` that is covered by neither is reported, because undo cannot follow a
relation nobody told it about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from crmops.config import UndoRelation

Key = tuple[Any, ...]


def hashable(value: Any) -> Any:
    """A value as a key can hold it: JSON documents as their canonical text, buffers as bytes."""
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


@dataclass(frozen=True)
class Relation:
    """child.columns reference parent.ref_columns (a foreign key, declared or configured)."""

    child: str
    columns: tuple[str, ...]
    parent: str
    ref_columns: tuple[str, ...]
    #: "catalog" or "configuration"
    origin: str = "catalog"

    def describe(self) -> str:
        return f"{self.child}({', '.join(self.columns)}) -> {self.parent}({', '.join(self.ref_columns)})"


@dataclass
class Catalog:
    tables: list[str]
    #: the key each table's rows are told apart by: its primary key, else a unique index on
    #: NOT NULL columns; empty for a table compared by whole rows (whole_row)
    primary_keys: dict[str, tuple[str, ...]]
    columns: dict[str, list[str]]
    relations: list[Relation]
    #: columns named like <table>_id that no relation covers: (table, column, probable parent)
    unlinked: list[tuple[str, str, str]]
    #: PostgreSQL partitions -> the partitioned table they belong to (which alone is in tables)
    partitions: dict[str, str] = field(default_factory=dict)
    #: tables without a primary key whose rows are told apart by a unique index: its name
    unique_key: dict[str, str] = field(default_factory=dict)
    #: tables with no key at all: a row is its whole tuple, duplicates counted
    whole_row: set[str] = field(default_factory=set)

    def identity(self, table: str) -> tuple[str, ...]:
        """The names a row's key is shown under: its key columns, or every column and "#" (which copy)."""
        if table in self.whole_row:
            return (*self.columns[table], "#")
        return self.primary_keys.get(table) or ()

    def keys(self, table: str, rows: list[dict[str, Any]]) -> list[Key]:
        """Each row's key. A whole row's key is its values and which copy of them it is (1, 2 ...):
        the same rows read twice get the same keys, and duplicates stay apart."""
        if table not in self.whole_row:
            pk = self.primary_keys[table]
            return [tuple(r[c] for c in pk) for r in rows]
        seen: dict[Key, int] = {}
        out = []
        for r in rows:
            values = tuple(hashable(r[c]) for c in self.columns[table])
            seen[values] = seen.get(values, 0) + 1
            out.append((*values, seen[values]))
        return out

    def children_of(self, table: str) -> list[Relation]:
        return [r for r in self.relations if r.parent == table]

    def parents_of(self, table: str) -> list[Relation]:
        return [r for r in self.relations if r.child == table]


def read_catalog(engine: sa.Engine, configured: list[UndoRelation]) -> Catalog:
    """The catalog of the database at engine, with the configured relations added."""
    inspector = sa.inspect(engine)
    partitions = partition_roots(engine)
    tables = sorted(t for t in inspector.get_table_names() if t not in partitions)
    pks: dict[str, tuple[str, ...]] = {}
    columns: dict[str, list[str]] = {}
    relations: list[Relation] = []
    unique_key: dict[str, str] = {}
    whole_row: set[str] = set()
    for table in tables:
        cols = inspector.get_columns(table)
        columns[table] = [c["name"] for c in cols]
        pks[table] = tuple(inspector.get_pk_constraint(table).get("constrained_columns") or ())
        if not pks[table]:
            not_null = {c["name"] for c in cols if not c.get("nullable", True)}
            usable = [(n, k) for n, k in unique_keys(engine, table, ()) if set(k) <= not_null]
            if usable:
                name, pks[table] = min(usable, key=lambda u: (len(u[1]), u[0]))
                unique_key[table] = name
            else:
                whole_row.add(table)
        for fk in inspector.get_foreign_keys(table):
            if fk.get("referred_table") and fk.get("constrained_columns"):
                relations.append(Relation(table, tuple(fk["constrained_columns"]),
                                          partitions.get(fk["referred_table"], fk["referred_table"]),
                                          tuple(fk["referred_columns"])))
    known = {(r.child, r.columns) for r in relations}
    for rel in configured:
        parent, ref_column = rel.references.split(".")
        if (partitions.get(rel.table, rel.table), (rel.column,)) in known:
            continue
        relations.append(Relation(partitions.get(rel.table, rel.table), (rel.column,),
                                  partitions.get(parent, parent), (ref_column,), "configuration"))
    return Catalog(tables, pks, columns, relations, _unlinked(tables, columns, pks, relations), partitions,
                   unique_key, whole_row)


def partition_roots(engine: sa.Engine) -> dict[str, str]:
    """PostgreSQL: each partition of the default schema -> the topmost partitioned table it belongs to.

    A partitioned table is one table to undo: its rows are read and written through it (the
    server routes each to its partition), never once per partition as well."""
    if engine.dialect.name != "postgresql":
        return {}
    with engine.connect() as conn:
        rows = conn.execute(sa.text("""SELECT c.relname, p.relname FROM pg_inherits i
                                       JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
                                       WHERE c.relispartition AND c.relnamespace = current_schema()::regnamespace
                                       AND p.relnamespace = c.relnamespace""")).all()
    parent = {str(c): str(p) for c, p in rows}
    out = {}
    for child, top in parent.items():
        while top in parent:
            top = parent[top]
        out[child] = top
    return out


def _unlinked(tables: list[str], columns: dict[str, list[str]], pks: dict[str, tuple[str, ...]],
              relations: list[Relation]) -> list[tuple[str, str, str]]:
    covered = {(r.child, c) for r in relations for c in r.columns}
    out = []
    for table in tables:
        for column in columns[table]:
            if not column.lower().endswith("_id") or (table, column) in covered or pks.get(table) == (column,):
                continue
            parent = probable_parent(column[:-3], tables)
            if parent is not None:
                out.append((table, column, parent))
    return out


def probable_parent(base: str, tables: list[str]) -> str | None:
    """customer -> customer, customers, crm_customer ...: the table a <base>_id column probably means."""
    base = base.lower()
    if not base:
        return None
    forms = {base, base + "s", base + "es", base[:-1] + "ies" if base.endswith("y") else base}
    for t in tables:
        name = t.lower()
        if name in forms or any(name.endswith("_" + f) for f in forms):
            return t
    return None


def unique_keys(engine_or_conn: Any, table: str, pk: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """(name, columns) of every unique constraint or unique index of table except the primary key."""
    inspector = sa.inspect(engine_or_conn)
    seen: dict[tuple[str, ...], str] = {}
    for uc in inspector.get_unique_constraints(table):
        cols = tuple(uc.get("column_names") or ())
        if cols and cols != pk:
            seen.setdefault(cols, uc.get("name") or "unique(" + ", ".join(cols) + ")")
    for ix in inspector.get_indexes(table):
        cols = tuple(c for c in ix.get("column_names") or () if c)
        if ix.get("unique") and cols and cols != pk and len(cols) == len(ix.get("column_names") or ()):
            seen.setdefault(cols, ix.get("name") or "unique(" + ", ".join(cols) + ")")
    return [(name, cols) for cols, name in seen.items()]


def insert_order(tables: list[str], relations: list[Relation]) -> list[str]:
    """Parents before children; tables in a cycle keep their given order, after the others."""
    wanted = set(tables)
    deps = {t: {r.parent for r in relations if r.child == t and r.parent in wanted and r.parent != t}
            for t in tables}
    out: list[str] = []
    while deps:
        ready = sorted(t for t, d in deps.items() if not d - set(out))
        if not ready:
            out += sorted(deps)
            break
        for t in ready:
            out.append(t)
            del deps[t]
    return out
