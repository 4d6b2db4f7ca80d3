"""forget (drop snapshots by retention policy) and prune (delete chunks nothing references).

Retention works per source (a second CRM's or a scratch database's snapshots never
push out the configured database's) and never forgets a group's newest verified
snapshot. Prune deletes nothing while any manifest is unreadable: the chunks it names
are unknown, so no chunk can be proven unreferenced.

Prune runs under the repository's exclusive lock, which waits for no one: while any
backup holds its shared lock, prune refuses (LockBusy), so it can never delete a chunk
a running backup has uploaded but not yet referenced in its manifest.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crmops.config import Config, RetentionConfig
from crmops.errors import CrmopsError, IntegrityError, ObjectLocked
from crmops.repository import Repository, open_repository
from crmops.repository.retention import plan_groups

log = logging.getLogger("crmops.prune")

TEMPORARY_MAX_AGE = timedelta(days=1)


@dataclass
class ForgetResult:
    dry_run: bool
    keep: dict[str, list[str]]
    forget: list[str]
    prune: PruneResult | None = None
    #: per source and kind (backups, pre-restore, pre-migrate): {"source", "kind", "keep", "forget"}
    groups: list[dict[str, Any]] = field(default_factory=list)
    #: snapshots whose manifest cannot be read: never forgotten (their source and age are unknown)
    damaged: list[str] = field(default_factory=list)
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
    #: damaged manifests: the chunks they name cannot be known, so prune deleted nothing
    kept_everything_for: list[str] = field(default_factory=list)
    #: left by interrupted writes (local temp files, S3 multipart uploads), removed once a day old
    temporary_removed: list[str] = field(default_factory=list)


def forget(config: Config, *, policy: RetentionConfig | None = None, dry_run: bool = False, prune_after: bool = False,
           repo: Repository | None = None) -> ForgetResult:
    """Apply the retention policy per source (see retention.plan_groups); damaged manifests stay."""
    from crmops.verify.record import is_verified_ok

    repo = repo or open_repository(config)
    from crmops.pitr import retention as pitr_retention

    listing = repo.listing()
    policy = policy or config.retention

    def verified(sid: str) -> bool:
        try:
            return is_verified_ok(repo, sid)
        except IntegrityError:  # an unreadable record proves nothing
            return False

    manifests = [m for m in listing.manifests if m.get("kind") != "physical"]  # base backups: retention.pitr_days
    physical = [m for m in listing.manifests if m.get("kind") == "physical"]
    groups = plan_groups(manifests, policy, verified)
    keep: dict[str, list[str]] = {}
    drop: list[str] = []
    for g in groups:
        keep.update(g["keep"])
        drop += g["forget"]
    damaged = [d.id for d in listing.damaged]
    kept_logical = [m for m in manifests if m["id"] in keep]
    binlogs = pitr_retention.binlogs_to_delete(repo, kept_logical)
    if dry_run:
        pitr = pitr_retention.apply(repo, physical, policy.pitr_days, dry_run=True) if physical else None
        pitr = _with_binlogs(pitr, binlogs)
        drop += pitr["forget"] if pitr else []
        keep.update({sid: ["pitr_days"] for sid in (pitr["keep"] if pitr else [])})
        return ForgetResult(True, keep, drop, prune(config, dry_run=True, repo=repo, without=set(drop))
                            if prune_after else None, groups, damaged, pitr)
    with repo.lock(exclusive=True, purpose="forget"):
        if getattr(repo.store, "object_lock_enabled", lambda: False)():
            plan = pitr_retention.apply(repo, physical, policy.pitr_days, dry_run=True) if physical else None
            _refuse_locked(repo, [f"snapshots/{sid}" for sid in drop + (plan["forget"] if plan else [])]
                           + [key for key, _ in binlogs])
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
    return ForgetResult(False, keep, drop, prune(config, repo=repo) if prune_after else None, groups, damaged, pitr)


def _refuse_locked(repo: Repository, keys: list[str]) -> None:
    """Before the first delete: ObjectLocked when S3 Object Lock still keeps any of keys, so a forget
    whose retention is shorter than the bucket's lock removes nothing instead of part of it."""
    locked = {k: until for k in keys if (until := repo.store.locked_until(k)) is not None}  # type: ignore[attr-defined]
    if locked:
        first, until = min(locked.items(), key=lambda kv: kv[1])
        raise ObjectLocked(f"forget: {len(locked)} of the {len(keys)} objects to delete are under S3 Object Lock "
                           f"(the first, {first}, until {until:%Y-%m-%d %H:%M} UTC); nothing was forgotten",
                           hint="keep this repository's retention longer than the bucket's Object Lock period")


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
        listing = repo.listing()
        if listing.damaged:
            # a damaged manifest's chunks cannot be told apart from garbage: keep every chunk
            result.kept_everything_for = [d.id for d in listing.damaged]
            log.warning("prune deletes nothing: %d snapshot manifest(s) cannot be read (%s), so no chunk can be "
                        "proven unreferenced", len(listing.damaged), ", ".join(result.kept_everything_for))
            return result
        referenced: set[str] = set()
        for m in listing.manifests:
            if without and m["id"] in without:
                continue
            for s in m["streams"].values():
                referenced.update(s["chunks"])
            for f in m.get("files", []):
                referenced.update(f.get("chunks", []))
        quarantined = repo.quarantined()
        stored = set()
        for key, size in list(repo.store.list("data/")):
            cid = key.rsplit("/", 1)[1]
            stored.add(cid)
            if cid in referenced:
                continue
            if not dry_run:
                try:
                    repo.store.delete(key)
                except CrmopsError as e:
                    result.refused.append(f"{key}: {e.message}")
                    continue
                if cid in quarantined:
                    repo.release(cid)  # the damaged object is gone: nothing is left to re-use by mistake
            result.chunks_deleted += 1
            result.bytes_freed += size
        for cid in quarantined - stored - referenced:  # missing and needed by no snapshot any more
            if not dry_run:
                repo.release(cid)
        old = datetime.now(UTC) - TEMPORARY_MAX_AGE
        finder = getattr(repo.store, "temporaries", None)
        for t in finder() if finder else []:
            if t.created > old:
                continue  # may be a write still under way elsewhere
            if not dry_run:
                try:
                    repo.store.remove_temporary(t.name)  # type: ignore[attr-defined]
                except CrmopsError as e:
                    result.refused.append(f"{t.name}: {e.message}")
                    continue
            result.temporary_removed.append(t.name)
    return result

