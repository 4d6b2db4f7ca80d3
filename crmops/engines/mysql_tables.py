"""MySQL/MariaDB: replace chosen tables of a live database, or restore them beside it.

The chosen tables' rows are taken from the dump's INSERT statements and run by crmops
on one connection: with FOREIGN_KEY_CHECKS=0 the replaced tables are emptied and
reloaded inside one InnoDB transaction, then every foreign key that touches them is
checked with a query (the server does not re-check keys when checks come back on).
An orphan rolls the transaction back, so the rows stay as they were.

What is not transactional on this engine, because MariaDB commits DDL at once: a table
new to the target is created before the transaction (and dropped again on failure),
and triggers on a replaced table are dropped for the load and created again afterwards
(so they do not fire for restored rows), always, also on failure.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from typing import Any, Protocol

import pymysql

from crmops.engines.base import TableCommit, keys_left_out, tables_outcome, told_on_stop
from crmops.engines.tools import dump_lines
from crmops.errors import ConstraintBroken, DatabaseError, TableNotInSnapshot, TargetNotEmpty


class MysqlEngine(Protocol):
    """What the table-level code needs of the MySQL engine (which calls it, so it cannot import it)."""

    def connect(self, database: bool = True) -> pymysql.Connection: ...

    def _query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]: ...

_AUTO_INCREMENT = re.compile(rb"\bAUTO_INCREMENT=(\d+)")
_FK_LINE = re.compile(rb"^\s*CONSTRAINT `(?:[^`]|``)+` FOREIGN KEY ")
_FK = re.compile(rb"^\s*CONSTRAINT `((?:[^`]|``)+)` FOREIGN KEY \(.*?\) REFERENCES `((?:[^`]|``)+)` \(")


def existing(engine: MysqlEngine, names: list[str]) -> list[str]:
    rows = engine._query("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
    have = {str(r[0]) for r in rows}
    return [n for n in names if n in have]


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _scan(chunks: Iterable[bytes], tables: list[str], spool: Any) -> tuple[list[bytes], dict[str, bytes]]:
    """One pass over the dump: its session header, each chosen table's CREATE TABLE; INSERTs go to spool."""
    creates: dict[str, bytes] = {}
    header: list[bytes] = []
    inserts = {b"INSERT INTO " + _q(t).encode() + b" VALUES": t for t in tables}
    starts = {b"CREATE TABLE " + _q(t).encode() + b" (": t for t in tables}
    in_header = True
    lines = dump_lines(chunks)
    for line in lines:
        if line.startswith(b"-- Table structure for table "):
            in_header = False
        if in_header and line.startswith(b"/*!") and b" SET " in line:
            header.append(line)
        elif line.startswith(b"INSERT INTO ") and line[:line.find(b" VALUES") + 7] in inserts:
            # mariadb-dump writes a row per line; a newline inside a value is always escaped
            spool.write(line)
            while not line.endswith(b";"):
                line = next(lines)
                spool.write(b" " + line)
            spool.write(b"\n")
        elif line.startswith(b"CREATE TABLE ") and line in starts:
            block = [line]
            closed = False  # after the columns' ")": table options, then a PARTITION BY clause may follow
            for more in lines:
                block.append(more)
                closed = closed or more.startswith(b")")
                if closed and more.endswith(b";"):
                    break
            creates[starts[line]] = b"\n".join(block)
    return header, creates


_COLUMN = re.compile(rb"^  `((?:[^`]|``)+)` ")


