"""Repository consistency: every manifest opens, every referenced chunk exists and
(optionally) authenticates. Damage is named object by object, with the snapshots it
breaks, so an administrator knows exactly which restores are at risk.

--read-data-subset remembers what it read (in the repository, sealed), and each run
reads the chunks read longest ago, so daily 10% runs cover everything in ten days.

Without reading data, every chunk's stored size (one listing) is compared with the size
its snapshots recorded, so a truncated or replaced object is caught cheaply. Whatever is
found damaged or missing is quarantined: the next backup stores it again instead of
re-using it. Leftover locks and temporary objects are reported, not removed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from crmops.config import Config
from crmops.errors import IntegrityError
from crmops.repository import open_repository
from crmops.repository.paths import chunk_key, manifest_chunks
from crmops.repository.repo import Repository

COVERAGE = "state/check-coverage"


@dataclass
class Damage:
    object: str
    problem: str
    snapshots: list[str]


@dataclass
class CheckReport:
    snapshots: int
    chunks_referenced: int
    chunks_read: int
    coverage_percent: float
    damaged: list[Damage] = field(default_factory=list)
    unreferenced_chunks: int = 0
    #: chunk ids in quarantine (damaged or missing, not stored again yet), and those this run released
    quarantined: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    #: chunks whose stored size could only be checked against the format's minimum (older snapshots)
    sizes_unrecorded: int = 0
    locks: list[dict[str, Any]] = field(default_factory=list)
    #: quarantined chunks the newest snapshot of the configured database needs (it cannot restore until healed)
    newest_needs: list[str] = field(default_factory=list)
    temporary_objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def _coverage(repo: Repository) -> tuple[dict[str, float], dict[str, int]]:
    """(chunk id -> when last read and authenticated, chunk id -> its stored size then)."""
    if not repo.store.exists(COVERAGE):
        return {}, {}
    try:
        doc = json.loads(repo.sealer.open(repo.store.get(COVERAGE), COVERAGE, COVERAGE))
    except IntegrityError:
        return {}, {}  # a damaged coverage record only costs re-reading
    if "read" not in doc:  # the first format: chunk id -> time only
        return doc, {}
    return doc["read"], doc.get("sizes", {})


def lock_report(repo: Repository) -> list[dict[str, Any]]:
    return [{k: lock.get(k) for k in ("id", "purpose", "exclusive", "host", "pid", "refreshed", "stale")}
            for lock in repo.locks()]


def temporary_objects(repo: Repository) -> list[dict[str, Any]]:
    finder = getattr(repo.store, "temporaries", None)
    return [t.to_dict() for t in finder()] if finder else []


def check(config: Config, *, read_data: bool = False, subset_percent: float | None = None,
          repo: Repository | None = None) -> CheckReport:
    repo = repo or open_repository(config)
    damaged: list[Damage] = []
    users: dict[str, list[str]] = {}
    ids = repo.snapshot_ids()
    manifests = []
    for sid in ids:
        try:
            m = repo._load_manifest(sid)
        except IntegrityError as e:
            damaged.append(Damage(f"snapshots/{sid}", e.message, [sid]))
            continue
        manifests.append(m)
        for c in manifest_chunks(m):
            users.setdefault(c, []).append(sid)
    stored = repo.stored_chunks()
    quarantined = repo.quarantine_markers()
    coverage, read_sizes = _coverage(repo)
    # sizes recorded by the snapshots themselves; for older ones, the size seen when a read last authenticated
    expected = {**read_sizes, **repo.expected_sizes(manifests)}
    by_size = repo.size_problems(stored, expected, users)
    for cid, problem in sorted(by_size.items()):
        damaged.append(Damage(chunk_key(cid), problem, sorted(set(users[cid]))))
        if cid not in quarantined:
            repo.quarantine(cid, problem, by="check")
            quarantined[cid] = {"reason": problem}
    to_read: list[str] = []
    present = [c for c in users if c in stored and c not in by_size]
    if read_data:
        to_read = present
    elif subset_percent:
        count = max(1, int(len(present) * subset_percent / 100 + 0.999)) if present else 0
        # quarantined chunks first: one that reads whole again (stored anew meanwhile) is released
        to_read = sorted(present, key=lambda c: (c not in quarantined, coverage.get(c, 0.0), c))[:count]
    now = time.time()
    released = []
    bad_reads = set()
    for cid in to_read:
        try:
            repo.read_chunk(cid)  # quarantines what fails
            coverage[cid] = now
            read_sizes[cid] = stored[cid]
            if cid in quarantined:
                repo.release(cid)
                released.append(cid)
                del quarantined[cid]
        except IntegrityError as e:
            bad_reads.add(cid)
            damaged.append(Damage(chunk_key(cid), e.message, sorted(set(users[cid]))))
            quarantined.setdefault(cid, {"reason": e.message})
    for cid, marker in sorted(quarantined.items()):
        if cid in users and cid not in by_size and cid not in bad_reads:
            damaged.append(Damage(chunk_key(cid), f"quarantined: {marker.get('reason')}", sorted(set(users[cid]))))
    if to_read:
        coverage = {c: t for c, t in coverage.items() if c in users}
        read_sizes = {c: n for c, n in read_sizes.items() if c in users}
        doc = {"read": coverage, "sizes": read_sizes}
        repo.store.put(COVERAGE, repo.sealer.seal(json.dumps(doc).encode(), COVERAGE))
    covered = sum(1 for c in present if c in coverage)
    from crmops.services.repair import newest_of_source

    newest = newest_of_source(manifests, config)
    newest_needs = sorted(set(manifest_chunks(newest)) & set(quarantined)) if newest else []
    return CheckReport(newest_needs=newest_needs, snapshots=len(ids), chunks_referenced=len(users),
                       chunks_read=len(to_read),
                       coverage_percent=round(100 * covered / len(present), 1) if present else 100.0,
                       damaged=damaged, unreferenced_chunks=len(set(stored) - set(users)),
                       quarantined=sorted(quarantined), released=released,
                       sizes_unrecorded=sum(1 for c in users if c in stored and c not in expected),
                       locks=lock_report(repo), temporary_objects=temporary_objects(repo))
