"""Repository consistency: every manifest opens, every referenced chunk exists and
(optionally) authenticates. Damage is named object by object, with the snapshots it
breaks, so an administrator knows exactly which restores are at risk.

--read-data-subset remembers what it read (in the repository, sealed), and each run
reads the chunks read longest ago, so daily 10% runs cover everything in ten days.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from crmops.config import Config
from crmops.errors import IntegrityError
from crmops.repository import open_repository
from crmops.repository.repo import Repository, chunk_key

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

    @property
    def ok(self) -> bool:
        return not self.damaged

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def _coverage(repo: Repository) -> dict[str, float]:
    if not repo.store.exists(COVERAGE):
        return {}
    try:
        return json.loads(repo.sealer.open(repo.store.get(COVERAGE), COVERAGE, COVERAGE))
    except IntegrityError:
        return {}  # a damaged coverage record only costs re-reading


def check(config: Config, *, read_data: bool = False, subset_percent: float | None = None,
          repo: Repository | None = None) -> CheckReport:
    repo = repo or open_repository(config)
    damaged: list[Damage] = []
    users: dict[str, list[str]] = {}
    ids = repo.snapshot_ids()
    for sid in ids:
        try:
            m = repo._load_manifest(sid)
        except IntegrityError as e:
            damaged.append(Damage(f"snapshots/{sid}", e.message, [sid]))
            continue
        for s in m["streams"].values():
            for c in s["chunks"]:
                users.setdefault(c, []).append(sid)
        for f in m.get("files", []):
            for c in f.get("chunks", []):
                users.setdefault(c, []).append(sid)
    stored = {key.rsplit("/", 1)[1]: size for key, size in repo.store.list("data/")}
    for cid, snaps in sorted(users.items()):
        if cid not in stored:
            damaged.append(Damage(chunk_key(cid), "missing", sorted(set(snaps))))
        elif stored[cid] < 29:
            damaged.append(Damage(chunk_key(cid), f"truncated ({stored[cid]} bytes)", sorted(set(snaps))))
    coverage = _coverage(repo)
    to_read: list[str] = []
    present = [c for c in users if c in stored]
    if read_data:
        to_read = present
    elif subset_percent:
        count = max(1, int(len(present) * subset_percent / 100 + 0.999)) if present else 0
        to_read = sorted(present, key=lambda c: (coverage.get(c, 0.0), c))[:count]
    now = time.time()
    for cid in to_read:
        try:
            repo.read_chunk(cid)
            coverage[cid] = now
        except IntegrityError as e:
            if not any(d.object == chunk_key(cid) for d in damaged):
                damaged.append(Damage(chunk_key(cid), e.message, sorted(set(users[cid]))))
    if to_read:
        coverage = {c: t for c, t in coverage.items() if c in users}
        repo.store.put(COVERAGE, repo.sealer.seal(json.dumps(coverage).encode(), COVERAGE))
    covered = sum(1 for c in present if c in coverage)
    return CheckReport(snapshots=len(ids), chunks_referenced=len(users), chunks_read=len(to_read),
                       coverage_percent=round(100 * covered / len(present), 1) if present else 100.0,
                       damaged=damaged, unreferenced_chunks=len(set(stored) - set(users)))
