"""Compare the rows to bring back with the live database, row by row by primary key.

Every row lands in one of: insert (deleted since), changed (changed since: which
columns, both values), identical (nothing to do); and a row that cannot be written is
a conflict (a unique key now taken by another live row, a parent that is gone, a table
that no longer fits). The live database is only ever queried with bound parameters.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crmops.config import Config
from crmops.undo.catalog import Catalog, insert_order, unique_keys
from crmops.undo.select import Key, Selection, Tables, batches, matching
from crmops.undo.source import PastState
from crmops.undo.wholerow import WholeRows, classify

#: --changed: what to do with a row that changed since the snapshot
KEEP_LIVE = "keep-live"
TAKE_SNAPSHOT = "take-snapshot"


def shown(value: Any) -> Any:
    """A value as JSON can carry it and a person can read it."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return f"<{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:12]}>"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict | list | str | int | float | bool) or value is None:
        return value
    return str(value)


@dataclass
class Conflict:
    table: str
    key: dict[str, Any]
    kind: str  # unique | missing-parent | schema
    detail: str
    live_key: dict[str, Any] | None = None


@dataclass
class TablePlan:
    table: str
    reasons: list[str]
    insert: int = 0
    changed: int = 0
    identical: int = 0
    conflicts: int = 0


@dataclass
class UndoPlan:
    source: dict[str, Any]
    target: str
    table: str
    where: str
    follow_fks: bool
    changed_policy: str
    tables: list[TablePlan] = field(default_factory=list)
    #: every row: {table, key, action, values (insert) | columns (changed)}
    rows: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    #: attachment files of restored rows: {table, key, path, status}
    attachments: list[dict[str, Any]] = field(default_factory=list)
    #: table.column whose values name the snapshot's files while undo.attachment_columns is unset
    unmapped_attachments: list[str] = field(default_factory=list)
    relations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: rows as read from the past, by table and key, for writing (not part of the document)
    raw: dict[str, dict[Key, dict[str, Any]]] = field(default_factory=dict, repr=False)
    #: per table: the keys to insert and to update (with their changed columns), in write order
    writes: list[tuple[str, str, Key, list[str]]] = field(default_factory=list, repr=False)
    primary_keys: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    catalog: Catalog | None = field(default=None, repr=False)

    def count(self, action: str) -> int:
        return sum(1 for r in self.rows if r["action"] == action)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "target": self.target, "table": self.table, "where": self.where,
            "follow_fks": self.follow_fks, "changed_policy": self.changed_policy,
            "summary": {"insert": self.count("insert"), "changed": self.count("changed"),
                        "identical": self.count("identical"), "conflicts": len(self.conflicts),
                        "attachments_to_restore": sum(1 for a in self.attachments if a["status"] == "restore")},
            "tables": [asdict(t) for t in self.tables],
            "rows": self.rows, "conflicts": [asdict(c) for c in self.conflicts],
            "attachments": self.attachments, "unmapped_attachments": self.unmapped_attachments,
            "relations": self.relations, "warnings": self.warnings,
        }


def natural(key: Key) -> tuple[Any, ...]:
    """Sort keys as a person expects (2 before 10), whatever their types."""
    return tuple((0, v, "") if isinstance(v, int | float | Decimal) and not isinstance(v, bool) else (1, 0, str(v))
                 for v in key)


def keyed(columns: tuple[str, ...], key: Key) -> dict[str, Any]:
    return {c: shown(v) for c, v in zip(columns, key, strict=True)}


def build(config: Config, past: PastState, live: sa.Connection, catalog: Catalog, sel: Selection, *,
          target: str, table: str, where: str, follow: bool, changed_policy: str,
          attachments_root: Path | None, manifest: dict[str, Any] | None) -> UndoPlan:
    """The plan for writing sel into the live database behind live."""
    plan = UndoPlan(source=past.describe(), target=target, table=table, where=where, follow_fks=follow,
                    changed_policy=changed_policy, raw=sel.rows,
                    primary_keys={t: catalog.identity(t) for t in catalog.tables}, catalog=catalog)
    live_tables = Tables(live)
    live_inspector = sa.inspect(live)
    order = insert_order(list(sel.rows), catalog.relations)
    for name in order:
        tp = TablePlan(name, sorted(sel.reasons.get(name, ())))
        plan.tables.append(tp)
        if name in catalog.whole_row:
            _compare_whole_rows(plan, tp, classify(live, live_inspector, live_tables, name, catalog.columns[name],
                                                   sel.rows[name]), catalog.identity(name), sel.rows[name])
        else:
            _compare_table(plan, tp, live, live_inspector, live_tables, catalog.primary_keys[name],
                           sel.rows[name], changed_policy)
    for child, key, text in sel.missing_parents:
        plan.conflicts.append(Conflict(child, keyed(catalog.identity(child), key), "missing-parent",
                                       text + " (follow foreign keys, i.e. drop --no-follow-fks, or restore it too)"))
        _table(plan, child).conflicts += 1
    for tp in plan.tables:  # once per table without a primary key that the undo really touches
        counts = f"{tp.insert} to re-insert, {tp.changed} changed, {tp.identical} identical"
        if tp.table in catalog.whole_row and tp.insert:
            plan.warnings.append(f"table {tp.table} has no primary key: its rows are matched whole, duplicates "
                                 f"counted ({tp.insert} to re-insert, {tp.identical} identical to live)")
        elif tp.table in catalog.unique_key and tp.insert + tp.changed:
            plan.warnings.append(f"table {tp.table} has no primary key: its rows are matched by unique index "
                                 f"{catalog.unique_key[tp.table]} ({', '.join(catalog.primary_keys[tp.table])}): "
                                 f"{counts}")
    for child, column, parent in catalog.unlinked:
        if child in sel.rows or parent in sel.rows:
            plan.warnings.append(f"{child}.{column} looks like a reference to {parent} but no foreign key or "
                                 f"undo.relations entry says so: its rows are not followed")
    _attachments(config, plan, attachments_root, manifest)
    return plan


