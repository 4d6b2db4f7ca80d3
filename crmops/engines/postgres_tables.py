"""PostgreSQL: replace chosen tables of a live database in one transaction, or restore them beside it.

The archive's entries for the chosen tables are rendered by `pg_restore -f -` and run
by crmops itself on one connection, inside one transaction: foreign keys that touch a
replaced table are dropped, the table is emptied and reloaded, and the keys are added
again, which checks every row. A key that no longer holds rolls everything back, so
the target is either fully updated or exactly as it was.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psycopg

from crmops.engines.base import TableCommit, tables_outcome, told_on_stop
from crmops.engines.postgres_toc import parse_toc, select_tables
from crmops.engines.tools import dump_lines
from crmops.errors import ConstraintBroken, DatabaseError, TableNotInSnapshot, TargetNotEmpty

if TYPE_CHECKING:
    from crmops.engines.container_tools import Tool


class PostgresEngine(Protocol):
    """What the table-level code needs of the PostgreSQL engine (which calls it, so it cannot import it)."""

    restore_owners: bool

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection: ...

    def _env(self) -> dict[str, str]: ...

    def _secrets(self) -> list[str]: ...

    def _tool(self, name: str, version: str | None = None) -> Tool: ...

#: entries a table that is new to the target brings with it (views, functions and types are not created)
_OWN_KINDS = {"TABLE", "TABLE DATA", "TABLE ATTACH", "INDEX ATTACH",
              "SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET", "DEFAULT", "CONSTRAINT",
              "INDEX", "TRIGGER", "COMMENT", "ACL", "FK CONSTRAINT", "CHECK CONSTRAINT"}
COPY_BATCH = 1 << 20
#: how pg_dump attaches a partition: ALTER TABLE ONLY public.pay ATTACH PARTITION public.pay_2024 FOR VALUES ...
_ATTACH = re.compile(r"^ALTER TABLE ONLY (\S+) ATTACH PARTITION (\S+) (.*)$", re.S)
#: how pg_restore writes a sequence's value: SELECT pg_catalog.setval('public.deals_id_seq', 1000, true);
_SETVAL = re.compile(r"^SELECT pg_catalog\.setval\('((?:[^']|'')+)', (-?\d+), (true|false)\);$")


def split_name(name: str) -> tuple[str, str]:
    """("schema", "table") of a name; a plain name is in public."""
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def beside(name: str, prefix: str) -> str:
    """Where --as puts a table: "restored_" gives schema.restored_table, "recovered." gives recovered.table."""
    schema, table = split_name(name)
    if prefix.endswith("."):
        return f"{prefix[:-1]}.{table}"
    return f"{schema}.{prefix}{table}"


def partitions_in_toc(entries: dict[int, tuple[str, str, str]], deps: dict[int, set[int]]) -> dict[str, str]:
    """"schema.partition" -> "schema.parent" for every partition attached in an archive (its TABLE ATTACH)."""
    tables = {i: f"{schema}.{tag}" for i, (kind, schema, tag) in entries.items() if kind == "TABLE"}
    out = {}
    for i, (kind, schema, tag) in entries.items():
        if kind == "TABLE ATTACH":
            child = f"{schema}.{tag}"
            parent = next((tables[d] for d in deps.get(i, ()) if d in tables and tables[d] != child), None)
            if parent:
                out[child] = parent
    return out


def descendants(table: str, attached: dict[str, str]) -> list[str]:
    """The partitions of table, and theirs (sub-partitioning), parents before children."""
    out: list[str] = []
    level = [table]
    while level:
        level = sorted(c for c, p in attached.items() if p in level)
        out += level
    return out


def existing(engine: PostgresEngine, names: list[str]) -> list[str]:
    """Which of these tables (or other relations of that name) the database already has."""
    with engine.connect() as conn:
        found = []
        for name in names:
            schema, table = split_name(name)
            if conn.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone():
                found.append(name)
    return found


def restore_tables(engine: PostgresEngine, chunks: Iterable[bytes], tables: list[str],
                   prefix: str | None = None) -> dict[str, list[str]]:
    """Replace (or, with prefix, add beside) the chosen tables; one transaction, all or nothing."""
    return told_on_stop(tables, lambda done: _restore_tables(engine, chunks, tables, prefix, done))


def _restore_tables(engine: PostgresEngine, chunks: Iterable[bytes], tables: list[str], prefix: str | None,
                    done: TableCommit) -> dict[str, list[str]]:
    pg_restore = engine._tool("pg_restore")
    with tempfile.TemporaryDirectory(prefix="crmops-restore-") as tmp:
        archive = Path(tmp) / "dump.pgc"
        with open(archive, "wb") as f:
            for piece in chunks:
                f.write(piece)
        listing = pg_restore.process(["--list", "--verbose", str(archive)], env=engine._env(),
                                     secrets=engine._secrets(), label="pg_restore --list", mounts=[tmp])
        try:
            toc = b"".join(listing.pieces()).decode("utf-8", "replace")
        finally:
            listing.close()
        entries, deps, lines = parse_toc(toc)
        in_archive = {(schema, tag) for kind, schema, tag in entries.values() if kind == "TABLE"}
        for t in tables:  # the caller checked the fingerprint; an old snapshot may lack one
            if split_name(t) not in in_archive:
                raise TableNotInSnapshot(f"table {t!r} is not in the snapshot; nothing was changed")
        attached = partitions_in_toc(entries, deps)
        root = {p: t for t in tables for p in descendants(t, attached) if p not in tables}
        tables = [*tables, *(p for p in dict.fromkeys(root))]
        live = set(existing(engine, tables))
        owned = {} if prefix else _owned_sequences(engine, [t for t in tables if t in live])
        parts = {p for t in tables for p in (*split_name(t), *(split_name(beside(t, prefix)) if prefix else ()))}
        q = _quoted(engine, parts)
        qualified = {t: ".".join(q[p] for p in split_name(t)) for t in tables}
        rename: dict[str, str] = {}
        keep: list[int] = []
        routed = set() if prefix else {p for p, t in root.items() if t in live}
        if prefix:
            for t in tables:
                rename[qualified[t]] = ".".join(q[p] for p in split_name(beside(t, prefix)))
            taken = existing(engine, [beside(t, prefix) for t in tables])
            if taken:
                raise TargetNotEmpty(f"{', '.join(taken)} already exists in the target",
                                     hint="choose another --as prefix, or drop the earlier copy")
            wanted = {split_name(t) for t in tables}
            keep = [i for i, (kind, schema, tag) in entries.items()
                    if (kind in ("TABLE", "TABLE DATA") and (schema, tag) in wanted)
                    or (kind == "TABLE ATTACH" and (schema, tag) in wanted
                        and attached.get(f"{schema}.{tag}", "") in {f"{s}.{n}" for s, n in wanted})]
        else:
            new: list[str] = []
            for t in tables:
                schema, table = split_name(t)
                if t in routed:
                    # a partition of a replaced table: its rows go in through the named table, which
                    # routes each row to the partition the live table has for it
                    keep += [i for i, e in entries.items() if e == ("TABLE DATA", schema, table)]
                    rename[qualified[t]] = qualified[root[t]]
                elif t in live:
                    keep += [i for i, e in entries.items() if e == ("TABLE DATA", schema, table)]
                    # the source's sequence values: read from the script, never set below the live ones
                    keep += [i for i, e in entries.items()
                             if e[0] == "SEQUENCE SET" and (e[1], e[2]) in owned.get(t, ())]
                else:
                    new.append(f"{schema}.{table}")
            if new:  # together: what links them (partitions attached, keys between them) comes along
                chosen = select_tables(toc, new)
                ids = {int(line.split(";", 1)[0]) for line in chosen.splitlines() if line[:1].isdigit()}
                keep += [i for i in ids if entries[i][0] in _OWN_KINDS]
        (Path(tmp) / "selected.list").write_text("".join(lines[i] + "\n" for i in entries if i in set(keep)))
        argv = ["--file=-", f"--use-list={Path(tmp) / 'selected.list'}"]
        if prefix or not engine.restore_owners:
            argv += ["--no-owner", "--no-acl"]
        script = pg_restore.process([*argv, str(archive)], env=engine._env(), secrets=engine._secrets(),
                                    label="pg_restore", mounts=[tmp])
        try:
            conn = engine.connect(autocommit=False)
            try:
                if prefix and prefix.endswith("."):
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q[prefix[:-1]]}")
                _apply(conn, script.pieces(), [t for t in tables if t in live and not prefix and t not in routed],
                       qualified, rename)
                conn.commit()
                done.committed = True
            except BaseException:
                conn.rollback()
                raise
            finally:
                conn.close()
        finally:
            script.close()
    return tables_outcome(tables, live | routed, [beside(t, prefix) for t in tables] if prefix else None)


def _owned_sequences(engine: PostgresEngine, tables: list[str]) -> dict[str, set[tuple[str, str]]]:
    """(schema, name) of the sequences each live table owns (serial and identity columns)."""
    out: dict[str, set[tuple[str, str]]] = {t: set() for t in tables}
    with engine.connect() as conn:
        for t in tables:
            schema, table = split_name(t)
            for nsp, name in conn.execute(
                    """SELECT sn.nspname, s.relname FROM pg_depend d
                       JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                       JOIN pg_namespace sn ON sn.oid = s.relnamespace
                       JOIN pg_class r ON r.oid = d.refobjid JOIN pg_namespace rn ON rn.oid = r.relnamespace
                       WHERE rn.nspname = %s AND r.relname = %s AND d.deptype IN ('a', 'i')""",
                    (schema, table)).fetchall():
                out[t].add((nsp, name))
    return out


def _quoted(engine: PostgresEngine, names: set[str]) -> dict[str, str]:
    """Each name quoted as pg_dump writes it: the server's quote_ident (bare unless a keyword or unusual)."""
    with engine.connect() as conn:
        return {n: conn.execute("SELECT quote_ident(%s)", (n,)).fetchone()[0] for n in sorted(names)}


