"""`crmops unlock`: remove the repository locks no running process holds any more.

Stale locks are also removed whenever a command takes a lock; unlock removes them
without taking one and lists the rest. A lock from another host whose holder crashed
only becomes stale after 30 minutes without refresh: remove_all is the way out before
that, for an administrator who knows that no crmops runs anywhere.
"""

from __future__ import annotations

from typing import Any

from crmops.config import Config
from crmops.repository import Repository, open_repository


def unlock(config: Config, *, remove_all: bool = False, repo: Repository | None = None) -> dict[str, Any]:
    repo = repo or open_repository(config)
    removed, kept = [], []
    for lock in repo.locks():
        entry = {k: lock.get(k) for k in ("id", "purpose", "exclusive", "host", "pid", "refreshed", "stale")}
        if lock["stale"] or remove_all:
            repo.remove_lock(lock, f"stale: {lock['stale']}" if lock["stale"] else "crmops unlock --remove-all")
            removed.append(entry)
        else:
            kept.append(entry)
    return {"ok": True, "removed": removed, "kept": kept}
