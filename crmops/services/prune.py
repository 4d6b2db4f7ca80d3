"""forget (drop snapshots by retention policy) and prune (delete chunks nothing references).

Prune runs under the repository's exclusive lock, which waits for no one: while any
backup holds its shared lock, prune refuses (LockBusy), so it can never delete a chunk
a running backup has uploaded but not yet referenced in its manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crmops.config import Config, RetentionConfig
from crmops.errors import CrmopsError
from crmops.repository import Repository, open_repository
from crmops.repository.retention import plan

TEMPORARY_MAX_AGE = timedelta(days=1)


@dataclass
class ForgetResult:
    dry_run: bool
    keep: dict[str, list[str]]
    forget: list[str]
    prune: PruneResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneResult:
    dry_run: bool
    chunks_deleted: int = 0
    bytes_freed: int = 0
    refused: list[str] = field(default_factory=list)  # e.g. objects still under S3 Object Lock
    #: left by interrupted writes (local temp files, S3 multipart uploads), removed once a day old
    temporary_removed: list[str] = field(default_factory=list)


def forget(config: Config, *, policy: RetentionConfig | None = None, dry_run: bool = False, prune_after: bool = False,
           repo: Repository | None = None) -> ForgetResult:
    repo = repo or open_repository(config)
    manifests = repo.manifests()
    keep, drop = plan([(m["id"], datetime.fromisoformat(m["time"])) for m in manifests], policy or config.retention)
    if dry_run:
        return ForgetResult(True, keep, drop, prune(config, dry_run=True, repo=repo, without=set(drop))
                            if prune_after else None)
    with repo.lock(exclusive=True, purpose="forget"):
        for sid in drop:
            repo.store.delete(f"snapshots/{sid}")
            for key, _ in list(repo.store.list(f"records/{sid}/")):
                repo.store.delete(key)
    return ForgetResult(False, keep, drop, prune(config, repo=repo) if prune_after else None)


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

