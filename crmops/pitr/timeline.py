"""Production's timeline line in the WAL archive, and the promotions made through crmops.

A restored copy that promotes starts a new timeline and, left with production's
archive_command, would push its history file and segments into production's archive;
`restore --at latest` would then follow the copy. So the archive records the line
production is on (waltimeline/<system id>, sealed JSON): the tip timeline and, for each
ancestor, the LSN where its child began (from the tip's .history file). `wal push`
accepts a file only on that line: of the tip, or of an ancestor up to the segment that
holds its switch point. Any other timeline (a copy, a standby promoted by hand, a former
primary still writing on the old timeline) is refused with exit 84 until
`crmops wal promote` names it production's: that command pushes the new timeline's
history file itself and moves the tip. Restores replay towards the tip.

The first file pushed into an archive without a record sets the line (its timeline).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from crmops.errors import ConfigError, WalRefused
from crmops.pitr.archive import (
    DEFAULT_SEGMENT_SIZE,
    SEGMENT_RE,
    WalArchive,
    format_lsn,
    parse_lsn,
    parse_segment,
    segno_of,
)

PROMOTE_HINT = ("a restored copy must not archive here (set archive_mode = off on it); if this server is the new "
                "production, run `crmops wal promote --url URL-of-this-server` first")


def timeline_key(system_id: str) -> str:
    return f"waltimeline/{system_id}"


def parse_history(text: str) -> dict[int, int]:
    """{ancestor timeline: LSN where its child began} from a .history file's lines."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and parts[0].isdigit() and "/" in parts[1]:
            out[int(parts[0])] = parse_lsn(parts[1])
    return out


def file_timeline(name: str) -> int:
    return int(name[:8], 16)


def read_line(archive: WalArchive) -> dict[str, Any] | None:
    """{"tip", "switches": {timeline: lsn}, "promoted": [...], "segment_size"} or None before the first push."""
    key = timeline_key(archive.system_id)
    if not archive.store.exists(key):
        return None
    return json.loads(archive.sealer.open(archive.store.get(key), f"waltimeline:{archive.system_id}", key))


def write_line(archive: WalArchive, doc: dict[str, Any]) -> None:
    key = timeline_key(archive.system_id)
    archive.store.put(key, archive.sealer.seal(json.dumps(doc).encode(), f"waltimeline:{archive.system_id}"))


def first_line(name: str, data: bytes) -> dict[str, Any]:
    tli = file_timeline(name)
    switches = parse_history(data.decode("utf-8", "replace")) if name.endswith(".history") else {}
    return {"tip": tli, "switches": {str(k): format_lsn(v) for k, v in switches.items()}, "promoted": [],
            "segment_size": DEFAULT_SEGMENT_SIZE}


def refusal(line: dict[str, Any], name: str) -> str | None:
    """Why name is not on production's line, or None when it is."""
    tli, tip = file_timeline(name), line["tip"]
    if tli == tip:
        return None
    switch = line["switches"].get(str(tli))
    if switch is None:
        return (f"{name} belongs to timeline {tli}, which is not production's: the archive follows timeline {tip}"
                + (f" (from {', '.join(sorted(line['switches'], key=int))})" if line["switches"] else ""))
    if name.endswith(".history"):
        return None  # an ancestor's history: push compares it with the stored one
    seg = name[:24]
    if not SEGMENT_RE.match(seg):
        return None
    seg_size = int(line.get("segment_size") or DEFAULT_SEGMENT_SIZE)
    if parse_segment(seg, seg_size)[1] <= segno_of(parse_lsn(switch), seg_size):
        return None
    return (f"{name} continues timeline {tli} past {switch}, where production moved on to a newer timeline "
            f"(the archive follows {tip}): a former primary still writing on the old timeline")


def guard(archive: WalArchive, name: str, data: bytes) -> None:
    """Raise WalRefused unless name lies on production's line; start the line on the first push."""
    line = read_line(archive)
    if line is None:
        write_line(archive, first_line(name, data))
        return
    why = refusal(line, name)
    if why:
        raise WalRefused(why + "; refusing to archive it", hint=PROMOTE_HINT)


def target_timeline(archive: WalArchive) -> str:
    """recovery_target_timeline for a restore: production's tip, or 'latest' for an archive without a record."""
    line = read_line(archive)
    return str(line["tip"]) if line else "latest"


def on_line(line: dict[str, Any] | None, name: str) -> bool:
    """Whether a restore may use this archived file (no record: every file, as before)."""
    if line is None or name.endswith(".history"):
        return True
    return refusal(line, name[:-len(".partial")] if name.endswith(".partial") else name) is None


def promote(archive: WalArchive, timeline: int, history: bytes, *, segment_size: int,
            server: str) -> dict[str, Any]:
    """Make timeline production's: its history must descend from the current tip; the history file is
    archived here (a later push of the same bytes by the server is 'already')."""
    from crmops.errors import WalConflict
    from crmops.pitr.archive import wal_key

    line = read_line(archive)
    parents = parse_history(history.decode("utf-8", "replace"))
    if line is not None:
        if timeline == line["tip"]:
            return {"timeline": timeline, "already": True, "tip_before": timeline}
        if line["tip"] not in parents:
            raise ConfigError(f"timeline {timeline} does not descend from production's timeline {line['tip']} "
                              f"(its history names {', '.join(map(str, parents)) or 'no parent'})",
                              hint="promote the server restored from this archive, not another cluster")
        for tli, lsn in line["switches"].items():
            if parents.get(int(tli)) not in (None, parse_lsn(lsn)):
                raise ConfigError(f"timeline {timeline} left timeline {tli} at {format_lsn(parents[int(tli)])}, "
                                  f"production at {lsn}: it is not on production's line")
    name = f"{timeline:08X}.history"
    key = wal_key(archive.system_id, name)
    if archive.store.exists(key):
        if archive.read(name) != history:
            raise WalConflict(f"another {name} is archived already (a copy that archived here before this "
                              "version refused it)", hint="archive the new production into a new repository")
    else:
        archive.store.put(key, archive.sealer.seal(history, f"wal:{archive.system_id}/{name}"))
    before = line["tip"] if line else None
    doc = {"tip": timeline, "switches": {str(k): format_lsn(v) for k, v in parents.items()},
           "promoted": [*(line or {}).get("promoted", []),
                        {"timeline": timeline, "from": before, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                         "server": server}],
           "segment_size": segment_size}
    write_line(archive, doc)
    return {"timeline": timeline, "already": False, "tip_before": before,
            "switch_lsn": doc["switches"].get(str(before)) if before else None}


class GuardedArchive(WalArchive):
    """The archive as `wal push` and `wal stream` write it: only files on production's line."""

    def push(self, path: Any) -> str:
        from pathlib import Path

        path = Path(path)
        if not path.name.endswith(".partial"):
            try:
                data = path.read_bytes() if path.name.endswith(".history") else b""
            except OSError as e:
                raise ConfigError(f"cannot read {path}: {e.strerror}") from None
            guard(self, path.name, data)
        return super().push(path)

    def push_partial(self, segment: str, data: bytes) -> str:
        guard(self, segment + ".partial", b"")
        return super().push_partial(segment, data)
