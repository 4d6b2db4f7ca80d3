"""Write an undo plan into the live database: one transaction, parents first, counters forward.

Inserts go in foreign-key order (rows of a self-referencing table parents first), then
the updates --changed take-snapshot asked for. Sequences and AUTO_INCREMENT counters
never move backwards: PostgreSQL's are raised to the highest id now in the table,
MariaDB's and SQLite's are checked after the commit. Attachment files are written after
the commit, each one linked into place only if no file holds that name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crmops.errors import DatabaseError, IntegrityError, UndoConflict, db_said
from crmops.repository import Repository
from crmops.undo.catalog import Catalog
from crmops.undo.plan import UndoPlan, keyed
from crmops.undo.select import Key, Tables, matching


@dataclass
class Written:
    #: table -> keys inserted, in the order written
    inserted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: table -> [{key, columns}]
    updated: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: counters before and after: {name, before, after, action}
    counters: list[dict[str, Any]] = field(default_factory=list)
    #: attachment files: {path, status: restored | present | differs | failed}
    attachments: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> int:
        return sum(len(v) for v in self.inserted.values()) + sum(len(v) for v in self.updated.values())


def write(engine: sa.Engine, plan: UndoPlan) -> Written:
    """Apply plan.writes in one transaction; nothing is written if any statement fails."""
    out = Written()
    tables_written = sorted({w[0] for w in plan.writes})
    before = counters(engine, tables_written)
    inserts: dict[str, list[tuple[Key, list[str]]]] = {}
    updates: list[tuple[str, Key, list[str]]] = []
    order: list[str] = []
    for table, action, key, cols in plan.writes:
        if action == "insert":
            if table not in inserts:
                order.append(table)
            inserts.setdefault(table, []).append((key, cols))
        else:
            updates.append((table, key, cols))
    try:
        with engine.begin() as conn:
            live = Tables(conn)
            for table in order:
                t = live[table]
                pk = plan.primary_keys[table]
                items = _parents_first(table, inserts[table], plan.raw[table], plan.catalog)
                rows = [{c: plan.raw[table][key][c] for c in cols} for key, cols in items]
                _insert_all(conn, t, rows)
                out.inserted[table] = [keyed(pk, key) for key, _ in items]
            for table, key, cols in updates:
                t = live[table]
                pk = plan.primary_keys[table]
                conn.execute(t.update().where(matching(t, pk, [key])).values(
                    {c: plan.raw[table][key][c] for c in cols}))
                out.updated.setdefault(table, []).append({"key": keyed(pk, key), "columns": cols})
            if engine.dialect.name == "postgresql":
                out.counters = _raise_pg_sequences(conn, tables_written, before)
    except sa.exc.IntegrityError as e:
        raise UndoConflict(f"the live database refused the undo, nothing was written: "
                           f"{db_said(e.orig)}",
                           hint="the plan was checked against the live rows it names; a dry run (without --apply) "
                                "checks again now. If it shows no conflict, the database holds a rule the plan "
                                "does not check (a CHECK, a trigger, a key across partitions): restore the table "
                                "beside it with restore --tables T --as and copy the rows by hand") from None
    except sa.exc.DBAPIError as e:
        first = db_said(e.orig)
        raise DatabaseError(f"writing the undo failed, nothing was written: {first}") from None
    if engine.dialect.name != "postgresql":
        out.counters = _check_counters(engine, tables_written, before)
    return out


def _insert_all(conn: sa.Connection, t: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows, and fail (rolling everything back) if the database kept fewer than it was given:
    a trigger that returns NULL, or a rule that does nothing, drops a row without an error."""
    if conn.dialect.name == "postgresql":  # its executemany reports no row count: RETURNING counts them
        kept = len(conn.execute(t.insert().returning(sa.literal(1)), rows).all())
    else:
        kept = conn.execute(t.insert(), rows).rowcount
    if kept is not None and 0 <= kept < len(rows):
        raise DatabaseError(f"writing the undo failed, nothing was written: {t.name} kept {kept} of the "
                            f"{len(rows)} rows inserted (a trigger or rule of the live database drops rows)")


def _parents_first(table: str, items: list[tuple[Key, list[str]]], rows: dict[Key, dict[str, Any]],
                   catalog: Catalog | None) -> list[tuple[Key, list[str]]]:
    """Rows of a self-referencing table ordered so a row's parent is written before it."""
    selfs = [r for r in (catalog.relations if catalog else []) if r.child == table and r.parent == table]
    if not selfs:
        return items
    pending = list(items)
    done: list[tuple[Key, list[str]]] = []
    waiting_values = {rel: {tuple(rows[k][c] for c in rel.ref_columns) for k, _ in items} for rel in selfs}
    written: dict[Any, set[Key]] = {rel: set() for rel in selfs}
    while pending:
        progressed = False
        for item in list(pending):
            row = rows[item[0]]
            ready = True
            for rel in selfs:
                v = tuple(row[c] for c in rel.columns)
                if v in waiting_values[rel] and v not in written[rel] and v != tuple(row[c] for c in rel.ref_columns):
                    ready = False
            if ready:
                done.append(item)
                pending.remove(item)
                for rel in selfs:
                    written[rel].add(tuple(row[c] for c in rel.ref_columns))
                progressed = True
        if not progressed:  # a cycle: leave the rest to the database's verdict
            done += pending
            break
    return done


