"""pg_restore listings: read a `pg_restore --list --verbose` table of contents and pick tables from it.

Shared by the whole-database restore (postgres.py) and the table-level paths
(postgres_tables.py), so neither has to import the other.
"""

from __future__ import annotations

from crmops.errors import DatabaseError

#: entry kinds in a pg_restore listing made of more than one word (the rest are one word)
_MULTIWORD = ("TABLE DATA", "TABLE ATTACH", "INDEX ATTACH", "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW",
              "SEQUENCE SET", "SEQUENCE OWNED BY", "FK CONSTRAINT", "DEFAULT ACL", "SHELL TYPE", "FOREIGN TABLE",
              "ROW SECURITY", "LARGE OBJECT", "PROCEDURAL LANGUAGE", "CHECK CONSTRAINT", "EVENT TRIGGER")
#: objects a chosen table may need that belong to no table (created alongside, never their rows)
_PREREQUISITES = {"SCHEMA", "TYPE", "SHELL TYPE", "DOMAIN", "EXTENSION", "FUNCTION", "COLLATION",
                  "PROCEDURAL LANGUAGE"}
_SETTINGS = {"ENCODING", "STDSTRINGS", "SEARCHPATH"}


def parse_toc(toc: str) -> tuple[dict[int, tuple[str, str, str]], dict[int, set[int]], dict[int, str]]:
    """A `pg_restore --list --verbose` listing: entries (kind, schema, tag), their dependencies, their lines."""
    entries: dict[int, tuple[str, str, str]] = {}  # id -> (kind, schema, tag)
    deps: dict[int, set[int]] = {}
    lines: dict[int, str] = {}
    last = None
    for line in toc.splitlines():
        if line.startswith(";\tdepends on:") and last is not None:
            deps[last] = {int(d) for d in line.split(":", 1)[1].split()}
            continue
        head, sep, rest = line.partition("; ")
        if line.startswith(";") or not sep or not head.isdigit():
            continue
        last = int(head)
        rest = rest.split(" ", 2)[2]  # after the catalog table oid and object oid
        kind = next((k for k in _MULTIWORD if rest.startswith(k + " ")), rest.split(" ", 1)[0])
        schema, _, tail = rest[len(kind) + 1:].partition(" ")
        entries[last] = (kind, schema, tail.rsplit(" ", 1)[0])
        lines[last] = line
        deps.setdefault(last, set())
    return entries, deps, lines


def select_tables(toc: str, tables: list[str]) -> str:
    """A pg_restore --use-list holding the chosen tables and what belongs to them.

    From `pg_restore --list --verbose` (which shows each entry's dependencies): the
    chosen tables; everything that depends only on them and on shared prerequisites
    (their rows, sequences and values, defaults, keys, indexes, triggers, comments,
    grants, views over them alone); and the schemas, types, extensions and functions
    they use. Foreign keys to tables not chosen are left out: their rows are not there.
    A name matches a table in any schema; "schema.table" matches one.
    """
    entries, deps, lines = parse_toc(toc)
    chosen: set[int] = set()
    for name in tables:
        hits = {i for i, (kind, schema, tag) in entries.items()
                if kind == "TABLE" and name in (tag, f"{schema}.{tag}")}
        if not hits:
            raise DatabaseError(f"table {name!r} is not in the snapshot")
        chosen |= hits
    selected, needed = set(chosen), set()
    changed = True
    while changed:
        changed = False
        for i in entries:
            if i in selected:
                continue
            d = deps[i] & entries.keys()  # unlisted ids are pg_dump's section boundaries
            if d & selected and all(x in selected or entries.get(x, ("",))[0] in _PREREQUISITES for x in d):
                selected.add(i)
                changed = True
        todo = [x for i in selected | needed for x in deps[i] if entries.get(x, ("",))[0] in _PREREQUISITES]
        for x in todo:
            if x not in needed:
                needed.add(x)
                changed = True
    keep = selected | needed | {i for i, e in entries.items() if e[0] in _SETTINGS}
    return "".join(lines[i] + "\n" for i in entries if i in keep)