def _apply(conn: psycopg.Connection, script: Iterator[bytes], replaced: list[str], qualified: dict[str, str],
           rename: dict[str, str]) -> None:
    """Inside the caller's transaction: unhook the replaced tables, load the script, hook them back."""
    conn.execute("SET LOCAL search_path = ''")  # constraint definitions come out schema-qualified
    regs = [qualified[t] for t in replaced]
    # a partitioned table with every partition the live one has (the snapshot's may differ)
    # (pg_partition_tree gives nothing for a table outside any partition tree)
    tree = list(dict.fromkeys([*regs, *(r for (r,) in conn.execute(
        "SELECT t.relid::regclass::text FROM unnest(%(t)s::regclass[]) r, pg_partition_tree(r) t",
        {"t": regs}).fetchall())])) if regs and conn.info.server_version >= 120000 else regs
    keys: list[tuple[str, str, str]] = []
    triggers: list[tuple[str, str]] = []
    sequences: list[tuple[str, str, str]] = []
    if regs:
        keys = conn.execute("""SELECT quote_ident(n.nspname) || '.' || quote_ident(r.relname), quote_ident(c.conname),
                                      pg_get_constraintdef(c.oid)
                               FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
                               JOIN pg_namespace n ON n.oid = r.relnamespace
                               WHERE c.contype = 'f' AND c.conparentid = 0
                               AND (c.conrelid = ANY(%(t)s::regclass[]) OR c.confrelid = ANY(%(t)s::regclass[]))
                               ORDER BY 1, 2""", {"t": tree}).fetchall()
        triggers = conn.execute("""SELECT t.tgrelid::regclass::text, quote_ident(t.tgname) FROM pg_trigger t
                                   WHERE t.tgrelid = ANY(%(t)s::regclass[]) AND NOT t.tgisinternal
                                   AND t.tgenabled <> 'D'""", {"t": tree}).fetchall()
        sequences = conn.execute("""SELECT s.oid::regclass::text, d.refobjid::regclass::text, quote_ident(a.attname)
                                    FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                                    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                                    WHERE d.refobjid = ANY(%(t)s::regclass[]) AND d.deptype IN ('a', 'i')""",
                                 {"t": regs}).fetchall()
        for table, name, _ in keys:
            conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        for table, name in triggers:
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {name}")
        # ONLY: an inheriting child is another table, not named; a partitioned table is emptied with
        # all its partitions (TRUNCATE ONLY refuses it): its rows are the snapshot's afterwards
        kinds = dict(conn.execute("SELECT r::text, c.relkind::text FROM unnest(%(t)s::regclass[]) r "
                                  "JOIN pg_class c ON c.oid = r", {"t": regs}).fetchall())
        plain = [r for r in regs if kinds.get(r) != "p"]
        if plain:
            conn.execute(f"TRUNCATE ONLY {', '.join(plain)}")
        if len(plain) < len(regs):
            conn.execute(f"TRUNCATE {', '.join(r for r in regs if kinds.get(r) == 'p')}")
    held: dict[str, int] = {seq: 0 for seq, _, _ in sequences}
    try:
        _run_script(conn, script, rename, held)
    except psycopg.Error as e:
        raise DatabaseError(f"restoring the tables failed, nothing was changed: {_first_line(e)}") from None
    conn.execute("SET LOCAL search_path = ''")
    for table, name in triggers:
        conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {name}")
    for table, name, definition in keys:
        try:
            conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
        except psycopg.errors.ForeignKeyViolation as e:
            detail = (e.diag.message_detail or "").rstrip(".")
            raise ConstraintBroken(f"restoring {', '.join(replaced)} would break foreign key {name} on {table}"
                                   f"{': ' + detail if detail else ''}; nothing was changed",
                                   hint="restore the tables it links as well, or use --as to restore beside "
                                        "the live ones and copy rows back") from None
    # last, as setval is not undone by a rollback: a refused restore leaves the sequences alone
    for seq, table, column in sequences:
        _advance(conn, seq, table, column, held[seq])


