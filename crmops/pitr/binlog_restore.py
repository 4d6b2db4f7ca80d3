"""`crmops restore --at` on MariaDB/MySQL: the newest logical snapshot before T, rolled forward
with the archived binary logs from its recorded position up to T, in a sandbox.

Binlog events carry whole seconds: replay stops at the first event of T's second
(`mariadb-binlog --stop-datetime`), so the copy holds what was committed before that
second began. Only the snapshot's database is replayed (`--database`, which for row events
filters by the table's database). `--tables a,b --to URL [--as PREFIX]` moves only those
tables out of the sandbox, through the same steps as plain `restore --tables`
(crmops.pitr.tables); `--to-datadir` is PostgreSQL-only.
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
                       inspect: Any = None, prefix: str | None = None, safety: bool = True) -> dict[str, Any]:
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
    move = None
    if tables and to_url:
        from crmops.pitr.tables import plan_move
        from crmops.services.restore import snapshot_tables

        recorded = sorted({t for m in snaps for t in snapshot_tables(m)})
        move = plan_move(config, to_url, tables, prefix, force, recorded or None, "any snapshot", safety=safety)
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
            if move is not None:
                from crmops.pitr.tables import move_tables

                moved = move_tables(config, move, box.url, f"{when:%Y-%m-%d %H:%M:%S} UTC", say)
                result["lines"] += moved.pop("table_lines")
                result.update(moved)
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
                       kind: str, prefix: str | None = None) -> None:
    if kind != "time":
        raise ConfigError("MariaDB/MySQL point-in-time restore takes --at TIME only")
    if to_datadir is not None:
        raise ConfigError("--to-datadir is for PostgreSQL; MariaDB/MySQL recovers into a sandbox (--sandbox) "
                          "or moves tables into a database (--tables ... --to URL)")
    if not sandbox and not (tables and to_url):
        raise ConfigError("restore --at needs --sandbox, or --tables ... --to URL")
    if prefix is not None and not tables:
        raise ConfigError("--as needs --tables", hint="name the tables to restore beside the live ones")
    if to_url is not None and engine_kind(to_url) != "mysql":
        raise ConfigError(f"{safe(to_url)} is not MariaDB/MySQL")
