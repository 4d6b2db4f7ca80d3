"""Which tables an undo's sandbox must hold: the ones its rows can reach, not the whole schema.

An undo reads the past only in the table it is asked about and in the tables relations
lead to from there; restoring the other hundreds of a CRM's tables into the sandbox was
most of its time. From the dump's own schema, before any restore (PostgreSQL: pg_restore's
listing and CREATE statements; MariaDB and MySQL: the staged dump's CREATE TABLE
statements): the tables joined to the asked one by foreign keys and undo.relations, in
either direction and transitively (a superset of what selection follows), plus, one step
out, the tables a `<name>_id` column ties to them by name alone, so the plan still warns
about those relations nobody declared (undo.catalog.probable_parent decides, as for the
warning itself). SQLite is restored whole: its restore is one file written, and a part
of it would be that file written and then copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from crmops.config import UndoRelation
from crmops.engines.postgres_toc import foreign_keys, table_columns
from crmops.services.restore import read_staged
from crmops.undo.catalog import probable_parent


def _tag(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else name


def sandbox_tables(toc: str, ddl: str, table: str, relations: Iterable[UndoRelation] = ()) -> list[str] | None:
    """schema.table of every table an undo of `table` may read, from a PostgreSQL dump's listing and
    schema; None when the dump has no such table (the whole restore then lets selection name the near misses)."""
    tables, pairs = foreign_keys(toc)
    return closure(tables, pairs, table_columns(ddl), table, relations, _tag)


def mysql_sandbox_tables(path: Path, table: str, relations: Iterable[UndoRelation] = ()) -> list[str] | None:
    """The same from a staged mysqldump file: its CREATE TABLE statements name columns and keys."""
    from crmops.engines.mysql_tables import dump_schema

    tables, pairs, columns = dump_schema(read_staged(path))
    return closure(tables, pairs, columns, table, relations, lambda name: name)


def closure(tables: list[str], pairs: list[tuple[str, str]], columns: dict[str, list[str]], table: str,
            relations: Iterable[UndoRelation], tag: Callable[[str], str]) -> list[str] | None:
    """The tables joined to `table` by foreign keys and relations, both ways and transitively, plus one
    step out the tables a `<name>_id` column ties to them by name; tag: a table's name without its schema."""
    by_tag: dict[str, list[str]] = {}
    for t in tables:
        by_tag.setdefault(tag(t), []).append(t)
    graph: dict[str, set[str]] = {t: set() for t in tables}
    for a, b in pairs:
        if a in graph and b in graph:
            graph[a].add(b)
            graph[b].add(a)
    for rel in relations:
        for a in by_tag.get(rel.table, []):
            for b in by_tag.get(rel.references.split(".", 1)[0], []):
                graph[a].add(b)
                graph[b].add(a)
    start = by_tag.get(table, []) + ([table] if table in graph and tag(table) != table else [])
    if not start:
        return None
    reach, todo = set(start), list(start)
    while todo:
        for other in graph[todo.pop()] - reach:
            reach.add(other)
            todo.append(other)
    names = sorted(by_tag)
    extra = set()
    for t, cols in columns.items():
        for column in cols:
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
