"""How far each copy lags the repository: newest snapshot, archive, last restore proven from it.

Read-only on both sides. The lag is the repository's newest snapshot time minus the copy's
(0 when the copy holds it); the archive lag, per archiving cluster, the repository's newest
push minus the newest push the copy holds. With the repository unreachable (gone), the
copy's own ages stand, measured against now, and the state says so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from crmops.config import Config
from crmops.copy.target import open_copy
from crmops.errors import CrmopsError
from crmops.pitr.archive import WalArchive
from crmops.pitr.binlog import read_state
from crmops.repository import Repository, open_repository
from crmops.repository.listing import Listing
from crmops.repository.source import is_safety


def _time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def newest_snapshot(listing: Listing) -> dict[str, Any] | None:
    backups = [m for m in listing.manifests if not is_safety(m)]
    return max(backups, key=lambda m: _time(m["time"])) if backups else None


def archive_ends(repo: Repository) -> dict[str, str]:
    """"wal:<system id>" / "binlog:<server id>" -> the newest push time the repository holds."""
    out: dict[str, str] = {}
    for key, _ in repo.store.list("walstate/"):
        sid = key.split("/", 1)[1]
        latest = WalArchive(repo, sid).latest()
        if latest:
            out[f"wal:{sid}"] = latest["pushed_at"]
    for key, _ in repo.store.list("binlogstate/"):
        sid = key.split("/", 1)[1]
        pushed = read_state(repo, sid).get("pushed_at")
        if pushed:
            out[f"binlog:{sid}"] = pushed
    return out


def _last_proof(runs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The newest drill or verify run against this copy (`--repository NAME`), from the run history."""
    mine = [r for r in runs if r.get("command") in (f"drill@{name}", f"verify@{name}")]
    if not mine:
        return None
    r = mine[-1]
    return {"command": r["command"].split("@")[0], "result": r.get("result"),
            "finished": datetime.fromtimestamp(r["finished"], UTC).isoformat(timespec="seconds")}


def states(config: Config, now: datetime | None = None, runs: list[dict[str, Any]] | None = None, *,
           primary: Repository | None = None, copies: dict[str, Repository] | None = None) -> list[dict[str, Any]]:
    """One state per configured copy; a copy that cannot be read is a state with its error, never a raise.

    primary and copies: repositories already open (after `copy`), so no key is derived twice.
    """
    now = now or datetime.now(UTC)
    primary_newest: dict[str, Any] | None = None
    primary_archive: dict[str, str] = {}
    primary_error = None
    try:
        primary = primary or open_repository(config)
        primary_newest = newest_snapshot(primary.listing())
        primary_archive = archive_ends(primary)
    except CrmopsError as e:
        primary_error = config.redact(e.line())
    out = []
    for c in config.copies:
        state: dict[str, Any] = {"name": c.name, "url": c.url, "key": c.key, "error": None, "newest_snapshot": None,
                                 "newest_snapshot_time": None, "lag_seconds": None, "archive": {},
                                 "archive_lag_seconds": None, "repository_error": primary_error,
                                 "last_proof": _last_proof(runs or [], c.name)}
        try:
            repo = (copies or {}).get(c.name) or open_copy(config, c.name)
            newest = newest_snapshot(repo.listing())
            ends = archive_ends(repo)
        except CrmopsError as e:
            state["error"] = config.redact(e.line())
            out.append(state)
            continue
        if newest:
            state.update(newest_snapshot=newest["id"], newest_snapshot_time=newest["time"])
        if primary_error is None:
            if newest and primary_newest:
                state["lag_seconds"] = max(0.0, round((_time(primary_newest["time"])
                                                       - _time(newest["time"])).total_seconds(), 1))
            elif primary_newest is None:
                state["lag_seconds"] = 0.0  # nothing to copy yet
            lags = {}
            for kind_id, pushed in primary_archive.items():
                theirs = ends.get(kind_id)
                lags[kind_id] = (None if theirs is None else
                                 max(0.0, round((_time(pushed) - _time(theirs)).total_seconds(), 1)))
            state["archive"] = {k: {"newest_push": ends.get(k), "lag_seconds": v} for k, v in lags.items()}
            known = [v for v in lags.values() if v is not None]
            state["archive_lag_seconds"] = (max(known) if len(known) == len(lags) and known else
                                            None if lags else 0.0)
        else:  # the repository is gone or unreachable: the copy's own ages
            if newest:
                state["lag_seconds"] = round((now - _time(newest["time"])).total_seconds(), 1)
            state["archive"] = {k: {"newest_push": v, "lag_seconds": round((now - _time(v)).total_seconds(), 1)}
                                for k, v in ends.items()}
            if ends:
                state["archive_lag_seconds"] = max(a["lag_seconds"] for a in state["archive"].values())
        out.append(state)
    return out


def judged(config: Config, now: datetime, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """states() with each one's "level" and "summary" (what `crmops status` and the page show)."""
    out = []
    for s in states(config, now, runs):
        level, summary = judge(s, config.status.max_copy_lag_hours)
        out.append({**s, "level": level, "summary": summary})
    return out


def judge(state: dict[str, Any], max_hours: float) -> tuple[str, str]:
    """(green|amber|red, summary) of one copy's state."""
    name = state["name"]
    if state["error"]:
        return "red", f"copy {name} cannot be read: {state['error']}"
    if not state["newest_snapshot"]:
        return "red", f"copy {name} holds no snapshot yet: run `crmops copy`"
    limit = max_hours * 3600
    lag = state["lag_seconds"]
    against = "now (the repository cannot be read)" if state["repository_error"] else "the repository"
    if lag is None or lag > limit:
        what = "unknown" if lag is None else f"{lag / 3600:.1f} h"
        return "red", (f"copy {name} lags {against} by {what} (limit {max_hours:g} h); newest snapshot "
                       f"{state['newest_snapshot'][:10]} of {state['newest_snapshot_time'][:19]}")
    alag = state["archive_lag_seconds"]
    if state["archive"] and (alag is None or alag > limit):
        what = "it lacks an archive" if alag is None else f"its archive lags by {alag / 3600:.1f} h"
        return "red", f"copy {name}: {what} (limit {max_hours:g} h): run `crmops copy`"
    proof = state["last_proof"]
    proven = (f"; last verified restore from the copy {proof['finished'][:19]} ({proof['command']}): "
              f"{proof['result']}" if proof
              else f"; no verified restore from the copy yet (`crmops drill --repository {name}`, or "
                   f"`crmops schedule install --drill-from-copy {name} WHEN`)")
    archive = f", archive lag {alag:.0f} s" if state["archive"] else ""
    level = "amber" if proof and proof["result"] != "success" else "green"
    return level, (f"copy {name}: newest snapshot {state['newest_snapshot'][:10]} of "
                   f"{state['newest_snapshot_time'][:19]}, lag {lag / 3600:.1f} h{archive}{proven}")
