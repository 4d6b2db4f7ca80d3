"""`restore --at T --tables a,b --to URL [--as PREFIX]`: tables out of a recovered copy into a live database.

The recovered sandbox stands where a snapshot stands for plain `restore --tables`: its
chosen tables are dumped and go through the same steps (crmops.services.restore): names
checked with did-you-mean (exit 16), --as names and --force checked on the target
(exit 60), a pre-restore snapshot before anything is replaced, and the engine's
all-or-nothing table restore with its foreign-key checks (exit 15) and sequence rules.

Names are checked twice: before the recovery against what is known without it (the
target's tables and those the base backup recorded), so a typo costs no replay; then
against the recovered database itself, before the target is touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from crmops.config import Config
from crmops.dburl import display, engine_kind, safe
from crmops.errors import ConfigError, TableNotInSnapshot
from crmops.services.restore import check_names, check_target, load_tables, safety_snapshot


@dataclass
class TableMove:
    """What was checked before the recovery, for the move after it."""

    to_url: str
    kind: str
    chosen: list[str]
    prefix: str | None
    force: bool
    target: Any
    empty: bool


def table_names(url: str) -> list[str]:
    """The database's tables as fingerprints name them (PostgreSQL: schema.table outside public)."""
    from crmops.engines.mysql import MysqlEngine
    from crmops.engines.postgres import PostgresEngine

    if engine_kind(url) == "postgresql":
        with PostgresEngine(url).connect() as conn:
            rows = conn.execute("SELECT CASE WHEN schemaname = 'public' THEN tablename ELSE schemaname || '.' || "
                                "tablename END FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
                                "'information_schema') ORDER BY 1").fetchall()
    else:
        rows = MysqlEngine(url)._query("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                                       "DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1")
    return [str(r[0]) for r in rows]


def plan_move(config: Config, to_url: str, tables: list[str], prefix: str | None, force: bool,
              recorded: list[str] | None, where: str) -> TableMove:
    """Everything that can be checked before recovering: names, --as, --force; nothing is changed.

    recorded: the tables the backups of this database recorded (None when none did: the
    names are then checked after the recovery only).
    """
    kind = engine_kind(to_url)
    if not tables:
        raise ConfigError("--tables is empty", hint="name the tables, e.g. --tables contacts,accounts")
    known = sorted(set(table_names(to_url)) | set(recorded)) if recorded is not None else []
    try:
        chosen = check_names(known, kind, tables, f"{display(to_url)} or {where}",
                             "nothing was recovered or changed")
    except TableNotInSnapshot as e:
        raise TableNotInSnapshot(e.message, hint=f"{e.hint}; a table made after the newest backup and gone since "
                                 "is known only after recovery: restore --at ... --sandbox --keep and copy it "
                                 "from there") from None

    target, empty = check_target(config, to_url, chosen, prefix, force)
    return TableMove(to_url, kind, chosen, prefix, force, target, empty)


def move_tables(config: Config, move: TableMove, source_url: str, when: str,
                say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The chosen tables from the recovered database into the target, as plain `restore --tables` does."""
    chosen = check_names(table_names(source_url), move.kind, move.chosen, f"the database as of {when}")
    safety = None
    if move.force and not move.empty and move.prefix is None:
        say(f"taking a pre-restore snapshot of {display(move.to_url)}")
        safety = safety_snapshot(config, move.to_url)
    with _dump(source_url, chosen) as (chunks, fmt):
        done = load_tables(move.target, chunks, fmt, chosen, move.prefix, safety, move.to_url)
    lines = []
    if safety:
        lines.append(f"the target's previous content is in snapshot {safety} (pre-restore)")
    if done["replaced"]:
        lines.append(f"replaced {', '.join(done['replaced'])} in {display(move.to_url)}")
    if done["created"]:
        lines.append(f"created {', '.join(done['created'])} in {display(move.to_url)}")
    lines.append(f"tables {', '.join(chosen)} as of {when} are now in {display(move.to_url)}")
    return {"to": safe(move.to_url), "tables": chosen, "replaced": done["replaced"], "created": done["created"],
            "safety_snapshot": safety, "table_lines": lines}


def with_partitions(src: Any, tables: list[str]) -> list[str]:
    """The tables and, for a partitioned one, its partitions: `pg_dump -t` of a partitioned table alone
    dumps its definition but none of its rows (they are in the partitions)."""
    from crmops.engines.postgres_tables import split_name

    out = list(tables)
    if src.server_major() < 12:  # pg_partition_tree is 12's
        return out
    with src.connect() as conn:
        for t in tables:
            schema, table = split_name(t)
            for (name,) in conn.execute("""SELECT n.nspname || '.' || c.relname FROM pg_partition_tree(
                                               format('%%I.%%I', %s::text, %s::text)::regclass) p
                                           JOIN pg_class c ON c.oid = p.relid
                                           JOIN pg_namespace n ON n.oid = c.relnamespace
                                           WHERE p.level > 0 ORDER BY p.level, 1""", (schema, table)).fetchall():
                if name not in out:
                    out.append(name)
    return out


@contextmanager
def _dump(url: str, tables: list[str]) -> Iterator[tuple[Iterator[bytes], str]]:
    """Only these tables of the recovered database, in the format its snapshots have."""
    from crmops.engines.mysql import MysqlEngine
    from crmops.engines.postgres import PostgresEngine
    from crmops.engines.postgres_tables import split_name

    if engine_kind(url) == "postgresql":
        src = PostgresEngine(url)
        argv = ["--format=custom", "--compress=0", "--no-password"]
        for t in with_partitions(src, tables):
            argv += ["-t", ".".join('"' + p.replace('"', '""') + '"' for p in split_name(t))]
        proc = src._tool("pg_dump", src.server_version()).process(argv, env=src._env(), secrets=src._secrets(),
                                                                   label="pg_dump")
        try:
            yield proc.pieces(), "pg-custom"
        finally:
            proc.close()
        return
    my = MysqlEngine(url)
    options = my._option_file()
    proc = None
    try:
        proc = my._tool("dump", my.server_version()).process(
            [f"--defaults-extra-file={options}", "--single-transaction", "--quick", "--triggers", "--hex-blob",
             "--skip-dump-date", "--default-character-set=utf8mb4", "--no-tablespaces", my.database_name(),
             *tables], env={}, secrets=my._secrets(), label="mariadb-dump", mounts=[options])
        yield proc.pieces(), "mysql-sql"
    finally:
        if proc is not None:
            proc.close()
        os.unlink(options)
