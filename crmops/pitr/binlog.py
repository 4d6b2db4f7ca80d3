"""MariaDB/MySQL binary log facts: whether the server keeps what binlog archiving needs.

Where a logical dump stands in the binlog is read by the engine under the dump's lock
(engines/mysql.py `binlog_position`): replaying the binlog from there onward
(`mariadb-binlog --start-position`) rolls the dump forward.
The archive itself (push, follow) is below; the replay is in binlog_restore.py.
"""

from __future__ import annotations

import os
from typing import Any

#: what binlog archiving needs, and why
REQUIRED = {
    "log_bin": ("ON", "binary logging on (log_bin = <basename> in my.cnf)"),
    "binlog_format": ("ROW", "row events: replay does not depend on the server's state or time"),
}


def check_settings(rows: dict[str, str]) -> dict[str, Any]:
    """Each needed setting with its value and whether it is right; rows: name -> value (lower-case names)."""
    checks = []
    for name, (wanted, why) in REQUIRED.items():
        value = str(rows.get(name, "")).upper()
        if name == "log_bin":
            value = "ON" if value in ("1", "ON") else "OFF"
        checks.append({"setting": name, "value": value, "wanted": wanted, "ok": value == wanted, "why": why})
    server_id = str(rows.get("server_id", "0"))
    checks.append({"setting": "server_id", "value": server_id, "wanted": "non-zero", "ok": server_id != "0",
                   "why": "binlog events name their server; 0 refuses to log on MySQL"})
    expire = float(rows.get("binlog_expire_logs_seconds") or 0) or float(rows.get("expire_logs_days") or 0) * 86400
    checks.append({"setting": "binlog_expire_logs_seconds", "value": str(int(expire)), "wanted": ">= 86400 or 0",
                   "ok": expire == 0 or expire >= 86400,
                   "why": "the server must keep its binlogs until crmops has archived them (a day at least)"})
    return {"ready": all(c["ok"] for c in checks), "checks": checks}


# -- the binlog archive ------------------------------------------------------------------------
#
# binlog/<server id>/<file name>: each binary log sealed whole (NAME "binlog:<server id>/<file>").
# Closed files never change; the active one is stored again, longer, at each push, until
# it closes. binlogstate/<server id> (sealed JSON) holds each file's archived size, the time
# of the last push and of each push over the last day (pushlog.py): the archive lag, and where
# the next push resumes (so a restart of the server or of crmops, or a rotation, loses nothing
# the server still has).

def _state_key(server_id: str) -> str:
    return f"binlogstate/{server_id}"


def read_state(repo: Any, server_id: str) -> dict[str, Any]:
    import json

    key = _state_key(server_id)
    if not repo.store.exists(key):
        return {"files": {}, "pushed_at": None}
    return json.loads(repo.sealer.open(repo.store.get(key), f"binlogstate:{server_id}", key))


def read_file(repo: Any, server_id: str, name: str) -> bytes:
    key = f"binlog/{server_id}/{name}"
    return repo.sealer.open(repo.store.get(key), f"binlog:{server_id}/{name}", key)


def push(config: Any, url: str | None = None) -> dict[str, Any]:
    """Archive every binary log the server still has that is new or has grown since the last push.

    The files are read over the client protocol (`mariadb-binlog --read-from-remote-server
    --raw`), so crmops needs no access to the server's disk, only the REPLICATION SLAVE grant.
    """
    import json
    import subprocess
    import tempfile
    from datetime import UTC, datetime
    from pathlib import Path

    from crmops.engines.mysql import MysqlEngine
    from crmops.engines.tools import require_tool
    from crmops.errors import ConfigError, DatabaseError
    from crmops.repository import open_repository

    engine = MysqlEngine(url or config.database.url)
    if not int(engine._query("SELECT @@log_bin")[0][0] or 0):
        raise ConfigError(f"{engine.url.host}: binary logging is off", hint="run `crmops binlog setup`")
    server_id = str(engine._query("SELECT @@server_id")[0][0])
    logs = [(str(r[0]), int(r[1])) for r in engine._query("SHOW BINARY LOGS")]
    tool = require_tool(["mariadb-binlog", "mysqlbinlog"], None, what="read binary logs",
                        fix="install the MariaDB client (apt-get install mariadb-client)")
    repo = open_repository(config)
    state = read_state(repo, server_id)
    stored = []
    with tempfile.TemporaryDirectory(prefix="crmops-binlog-") as tmp:
        options = engine._option_file()
        try:
            for name, size in logs:
                if state["files"].get(name) == size:
                    continue
                proc = subprocess.run([tool, f"--defaults-extra-file={options}", "--read-from-remote-server",
                                       "--raw", f"--result-file={tmp}/", name], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise DatabaseError(f"mariadb-binlog could not read {name}: "
                                        f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
                data = (Path(tmp) / name).read_bytes()
                key = f"binlog/{server_id}/{name}"
                repo.store.put(key, repo.sealer.seal(data, f"binlog:{server_id}/{name}"))
                state["files"][name] = len(data)
                stored.append(name)
        finally:
            os.unlink(options)
    from crmops.pitr.pushlog import record

    now = datetime.now(UTC)
    state["pushed_at"] = now.isoformat(timespec="seconds")
    state["pushes"] = record(state.get("pushes"), now)
    state["active"] = logs[-1][0] if logs else None
    repo.store.put(_state_key(server_id), repo.sealer.seal(json.dumps(state).encode(), f"binlogstate:{server_id}"))
    return {"ok": True, "server_id": server_id, "stored": stored, "files": len(state["files"]),
            "pushed_at": state["pushed_at"]}
