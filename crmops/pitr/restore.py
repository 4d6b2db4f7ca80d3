"""`crmops restore --at`: the newest base backup before the target plus the archive replayed to it.

Three forms share one plan (which base, which window, which WAL):
- into a recovery sandbox (`--sandbox`, kept with `--keep`): the proof, and the source of
- table-level recovery (`--tables t1,t2 --to URL [--as PREFIX]`): only those tables move into
  the target, through the same steps as plain `restore --tables` (crmops.pitr.tables);
- into an empty data directory (`--to-datadir DIR`) for a real recovery, with
  restore_command pointing at this crmops, for PostgreSQL to replay on its next start.
Everything is validated (target, window, base backup, tables named) before the first change.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.dburl import engine_kind, safe
from crmops.errors import ConfigError, OutsideWindow, RecoveryFailed, TargetNotEmpty
from crmops.pitr.archive import (
    FILE_RE,
    SEGMENT_RE,
    WalArchive,
    last_partials,
    parse_lsn,
    parse_segment,
    segno_of,
)
from crmops.pitr.basebackup import STREAM
from crmops.pitr.timeline import on_line, read_line, target_timeline
from crmops.pitr.untar import extract_all
from crmops.pitr.window import physical_manifests, window

#: the folder inside a --to-datadir data directory that holds the WAL fetched at restore time
WAL_SPOOL = "crmops_wal_spool"
LSN_RE = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
SANDBOX_HBA = "local all all trust\nhost all all all scram-sha-256\n"


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--at {text!r} is not a time", hint='write it as "2026-12-01 14:05:00+00"') from None
    if when.tzinfo is None:
        raise ConfigError(f"--at {text!r} has no UTC offset: the server and this machine may disagree on the zone",
                          hint='add one, e.g. "2026-12-01 14:05:00+00" or "+08"')
    return when.astimezone(UTC)


def check_target(target: dict[str, str]) -> dict[str, Any]:
    (kind, value), = target.items()
    if kind == "time" and value.strip().lower() == "latest":
        return {"kind": "latest", "value": "latest"}  # no target: replay every archived WAL file, then promote
    if kind == "time":
        return {"kind": kind, "value": value, "time": parse_time(value)}
    if kind == "lsn":
        if not LSN_RE.match(value):
            raise ConfigError(f"--at-lsn {value!r} is not an LSN", hint="write it as 0/3000060")
        return {"kind": kind, "value": value.upper(), "lsn": parse_lsn(value)}
    if kind == "xid":
        if not value.isdigit():
            raise ConfigError(f"--before-xid {value!r} is not a transaction id (a number)")
        return {"kind": kind, "value": value}
    if not value or len(value) > 63:
        raise ConfigError("--at-name takes the name given to pg_create_restore_point()")
    return {"kind": kind, "value": value}


def recovery_settings(target: dict[str, Any], restore_command: str, timeline: str = "latest") -> dict[str, str]:
    """timeline: production's (crmops.pitr.timeline), never merely the newest history file's."""
    out = {"restore_command": restore_command, "recovery_target_action": "promote",
           "recovery_target_timeline": timeline, "archive_mode": "off"}
    if target["kind"] == "latest":
        pass
    elif target["kind"] == "time":
        out["recovery_target_time"] = target["time"].isoformat(sep=" ")
    elif target["kind"] == "lsn":
        out["recovery_target_lsn"] = target["value"]
    elif target["kind"] == "xid":
        out["recovery_target_xid"] = target["value"]
        out["recovery_target_inclusive"] = "off"  # --before-xid: that transaction is not replayed
    else:
        out["recovery_target_name"] = target["value"]
    return out


def _conf_line(name: str, value: str) -> str:
    return f"{name} = '{value.replace(chr(39), chr(39) * 2)}'\n"


def choose_base(repo: Any, target: dict[str, Any], system_id: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base manifest, window) for the target; OutsideWindow names the window when it does not fit."""
    win = window(repo, system_id)
    if not win.get("configured") or not win.get("start") or not win.get("end"):
        raise OutsideWindow("there is no recoverable window yet: no base backup with its WAL archived",
                            hint="turn archiving on (`crmops wal setup --apply`) and run `crmops backup --physical`")
    usable = [m for m in physical_manifests(repo, win["system_id"]) if m["id"] in win["base_snapshot_ids"]]
    span = f"the recoverable window is {win['start']} .. {win['end']}"
    if target["kind"] == "time":
        when = target["time"]
        if when < datetime.fromisoformat(win["start"]) or when > datetime.fromisoformat(win["end"]):
            raise OutsideWindow(f"{when.isoformat(sep=' ')} lies outside the recoverable window: {span}"
                                + (f"; {win['gap']['message']}" if win.get("gap") else ""),
                                hint="pick a time inside it (`crmops wal status` shows it)")
        before = [m for m in usable if datetime.fromisoformat(m["physical"]["stop_time"]) <= when]
    elif target["kind"] == "lsn":
        before = [m for m in usable if parse_lsn(m["physical"]["stop_lsn"]) <= target["lsn"]]
        if not before:
            raise OutsideWindow(f"LSN {target['value']} lies before the oldest usable base backup's end "
                                f"({usable[0]['physical']['stop_lsn']}); {span}")
    else:
        before = usable  # a name or an xid carries no position: the newest base, replay finds it or fails
    return before[-1], win


