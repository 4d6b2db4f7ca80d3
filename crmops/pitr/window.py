"""The recoverable window: from the oldest usable base backup to the newest archived WAL.

A base backup is usable from its stop time (recovery cannot end before the backup's
stop LSN) as long as every segment from its start onwards is archived; the first
missing segment ends the window of every base backup older than it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from crmops.pitr.archive import DEFAULT_SEGMENT_SIZE, WalArchive, first_gap, parse_segment, segment_name, timeline_of


def physical_manifests(repo: Any, system_id: str | None = None) -> list[dict[str, Any]]:
    out = [m for m in repo.listing().manifests if m.get("kind") == "physical"]
    if system_id:
        out = [m for m in out if m["physical"]["system_id"] == system_id]
    return sorted(out, key=lambda m: m["physical"]["stop_time"])


def archived_systems(repo: Any) -> list[str]:
    return sorted({key.split("/", 1)[1] for key, _ in repo.store.list("walstate/")})


def window(repo: Any, system_id: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Facts about one cluster's archive; {"configured": False} when there is none."""
    now = now or datetime.now(UTC)
    bases = physical_manifests(repo, system_id)
    if system_id is None:
        systems = [bases[-1]["physical"]["system_id"]] if bases else archived_systems(repo)[-1:]
        if not systems:
            return {"configured": False}
        system_id = systems[0]
        bases = [m for m in bases if m["physical"]["system_id"] == system_id]
    archive = WalArchive(repo, system_id)
    segments = archive.segments()
    latest = archive.latest()
    seg_size = bases[-1]["physical"]["wal_segment_size"] if bases else DEFAULT_SEGMENT_SIZE
    out: dict[str, Any] = {"configured": True, "system_id": system_id, "segments": len(segments),
                           "base_backups": len(bases), "newest_segment": latest["segment"] if latest else None,
                           "newest_archived_at": latest["pushed_at"] if latest else None,
                           "newest_is_partial": bool(latest and latest.get("partial")),
                           "archive_lag_seconds": None, "last_push_age_seconds": None, "start": None, "end": None,
                           "gap": None, "segment_size": seg_size, "pushes": (latest or {}).get("pushes", [])}
    if latest:
        age = round((now - datetime.fromisoformat(latest["pushed_at"])).total_seconds(), 1)
        out["archive_lag_seconds"] = out["last_push_age_seconds"] = age
    if not bases or not segments:
        return out
    oldest_segno = parse_segment(bases[0]["physical"]["start_segment"], seg_size)[1]
    gap = first_gap(segments, oldest_segno, seg_size)
    usable = bases
    if gap is not None:
        name = segment_name(timeline_of(segments, gap, seg_size), gap, seg_size)
        broken = [m["id"] for m in bases if parse_segment(m["physical"]["start_segment"], seg_size)[1] <= gap]
        usable = [m for m in bases if parse_segment(m["physical"]["start_segment"], seg_size)[1] > gap]
        out["gap"] = {"missing_segment": name, "breaks_base_backups": broken,
                      "message": f"WAL segment {name} is missing from the archive: base backups "
                                 f"{', '.join(broken)} cannot be recovered past it"}
    if usable:
        out["start"] = usable[0]["physical"]["stop_time"]
        # a base backup is recorded only once its last segment is archived, at its stop time: the
        # archive reaches that far even when the push itself came a moment before (the first base)
        ends = [t for t in (latest["pushed_at"] if latest else None, usable[-1]["physical"]["stop_time"]) if t]
        out["end"] = max(ends, key=datetime.fromisoformat)
        out["base_snapshot_ids"] = [m["id"] for m in usable]
    return out


#: what window() carries for the lag and its chart, left out of what commands print
INTERNAL = ("pushes", "archived_sizes")


def public(w: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in w.items() if k not in INTERNAL}


def assessed(w: dict[str, Any], url: str | None, now: datetime | None = None) -> dict[str, Any]:
    """w with archive_lag_seconds judged by its server when url names it (pitr/lag.py)."""
    from crmops.pitr.lag import assess

    return assess(w, url, now, w.get("archived_sizes"))


