"""SQLite: replace chosen tables of a live database file, or restore them beside it, in one transaction.

The snapshot's copy is attached next to the target; with foreign key enforcement off
the replaced tables are emptied and refilled (their triggers set aside so they do not
fire), then `PRAGMA foreign_key_check` looks at every table linked to them. SQLite's
DDL is transactional, so any failure rolls everything back, triggers included.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path

from crmops.engines.base import TableCommit, tables_outcome, told_on_stop
from crmops.errors import ConstraintBroken, DatabaseError, TableNotInSnapshot, TargetNotEmpty

_CREATE = re.compile(r'^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:"(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\]|\w+)\s*',
                     re.IGNORECASE)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def existing(path: Path, names: list[str]) -> list[str]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    return [n for n in names if n in have]


def restore_tables(path: Path, chunks: Iterable[bytes], tables: list[str],
                   prefix: str | None = None) -> dict[str, list[str]]:
    return told_on_stop(tables, lambda done: _restore_tables(path, chunks, tables, prefix, done))


def _restore_tables(path: Path, chunks: Iterable[bytes], tables: list[str], prefix: str | None,
                    done: TableCommit) -> dict[str, list[str]]:
    dest = {t: (prefix + t if prefix else t) for t in tables}
    live = set(existing(path, tables))
    if prefix:
        taken = existing(path, list(dest.values()))
        if taken:
            raise TargetNotEmpty(f"{', '.join(taken)} already exists in the target",
                                 hint="choose another --as prefix, or drop the earlier copy")
    fd, name = tempfile.mkstemp(prefix=".crmops-restore-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in chunks:
                f.write(piece)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute("ATTACH DATABASE ? AS src", (name,))
            conn.execute("BEGIN IMMEDIATE")
            try:
                replaced = _load(conn, tables, dest, live, bool(prefix))
                _check_keys(conn, replaced)
                conn.execute("COMMIT")
                done.committed = True
            except sqlite3.Error as e:
                conn.execute("ROLLBACK")
                raise DatabaseError(f"restoring the tables failed, nothing was changed: {e}") from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("DETACH DATABASE src")
        finally:
            conn.close()
    finally:
        os.unlink(name)
    return tables_outcome(tables, live, [dest[t] for t in tables] if prefix else None)


def _load(conn: sqlite3.Connection, tables: list[str], dest: dict[str, str], live: set[str],
          beside: bool) -> list[str]:
    replaced: list[str] = []
    for t in tables:
        row = conn.execute("SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = ?", (t,)).fetchone()
        if row is None:
            raise TableNotInSnapshot(f"the snapshot holds no table {t!r}; nothing was changed")
        cols = ", ".join(_q(r[1]) for r in conn.execute(f"PRAGMA src.table_info({_q(t)})"))
        if beside:
            conn.execute(_CREATE.sub(f"CREATE TABLE {_q(dest[t])} ", row[0], count=1))
        elif t in live:
            triggers = conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger' "
                                    "AND tbl_name = ?", (t,)).fetchall()
            for trigger, _ in triggers:
                conn.execute(f"DROP TRIGGER main.{_q(trigger)}")
            conn.execute(f"DELETE FROM main.{_q(t)}")
            conn.execute(f"INSERT INTO main.{_q(t)} ({cols}) SELECT {cols} FROM src.{_q(t)}")
            for _, sql in triggers:
                conn.execute(sql)
            replaced.append(t)
            continue
        else:
            conn.execute(row[0])
            replaced.append(t)  # new here: its keys are checked like a replaced table's
        conn.execute(f"INSERT INTO main.{_q(dest[t])} ({cols}) SELECT {cols} FROM src.{_q(t)}")
        if not beside:
            for (idx,) in conn.execute("SELECT sql FROM src.sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                       "AND sql IS NOT NULL", (t,)).fetchall():
                conn.execute(idx)
    return replaced


def _check_keys(conn: sqlite3.Connection, replaced: list[str]) -> None:
    """Every table holding a key from or to a replaced table must still hold."""
    if not replaced:
        return
    names = [r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table' "
                                        "AND name NOT LIKE 'sqlite_%'")]
    for table in names:
        refs = {r[2] for r in conn.execute(f"PRAGMA main.foreign_key_list({_q(table)})")}
        if not refs or (table not in replaced and not refs & set(replaced)):
            continue
        bad = conn.execute(f"PRAGMA main.foreign_key_check({_q(table)})").fetchall()
        bad = [b for b in bad if table in replaced or b[2] in replaced]
        if bad:
            raise ConstraintBroken(f"restoring {', '.join(replaced)} would leave {len(bad)} row(s) of {table} "
                                   f"pointing at {bad[0][2]} rows that are not there; nothing was changed",
                                   hint="restore the tables it links as well, or use --as to restore beside "
                                        "the live ones and copy rows back")
