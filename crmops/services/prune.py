"""forget (drop snapshots by retention policy) and prune (delete chunks nothing references).

Prune runs under the repository's exclusive lock, which waits for no one: while any
backup holds its shared lock, prune refuses (LockBusy), so it can never delete a chunk
a running backup has uploaded but not yet referenced in its manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from crmops.config import Config, RetentionConfig
from crmops.errors import CrmopsError
from crmops.repository import Repository, open_repository
from crmops.repository.retention import plan


@dataclass
class ForgetResult:
    dry_run: bool
    keep: dict[str, list[str]]
    forget: list[str]
    prune: PruneResult | None = None
    #: point-in-time recovery: base backups by retention.pitr_days, the WAL they no longer need, the window
    pitr: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneResult:
    dry_run: bool
    chunks_deleted: int = 0
    bytes_freed: int = 0
    refused: list[str] = field(default_factory=list)  # e.g. objects still under S3 Object Lock


def forget(config: Config, *, policy: RetentionConfig | None = None, dry_run: bool = False, prune_after: bool = False,
           repo: Repository | None = None) -> ForgetResult:
    repo = repo or open_repository(config)
    from crmops.pitr import retention as pitr_retention

    everything = repo.manifests()
    manifests = [m for m in everything if m.get("kind") != "physical"]  # base backups: retention.pitr_days
    policy = policy or config.retention
    keep, drop = plan([(m["id"], datetime.fromisoformat(m["time"])) for m in manifests], policy)
    physical = [m for m in everything if m.get("kind") == "physical"]
    kept_logical = [m for m in manifests if m["id"] in keep]
    binlogs = pitr_retention.binlogs_to_delete(repo, kept_logical)
    if dry_run:
        pitr = pitr_retention.apply(repo, physical, policy.pitr_days, dry_run=True) if physical else None
        pitr = _with_binlogs(pitr, binlogs)
        drop += pitr["forget"] if pitr else []
        keep.update({sid: ["pitr_days"] for sid in (pitr["keep"] if pitr else [])})
        return ForgetResult(True, keep, drop, prune(config, dry_run=True, repo=repo, without=set(drop))
                            if prune_after else None, pitr)
    with repo.lock(exclusive=True, purpose="forget"):
        pitr = pitr_retention.apply(repo, physical, policy.pitr_days, dry_run=False) if physical else None
        pitr = _with_binlogs(pitr, binlogs)
        for key, _size in binlogs:
            repo.store.delete(key)
        drop += pitr["forget"] if pitr else []
        keep.update({sid: ["pitr_days"] for sid in (pitr["keep"] if pitr else [])})
        for sid in drop:
            repo.store.delete(f"snapshots/{sid}")
            for key, _ in list(repo.store.list(f"records/{sid}/")):
                repo.store.delete(key)
    return ForgetResult(False, keep, drop, prune(config, repo=repo) if prune_after else None, pitr)


def _with_binlogs(pitr: dict[str, Any] | None, binlogs: list[tuple[str, int]]) -> dict[str, Any] | None:
    if not binlogs:
        return pitr
    out = pitr or {"keep": [], "forget": [], "wal_files_deleted": 0, "wal_bytes_freed": 0,
                   "window_start_before": {}, "window_start_after": {}, "pitr_days": None}
    return {**out, "binlog_files_deleted": len(binlogs), "binlog_bytes_freed": sum(n for _, n in binlogs)}


def prune(config: Config, *, dry_run: bool = False, repo: Repository | None = None,
          without: set[str] | None = None) -> PruneResult:
    """Delete unreferenced chunks (dry run: count them, as if `without` snapshots were gone)."""
    repo = repo or open_repository(config)
    result = PruneResult(dry_run)
    with repo.lock(exclusive=True, purpose="prune"):
        referenced: set[str] = set()
        for m in repo.manifests():
            if without and m["id"] in without:
                continue
            for s in m["streams"].values():
                referenced.update(s["chunks"])
            for f in m.get("files", []):
                referenced.update(f.get("chunks", []))
        for key, size in list(repo.store.list("data/")):
            if key.rsplit("/", 1)[1] in referenced:
                continue
            if not dry_run:
                try:
                    repo.store.delete(key)
                except CrmopsError as e:
                    result.refused.append(f"{key}: {e.message}")
                    continue
            result.chunks_deleted += 1
            result.bytes_freed += size
    return result