def describe(repo: Any, system_id: str | None = None, url: str | None = None) -> dict[str, Any]:
    info = window(repo, system_id)
    if info["configured"]:
        info = public(assessed(info, url))
    lines: list[str] = []
    if not info["configured"]:
        lines.append("no WAL archive in this repository yet: `crmops wal setup` shows how to start one")
    else:
        lines.append(f"cluster {info['system_id']}: {info['segments']} segments archived, "
                     f"{info['base_backups']} base backups")
        if info["newest_segment"]:
            part = " (its streamed part)" if info.get("newest_is_partial") else ""
            lines.append(f"newest segment {info['newest_segment']}{part} archived {info['newest_archived_at']} "
                         f"({info['last_push_age_seconds']:.0f} s ago)")
            lines.append(f"archive lag {info['archive_lag_seconds']:.0f} s: {info['lag_note']}")
        if info.get("archive_failing"):
            lines.append(f"archive_command is failing: {info['archive_failing']['wal']} failed at "
                         f"{info['archive_failing']['at']}")
        if info["start"]:
            lines.append(f"recoverable window: {info['start']} .. {info['end']}")
        else:
            lines.append("no recoverable window: take a base backup (crmops backup --physical)")
        if info["gap"]:
            lines.append(info["gap"]["message"])
    return {"ok": info.get("gap") is None, **info, "lines": lines}


def all_windows(repo: Any) -> list[dict[str, Any]]:
    """The window of every cluster archiving into this repository (usually one), WAL and binlog."""
    systems = set(archived_systems(repo)) | {m["physical"]["system_id"] for m in physical_manifests(repo)}
    return [window(repo, s) for s in sorted(systems)] + binlog_windows(repo)


def binlog_windows(repo: Any, now: datetime | None = None) -> list[dict[str, Any]]:
    """MariaDB/MySQL: per server, from the oldest snapshot with a binlog position to the last push."""
    from crmops.pitr.binlog import read_state

    now = now or datetime.now(UTC)
    servers = sorted({key.split("/", 1)[1] for key, _ in repo.store.list("binlogstate/")})
    if not servers:
        return []
    snaps = [m for m in repo.listing().manifests if m.get("binlog")]
    out = []
    for sid in servers:
        state = read_state(repo, sid)
        stored = {key.rsplit("/", 1)[1] for key, _ in repo.store.list(f"binlog/{sid}/")}
        mine = [m for m in snaps if m["binlog"].get("server_id") == sid]
        info: dict[str, Any] = {"configured": True, "kind": "binlog", "system_id": sid, "segments": len(stored),
                                "base_backups": len(mine), "newest_segment": state.get("active"),
                                "newest_archived_at": state.get("pushed_at"), "archive_lag_seconds": None,
                                "last_push_age_seconds": None,
                                "start": mine[0]["time"] if mine else None, "end": state.get("pushed_at"),
                                "gap": None, "pushes": state.get("pushes", []), "archived_sizes": state["files"]}
        if state.get("pushed_at"):
            age = round((now - datetime.fromisoformat(state["pushed_at"])).total_seconds(), 1)
            info["archive_lag_seconds"] = info["last_push_age_seconds"] = age
        if mine:
            first = mine[0]["binlog"]["file"]
            stem, _, num = first.rpartition(".")
            numbers = sorted(int(n.rpartition(".")[2]) for n in stored if n.rpartition(".")[0] == stem)
            newest = numbers[-1] if numbers else int(num)
            missing = next((i for i in range(int(num), newest + 1) if i not in numbers), None)
            if missing is not None:
                name = f"{stem}.{missing:0{len(num)}d}"
                info["gap"] = {"missing_segment": name, "breaks_base_backups": [m["id"] for m in mine],
                               "message": f"binary log {name} of server {sid} is missing from the archive: "
                                          "snapshots before it cannot be rolled forward past it"}
        out.append(info)
    return out


def figures(config: Any, keys: list[str] | None = None) -> dict[str, Any]:
    """What the metrics export: the archive lag (judged by the server when reachable), the last push
    and the window start (Unix times). keys: the repository's whole listing, when the caller made one."""
    from crmops.repository import open_repository
    from crmops.storage import open_store

    if keys is None:
        store = open_store(config.repository.url, config.repository)
        archived = any(True for prefix in ("walstate/", "binlogstate/") for _ in store.list(prefix))
    else:
        archived = any(k.startswith(("walstate/", "binlogstate/")) for k in keys)
    if not archived:
        return {}  # no archive: no key derivation, no manifests read at the end of every job
    wins = [w for w in all_windows(open_repository(config)) if w.get("newest_archived_at")]
    if not wins:
        return {}
    w = assessed(max(wins, key=lambda x: x["newest_archived_at"]), config.database.url)
    out: dict[str, Any] = {"archive_lag_seconds": w["archive_lag_seconds"],
                           "archive_last_push_timestamp": datetime.fromisoformat(w["newest_archived_at"]).timestamp()}
    if w.get("start"):
        out["pitr_window_start_timestamp"] = datetime.fromisoformat(w["start"]).timestamp()
    return out
