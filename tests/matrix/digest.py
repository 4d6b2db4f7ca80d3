"""The native digest of a database: its schema as the engine's own dump tool prints it, and a checksum of
every table by the server itself. Equal before and after means nothing in it changed."""

from __future__ import annotations

import os
import subprocess

from crmops.engines import open_engine


def native_digest(url: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """skip: tables (or views) left out, schema and rows: those a restore was asked to change."""
    engine = open_engine(url)
    if engine.name == "postgresql":
        tool = engine._tool("pg_dump")  # type: ignore[attr-defined]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, **engine._env()}  # type: ignore[attr-defined]
        leave_out = [f"--exclude-table={t}" for t in skip]
        schema = subprocess.run(tool.argv(["--schema-only", "--no-password", *leave_out]), env=env, capture_output=True,
                                text=True, check=True, timeout=300).stdout
        # \restrict / \unrestrict carry a random key per dump (pg_dump's guard against injected meta-commands)
        out = {"schema": "\n".join(line for line in schema.splitlines()
                                   if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict")))}
        with engine.connect() as conn:  # type: ignore[attr-defined]
            tables = [r[0] for r in conn.execute("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) "
                                                 "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
                                                 "'information_schema') ORDER BY 1")]
            for t in tables:
                if t in skip or t.removeprefix("public.") in skip:
                    continue
                out[t] = conn.execute(f"SELECT count(*) || ':' || COALESCE(md5(string_agg(x::text, ',' "
                                      f"ORDER BY x::text)), '') FROM {t} x").fetchone()[0]
        return out
    tool = engine._tool("dump")  # type: ignore[attr-defined]
    options = engine._option_file()  # type: ignore[attr-defined]
    try:
        schema = subprocess.run(tool.argv([f"--defaults-extra-file={options}", "--no-data", "--skip-dump-date",
                                           "--routines", "--events", engine.database_name(),
                                           *(f"--ignore-table={engine.database_name()}.{t}" for t in skip)],
                                          mounts=[options]),
                                capture_output=True, text=True, check=True, timeout=300).stdout
    finally:
        os.unlink(options)
    out = {"schema": schema}
    conn = engine.connect()  # type: ignore[attr-defined]
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
                        "AND table_type = 'BASE TABLE' ORDER BY 1")
            for (t,) in cur.fetchall():
                if t in skip:
                    continue
                cur.execute(f"CHECKSUM TABLE `{t}` EXTENDED")
                out[str(t)] = str(cur.fetchone()[1])
    finally:
        conn.close()
    return out
