"""What an undo knows about a schema: primary keys, relations and unique keys.

Relations come from the foreign keys the past database declares, plus those the
configuration names (undo.relations) for schemas that declare none. A column named like
`<table>_id` that is covered by neither is reported, because undo cannot follow a
relation nobody told it about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from crmops.config import UndoRelation


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
    primary_keys: dict[str, tuple[str, ...]]
    columns: dict[str, list[str]]
    relations: list[Relation]
    #: columns named like <table>_id that no relation covers: (table, column, probable parent)
    unlinked: list[tuple[str, str, str]]

    def children_of(self, table: str) -> list[Relation]:
        return [r for r in self.relations if r.parent == table]

    def parents_of(self, table: str) -> list[Relation]:
        return [r for r in self.relations if r.child == table]


def read_catalog(engine: sa.Engine, configured: list[UndoRelation]) -> Catalog:
    """The catalog of the database at engine, with the configured relations added."""
    inspector = sa.inspect(engine)
    tables = sorted(inspector.get_table_names())
    pks: dict[str, tuple[str, ...]] = {}
    columns: dict[str, list[str]] = {}
    relations: list[Relation] = []
    for table in tables:
        columns[table] = [c["name"] for c in inspector.get_columns(table)]
        pks[table] = tuple(inspector.get_pk_constraint(table).get("constrained_columns") or ())
        for fk in inspector.get_foreign_keys(table):
            if fk.get("referred_table") and fk.get("constrained_columns"):
                relations.append(Relation(table, tuple(fk["constrained_columns"]), fk["referred_table"],
                                          tuple(fk["referred_columns"])))
    known = {(r.child, r.columns) for r in relations}
    for rel in configured:
        parent, ref_column = rel.references.split(".")
        if (rel.table, (rel.column,)) in known:
            continue
        relations.append(Relation(rel.table, (rel.column,), parent, (ref_column,), "configuration"))
    return Catalog(tables, pks, columns, relations, _unlinked(tables, columns, pks, relations))


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
