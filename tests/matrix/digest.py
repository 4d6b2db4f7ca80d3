"""The native digest of a database: its schema as the engine's own dump tool prints it, and a checksum of
every table by the server itself. Equal before and after means nothing in it changed.

The one place the untouched-digest tests take their digests from:

- native_digest(url, skip): the tables in skip left out whole (schema and rows), for what a command was
  asked to change or create;
- pg_digest / my_digest (url, skip): the rows of the tables in skip left out but the whole schema kept
  (a table replaced in place must come back with the same definition, triggers and grants), copies made
  by `--as restored_` left out; PostgreSQL adds every sequence's value;
- sqlite_digest(path, skip): SQLite's schema and rows.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from crmops.engines import open_engine


def _pg_schema(engine: Any, exclude: tuple[str, ...]) -> str:
    """pg_dump --schema-only without the lines that differ between two dumps of the same schema."""
    tool = engine._tool("pg_dump")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, **engine._env()}
    schema = subprocess.run(tool.argv(["--schema-only", "--no-password", *(f"--exclude-table={t}" for t in exclude)]),
                            env=env, capture_output=True, text=True, check=True, timeout=300).stdout
    # \restrict / \unrestrict carry a random key per dump (pg_dump's guard against injected meta-commands)
    return "\n".join(line for line in schema.splitlines()
                     if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict")))


def _pg_rows(engine: Any, skip: tuple[str, ...], sequences: bool) -> dict[str, str]:
    """Each table's row count and md5 of its ordered rows by the server (and each sequence's value)."""
    out: dict[str, str] = {}
    with engine.connect() as conn:
        tables = [r[0] for r in conn.execute("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) "
                                             "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
                                             "'information_schema') ORDER BY 1")]
        for t in tables:
            if t in skip or t.removeprefix("public.") in skip:
                continue
            out[t] = conn.execute(f"SELECT count(*) || ':' || COALESCE(md5(string_agg(x::text, ',' "
                                  f"ORDER BY x::text)), '') FROM {t} x").fetchone()[0]
        if sequences:  # Tryton names some "a-b_id_seq": quote_ident
            for (seq,) in conn.execute("SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) "
                                       "FROM pg_sequences ORDER BY 1").fetchall():
                if not any(seq.startswith(s + "_") for s in skip):
                    out[seq] = str(conn.execute(f"SELECT last_value, is_called FROM {seq}").fetchone())
    return out


def _my_schema(engine: Any, ignore: tuple[str, ...]) -> str:
    """mariadb-dump --no-data with routines, events and triggers."""
    tool = engine._tool("dump")
    options = engine._option_file()
    db = engine.database_name()
    try:
        schema = subprocess.run(tool.argv([f"--defaults-extra-file={options}", "--no-data", "--skip-dump-date",
                                           "--routines", "--events", "--triggers", db,
                                           *(f"--ignore-table={db}.{t}" for t in ignore)], mounts=[options]),
                                capture_output=True, text=True, check=True, timeout=300).stdout
    finally:
        os.unlink(options)
    return schema


def _my_tables(engine: Any, skip: tuple[str, ...]) -> dict[str, str]:
    """CHECKSUM TABLE ... EXTENDED and the row count of every base table not skipped."""
    out: dict[str, str] = {}
    conn = engine.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
                        "AND table_type = 'BASE TABLE' ORDER BY 1")
            for (t,) in cur.fetchall():
                if t in skip:
                    continue
                cur.execute(f"CHECKSUM TABLE `{t}` EXTENDED")
                checksum = cur.fetchone()[1]
                cur.execute(f"SELECT COUNT(*) FROM `{t}`")
                out[str(t)] = f"{cur.fetchone()[0]}:{checksum}"
    finally:
        conn.close()
    return out


def native_digest(url: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """skip: tables (or views) left out, schema and rows: those a restore was asked to change."""
    engine = open_engine(url)
    if engine.name == "postgresql":
        return {"schema": _pg_schema(engine, skip), **_pg_rows(engine, skip, sequences=False)}
    return {"schema": _my_schema(engine, skip), **_my_tables(engine, skip)}


def _copies(skip: tuple[str, ...]) -> tuple[str, ...]:
    """The tables `--as restored_` made: absent before, so out of the schema as well."""
    return tuple(t for t in skip if "restored_" in t)


def pg_digest(url: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole schema, each table's rows but skip's, every sequence's value but skip's tables'."""
    engine = open_engine(url)
    return {"schema": _pg_schema(engine, _copies(skip)), "rows": _pg_rows(engine, skip, sequences=True)}


def my_digest(url: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole schema (routines, events, triggers) and every table's checksum and count but skip's."""
    engine = open_engine(url)
    schema = "\n".join(line for line in _my_schema(engine, _copies(skip)).splitlines() if not line.startswith("-- "))
    return {"schema": schema, "tables": _my_tables(engine, skip)}


def sqlite_digest(path: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """SQLite's schema (sqlite_master) and every table's rows but skip's."""
    conn = sqlite3.connect(path)
    try:
        schema = sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall(), key=repr)
        rows = {name: sorted(map(repr, conn.execute(f'SELECT * FROM "{name}"')))
                for kind, name, _ in schema if kind == "table" and name not in skip}
    finally:
        conn.close()
    return {"schema": schema, "rows": rows}


def assert_same(before: dict[str, str], after: dict[str, str]) -> None:
    """before == after, or an error that shows where: the schema's changed lines and the tables that differ."""
    if before == after:
        return
    import difflib

    schema = list(difflib.unified_diff(str(before.get("schema")).splitlines(), str(after.get("schema")).splitlines(),
                                       "before", "after", lineterm="", n=1))
    tables = sorted(k for k in before.keys() | after.keys() if k != "schema" and before.get(k) != after.get(k))
    raise AssertionError("digest changed\n" + "\n".join(schema[:60]) + f"\ntables that differ: {tables}")