def _compare_whole_rows(plan: UndoPlan, tp: TablePlan, found: WholeRows, identity: tuple[str, ...],
                        rows: dict[Key, dict[str, Any]]) -> None:
    """The plan's entries for a table without any key (crmops.undo.wholerow)."""
    if found.problem:
        for key in rows:
            plan.conflicts.append(Conflict(tp.table, keyed(identity, key), "schema", found.problem))
        tp.conflicts += len(rows)
        return
    inserts = set(found.insert)
    for key in sorted(rows, key=natural):  # the copy number ("#") last, as every other value
        entry: dict[str, Any] = {"table": tp.table, "key": keyed(identity, key)}
        plan.rows.append(entry)
        if key not in inserts:
            entry["action"] = "identical"
            tp.identical += 1
            continue
        entry["action"] = "insert"
        entry["values"] = {c: shown(v) for c, v in rows[key].items()}
        tp.insert += 1
        plan.writes.append((tp.table, "insert", key, list(rows[key])))
        if found.required:
            plan.conflicts.append(Conflict(tp.table, entry["key"], "schema", f"{tp.table}: live column(s) "
                                           f"{', '.join(found.required)} need a value the snapshot does not have"))
            tp.conflicts += 1
        for taken in found.taken.get(key, []):
            plan.conflicts.append(Conflict(tp.table, entry["key"], "unique", f"{taken} is taken by a live row"))
            tp.conflicts += 1


def _table(plan: UndoPlan, name: str) -> TablePlan:
    return next(t for t in plan.tables if t.table == name)


def _compare_table(plan: UndoPlan, tp: TablePlan, live: sa.Connection, inspector: Any, live_tables: Tables,
                   pk: tuple[str, ...], rows: dict[Key, dict[str, Any]], changed_policy: str) -> None:
    name = tp.table
    if not inspector.has_table(name):
        for key in rows:
            plan.conflicts.append(Conflict(name, keyed(pk, key), "schema",
                                           f"table {name} no longer exists in the live database"))
        tp.conflicts += len(rows)
        return
    t = live_tables[name]
    snap_cols = list(next(iter(rows.values())))
    gone = [c for c in snap_cols if c not in t.c]
    if gone:
        plan.warnings.append(f"{name}: column(s) {', '.join(gone)} no longer exist live; their snapshot values "
                             f"are not written")
    if any(c not in t.c for c in pk):
        for key in rows:
            plan.conflicts.append(Conflict(name, keyed(pk, key), "schema",
                                           f"{name}: the primary key ({', '.join(pk)}) is not in the live table"))
        tp.conflicts += len(rows)
        return
    common = [c for c in snap_cols if c in t.c]
    required = [c.name for c in t.columns if c.name not in snap_cols and not c.nullable
                and c.server_default is None and c.autoincrement is not True]
    live_rows: dict[Key, dict[str, Any]] = {}
    for batch in batches(sorted(rows, key=repr)):
        for r in live.execute(sa.select(t).where(matching(t, pk, batch))).mappings():
            live_rows[tuple(r[c] for c in pk)] = dict(r)
    uniques = [(n, cols) for n, cols in unique_keys(live, name, pk) if all(c in common for c in cols)]
    for key in sorted(rows, key=natural):
        row = rows[key]
        now = live_rows.get(key)
        entry: dict[str, Any] = {"table": name, "key": keyed(pk, key)}
        if now is None:
            entry["action"] = "insert"
            entry["values"] = {c: shown(row[c]) for c in common}
            tp.insert += 1
            if required:
                plan.conflicts.append(Conflict(name, entry["key"], "schema",
                                               f"{name}: live column(s) {', '.join(required)} need a value the "
                                               f"snapshot does not have"))
                tp.conflicts += 1
            write = True
            cols = common
        else:
            diff = [c for c in common if not _same(row[c], now[c])]
            if not diff:
                entry["action"] = "identical"
                tp.identical += 1
                plan.rows.append(entry)
                continue
            entry["action"] = "changed"
            entry["columns"] = [{"column": c, "live": shown(now[c]), "snapshot": shown(row[c])} for c in diff]
            tp.changed += 1
            write = changed_policy == TAKE_SNAPSHOT
            cols = diff
        plan.rows.append(entry)
        if not write:
            continue
        plan.writes.append((name, entry["action"], key, cols))
        for uname, ucols in uniques:
            if entry["action"] == "changed" and not set(ucols) & set(diff):
                continue
            values = [row[c] for c in ucols]
            if any(v is None for v in values):
                continue
            cond = sa.and_(*(t.c[c] == sa.bindparam(None, v, type_=t.c[c].type) for c, v in zip(ucols, values,
                                                                                               strict=True)))
            for other in live.execute(sa.select(*(t.c[c] for c in pk)).where(cond)):
                other_key = tuple(other)
                if other_key != key:
                    taken = ", ".join(f"{c}={shown(v)!r}" for c, v in zip(ucols, values, strict=True))
                    plan.conflicts.append(Conflict(
                        name, entry["key"], "unique",
                        f"{uname} ({taken}) is taken by live row {encode_key(keyed(pk, other_key))}",
                        keyed(pk, other_key)))
                    tp.conflicts += 1


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, memoryview):
        a = bytes(a)
    if isinstance(b, memoryview):
        b = bytes(b)
    return bool(a == b)


