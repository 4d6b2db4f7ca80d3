"""`crmops restore --at` on MariaDB/MySQL: the newest logical snapshot before T, rolled forward
with the archived binary logs from its recorded position up to T, in a sandbox.

Binlog events carry whole seconds: replay stops at the first event of T's second
(`mariadb-binlog --stop-datetime`), so the copy holds what was committed before that
second began. Only the snapshot's database is replayed (`--database`, which for row events
filters by the table's database). `--tables` and `--to-datadir` are PostgreSQL-only so far.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.dburl import engine_kind, safe
from crmops.errors import ConfigError, DatabaseError, OutsideWindow
from crmops.pitr.binlog import read_file, read_state


def restore_at_mariadb(config: Config, when: datetime, *, keep: bool, say: Any, tables: list[str] | None = None,
                       to_url: str | None = None, force: bool = False,
                       inspect: Any = None) -> dict[str, Any]:
    from crmops.engines import open_engine
    from crmops.engines.tools import require_tool
    from crmops.repository import open_repository
    from crmops.sandbox.docker import DockerSandbox

    started = time.monotonic()
    repo = open_repository(config)
    from crmops.repository.source import source_of_manifest, source_of_url

    source = source_of_url(config.database.url)
    snaps = [m for m in repo.listing().manifests if m.get("binlog") and m.get("kind") != "physical"
             and source_of_manifest(m) == source]
    if not snaps:
        raise OutsideWindow(f"no logical snapshot of {source} records a binlog position",
                            hint="turn binary logging on (`crmops binlog setup`), then `crmops backup`")
    server_id = snaps[-1]["binlog"]["server_id"]  # from the manifest: the server itself may be gone
    state = read_state(repo, server_id)
    if not state.get("pushed_at"):
        raise OutsideWindow(f"no binary log of server {server_id} is archived yet", hint="run `crmops binlog push`")
    start, end = datetime.fromisoformat(snaps[0]["time"]), datetime.fromisoformat(state["pushed_at"])
    if not start <= when <= end:
        raise OutsideWindow(f"{when.isoformat(sep=' ')} lies outside the recoverable window: the recoverable "
                            f"window is {start.isoformat(sep=' ')} .. {end.isoformat(sep=' ')}",
                            hint="pick a time inside it")
    base = [m for m in snaps if datetime.fromisoformat(m["time"]) <= when][-1]
    first = base["binlog"]["file"]
    files = sorted(n for n in state["files"] if n >= first)
    if first not in files:
        raise OutsideWindow(f"binary log {first}, where snapshot {base['id']} starts, is not archived")
    tool = require_tool(["mariadb-binlog", "mysqlbinlog"], None, what="replay binary logs",
                        fix="install the MariaDB client (apt-get install mariadb-client)")
    result: dict[str, Any] = {"ok": True, "engine": "mysql", "target": {"kind": "time", "value": str(when)},
                              "base_snapshot": base["id"], "binlog_start": base["binlog"], "binlog_files": files,
                              "window": {"start": str(start), "end": str(end)}, "lines": []}
    present = _check_tables_target(to_url, tables, force) if tables and to_url else []
    box = DockerSandbox(config.verify, "mysql", base["server_version"], database=base.get("database"))
    with tempfile.TemporaryDirectory(prefix="crmops-binlog-") as tmp:
        for name in files:
            (Path(tmp) / name).write_bytes(read_file(repo, server_id, name))
        say(f"restoring snapshot {base['id']} into a sandbox, then {len(files)} binary logs up to {when}")
        box.start()
        try:
            target = open_engine(box.url, config.database)
            target.restore(repo.read_stream(base), format=base["streams"]["database"]["format"])
            replay_started = time.monotonic()
            _replay(tool, target, [str(Path(tmp) / n) for n in files], base["binlog"]["position"], when,
                    box.database)
            result["replay_seconds"] = round(time.monotonic() - replay_started, 2)
            result["sandbox"] = box.name
            result["lines"].append(f"restored snapshot {base['id']} and replayed {len(files)} binary logs "
                                   f"from {first}:{base['binlog']['position']} up to {when:%Y-%m-%d %H:%M:%S} UTC")
            if inspect is not None:
                result.update(inspect(box.url))
            if tables and to_url:
                result.update(_move_tables(config, target, to_url, tables, present))
                result["lines"].append(f"tables {', '.join(tables)} as of {when:%Y-%m-%d %H:%M:%S} UTC are now in "
                                       f"{safe(to_url)}")
            if keep:
                box.keep()
                result["sandbox_info"] = box.connect_info()
                result["lines"].append(f"sandbox {box.name} kept: {box.connect_info()['shell']}")
        finally:
            if not keep:
                box.remove()
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def _replay(tool: str, target: Any, files: list[str], position: int, when: datetime, database: str) -> None:
    stop = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    env = {**os.environ, "TZ": "UTC"}  # --stop-datetime is read in the tool's local time zone
    reader = subprocess.Popen([tool, f"--start-position={position}", f"--stop-datetime={stop}",
                               f"--database={database}", *files], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
    options = target._option_file()
    try:
        assert reader.stdout is not None
        loader = subprocess.run(target._tool("client").argv([f"--defaults-extra-file={options}", "--binary-mode",
                                                             database], stdin=True, mounts=[options]),
                                stdin=reader.stdout, capture_output=True, text=True)
        reader.stdout.close()
        err = reader.stderr.read().decode("utf-8", "replace") if reader.stderr else ""
        if reader.wait() != 0:
            raise DatabaseError(f"mariadb-binlog failed: {(err.strip().splitlines() or ['no output'])[-1]}")
        if loader.returncode != 0:
            raise DatabaseError("replaying the binary logs failed: "
                                f"{(loader.stderr.strip().splitlines() or ['no output'])[-1]}")
    finally:
        os.unlink(options)


def check_mariadb_form(sandbox: bool, tables: list[str] | None, to_url: str | None, to_datadir: Path | None,
                       kind: str) -> None:
    if kind != "time":
        raise ConfigError("MariaDB/MySQL point-in-time restore takes --at TIME only")
    if to_datadir is not None:
        raise ConfigError("--to-datadir is for PostgreSQL; MariaDB/MySQL recovers into a sandbox (--sandbox) "
                          "or moves tables into a database (--tables ... --to URL)")
    if not sandbox and not (tables and to_url):
        raise ConfigError("restore --at needs --sandbox, or --tables ... --to URL")
    if to_url is not None and engine_kind(to_url) != "mysql":
        raise ConfigError(f"{safe(to_url)} is not MariaDB/MySQL")


def _check_tables_target(to_url: str, tables: list[str], force: bool) -> list[str]:
    """The named tables that exist in the target; TargetNotEmpty unless --force (checked before any work)."""
    import re

    from crmops.engines.mysql import MysqlEngine
    from crmops.errors import TargetNotEmpty

    for t in tables:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", t):
            raise ConfigError(f"--tables: {t!r} is not a table name")
    found = {r[0] for r in MysqlEngine(to_url)._query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")}
    present = [t for t in tables if t in found]
    if present and not force:
        raise TargetNotEmpty(f"{', '.join(present)} still exist(s) in {safe(to_url)}",
                             hint="add --force to replace them (a pre-restore snapshot of the target is taken "
                                  "first); tables that no longer exist are simply brought back")
    return present


def _move_tables(config: Config, sandbox: Any, to_url: str, tables: list[str], present: list[str]) -> dict[str, Any]:
    """mariadb-dump of those tables from the sandbox into the target: each is dropped and recreated
    there, with its rows as at the target time; no other table is touched."""
    from crmops.engines.mysql import MysqlEngine

    found = {r[0] for r in sandbox._query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")}
    missing = [t for t in tables if t not in found]
    if missing:
        raise DatabaseError(f"table(s) {', '.join(missing)} did not exist at the recovery target")
    safety = None
    if present:
        from crmops.services.backup import backup

        safety = backup(config, tags=["pre-restore"], url=to_url).snapshot_id
    dst = MysqlEngine(to_url)
    src_opts = sandbox._option_file()
    dst_opts = dst._option_file()
    try:
        dump = subprocess.Popen(sandbox._tool("dump").argv([f"--defaults-extra-file={src_opts}", "--single-transaction",
                                                            "--quick", "--triggers", "--hex-blob", "--skip-dump-date",
                                                            "--default-character-set=utf8mb4",
                                                            sandbox.database_name(), *tables], mounts=[src_opts]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert dump.stdout is not None
        dst._tool("client").feed([f"--defaults-extra-file={dst_opts}", "--default-character-set=utf8mb4",
                                  "--binary-mode", dst.database_name()], iter(lambda: dump.stdout.read(1 << 20), b""),
                                 env={}, secrets=dst._secrets(), label="mariadb", mounts=[dst_opts])
        if dump.wait() != 0:
            err = dump.stderr.read().decode("utf-8", "replace") if dump.stderr else ""
            raise DatabaseError(f"mariadb-dump failed: {(err.strip().splitlines() or ['no output'])[-1]}")
    finally:
        os.unlink(src_opts)
        os.unlink(dst_opts)
    return {"tables_recreated": [t for t in tables if t not in present], "tables_replaced": present,
            "safety_snapshot": safety}