def dump_schema(chunks: Iterable[bytes]) -> tuple[list[str], list[tuple[str, str]], dict[str, list[str]]]:
    """(every table, the (table, referenced table) pair of each foreign key, each table's columns)
    from a mysqldump stream's CREATE TABLE statements; the rows between them are searched past, not
    split into lines (an undo reads a dump's schema before choosing what its sandbox holds)."""
    tables: list[str] = []
    pairs: list[tuple[str, str]] = []
    columns: dict[str, list[str]] = {}
    mark = b"\nCREATE TABLE `"
    buffer = b""
    for piece in chunks:
        buffer += piece
        while True:
            start = buffer.find(mark)
            if start < 0:
                buffer = buffer[-len(mark):]  # a mark may straddle two pieces
                break
            end = buffer.find(b"\n)", start)
            if end < 0:
                buffer = buffer[start:]
                break
            head, *body = buffer[start + 1:end].split(b"\n")
            buffer = buffer[end:]
            if not head.endswith(b"` ("):
                continue
            name = head[len(b"CREATE TABLE `"):-len(b"` (")].decode().replace("``", "`")
            tables.append(name)
            cols = columns.setdefault(name, [])
            for line in body:
                if (m := _COLUMN.match(line)) is not None:
                    cols.append(m[1].decode().replace("``", "`"))
                elif (m := _FK.match(line)) is not None:
                    pairs.append((name, m[2].decode().replace("``", "`")))
    return tables, pairs, columns


def _renamed_create(create: bytes, old: str, new: str) -> bytes:
    """A CREATE TABLE under another name, without foreign keys (their names are database-wide)."""
    lines = create.split(b"\n")
    lines[0] = b"CREATE TABLE " + _q(new).encode() + b" ("
    close = next(i for i, ln in enumerate(lines) if i and ln.startswith(b")"))
    body = [ln for ln in lines[1:close] if not _FK_LINE.match(ln)]
    if body and body[-1].endswith(b","):
        body[-1] = body[-1][:-1]
    return b"\n".join([lines[0], *body, *lines[close:]])  # table options and partitions as they were


def restore_tables(engine: MysqlEngine, chunks: Iterable[bytes], tables: list[str],
                   prefix: str | None = None) -> dict[str, list[str]]:
    return told_on_stop(tables, lambda done: _restore_tables(engine, chunks, tables, prefix, done))


def _restore_tables(engine: MysqlEngine, chunks: Iterable[bytes], tables: list[str], prefix: str | None,
                    done: TableCommit) -> dict[str, list[str]]:
    live = set(existing(engine, tables))
    dest = {t: (prefix + t if prefix else t) for t in tables}
    if prefix:
        taken = existing(engine, list(dest.values()))
        if taken:
            raise TargetNotEmpty(f"{', '.join(taken)} already exists in the target",
                                 hint="choose another --as prefix, or drop the earlier copy")
    fd, spool_name = tempfile.mkstemp(prefix="crmops-rows-", suffix=".sql")
    try:
        with os.fdopen(fd, "wb") as spool:
            header, creates = _scan(chunks, tables, spool)
        missing = [t for t in tables if t not in creates]
        if missing:
            raise TableNotInSnapshot(f"the snapshot holds no table {', '.join(missing)}; nothing was changed")
        keys = foreign_keys(creates, tables)
        parents = set(existing(engine, sorted({k["references"] for k in keys} - set(tables))))
        absent = {k["references"] for k in keys} - set(tables) - parents
        conn = engine.connect()
        created: list[str] = []
        try:
            with conn.cursor() as cur:
                for line in header:
                    cur.execute(line.decode("utf-8"))
                cur.execute("SET NAMES utf8mb4")
                cur.execute("SET FOREIGN_KEY_CHECKS = 0")
                replaced = [t for t in tables if t in live and not prefix]
                _same_columns(cur, {t: creates[t] for t in replaced})
                for t in tables:  # DDL commits at once in MariaDB: before the transaction
                    if prefix:
                        cur.execute(_renamed_create(creates[t], t, dest[t]).decode("utf-8"))
                        created.append(dest[t])
                    elif t not in live:  # no key to a table that is not there (keys_left_out names it)
                        cur.execute(without_keys(creates[t], absent).decode("utf-8"))
                        created.append(t)
                triggers = _drop_triggers(cur, replaced)
                try:
                    _load(conn, cur, spool_name, replaced, [] if prefix else created, dest)
                    done.committed = True
                    _advance(cur, {t: creates[t] for t in replaced})
                finally:
                    _put_back_triggers(engine, cur, triggers)
        except BaseException:
            with conn.cursor() as cur:
                for t in created if not done.committed else []:  # once committed they hold the restored rows
                    cur.execute(f"DROP TABLE IF EXISTS {_q(t)}")
            raise
        finally:
            conn.close()
    finally:
        os.unlink(spool_name)
    outcome = tables_outcome(tables, live, [dest[t] for t in tables] if prefix else None)
    outcome["left_out"] = keys_left_out(keys, tables, parents, prefix)
    return outcome


