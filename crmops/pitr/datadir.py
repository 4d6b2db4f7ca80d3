"""`restore --at ... --to-datadir DIR`: a data directory that starts beside production, safely.

A base backup carries production's postgresql.auto.conf (`wal setup --apply` wrote
archive_mode = on and the archive_command there) and, on a Debian layout, no pg_hba.conf
(it lives in /etc). So the copy gets, after production's own lines:
- archive_mode = off: a restored copy never pushes into production's archive (`wal push`
  refuses its timeline anyway, crmops.pitr.timeline); archiving is turned on again only for
  a copy that becomes production, after `crmops wal promote`;
- its own pg_hba.conf (local peer, loopback scram-sha-256) and pg_ident.conf, named by
  hba_file/ident_file so a production postgresql.conf in the base cannot point elsewhere;
  listen_addresses = 'localhost', and a port that is free here (or --port);
- restore_command built from the archive_command production really runs (recorded at
  backup time): the same crmops, configuration and env file as `wal setup` was given.
The start command it prints waits until the server has promoted (`crmops wal wait-promoted`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import struct
import time
from pathlib import Path
from typing import Any

from crmops.errors import ConfigError, RecoveryFailed

HBA = """# written by crmops restore --at --to-datadir: local connections only
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  peer
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
local   replication  all                  peer
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
"""
#: where a started copy logs until it has promoted (pg_ctl -l)
START_LOG = "crmops-recovery.log"
SOCKET_DIRS = ("/var/run/postgresql", "/tmp")
#: DBState in pg_control (offset 16, after the system identifier and two version numbers)
DB_IN_PRODUCTION = 6


def port_free(port: int) -> bool:
    if any(os.path.exists(f"{d}/.s.PGSQL.{port}") for d in SOCKET_DIRS):
        return False
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family) as s:
                s.bind((host, port))
        except OSError as e:
            if family == socket.AF_INET6 and e.errno in (97, 99):  # no IPv6 here
                continue
            return False
    return True


def pick_port(given: int | None) -> int:
    """--port when free, else the first free one from 5433 on (production keeps 5432)."""
    if given is not None:
        if not port_free(given):
            raise ConfigError(f"--port {given} is in use on this host", hint="pick another, or leave --port out")
        return given
    for port in range(5433, 5533):
        if port_free(port):
            return port
    raise ConfigError("no free port between 5433 and 5532", hint="give one with --port")


def _conf_value(text: str, name: str) -> str | None:
    """The last value of name in a postgresql.conf-style text ('' quoting undone)."""
    found = None
    for m in re.finditer(rf"^\s*{name}\s*=\s*'((?:[^']|'')*)'", text, re.M):
        found = m[1].replace("''", "'")
    return found


def restore_command(base: dict[str, Any], datadir: Path, config_file: Path | None) -> tuple[str, str, str]:
    """(restore_command for `wal fetch`, the env file it reads, where that came from).

    The archive_command production runs (recorded by `backup --physical`, else the one in
    the base's postgresql.auto.conf) names the crmops, configuration and env file the
    postgres user can use: the fetch runs the same, with `wal fetch` in place of `wal push`.
    """
    from crmops.pitr.setup import archive_commands

    system_id = base["physical"]["system_id"]
    recorded = base["physical"].get("archive_command")
    source = "the archive_command recorded with the base backup"
    if not recorded:
        auto = datadir / "postgresql.auto.conf"
        recorded = _conf_value(auto.read_text(errors="replace"), "archive_command") if auto.exists() else None
        source = "the archive_command in the base backup's postgresql.auto.conf"
    m = re.match(r"^(.*\S)\s+wal\s+push\s+%p\s*$", recorded or "")
    if m:
        prefix = m[1]
        env = re.search(r"(?:^|\s)CRMOPS_ENV_FILE=(\S+)", prefix)
        env_file = shlex.split(env[1])[0] if env else os.environ.get("CRMOPS_ENV_FILE", "")
        return f"{prefix} wal fetch --system-id {system_id} %f %p", env_file, source
    env_file = os.environ.get("CRMOPS_ENV_FILE", "/etc/crmops/crmops.env")
    _push, fetch = archive_commands(config_file, Path(env_file))
    fetch = fetch.replace("wal fetch %f %p", f"wal fetch --system-id {system_id} %f %p")
    return fetch, env_file, "this crmops and $CRMOPS_ENV_FILE (the base records no crmops archive_command)"


def write_local_settings(datadir: Path, port: int) -> dict[str, str]:
    """pg_hba.conf, pg_ident.conf and the settings that keep the copy local and out of the archive."""
    hba = datadir / "pg_hba.conf"
    if hba.exists():  # production's rules (other hosts, other users) are not for a copy
        hba.rename(datadir / "pg_hba.conf.production")
    hba.write_text(HBA)
    if not (datadir / "pg_ident.conf").exists():
        (datadir / "pg_ident.conf").write_text("")
    settings = {"archive_mode": "off", "port": str(port), "listen_addresses": "localhost",
                "hba_file": str(datadir.absolute() / "pg_hba.conf"),
                "ident_file": str(datadir.absolute() / "pg_ident.conf")}
    with open(datadir / "postgresql.auto.conf", "a") as f:
        f.write("\n# crmops restore --at: a copy beside production archives nothing and listens locally\n")
        for k, v in settings.items():
            f.write(f"{k} = '{v.replace(chr(39), chr(39) * 2)}'\n")
    return settings


def pg_ctl(major: str) -> str:
    debian = Path(f"/usr/lib/postgresql/{major}/bin/pg_ctl")
    return str(debian) if debian.exists() else (shutil.which("pg_ctl") or "pg_ctl")


def instructions(datadir: Path, *, major: str, port: int, exe: str, config_file: Path | None,
                 target: str) -> list[str]:
    d = shlex.quote(str(datadir.absolute()))
    cfg = f" --config {shlex.quote(str(config_file.resolve()))}" if config_file else ""
    start = (f"chown -R postgres:postgres {d} && runuser -u postgres -- {pg_ctl(major)} -D {d} "
             f"-l {d}/{START_LOG} -w -t 3600 start && {exe}{cfg} wal wait-promoted {d}")
    return [
        f"start it (it replays the archive to {target}, promotes; the command returns once it has): {start}",
        f"it listens on port {port}, localhost only: runuser -u postgres -- psql -p {port} "
        "(127.0.0.1 takes production's passwords)",
        "it archives nothing (archive_mode = off). If it becomes the new production: "
        f"{exe}{cfg} wal promote --url 'postgresql://postgres:${{PGPW}}@127.0.0.1:{port}/postgres', then "
        f"{exe}{cfg} wal setup --apply --url (the same) and restart it; or give it a new repository",
    ]


def control_state(datadir: Path) -> int | None:
    try:
        with open(datadir / "global" / "pg_control", "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    return struct.unpack_from("=I", head, 16)[0] if len(head) == 20 else None


def _postmaster_alive(datadir: Path) -> bool:
    try:
        pid = int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _last_fatal(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"no log at {log}"
    fatal = [ln for ln in lines if "FATAL:" in ln or "PANIC:" in ln]
    return (fatal or lines or ["the log is empty"])[-1].strip()


def wait_promoted(datadir: Path, *, timeout_s: float, log: Path | None = None,
                  say: Any = lambda s: None) -> dict[str, Any]:
    """Until the server on datadir has left recovery (pg_control says in production, recovery.signal
    gone); RecoveryFailed naming the log's last FATAL when it stops first. Reads files only: no
    connection, no password."""
    if not (datadir / "global" / "pg_control").exists():
        raise ConfigError(f"{datadir} is not a data directory (no global/pg_control)")
    log = log or datadir / START_LOG
    started = time.monotonic()
    announced = False
    while True:
        state = control_state(datadir)
        promoted = state == DB_IN_PRODUCTION and not (datadir / "recovery.signal").exists()
        if promoted and _postmaster_alive(datadir):
            return {"ok": True, "datadir": str(datadir), "promoted": True,
                        "seconds": round(time.monotonic() - started, 1)}
        elapsed = time.monotonic() - started
        if not _postmaster_alive(datadir) and elapsed > 5:
            raise RecoveryFailed(f"the server on {datadir} is not running: {_last_fatal(log)}",
                                 hint=f"see {log}; the archive may not reach the target (`crmops wal status`)")
        if elapsed > timeout_s:
            raise RecoveryFailed(f"the server on {datadir} did not promote within {timeout_s:g} s",
                                 hint=f"it may still be replaying: see {log}")
        if not announced and elapsed > 2:
            say(f"waiting for the server on {datadir} to replay and promote")
            announced = True
        time.sleep(0.5)