# -- preparing a data directory ----------------------------------------------------------

class _Stream(io.RawIOBase):
    """Pieces seen as a readable file, for tarfile's stream mode."""

    def __init__(self, pieces: Any) -> None:
        self._pieces = iter(pieces)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, out: Any) -> int:
        while not self._rest:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._rest = piece
        n = min(len(out), len(self._rest))
        out[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def extract_base(repo: Any, manifest: dict[str, Any], datadir: Path, progress: Callable[[int], None] | None) -> None:
    def counted() -> Any:
        for piece in repo.read_stream(manifest, STREAM):
            if progress:
                progress(len(piece))
            yield piece

    datadir.mkdir(parents=True, exist_ok=True)
    os.chmod(datadir, 0o700)
    with tarfile.open(fileobj=io.BufferedReader(_Stream(counted()), 1 << 20), mode="r|") as tar:
        extract_all(tar, datadir)
    (datadir / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)


def last_needed_segment(repo: Any, base: dict[str, Any], target: dict[str, Any]) -> int | None:
    """A segment number past which replay to the target never reads, or None (read to the end).

    A later base backup that started after the target time began at an LSN past it, so the
    WAL up to its start segment holds the target (one more segment for the commit after it).
    """
    seg = base["physical"]["wal_segment_size"]
    if target["kind"] == "lsn":
        return segno_of(target["lsn"], seg) + 1
    if target["kind"] != "time":
        return None
    later = [m for m in physical_manifests(repo, base["physical"]["system_id"])
             if datetime.fromisoformat(m["physical"]["start_time"]) > target["time"]]
    if not later:
        return None
    return min(parse_segment(m["physical"]["start_segment"], seg)[1] for m in later) + 1


def prefetch_wal(archive: WalArchive, base: dict[str, Any], folder: Path, last: int | None = None) -> int:
    """Every archived WAL file the replay may ask for from the base's start on: segments, histories."""
    seg_size = base["physical"]["wal_segment_size"]
    start_tli, start_segno = parse_segment(base["physical"]["start_segment"], seg_size)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    line = read_line(archive)
    files = [f for f in archive.files() if on_line(line, f.name)]  # another line's WAL is never replayed
    partials = last_partials(files, seg_size)  # a streamed partial stands in for the very last segment
    for f in files:
        name = f.name[:-len(".partial")] if f.name in partials else f.name
        if SEGMENT_RE.match(name):
            tli, segno = parse_segment(name, seg_size)
            if segno < start_segno or tli < start_tli or (last is not None and segno > last):
                continue
        elif not f.name.endswith(".history"):
            continue
        (folder / name).write_bytes(archive.read(f.name))
        os.chmod(folder / name, 0o644)
        n += 1
    os.chmod(folder, 0o755)
    return n


def write_recovery(datadir: Path, settings: dict[str, str], *, sandbox: bool) -> None:
    if not (datadir / "postgresql.conf").exists():  # a Debian-style cluster keeps it in /etc
        (datadir / "postgresql.conf").write_text("# written by crmops restore --at\n")
    with open(datadir / "postgresql.auto.conf", "a") as f:
        f.write("\n# crmops restore --at: recovery settings (remove them after the promotion)\n")
        for k, v in settings.items():
            f.write(_conf_line(k, v))
    (datadir / "recovery.signal").write_text("")
    if sandbox:
        (datadir / "pg_hba.conf").write_text(SANDBOX_HBA)
        if not (datadir / "pg_ident.conf").exists():
            (datadir / "pg_ident.conf").write_text("")


def drop_targets(datadir: Path) -> None:
    """Remove the recovery_target_* settings, so a restarted recovery replays to the end of the archive."""
    conf = datadir / "postgresql.auto.conf"
    lines = [ln for ln in conf.read_text().splitlines(keepends=True) if not ln.startswith("recovery_target_")]
    conf.write_text("".join(lines) + "recovery_target_action = 'promote'\n")


# -- the three forms -----------------------------------------------------------------------

def restore_at(config: Config, target_in: dict[str, str], *, to_url: str | None = None,
               tables: list[str] | None = None, prefix: str | None = None, sandbox: bool = False, keep: bool = False,
               to_datadir: Path | None = None, force: bool = False, system_id: str | None = None,
               port: int | None = None,
               progress: Callable[[int], None] | None = None,
               say: Callable[[str], None] = lambda s: None,
               inspect: Callable[[str], dict[str, Any]] | None = None) -> dict[str, Any]:
    from crmops.repository import open_repository

    started = time.monotonic()
    target = check_target(target_in)
    if engine_kind(config.database.url) == "mysql":
        if target["kind"] == "latest":
            raise ConfigError("--at latest is for PostgreSQL's WAL archive; for MariaDB give a time")
        from crmops.pitr.binlog_restore import check_mariadb_form, restore_at_mariadb

        check_mariadb_form(sandbox, tables, to_url, to_datadir, target["kind"], prefix)
        return restore_at_mariadb(config, target["time"], keep=keep, say=say, tables=tables, to_url=to_url,
                                  force=force, inspect=inspect, prefix=prefix)
    forms = [bool(sandbox), to_datadir is not None, to_url is not None]
    if sum(forms) != 1:
        raise ConfigError("restore --at needs one destination: --sandbox, --to-datadir DIR, or --tables ... --to URL")
    if to_url is not None and not tables:
        raise ConfigError("restore --at into a database URL moves chosen tables only: add --tables",
                          hint="for the whole cluster use --to-datadir (a real recovery) or --sandbox")
    if tables and to_url is None:
        raise ConfigError("--tables with --at needs --to URL")
    if prefix is not None and not tables:
        raise ConfigError("--as needs --tables", hint="name the tables to restore beside the live ones")
    if to_url is not None and engine_kind(to_url) != "postgresql":
        raise ConfigError(f"{safe(to_url)} is not PostgreSQL; a PostgreSQL point-in-time copy moves into PostgreSQL")
    if to_datadir is not None and to_datadir.exists() and any(to_datadir.iterdir()):
        raise TargetNotEmpty(f"{to_datadir} is not empty", hint="give an empty or new folder; crmops never "
                             "writes over a data directory")
    repo = open_repository(config)
    base, win = choose_base(repo, target, system_id)
    archive = WalArchive(repo, base["physical"]["system_id"])
    result: dict[str, Any] = {"ok": True, "target": {k: v for k, v in target.items() if k in ("kind", "value")},
                              "base_snapshot": base["id"], "base_stop_time": base["physical"]["stop_time"],
                              "window": {"start": win["start"], "end": win["end"]},
                              "archive_lag_seconds": win.get("archive_lag_seconds"), "lines": []}
    move = None
    if to_url is not None:
        from crmops.pitr.tables import plan_move

        # every base of this cluster that recorded its tables (later ones too: a table made after this base)
        bases = [m for m in physical_manifests(repo, base["physical"]["system_id"]) if "tables" in m["physical"]]
        move = plan_move(config, to_url, tables or [], prefix, force,
                         sorted({t for m in bases for t in m["physical"]["tables"]}) if bases else None,
                         "any base backup")
    if to_datadir is not None:
        return _to_datadir(config, repo, archive, base, target, to_datadir, result, progress, started, port)
    work = Path(tempfile.mkdtemp(prefix="crmops-pitr-"))
    box = None
    try:
        os.chmod(work, 0o755)
        say(f"extracting base backup {base['id']} (stopped {base['physical']['stop_time']})")
        extract_base(repo, base, work / "data", progress)
        n = prefetch_wal(archive, base, work / "wal", last_needed_segment(repo, base, target))
        say(f"replaying {n} archived WAL files to {target['value']} in a sandbox")
        from crmops.pitr.sandbox import WALDIR, RecoverySandbox

        write_recovery(work / "data", recovery_settings(target, f"cp {WALDIR}/%f %p", target_timeline(archive)),
                       sandbox=True)
        box = RecoverySandbox(config.verify, base["server_version"], datadir=work / "data", waldir=work / "wal",
                              superuser=base["physical"].get("superuser") or "postgres", database=base.get("database"))
        box.allow_retry = target["kind"] == "time"
        t_start = time.monotonic()
        try:
            box.start()
        except RecoveryFailed as e:
            if not (box.allow_retry and box.ended_early(e)):
                raise
            # no commit after T reached the archive (a quiet moment): the state at T is the archive's end
            drop_targets(work / "data")
            box.resume_to_end()
            box.started_s = round(time.monotonic() - t_start, 3)
            result["ended_at_archive_end"] = True
            result["lines"].append(f"no transaction committed between the archive's last commit and "
                                   f"{target['value']}: recovered to the end of the archive")
        result.update(wal_files=n, sandbox=box.name, recovery_stopped=box.stopped_at, replay_seconds=box.started_s)
        result["lines"].append(f"recovered base {base['id']} + {n} WAL files to {target['value']} in "
                               f"{box.started_s} s" + (f" (stopped {box.stopped_at})" if box.stopped_at else ""))
        if inspect is not None:
            result.update(inspect(box.url))
        if move is not None:
            from crmops.pitr.tables import move_tables

            moved = move_tables(config, move, box.url, target["value"], say)
            result["lines"] += moved.pop("table_lines")
            result.update(moved)
        if keep:
            box.keep()
            info = box.connect_info()
            info["folder"] = str(work)
            info["remove"] += f"; then rm -rf {work}"
            result["sandbox_info"] = info
            result["lines"].append(f"sandbox {box.name} kept: {info['shell']}")
            result["lines"].append(f"remove it with: {info['remove']}")
    finally:
        if not keep or box is None or not box.alive():
            if box is not None:
                box.remove()
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def spooled_fetch(spool: Path, fetch: str) -> str:
    """restore_command: the copy spooled at restore time when there is one, else `crmops wal fetch`
    (one process per file, start-up and key derivation included: seconds each on a busy machine)."""
    q = shlex.quote(str(spool))
    return f"test -f {q}/%f && cp {q}/%f %p || {fetch}"


def _to_datadir(config: Config, repo: Any, archive: WalArchive, base: dict[str, Any], target: dict[str, Any],
                datadir: Path, result: dict[str, Any], progress: Callable[[int], None] | None,
                started: float, port: int | None) -> dict[str, Any]:
    from crmops.pitr import datadir as dd
    from crmops.services.schedule import crmops_executable

    config_file = Path(config.source) if Path(config.source).is_file() else None
    port = dd.pick_port(port)  # before the first change
    spool = datadir / WAL_SPOOL
    created = not datadir.exists()
    try:
        extract_base(repo, base, datadir, progress)
        fetch, env_file, source = dd.restore_command(base, datadir, config_file)
        if config.reading_copy:  # restored from a copy: WAL archived later comes from that copy too
            fetch = fetch.replace("wal fetch ", f"wal fetch --repository {config.reading_copy} ")
        fetch = spooled_fetch(spool, fetch)
        # the WAL archived so far, fetched now in this one process: replay copies it instead of
        # starting crmops once per file; what is archived later still comes through `wal fetch`
        n = prefetch_wal(archive, base, spool, last_needed_segment(repo, base, target))
        write_recovery(datadir, recovery_settings(target, fetch, target_timeline(archive)), sandbox=False)
        local = dd.write_local_settings(datadir, port)
    except BaseException:
        if created:  # half a data directory must never be mistaken for a recovered one
            shutil.rmtree(datadir, ignore_errors=True)
        raise
    major = base["server_version"].split(".")[0]
    goal = "its end" if target["kind"] == "latest" else target["value"]
    result.update(datadir=str(datadir), restore_command=fetch, wal_files=n, port=port, env_file=env_file,
                  restore_command_from=source, settings=local, seconds=round(time.monotonic() - started, 2))
    result["lines"] += [
        f"base backup {base['id']} extracted into {datadir}, recovery settings written "
        f"(postgresql.auto.conf, recovery.signal, pg_hba.conf: local only, archive_mode = off)",
        *dd.instructions(datadir, major=major, port=port, exe=crmops_executable(), config_file=config_file,
                         target=goal),
        f"{n} archived WAL files are spooled in {spool}; WAL archived later is fetched by crmops with "
        f"{env_file or 'no env file'} ({source})",
        f"once it runs: remove the recovery settings from postgresql.auto.conf, and {spool}",
    ]
    return result


__all__ = ["FILE_RE", "restore_at"]
