"""Retention for point-in-time recovery: base backups by `retention.pitr_days`, and their WAL.

Base backups are kept when they stopped within the last pitr_days, plus the newest one
before that (so the window reaches back the full pitr_days), plus always the newest.
Every WAL segment from the oldest kept base backup's start onwards is kept; older
segments, and the .backup/.partial files beside them, go. Timeline history files stay
(a few bytes each, and replay needs them to follow a timeline switch).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from crmops.pitr.archive import SEGMENT_RE, WalArchive, parse_segment, wal_key


def plan_physical(manifests: list[dict[str, Any]], pitr_days: int,
                  now: datetime | None = None) -> tuple[list[str], list[str]]:
    """(kept ids, forgotten ids) among physical base backups, cluster by cluster."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=pitr_days)
    keep: list[str] = []
    drop: list[str] = []
    systems: dict[str, list[dict[str, Any]]] = {}
    for m in manifests:
        systems.setdefault(m["physical"]["system_id"], []).append(m)
    for bases in systems.values():
        bases.sort(key=lambda m: m["physical"]["stop_time"])
        recent = [m for m in bases if datetime.fromisoformat(m["physical"]["stop_time"]) >= cutoff]
        older = [m for m in bases if m not in recent]
        kept = recent + older[-1:]
        keep += [m["id"] for m in kept]
        drop += [m["id"] for m in bases if m not in kept]
    return keep, drop


def wal_to_delete(repo: Any, kept: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(key, size) of archived WAL files older than every kept base backup of their cluster."""
    out: list[tuple[str, int]] = []
    systems: dict[str, list[dict[str, Any]]] = {}
    for m in kept:
        systems.setdefault(m["physical"]["system_id"], []).append(m)
    for system_id, bases in systems.items():
        seg = bases[0]["physical"]["wal_segment_size"]
        oldest = min(parse_segment(m["physical"]["start_segment"], seg)[1] for m in bases)
        for f in WalArchive(repo, system_id).files():
            if f.name.endswith(".history"):
                continue
            head = f.name[:24]
            if SEGMENT_RE.match(head) and parse_segment(head, seg)[1] < oldest:
                out.append((wal_key(system_id, f.name), f.size))
    return out


def apply(repo: Any, manifests: list[dict[str, Any]], pitr_days: int, *, dry_run: bool) -> dict[str, Any]:
    """Forget old base backups' WAL (the manifests themselves are deleted by the caller)."""
    from crmops.pitr.window import window

    physical = [m for m in manifests if m.get("kind") == "physical"]
    keep, drop = plan_physical(physical, pitr_days)
    kept = [m for m in physical if m["id"] in keep]
    doomed = wal_to_delete(repo, kept)
    systems = sorted({m["physical"]["system_id"] for m in physical})
    before = {s: window(repo, s).get("start") for s in systems}
    after = {}
    for s in systems:
        ks = [m for m in kept if m["physical"]["system_id"] == s]
        after[s] = min((m["physical"]["stop_time"] for m in ks), default=None)
    if not dry_run:
        for key, _size in doomed:
            repo.store.delete(key)
    return {"keep": keep, "forget": drop, "wal_files_deleted": len(doomed),
            "wal_bytes_freed": sum(n for _, n in doomed), "window_start_before": before,
            "window_start_after": after, "pitr_days": pitr_days}


def binlogs_to_delete(repo: Any, kept: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(key, size) of archived binary logs older than every kept snapshot's binlog file, per server.

    A server none of whose kept snapshots records a position keeps all its binlogs: without
    a starting point nothing tells which are useless.
    """
    oldest: dict[str, str] = {}
    for m in kept:
        b = m.get("binlog")
        if b and b.get("server_id"):
            sid = b["server_id"]
            oldest[sid] = min(oldest.get(sid, b["file"]), b["file"])
    out = []
    for sid, first in oldest.items():
        for key, size in repo.store.list(f"binlog/{sid}/"):
            if key.rsplit("/", 1)[1] < first:
                out.append((key, size))
    return sorted(out)
