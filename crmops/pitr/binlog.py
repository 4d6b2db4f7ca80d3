"""MariaDB/MySQL binary log facts: where a logical dump stands in the binlog, and whether the
server keeps what binlog archiving needs.

The position is read while the dump holds FLUSH TABLES WITH READ LOCK to open its
consistent snapshot (engines/mysql.py), so it is exactly the point the dump shows: replaying
the binlog from there onward (`mariadb-binlog --start-position`) rolls the dump forward.
Archiving and replaying binlogs (`binlog follow`, `restore --at` on MariaDB) are not built yet.
"""

from __future__ import annotations

from typing import Any

#: what binlog archiving needs, and why
REQUIRED = {
    "log_bin": ("ON", "binary logging on (log_bin = <basename> in my.cnf)"),
    "binlog_format": ("ROW", "row events: replay does not depend on the server's state or time"),
}


def position(cur: Any) -> dict[str, Any] | None:
    """{file, position, gtid} of the binlog now, or None when binary logging is off (call under FTWRL)."""
    cur.execute("SELECT @@log_bin")
    if not int(cur.fetchone()[0] or 0):
        return None
    cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if row is None:
        return None
    gtid = None
    try:
        cur.execute("SELECT @@gtid_binlog_pos")  # MariaDB
        gtid = cur.fetchone()[0] or None
    except Exception:  # MySQL names it @@gtid_executed
        try:
            cur.execute("SELECT @@gtid_executed")
            gtid = cur.fetchone()[0] or None
        except Exception:
            gtid = None
    return {"file": row[0], "position": int(row[1]), "gtid": gtid}


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
