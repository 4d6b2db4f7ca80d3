"""`crmops backup --physical`: a PostgreSQL base backup streamed through the chunker.

`pg_basebackup -D - -Ft -X none` writes the data directory as one tar on stdout; it goes
through the same content-defined chunking as dumps, so the unchanged files of successive
base backups are stored once. No WAL is included: the base is usable with the archive
only, and pg_basebackup waits until the backup's last segment has been archived, so when
it returns the backup is complete in the repository.

No logical fingerprint is taken: a fingerprint means a second, consistent read of every
row at the backup's exact LSN, and a base backup has no such point (it spans start to
stop LSN and becomes consistent only by replay). A physical restore is checked by
PostgreSQL itself (it refuses to promote before the stop LSN) and by verify's consistency
checks and assertions on the recovered copy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from crmops.config import Config
from crmops.dburl import engine_kind, safe
from crmops.errors import ArchiveNotWorking, ConfigError, DatabaseError
from crmops.pitr.archive import WalArchive, format_lsn, parse_lsn, segment_name, segno_of, wal_key
from crmops.pitr.basewatch import WAL_TIMEOUT_S, BaseBackupWatch
from crmops.pitr.tarscan import TarScanner

STREAM = "pgdata"
FORMAT = "pg_basebackup-tar"
LABEL_START_RE = re.compile(r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)", re.M)
LABEL_TLI_RE = re.compile(r"^START TIMELINE: (\d+)", re.M)


def server_facts(engine: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
            " (SELECT system_identifier::text FROM pg_control_system()),"
            " current_setting('wal_segment_size'), current_setting('archive_mode'),"
            " current_setting('archive_command'), (SELECT rolname FROM pg_roles WHERE oid = 10),"
            " pg_is_in_recovery(), (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
            " (SELECT sum(pg_database_size(oid))::bigint FROM pg_database),"
            " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END"
        ).fetchone()
    return {"server_version": row[0].split()[0], "server_version_num": row[1], "system_id": row[2],
            "archive_mode": row[4], "archive_command": row[5], "superuser": row[6], "in_recovery": row[7],
            "wal_segment_size": int(row[8]), "size": int(row[9] or 0) or None, "walfile": row[10]}


def _on_production_line(repo: Any, facts: dict[str, Any]) -> None:
    """A base backup of a server the archive refuses (a copy, an unrecorded promotion) could never be replayed."""
    from crmops.errors import WalRefused
    from crmops.pitr.timeline import PROMOTE_HINT, read_line, refusal

    if not facts["walfile"]:
        return
    line = read_line(WalArchive(repo, facts["system_id"]))
    why = refusal(line, facts["walfile"]) if line else None
    if why:
        raise WalRefused(f"this server's WAL is refused by the archive: {why}", hint=PROMOTE_HINT)


def physical_backup(config: Config, *, tags: Iterable[str] = (), url: str | None = None,
                    progress: Callable[..., None] | None = None, wal_timeout_s: float = WAL_TIMEOUT_S
                    ) -> dict[str, Any]:
    """One base backup; ArchiveNotWorking (exit 85) when the WAL it needs is not archived within
    wal_timeout_s, instead of waiting with the server for ever."""
    from crmops.engines.postgres import FIX, PostgresEngine
    from crmops.engines.tools import ToolProcess, require_tool
    from crmops.repository import open_repository
    from crmops.repository.source import source_of_url

    source = url or config.database.url
    if engine_kind(source) != "postgresql":
        raise ConfigError("--physical backs up PostgreSQL only; MariaDB point-in-time recovery is not built yet",
                          hint="run `crmops backup` for a logical snapshot")
    engine = PostgresEngine(source)
    facts = server_facts(engine)
    # a wrapper script around `crmops wal push` is fine: the backup history file must reach this
    # repository's archive below, which proves archiving works whatever the command looks like
    if facts["archive_mode"] == "off" or not facts["archive_command"]:
        raise ConfigError(f"{safe(source)} does not archive its WAL to crmops (archive_mode={facts['archive_mode']}): "
                          "a base backup alone cannot be recovered",
                          hint="run `crmops wal setup --apply`, restart PostgreSQL, then back up again")
    major = int(facts["server_version"].split(".")[0])
    tool = require_tool(["pg_basebackup"], (major,), what=f"take a base backup of PostgreSQL {major}",
                        fix=FIX.format(major=major), extra_dirs=[f"/usr/lib/postgresql/{major}/bin"])
    repo = open_repository(config)
    _on_production_line(repo, facts)
    started = time.monotonic()
    start_time = datetime.now(UTC)
    argv = [tool, "-D", "-", "-Ft", "-X", "none", "-c", "fast", "-v", "--no-manifest", "-l", "crmops base backup"]
    say = progress or (lambda n, **kw: None)
    say(0, total=facts["size"], description="base backup")
    proc: ToolProcess | None = None
    watch = BaseBackupWatch(source, timeout_s=wal_timeout_s, kill=lambda: proc.kill() if proc else None,
                            describe=lambda phase: say(0, description=f"base backup: {phase}"))
    proc = ToolProcess(argv, env={**engine._env(), "PGAPPNAME": watch.app_name}, secrets=engine._secrets(),
                       label="pg_basebackup")
    scanner = TarScanner(proc.pieces(), {"backup_label", "tablespace_map"})
    try:
        with repo.writer(tags=tags) as writer:
            try:
                with watch:
                    writer.add_stream(STREAM, scanner, format=FORMAT, progress=progress)
            except DatabaseError:
                if watch.gave_up:
                    raise ArchiveNotWorking(
                        f"the WAL this base backup needs was not archived within {wal_timeout_s:g} s; "
                        f"{watch.gave_up}", hint="fix archiving (`crmops wal setup --check` names the cause), "
                        "then back up again; nothing was recorded") from None
                raise
            label = scanner.captured.get("backup_label", b"").decode("utf-8", "replace")
            m_start = LABEL_START_RE.search(label)
            m_tli = LABEL_TLI_RE.search(label)
            if not (m_start and m_tli):
                raise DatabaseError(f"pg_basebackup's output holds no readable backup_label: {proc.stderr_tail()}")
            if "tablespace_map" in scanner.captured:
                raise ConfigError("the cluster has tablespaces outside its data directory; crmops base backups "
                                  "support the data directory only")
            with engine.connect() as conn:
                stop_time = conn.execute("SELECT now()").fetchone()[0].astimezone(UTC)
            from crmops.pitr.tables import table_names

            # the names only (no rows): `restore --at --tables` checks a typo against them before replaying
            tables = table_names(source)
            seg = facts["wal_segment_size"]
            start_lsn, timeline = parse_lsn(m_start[1]), int(m_tli[1])
            archive = WalArchive(repo, facts["system_id"])
            history = _backup_history(archive, timeline, start_lsn, seg, wal_timeout_s)
            stop_lsn = parse_lsn(history["STOP WAL LOCATION"].split()[0])
            physical = {
                "system_id": facts["system_id"], "timeline": timeline, "wal_segment_size": seg,
                "start_lsn": format_lsn(start_lsn), "stop_lsn": format_lsn(stop_lsn),
                "start_segment": segment_name(timeline, segno_of(start_lsn, seg), seg),
                "stop_segment": segment_name(timeline, segno_of(stop_lsn, seg), seg),
                "start_time": start_time.isoformat(timespec="microseconds"),
                "stop_time": stop_time.isoformat(timespec="microseconds"),
                "server_version_num": facts["server_version_num"], "superuser": facts["superuser"],
                "backup_label": label, "backup_history": history, "tables": tables,
                # what production runs: `restore --to-datadir` builds its restore_command from it
                "archive_command": facts["archive_command"],
                "fingerprint": None,
                "fingerprint_note": "none: a base backup has no single consistent point to read rows at; "
                                    "recovery checks consistency (stop LSN) and verify runs its checks",
            }
            stop_seg = physical["stop_segment"]
            if not archive.store.exists(wal_key(facts["system_id"], stop_seg)):
                raise DatabaseError(f"the backup's last WAL segment {stop_seg} is not in the archive",
                                    hint="check that archive_command runs `crmops wal push` into this repository "
                                         "(`crmops wal status`)")
            manifest = writer.commit({
                "kind": "physical", "engine": "postgresql", "server_version": facts["server_version"],
                "database": engine.database_name(), "source": safe(source), "source_id": source_of_url(source),
                "schema_revision": None,
                "fingerprint": None, "physical": physical,
            })
    finally:
        proc.close()
    stats = manifest["stats"]
    return {"ok": True, "snapshot_id": manifest["id"], "kind": "physical",
            "duration_s": round(time.monotonic() - started, 2), "engine": "postgresql",
            "server_version": facts["server_version"], "bytes_read": stats["bytes_read"],
            "bytes_new": stats["bytes_new"], "dedup_ratio": stats["dedup_ratio"], "chunks": stats["chunks"],
            "chunks_new": stats["chunks_new"], **{k: physical[k] for k in (
                "system_id", "timeline", "start_lsn", "stop_lsn", "start_time", "stop_time")},
            "tags": list(tags)}


def _backup_history(archive: WalArchive, timeline: int, start_lsn: int, seg: int,
                    wait_s: float = WAL_TIMEOUT_S) -> dict[str, str]:
    """The server's own record of the backup (START/STOP WAL LOCATION, STOP TIME ...), from the archive.

    pg_basebackup -X none does not print the stop LSN; the server writes it into
    <segment>.<offset>.backup and archives it with the segments, so it is read from there.
    """
    from crmops.errors import WalMissing

    name = f"{segment_name(timeline, segno_of(start_lsn, seg), seg)}.{start_lsn % seg:08X}.backup"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = archive.read(name).decode("utf-8", "replace")
            break
        except WalMissing:
            if time.monotonic() > deadline:
                raise ArchiveNotWorking(f"the backup history file {name} did not reach the archive within "
                                        f"{wait_s:g} s", hint="check archive_command (`crmops wal setup --check`, "
                                        "the server log); the base backup was not recorded") from None
            time.sleep(0.5)
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    if "STOP WAL LOCATION" not in out:
        raise DatabaseError(f"the backup history file {name} has no STOP WAL LOCATION")
    return out