def foreign_keys(creates: dict[str, bytes], tables: list[str]) -> list[dict[str, str]]:
    """{table, constraint, references} of each foreign key in the chosen tables' CREATE TABLE."""
    out = []
    for t in tables:
        for line in creates[t].split(b"\n"):
            m = _FK.match(line)
            if m:
                out.append({"table": t, "constraint": m[1].decode().replace("``", "`"),
                            "references": m[2].decode().replace("``", "`")})
    return out


def without_keys(create: bytes, parents: set[str]) -> bytes:
    """A CREATE TABLE without the foreign keys that reference these tables (the rest as it was)."""
    lines = create.split(b"\n")
    close = next(i for i, ln in enumerate(lines) if i and ln.startswith(b")"))
    body = [ln for ln in lines[1:close] if not ((m := _FK.match(ln)) and m[2].decode().replace("``", "`") in parents)]
    if len(body) == close - 1:
        return create
    if body and body[-1].endswith(b","):
        body[-1] = body[-1][:-1]
    return b"\n".join([lines[0], *body, *lines[close:]])  # table options and partitions as they were


def _same_columns(cur: Any, creates: dict[str, bytes]) -> None:
    """The dump's rows carry no column names: a live table whose columns differ is refused before any change."""
    for table, create in creates.items():
        dumped = [m.group(1).replace("``", "`") for m in re.finditer(r"^\s+`((?:[^`]|``)+)` ",
                                                                      create.decode("utf-8"), re.MULTILINE)]
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                    "AND table_name = %s ORDER BY ordinal_position", (table,))
        if [str(r[0]) for r in cur.fetchall()] != dumped:
            raise DatabaseError(f"the columns of {table} differ between the snapshot and the target; "
                                "nothing was changed",
                                hint="restore it beside with --as restored_ and copy the rows by column name")


def _load(conn: Any, cur: Any, spool_name: str, replaced: list[str], created: list[str],
          dest: dict[str, str]) -> None:
    """Empty and reload in one transaction, check every key touching the tables, commit or roll back."""
    renames = {b"INSERT INTO " + _q(t).encode() + b" VALUES": b"INSERT INTO " + _q(d).encode() + b" VALUES"
               for t, d in dest.items() if t != d}
    cur.execute("START TRANSACTION")
    try:
        for t in replaced:
            cur.execute(f"DELETE FROM {_q(t)}")
        with open(spool_name, "rb") as rows:
            for line in rows:
                line = line.rstrip(b"\n")
                head = line[:line.find(b" VALUES") + 7]
                if head in renames:
                    line = renames[head] + line[len(head):]
                cur.execute(line.decode("utf-8"))
        orphan = _first_orphan(cur, replaced + created)
        if orphan:
            raise orphan
        cur.execute("COMMIT")
    except pymysql.MySQLError as e:
        cur.execute("ROLLBACK")
        raise DatabaseError(f"restoring the tables failed, nothing was changed: {e.args[-1]}") from None
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def _advance(cur: Any, creates: dict[str, bytes]) -> None:
    """Raise a replaced table's AUTO_INCREMENT to the source's when that is higher, never lower it.

    Loading rows with their ids already moves InnoDB's counter past the largest one, and
    a DELETE never moves it back: the live counter keeps the ids handed out after the
    source's moment. The source's counter adds the ids it had handed out for rows deleted
    before then, so no id is handed out twice.
    """
    for table, create in creates.items():
        m = _AUTO_INCREMENT.search(create.rsplit(b"\n", 1)[-1])
        if not m:
            continue
        cur.execute("SELECT auto_increment FROM information_schema.tables WHERE table_schema = DATABASE() "
                    "AND table_name = %s", (table,))
        row = cur.fetchone()
        if row and row[0] is not None and int(m[1]) > int(row[0]):
            cur.execute(f"ALTER TABLE {_q(table)} AUTO_INCREMENT = {int(m[1])}")


