"""`crmops repair`: which snapshots are damaged, heal what a fresh backup can, forget what it cannot.

Healing works like restic's `repair packs` followed by a backup: a damaged chunk is
quarantined, and a backup stores it again whenever the database (or the attachments)
still produce that exact content; a chunk id is a keyed hash of the content, so the
chunk stored anew is byte for byte what every older snapshot needs. What no backup
produces any more is gone: the snapshots needing it cannot be healed, and
`--forget-damaged` forgets them. repair deletes no chunk: `prune` deletes only what no
snapshot references, and with it the quarantine markers of the chunks it deleted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from crmops.config import Config
from crmops.errors import CrmopsError
from crmops.repository import Repository, open_repository
from crmops.repository.paths import manifest_chunks


@dataclass
class DamagedSnapshot:
    id: str
    time: str | None
    source: str | None
    chunks: list[str]  # its damaged chunks (empty when the manifest itself is unreadable)
    problem: str | None = None  # an unreadable manifest's own problem
    #: every damaged chunk it needs is used by the newest snapshot of the configured database
    healable_by_backup: bool = False


@dataclass
class RepairReport:
    dry_run: bool
    damaged_chunks: dict[str, str] = field(default_factory=dict)  # chunk id -> what is wrong with it
    damaged_snapshots: list[DamagedSnapshot] = field(default_factory=list)
    newest: str | None = None  # the newest snapshot of the configured database
    newest_needs: list[str] = field(default_factory=list)  # damaged chunks that snapshot uses
    backup: dict[str, Any] | None = None
    backup_error: str | None = None
    healed_chunks: list[str] = field(default_factory=list)
    cannot_heal: list[str] = field(default_factory=list)  # snapshot ids still damaged after the backup
    forgotten: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not [s for s in self.damaged_snapshots if s.id not in self.forgotten]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def newest_of_source(manifests: list[dict[str, Any]], config: Config) -> dict[str, Any] | None:
    """The newest backup of the configured database: what `latest` means (safety snapshots aside)."""
    from crmops.repository.source import is_safety, source_of_manifest
    from crmops.services.sources import configured_source

    source = configured_source(config)
    mine = [m for m in manifests if source_of_manifest(m) == source and not is_safety(m)]
    return max(mine, key=lambda m: m["time"]) if mine else None


def survey(repo: Repository, config: Config, *, record: bool) -> RepairReport:
    """What is damaged now: quarantined chunks, and what a listing shows missing or of the wrong size.

    record=True quarantines what the listing finds (a dry run changes nothing).
    """
    report = RepairReport(dry_run=not record)
    manifests, unreadable = repo.readable_manifests()
    stored = repo.stored_chunks()
    damaged = {cid: m.get("reason") or "quarantined" for cid, m in repo.quarantine_markers().items()}
    referenced = {c for m in manifests for c in manifest_chunks(m)}
    for cid, problem in repo.size_problems(stored, repo.expected_sizes(manifests), referenced).items():
        if cid not in damaged:
            damaged[cid] = problem
            if record:
                repo.quarantine(cid, problem, by="repair")
    report.damaged_chunks = {c: r for c, r in sorted(damaged.items()) if c in referenced}
    newest = newest_of_source(manifests, config)
    newest_chunks = set(manifest_chunks(newest)) if newest else set()
    if newest:
        report.newest = newest["id"]
        report.newest_needs = sorted(c for c in report.damaged_chunks if c in newest_chunks)
    for m in sorted(manifests, key=lambda m: m["time"]):
        bad = sorted(set(manifest_chunks(m)) & set(report.damaged_chunks))
        if bad:
            report.damaged_snapshots.append(DamagedSnapshot(
                m["id"], m["time"], m.get("source"), bad, healable_by_backup=set(bad) <= newest_chunks))
    for sid, problem in sorted(unreadable.items()):
        report.damaged_snapshots.append(DamagedSnapshot(sid, None, None, [], problem=problem))
    return report


def repair(config: Config, *, dry_run: bool = False, forget_damaged: bool = False, run_backup: bool = True,
           repo: Repository | None = None) -> RepairReport:
    repo = repo or open_repository(config)
    report = survey(repo, config, record=not dry_run)
    if dry_run or not report.damaged_snapshots:
        return report
    before = set(report.damaged_chunks)
    if run_backup and report.damaged_chunks:
        from crmops.services.backup import backup

        try:
            report.backup = backup(config, tags=["repair"], repo=repo).to_dict()
        except CrmopsError as e:
            report.backup_error = config.redact(e.line())
    after = survey(repo, config, record=True)
    report.healed_chunks = sorted(before - set(after.damaged_chunks))
    report.damaged_chunks, report.damaged_snapshots = after.damaged_chunks, after.damaged_snapshots
    report.newest, report.newest_needs = after.newest, after.newest_needs
    report.cannot_heal = [s.id for s in after.damaged_snapshots]
    if forget_damaged and report.cannot_heal and report.backup_error is None:
        with repo.lock(exclusive=True, purpose="repair"):
            for sid in report.cannot_heal:
                repo.store.delete(f"snapshots/{sid}")
                for key, _ in list(repo.store.list(f"records/{sid}/")):
                    repo.store.delete(key)
                report.forgotten.append(sid)
    return report
