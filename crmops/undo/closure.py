"""Which tables an undo's sandbox must hold: the ones its rows can reach, not the whole schema.

An undo reads the past only in the table it is asked about and in the tables relations
lead to from there; restoring the other hundreds of a CRM's tables into the sandbox was
most of its time. From the dump's own listing and CREATE statements (PostgreSQL), before
any restore: the tables joined to the asked one by foreign keys and undo.relations, in
either direction and transitively (a superset of what selection follows), plus, one step
out, the tables a `<name>_id` column ties to them by name alone, so the plan still warns
about those relations nobody declared (undo.catalog.probable_parent decides, as for the
warning itself).
"""

from __future__ import annotations

from collections.abc import Iterable

from crmops.config import UndoRelation
from crmops.engines.postgres_toc import foreign_keys, table_columns
from crmops.undo.catalog import probable_parent


def _tag(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else name


def sandbox_tables(toc: str, ddl: str, table: str, relations: Iterable[UndoRelation] = ()) -> list[str] | None:
    """schema.table of every table an undo of `table` may read, from a dump's listing and schema;
    None when the dump has no such table (the whole restore then lets selection name the near misses)."""
    tables, pairs = foreign_keys(toc)
    by_tag: dict[str, list[str]] = {}
    for t in tables:
        by_tag.setdefault(_tag(t), []).append(t)
    graph: dict[str, set[str]] = {t: set() for t in tables}
    for a, b in pairs:
        graph[a].add(b)
        graph[b].add(a)
    for rel in relations:
        for a in by_tag.get(rel.table, []):
            for b in by_tag.get(rel.references.split(".", 1)[0], []):
                graph[a].add(b)
                graph[b].add(a)
    start = by_tag.get(table, []) + ([table] if table in graph else [])
    if not start:
        return None
    reach, todo = set(start), list(start)
    while todo:
        for other in graph[todo.pop()] - reach:
            reach.add(other)
            todo.append(other)
    names = sorted(by_tag)
    extra = set()
    for t, columns in table_columns(ddl).items():
        for column in columns:
            if not column.lower().endswith("_id"):
                continue
            parent = probable_parent(column[:-3], names)
            if parent is None:
                continue
            parents = set(by_tag.get(parent, []))
            if t in reach:
                extra |= parents  # a closure table's column names a parent outside
            elif parents & reach:
                extra.add(t)  # an outside table's column names a closure table
    return sorted(reach | (extra & set(graph)))