_SIMPLE_SELECT = re.compile(r"^\s*select\s+([A-Za-z_][\w.]*)\b.*?\bfrom\s+([A-Za-z_]\w*)\s*;?\s*$", re.I | re.S)


def attachment_columns(config: Config) -> list[tuple[str, str]]:
    """(table, column) naming attachment files: undo.attachment_columns, else verify's attachments_query."""
    if config.undo.attachment_columns:
        return [tuple(item.split(".", 1)) for item in config.undo.attachment_columns]  # type: ignore[misc]
    query = config.verify.checks.attachments_query
    m = _SIMPLE_SELECT.match(query or "")
    if not m:
        return []
    return [(m.group(2), m.group(1).split(".")[-1])]


def _relative(value: str, root: str | None) -> str:
    v = value.replace("\\", "/")
    if root and v.startswith(root.rstrip("/") + "/"):
        v = v[len(root.rstrip("/")) + 1:]
    return v.lstrip("./") if v.startswith("./") else v


def _attachments(config: Config, plan: UndoPlan, root: Path | None, manifest: dict[str, Any] | None) -> None:
    columns = attachment_columns(config)
    files = {f["path"]: f for f in (manifest or {}).get("files", []) if f.get("kind") == "file"}
    stored_root = (manifest or {}).get("attachments_root")
    if not columns:
        unmapped = _columns_naming_files(plan, files, stored_root)
        if unmapped:
            named = ", ".join(f"{t}.{c} ({n} file{'s' * (n != 1)})" for (t, c), n in unmapped.items())
            plan.unmapped_attachments = [f"{t}.{c}" for t, c in unmapped]
            plan.warnings.append(f"rows to write name attachment files in {named}, but undo.attachment_columns is "
                                 f"not set: the files are NOT restored and the rows will point at files that may "
                                 f"be missing; set undo.attachment_columns: [{', '.join(plan.unmapped_attachments)}] "
                                 f"in crmops.yaml")
        return
    for table, key, cols in ((w[0], w[2], w[3]) for w in plan.writes):
        for t, column in columns:
            if t != table or column not in cols:
                continue
            value = plan.raw[table][key].get(column)
            if not isinstance(value, str) or not value:
                continue
            rel = _relative(value, stored_root)
            meta = files.get(rel)
            entry = {"table": table, "key": keyed(plan.primary_keys[table], key), "path": rel}
            if meta is None:
                entry["status"] = "not-in-snapshot"
                plan.warnings.append(f"attachment {rel} of {table} {entry['key']} is not in the snapshot")
            elif root is None:
                entry["status"] = "no-folder"
            else:
                dest = root / rel
                if dest.is_symlink() or dest.exists():
                    same = dest.is_file() and _sha256(dest) == meta.get("sha256")
                    entry["status"] = "present" if same else "differs"
                    if not same:
                        plan.warnings.append(f"attachment {rel} exists with other content: it is left as it is")
                else:
                    entry["status"] = "restore"
            entry["size"] = meta.get("size") if meta else None
            plan.attachments.append(entry)
    if root is None and any(a["status"] == "no-folder" for a in plan.attachments):
        plan.warnings.append("attachments.path is not set: attachment files are not restored")


def _columns_naming_files(plan: UndoPlan, files: dict[str, Any], stored_root: str | None) -> dict[tuple[str, str], int]:
    """Columns of the rows to write whose values are paths of the snapshot's files: attachments nobody mapped."""
    found: dict[tuple[str, str], int] = {}
    if not files:
        return found
    for table, _action, key, cols in plan.writes:
        for column in cols:
            value = plan.raw[table][key].get(column)
            if isinstance(value, str) and value and _relative(value, stored_root) in files:
                found[(table, column)] = found.get((table, column), 0) + 1
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def encode_key(key: dict[str, Any]) -> str:
    """A key as one short text for a person: id=42, or a=1, b=x."""
    return ", ".join(f"{c}={v}" for c, v in key.items())

