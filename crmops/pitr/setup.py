"""`crmops wal setup`: the server settings that make PostgreSQL hand every WAL file to crmops.

The archive_command names this crmops by absolute path and the configuration file by
absolute path; secrets come from the env file ($CRMOPS_ENV_FILE, the one scheduled jobs
read), never from the command line, which any user can read in pg_settings.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from crmops.config import ENV_FILE_VAR, Config

DEFAULT_ARCHIVE_TIMEOUT = 60


def archive_commands(config_file: Path | None, env_file: Path) -> tuple[str, str]:
    """(archive_command, restore_command) strings, %p/%f left for PostgreSQL to fill."""
    from crmops.services.schedule import crmops_executable

    exe = crmops_executable()
    prefix = f"{ENV_FILE_VAR}={shlex.quote(str(env_file))} {exe}"
    if config_file is not None:
        prefix += f" --config {shlex.quote(str(config_file.resolve()))}"
    return f"{prefix} --quiet wal push %p", f"{prefix} --quiet wal fetch %f %p"


def settings(config: Config, *, config_file: Path | None, env_file: Path,
             archive_timeout: int = DEFAULT_ARCHIVE_TIMEOUT) -> dict[str, str]:
    push, _fetch = archive_commands(config_file, env_file)
    return {"wal_level": "replica", "archive_mode": "on", "archive_command": push,
            "archive_timeout": str(archive_timeout)}


def current(url: str, names: list[str]) -> dict[str, str]:
    from crmops.engines.postgres import PostgresEngine

    with PostgresEngine(url).connect() as conn:
        rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,)).fetchall()
    return dict(rows)


def apply(url: str, wanted: dict[str, str]) -> dict[str, Any]:
    """ALTER SYSTEM each setting, reload; say which ones wait for a restart (archive_mode, wal_level)."""
    from psycopg import sql

    from crmops.engines.postgres import PostgresEngine

    with PostgresEngine(url).connect() as conn:
        before = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                                   (list(wanted),)).fetchall())
        for name, value in wanted.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")
        pending = [r[0] for r in conn.execute("SELECT name FROM pg_settings WHERE pending_restart AND name = ANY(%s)",
                                              (list(wanted),)).fetchall()]
    changed = [n for n, v in wanted.items() if before.get(n) != v]
    needs_restart = sorted(set(pending) | {n for n in changed if n in ("archive_mode", "wal_level")})
    return {"changed": changed, "needs_restart": needs_restart}