def _first_orphan(cur: Any, tables: list[str]) -> ConstraintBroken | None:
    """The first foreign key, from or to one of the tables, that a row no longer satisfies."""
    if not tables:
        return None
    marks = ", ".join(["%s"] * len(tables))
    cur.execute(f"""SELECT constraint_name, table_name, referenced_table_name,
                           GROUP_CONCAT(column_name ORDER BY ordinal_position SEPARATOR '\\t'),
                           GROUP_CONCAT(referenced_column_name ORDER BY ordinal_position SEPARATOR '\\t')
                    FROM information_schema.key_column_usage
                    WHERE table_schema = DATABASE() AND referenced_table_name IS NOT NULL
                    AND referenced_table_schema = DATABASE()
                    AND (table_name IN ({marks}) OR referenced_table_name IN ({marks}))
                    AND referenced_table_name IN (SELECT t.table_name FROM information_schema.tables t
                                                  WHERE t.table_schema = DATABASE())
                    GROUP BY constraint_name, table_name, referenced_table_name
                    ORDER BY table_name, constraint_name""", (*tables, *tables))
    for name, child, parent, cols, refs in cur.fetchall():
        cols, refs = cols.split("\t"), refs.split("\t")
        present = " AND ".join(f"c.{_q(c)} IS NOT NULL" for c in cols)
        match = " AND ".join(f"p.{_q(r)} = c.{_q(c)}" for c, r in zip(cols, refs, strict=True))
        cur.execute(f"SELECT COUNT(*) FROM {_q(child)} c WHERE {present} "
                    f"AND NOT EXISTS (SELECT 1 FROM {_q(parent)} p WHERE {match})")
        count = int(cur.fetchone()[0])
        if count:
            return ConstraintBroken(
                f"restoring {', '.join(tables)} would leave {count} row(s) of {child} pointing at {parent} rows "
                f"that are not there (foreign key {name}); nothing was changed",
                hint="restore the tables it links as well, or use --as to restore beside the live ones "
                     "and copy rows back")
    return None


def _drop_triggers(cur: Any, tables: list[str]) -> list[tuple[str, str, str, str]]:
    """Drop the tables' triggers, returning what recreates them: (name, sql_mode, charset, statement)."""
    if not tables:
        return []
    marks = ", ".join(["%s"] * len(tables))
    cur.execute(f"SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = DATABASE() "
                f"AND event_object_table IN ({marks}) ORDER BY event_object_table, action_timing, "
                f"event_manipulation, action_order", tables)
    saved = []
    for (name,) in cur.fetchall():
        cur.execute(f"SHOW CREATE TRIGGER {_q(name)}")
        row = cur.fetchone()
        saved.append((str(name), str(row[1]), str(row[3]), str(row[2])))
    for name, *_ in saved:
        cur.execute(f"DROP TRIGGER {_q(name)}")
    return saved


def _put_back_triggers(engine: MysqlEngine, cur: Any, saved: list[tuple[str, str, str, str]]) -> None:
    """Create the set-aside triggers again, on a fresh connection if the load's own one broke."""
    try:
        _create_triggers(cur, saved)
    except pymysql.err.OperationalError:
        conn = engine.connect()
        try:
            with conn.cursor() as fresh:
                fresh.execute("SELECT trigger_name FROM information_schema.triggers "
                              "WHERE trigger_schema = DATABASE()")
                there = {str(r[0]) for r in fresh.fetchall()}
                _create_triggers(fresh, [t for t in saved if t[0] not in there])
        finally:
            conn.close()


def _create_triggers(cur: Any, saved: list[tuple[str, str, str, str]]) -> None:
    if not saved:
        return
    cur.execute("SELECT @@SESSION.sql_mode")
    mode = cur.fetchone()[0]
    for _, sql_mode, charset, statement in saved:
        cur.execute("SET SESSION sql_mode = %s", (sql_mode,))
        cur.execute(f"SET NAMES {charset}")
        cur.execute(statement)
    cur.execute("SET SESSION sql_mode = %s", (mode,))
    cur.execute("SET NAMES utf8mb4")