def counters(engine: sa.Engine, tables: list[str]) -> dict[str, int]:
    """Sequence / AUTO_INCREMENT / sqlite_sequence values of tables, by a readable name."""
    out: dict[str, int] = {}
    if not tables:
        return out
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            for _table, _column, seq in _pg_sequences(conn, tables):
                last, called = conn.execute(sa.text(f"SELECT last_value, is_called FROM {seq}")).one()
                out[seq] = int(last) if called else int(last) - 1
        elif engine.dialect.name == "mysql":
            for name, value in conn.execute(sa.text(
                    "SELECT table_name, auto_increment FROM information_schema.tables "
                    "WHERE table_schema = DATABASE() AND table_name IN :t AND auto_increment IS NOT NULL"
                    ).bindparams(sa.bindparam("t", expanding=True)), {"t": tables}):
                out[f"{name}.AUTO_INCREMENT"] = int(value)
        else:
            if sa.inspect(conn).has_table("sqlite_sequence"):
                for name, value in conn.execute(sa.text("SELECT name, seq FROM sqlite_sequence WHERE name IN :t")
                                                .bindparams(sa.bindparam("t", expanding=True)), {"t": tables}):
                    out[f"{name} (sqlite_sequence)"] = int(value)
    return out


def _pg_sequences(conn: sa.Connection, tables: list[str]) -> list[tuple[str, str, str]]:
    """(table, column, sequence) for serial and identity columns of tables."""
    out = []
    for table in tables:
        for col in sa.inspect(conn).get_columns(table):
            seq = conn.execute(sa.text("SELECT pg_get_serial_sequence(quote_ident(:t), :c)"),
                               {"t": table, "c": col["name"]}).scalar()
            if seq:
                out.append((table, col["name"], seq))
    return out


def _raise_pg_sequences(conn: sa.Connection, tables: list[str], before: dict[str, int]) -> list[dict[str, Any]]:
    """Move each sequence to at least the highest value in its column, never below where it was."""
    out = []
    quote = conn.dialect.identifier_preparer.quote
    for table, column, seq in _pg_sequences(conn, tables):
        top = conn.execute(sa.text(f"SELECT MAX({quote(column)}) FROM {quote(table)}")).scalar()
        was = before.get(seq)
        last, called = conn.execute(sa.text(f"SELECT last_value, is_called FROM {seq}")).one()
        current = int(last) if called else int(last) - 1
        if top is not None and int(top) > current:
            conn.execute(sa.text("SELECT setval(:s, :v, true)"), {"s": seq, "v": int(top)})
            out.append({"name": seq, "before": was, "after": int(top), "action": "raised to the highest id"})
        else:
            out.append({"name": seq, "before": was, "after": current, "action": "unchanged"})
    return out


def _check_counters(engine: sa.Engine, tables: list[str], before: dict[str, int]) -> list[dict[str, Any]]:
    after = counters(engine, tables)
    out = []
    for name, was in sorted(before.items()):
        now = after.get(name, was)
        action = "unchanged" if now == was else "advanced" if now > was else "restored"
        if now < was and engine.dialect.name == "mysql":  # never seen; made good all the same
            table = name.split(".", 1)[0]
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {conn.dialect.identifier_preparer.quote(table)} "
                                     f"AUTO_INCREMENT = {int(was)}"))
            now = was
        out.append({"name": name, "before": was, "after": now, "action": action})
    return out


def restore_attachments(repo: Repository, plan: UndoPlan, root: Path, written: Written) -> None:
    """Bring back the planned files; an existing file is never replaced."""
    if not plan.source.get("snapshot_id") or not plan.attachments:
        return
    manifest = repo.manifest(plan.source["snapshot_id"])
    files = {f["path"]: f for f in manifest.get("files", []) if f.get("kind") == "file"}
    for item in plan.attachments:
        if item["status"] != "restore":
            written.attachments.append({"path": item["path"], "status": item["status"]})
            continue
        meta = files[item["path"]]
        written.attachments.append({"path": item["path"], "status": _write_new(repo, root, meta)})


def _write_new(repo: Repository, root: Path, meta: dict[str, Any]) -> str:
    dest = (root / meta["path"]).resolve()
    if not str(dest).startswith(str(root.resolve()) + os.sep):
        return "refused (outside the attachments folder)"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.crmops-undo-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with open(tmp, "xb") as f:
            for data in repo.read_chunks(meta["chunks"]):
                h.update(data)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != meta.get("sha256"):
            raise IntegrityError(f"attachment {meta['path']} does not match its recorded hash")
        os.chmod(tmp, meta.get("mode") or 0o644)
        try:
            os.link(tmp, dest)  # fails if a file appeared meanwhile: never replaced
        except FileExistsError:
            same = hashlib.sha256(dest.read_bytes()).hexdigest() == meta.get("sha256")
            return "present" if same else "differs (left as it is)"
        if meta.get("mtime"):
            os.utime(dest, (meta["mtime"], meta["mtime"]))
        return "restored"
    finally:
        tmp.unlink(missing_ok=True)
