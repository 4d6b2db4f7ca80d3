"""The archive lag as an administrator means it: how old the oldest write not yet archived can be.

The age of the newest push is not that: an idle server writes nothing, PostgreSQL does not
switch segments (archive_timeout only switches after real writes) and MariaDB's binlog stays
as it is, so the last push ages while nothing is at risk. When the configured database is
the archiving server, it is asked (one short connection, a few cheap queries): where its
WAL or binlog stands, and, for PostgreSQL, whether archive_command is failing. Everything
it has written is archived: lag 0. Otherwise the oldest unarchived write is younger than
the newest push, so its age bounds the lag. Without the server, the push age stands, and
the verdict says so. `wal push` never calls this: it runs for every segment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from crmops.pitr.archive import parse_lsn, parse_segment, segment_name

#: seconds to wait for the server: status must answer even when the database does not
CONNECT_TIMEOUT = 3
#: once the newest segment is this much older than archive_timeout (seconds, and twice
#: archive_timeout), a segment PostgreSQL has not switched holds no write it counts
SWITCH_GRACE = 30
#: an inactive replication slot keeping more WAL than this on the server is named (bytes)
SLOT_WARN_BYTES = 1 << 30


def postgres_facts(url: str) -> dict[str, Any]:
    """Where the server's WAL stands and what pg_stat_archiver says; raises when it cannot be asked."""
    import psycopg

    from crmops.dburl import parse
    from crmops.engines.postgres import _conninfo

    info = {**_conninfo(parse(url)), "connect_timeout": CONNECT_TIMEOUT, "options": "-c statement_timeout=5000"}
    with psycopg.connect(**info, autocommit=True) as conn:
        recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
        if recovery:
            return {"in_recovery": True}
        lsn, walfile, seg_size, timeout = conn.execute(
            "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn()), "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
            "(SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout')").fetchone()  # type: ignore[misc]
        archived, archived_at, failed, failed_at = conn.execute(
            "SELECT last_archived_wal, last_archived_time, last_failed_wal, last_failed_time "
            "FROM pg_stat_archiver").fetchone()  # type: ignore[misc]
        try:
            system_id = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])  # type: ignore[index]
        except psycopg.Error:  # not granted to this role: the archive's own check (walfile) must do
            system_id = None
        # a slot whose streamer is gone keeps every WAL file from its position on, until the disk is full
        slots = conn.execute(
            "SELECT slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
            "FROM pg_replication_slots WHERE NOT active AND restart_lsn IS NOT NULL ORDER BY 2 DESC").fetchall()
    return {"in_recovery": False, "lsn": lsn, "walfile": walfile, "segment_size": int(seg_size),
            "archive_timeout": int(timeout), "last_archived_wal": archived, "last_archived_time": archived_at,
            "last_failed_wal": failed, "last_failed_time": failed_at, "system_id": system_id,
            "idle_slots": [{"slot": name, "retained_bytes": int(kept)} for name, kept in slots
                           if int(kept) > SLOT_WARN_BYTES]}


#: binlog events that carry no write: what a rotation or a restart puts at the head of a new file
HEADER_EVENTS = {"Format_desc", "Gtid_list", "Binlog_checkpoint", "Rotate", "Start_encryption", "Previous_gtids",
                 "Stop"}


def mysql_facts(url: str, archived_sizes: dict[str, int]) -> dict[str, Any]:
    """The server's id, its binlog position, and every binlog longer than its archived copy with
    whether what lies beyond that copy holds writes (at most 20 events are read per file);
    raises when the server cannot be asked."""
    import pymysql

    from crmops.dburl import parse

    u = parse(url)
    conn = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                           password=u.password or "", connect_timeout=CONNECT_TIMEOUT, read_timeout=5,
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@server_id, @@log_bin")
            server_id, log_bin = cur.fetchone()
            if not int(log_bin or 0):
                return {"server_id": str(server_id), "log_bin": False, "file": None, "position": None,
                        "pending": []}
            row = None
            # MariaDB 10.5.2+ and MySQL 8.2+ have the new names; MySQL 8.4 dropped the old one
            for statement in ("SHOW MASTER STATUS", "SHOW BINARY LOG STATUS", "SHOW BINLOG STATUS"):
                try:
                    cur.execute(statement)
                    row = cur.fetchone()
                    break
                except pymysql.MySQLError:
                    continue
            cur.execute("SHOW BINARY LOGS")
            pending = []
            for name, size, *_ in cur.fetchall():
                have = archived_sizes.get(name, 0)
                if int(size) <= have:
                    continue
                try:
                    cur.execute("SHOW BINLOG EVENTS IN %s FROM %s LIMIT 20", (name, max(have, 4)))
                    writes = sum(1 for r in cur.fetchall() if r[2] not in HEADER_EVENTS)
                except pymysql.MySQLError:
                    writes = None  # not allowed to look: count it as written
                pending.append({"file": name, "bytes": int(size) - have, "write_events": writes})
    finally:
        conn.close()
    return {"server_id": str(server_id), "log_bin": True, "file": row[0] if row else None,
            "position": int(row[1]) if row else None, "pending": pending}