def _advance(conn: psycopg.Connection, seq: str, table: str, column: str, source: int) -> None:
    """Move a replaced table's sequence up to the highest id in use anywhere, never down.

    The highest of: what the live sequence already handed out (rows written after the
    source's moment may be gone now, but their ids live on in mails, links, other systems),
    the source's own value (ids it handed out for rows deleted before then), and the
    largest id now in the table. The next insert without an id therefore collides with
    nothing, and no id is handed out twice.
    """
    conn.execute(f"""SELECT pg_catalog.setval('{seq}', x.v) FROM
                     (SELECT greatest(%(source)s::bigint, (SELECT max({column})::bigint FROM {table})) AS v) x,
                     {seq} s, pg_catalog.pg_sequence p
                     WHERE p.seqrelid = '{seq}'::regclass AND p.seqincrement > 0 AND x.v >= p.seqmin
                     AND x.v > CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END""",
                 {"source": source})


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _run_script(conn: psycopg.Connection, pieces: Iterable[bytes], rename: dict[str, str],
                held: dict[str, int] | None = None) -> None:
    """Run a pg_restore SQL script: statements as batches, COPY blocks through COPY FROM STDIN.

    The setval of a sequence named in held is not run: the highest value it had handed
    out is noted there instead, for the caller to weigh against the live one.
    """
    statements: list[bytes] = []
    block = bytearray()
    cur = conn.cursor()

    def flush() -> None:
        text = b"\n".join(statements).strip()
        statements.clear()
        if text:
            cur.execute(text)

    lines = dump_lines(pieces)
    for line in lines:
        if line.startswith(b"\\"):
            continue  # psql meta-commands (\restrict) mean nothing here
        if line.startswith(b"COPY ") and line.endswith(b" FROM stdin;"):
            flush()
            head = line[:-len(b" FROM stdin;")].decode()
            target = head[5:].split(" (", 1)[0]
            head = "COPY " + rename.get(target, target) + head[5 + len(target):]
            with cur.copy(head + " FROM STDIN") as copy:
                for row in lines:
                    if row == b"\\.":
                        break
                    block += row + b"\n"
                    if len(block) >= COPY_BATCH:
                        copy.write(bytes(block))
                        block.clear()
                if block:
                    copy.write(bytes(block))
                    block.clear()
            continue
        if held and line.startswith(b"SELECT pg_catalog.setval("):
            m = _SETVAL.match(line.decode())
            if m and m[1].replace("''", "'") in held:
                held[m[1].replace("''", "'")] = int(m[2]) - (m[3] == "false")
                continue
        if rename and line.startswith(b"CREATE TABLE "):
            target = line[13:].decode().split(" (", 1)[0]
            if target in rename:
                line = f"CREATE TABLE {rename[target]}".encode() + line[13 + len(target.encode()):]
        elif rename and line.startswith(b"ALTER TABLE ONLY ") and b" ATTACH PARTITION " in line:
            m = _ATTACH.match(line.decode())
            if m and m[1] in rename and m[2] in rename:
                line = f"ALTER TABLE ONLY {rename[m[1]]} ATTACH PARTITION {rename[m[2]]} {m[3]}".encode()
        statements.append(line)
    flush()
