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


def archive_commands(config_file: Path | None, env_file: Path, exe: str | None = None) -> tuple[str, str]:
    """(archive_command, restore_command) strings, %p/%f left for PostgreSQL to fill."""
    from crmops.services.schedule import crmops_executable

    exe = exe or crmops_executable()
    prefix = f"{ENV_FILE_VAR}={shlex.quote(str(env_file))} {exe}"
    if config_file is not None:
        prefix += f" --config {shlex.quote(str(config_file.resolve()))}"
    return f"{prefix} --quiet wal push %p", f"{prefix} --quiet wal fetch %f %p"


def settings(config: Config, *, config_file: Path | None, env_file: Path,
             archive_timeout: int = DEFAULT_ARCHIVE_TIMEOUT, exe: str | None = None) -> dict[str, str]:
    push, _fetch = archive_commands(config_file, env_file, exe)
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


def facts(conn: Any) -> dict[str, Any]:
    """What `wal setup` needs of the server: its data directory (superusers see it), version, identity."""
    row = conn.execute(
        "SELECT current_setting('data_directory', true), current_setting('server_version_num')::int, "
        "(SELECT system_identifier::text FROM pg_control_system()), current_setting('archive_mode'), "
        "current_setting('archive_command'), pg_is_in_recovery()").fetchone()
    return {"data_directory": row[0], "major": row[1] // 10000, "system_id": row[2], "archive_mode": row[3],
            "archive_command": row[4], "in_recovery": row[5]}


def run(config: Config, url: str, wanted: dict[str, str], *, exe: str, config_file: Path | None, env_file: Path,
        apply_now: bool, timeout_s: float) -> dict[str, Any]:
    """Check the server's user can run the command, apply (optionally), then prove archiving works.

    Nothing is written when a check fails; a setting that needs a restart leaves the proof to
    `wal setup --check` after it.
    """
    from crmops.dburl import safe
    from crmops.engines.postgres import PostgresEngine
    from crmops.errors import ArchiveNotWorking, ConfigError
    from crmops.pitr import hostcheck, proof
    from crmops.pitr.archive import WalArchive
    from crmops.repository import open_repository

    out: dict[str, Any] = {"checks": [], "checked_as": None, "proven": False}
    with PostgresEngine(url).connect() as conn:
        f = facts(conn)
        if f["in_recovery"]:
            raise ConfigError(f"{safe(url)} is in recovery (a standby or a copy still replaying)",
                              hint="set up archiving on the primary")
        user = hostcheck.owner_of(f["data_directory"]) if f["data_directory"] else None
        ours = apply_now or f["archive_command"] == wanted["archive_command"]
        if user is not None and hostcheck.can_act_as(user) and ours:
            extra = (config.encryption.key_file,) if config.encryption.key_file else ()
            problems = hostcheck.preflight(user, exe, config_file, env_file,
                                           proof.local_repo_folder(config.repository.url), extra)
            out.update(checks=problems, checked_as=user.pw_name)
            if problems:
                first = problems[0]
                who = f"{user.pw_name} (the user PostgreSQL runs archive_command as)"
                if first["what"] == "crmops":
                    where = "" if first["path"] in first["problem"] else f" ({first['path']})"
                    said = f"{who} cannot run {exe}: {first['problem']}{where}"
                else:
                    said = f"{who} {first['problem']}"
                err = ArchiveNotWorking(
                    f"{said}; nothing was changed",
                    hint=first["fix"] + (f"; {len(problems) - 1} more problem(s) in --json" if len(problems) > 1
                                         else ""))
                err.result = {"ok": False, **out}  # type: ignore[attr-defined]
                raise err
        elif user is None:
            out["note"] = "the data directory is not on this host: the proof below is the check"
        if apply_now:
            out.update(apply(url, wanted))
            if out["needs_restart"]:
                out["next"] = "restart PostgreSQL, then run `crmops wal setup --check` to prove archiving works"
                return out
        current = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                                    "('archive_mode', 'archive_command')").fetchall())
        if current.get("archive_mode") == "off" or not current.get("archive_command"):
            raise ConfigError(f"{safe(url)} does not archive (archive_mode = {current.get('archive_mode')})",
                              hint="run `crmops wal setup --apply`, then restart PostgreSQL")
        archive = WalArchive(open_repository(config), f["system_id"])
        out.update(proof.prove(conn, archive, command=current["archive_command"],
                               data_directory=f["data_directory"], user=user, major=f["major"], timeout_s=timeout_s))
    return out