def _since(text: str | None, now: datetime) -> float | None:
    if not text:
        return None
    t = datetime.fromisoformat(text)
    return round((now - (t if t.tzinfo else t.replace(tzinfo=UTC))).total_seconds(), 1)


def judge_wal(w: dict[str, Any], facts: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The lag of one WAL archive given what its server says (facts from postgres_facts)."""
    push_age = w.get("last_push_age_seconds")
    out: dict[str, Any] = {"lag_source": "server", "idle": False, "archive_failing": None,
                           "idle_slots": facts.get("idle_slots", [])}
    if facts.get("in_recovery"):
        return {**out, "lag_source": "last push",
                "lag_note": "the configured database is a standby: lag is the age of the newest push"}
    if facts.get("system_id") and facts["system_id"] != w["system_id"]:
        return {**out, "lag_source": "last push",
                "lag_note": f"the configured database is cluster {facts['system_id']}, not this one"}
    failed_at, archived_at = facts.get("last_failed_time"), facts.get("last_archived_time")
    if failed_at is not None and (archived_at is None or failed_at > archived_at):
        out["archive_failing"] = {"wal": facts["last_failed_wal"], "at": failed_at.isoformat(timespec="seconds")}
    seg_size = facts["segment_size"]
    newest = w.get("newest_segment")
    lsn = parse_lsn(facts["lsn"])
    current_tli, _ = parse_segment(facts["walfile"], seg_size)
    # pg_walfile_name names the segment before a boundary: the one just switched away from
    holding = parse_segment(facts["walfile"], seg_size)[1]
    if newest is not None:
        tli, archived = parse_segment(newest, seg_size)
        # a streamed part of the current segment may end before the newest writes: its push age stands
        whole = archived > holding or (archived == holding and not w.get("newest_is_partial"))
        if tli == current_tli and whole:
            at = "at the end of" if lsn % seg_size == 0 else "inside"
            return {**out, "archive_lag_seconds": 0.0, "idle": True,
                    "lag_note": f"idle: everything written is archived (WAL position {facts['lsn']} {at} "
                                f"archived segment {segment_name(tli, holding, seg_size)})"}
        timeout = facts.get("archive_timeout") or 0
        quiet = push_age is not None and push_age > max(2 * timeout, timeout + SWITCH_GRACE)
        if tli == current_tli and archived == holding - 1 and timeout > 0 and quiet and not out["archive_failing"]:
            return {**out, "archive_lag_seconds": 0.0, "idle": True,
                    "lag_note": f"idle: PostgreSQL has not switched segment {facts['walfile']} in {push_age:.0f} s "
                                f"(archive_timeout {timeout} s), so it holds no write since the last archived one"}
    return {**out, "archive_lag_seconds": push_age,
            "lag_note": f"WAL up to {facts['lsn']} is not archived yet: lag is the age of the newest push"}


def judge_binlog(w: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """The lag of one binlog archive given what its server says (facts from mysql_facts)."""
    out: dict[str, Any] = {"lag_source": "server", "idle": False, "archive_failing": None}
    if facts["server_id"] != w["system_id"]:
        return {**out, "lag_source": "last push",
                "lag_note": f"the configured database is server {facts['server_id']}, not this one"}
    if not facts["log_bin"]:
        return {**out, "lag_source": "last push", "lag_note": "the server has binary logging off"}
    written = [p for p in facts["pending"] if p["write_events"] != 0]
    if not written:
        extra = " but rotation headers" if facts["pending"] else ""
        at = f" ({facts['file']} at {facts['position']})" if facts["file"] else ""
        return {**out, "archive_lag_seconds": 0.0, "idle": True,
                "lag_note": f"idle: everything written is archived{extra}{at}"}
    first = written[0]
    return {**out, "archive_lag_seconds": w.get("last_push_age_seconds"),
            "lag_note": f"{first['file']} has {first['bytes']} bytes not archived yet: lag is the age of the "
                        "newest push"}


def assess(w: dict[str, Any], url: str | None, now: datetime | None = None,
           archived_sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """w (a window() or binlog window) with archive_lag_seconds judged by its server when that is reachable."""
    from crmops.dburl import engine_kind

    now = now or datetime.now(UTC)
    binlog = w.get("kind") == "binlog"
    fallback = {"archive_lag_seconds": w.get("last_push_age_seconds"), "lag_source": "last push", "idle": False,
                "archive_failing": None}
    if w.get("last_push_age_seconds") is None:
        return {**w, **fallback, "lag_note": "nothing archived yet"}
    try:
        kind = engine_kind(url) if url else None
    except Exception:
        kind = None
    if kind != ("mysql" if binlog else "postgresql"):
        return {**w, **fallback, "lag_note": "the configured database is not this server: lag is the age of "
                                             "the newest push"}
    try:
        if binlog:
            judged = judge_binlog(w, mysql_facts(url, archived_sizes or {}))  # type: ignore[arg-type]
        else:
            judged = judge_wal(w, postgres_facts(url), now)  # type: ignore[arg-type]
    except Exception as e:  # unreachable, refused, no grant: the archive alone still answers
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        return {**w, **fallback, "lag_note": f"server not reachable ({reason}): lag is the age of the newest push"}
    judged.setdefault("archive_lag_seconds", w.get("last_push_age_seconds"))
    return {**w, **judged}
