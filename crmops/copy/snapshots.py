"""Copying snapshots: the chunks the copy lacks, each authenticated before it is written, manifest last.

Chunk objects are content-addressed, so a chunk already in the copy is never written twice
and a run killed half-way is resumed by running it again: what arrived is found by one
listing and re-used. A chunk whose stored size differs from the primary's (a truncated
object) is written again. A chunk that fails authentication at the source is never
copied: it is quarantined at the source, as `check` would, named in the result, and the
snapshots needing it are not copied (their manifests are not written). A chunk the copy's
own `check` quarantined is written again from the repository by the next run, then released.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from crmops.errors import IntegrityError
from crmops.repository import Repository
from crmops.repository.paths import chunk_key, manifest_chunks

log = logging.getLogger("crmops.copy")


@dataclass
class SnapshotCopy:
    """What one run did to one copy's snapshots."""

    copied: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    #: snapshot id -> why it was not copied (the damaged chunk it needs)
    failed: dict[str, str] = field(default_factory=dict)
    #: chunk id -> problem, for chunks found damaged at the source
    damaged_chunks: dict[str, str] = field(default_factory=dict)
    chunks_copied: int = 0
    chunks_present: int = 0
    bytes_copied: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"copied": self.copied, "already": self.already, "failed": self.failed,
                "damaged_chunks": self.damaged_chunks, "chunks_copied": self.chunks_copied,
                "chunks_present": self.chunks_present, "bytes_copied": self.bytes_copied}


class ChunkCopier:
    """Copies chunks from the source repository's store to a copy sharing its key, in parallel.

    Sealed objects travel as stored, authenticated first; ids are the same on both sides.
    """

    def __init__(self, source: Repository, dest: Repository, threads: int,
                 progress: Callable[[int], None] | None = None) -> None:
        self.source = source
        self.dest_repo = dest
        self.dest = dest.store
        self.threads = threads
        self.progress = progress
        self.lock = threading.Lock()
        self.source_sizes = source.stored_chunks()
        #: the copy's chunk objects: id -> stored size
        self.dest_sizes = {k.rsplit("/", 1)[1]: size for k, size in self.dest.list("data/")}
        #: chunks the copy's own check found damaged: written again, then released
        self.dest_quarantined = dest.quarantined()
        #: source chunks already whole in the copy: present with the primary's stored size, not quarantined there
        self.have = {cid for cid, size in self.dest_sizes.items()
                     if self.source_sizes.get(cid, size) == size and cid not in self.dest_quarantined}
        self.bad: dict[str, str] = {}

    def present(self, cid: str) -> bool:
        return cid in self.have

    def _one(self, cid: str, result: SnapshotCopy) -> None:
        key = chunk_key(cid)
        try:
            sealed = self.source.store.get(key)
            self.source.sealer.authenticate(sealed, cid, f"chunk {key}")
        except IntegrityError as e:
            self._damaged(cid, e)
            return
        self.dest.put(key, sealed)
        if cid in self.dest_quarantined:
            self.dest_repo.release(cid)
        self._arrived(cid, len(sealed), result)

    def _damaged(self, cid: str, e: IntegrityError) -> None:
        self.source.quarantine(cid, e.message, by="copy")
        with self.lock:
            self.bad[cid] = e.message

    def _arrived(self, cid: str, size: int, result: SnapshotCopy) -> None:
        with self.lock:
            self.have.add(cid)
            result.chunks_copied += 1
            result.bytes_copied += size
        if self.progress:
            self.progress(size)

    def copy(self, ids: list[str], result: SnapshotCopy) -> list[str]:
        """Copy the chunks of ids the copy lacks; the damaged ones among ids (empty when all arrived)."""
        unique = list(dict.fromkeys(ids))
        quarantined = self.source.quarantined()
        missing = []
        for cid in unique:
            if self.present(cid):
                result.chunks_present += 1
            elif cid in self.bad:
                continue
            elif cid in quarantined:  # found damaged before: no run copies it until a backup heals it
                self.bad[cid] = "quarantined in the repository (found damaged or missing earlier)"
            else:
                missing.append(cid)
        if missing:
            with ThreadPoolExecutor(self.threads) as pool:
                for f in [pool.submit(self._one, cid, result) for cid in missing]:
                    f.result()
        return [cid for cid in unique if cid in self.bad]

    def manifest(self, m: dict[str, Any]) -> bytes:
        """The snapshot's manifest as the copy stores it: here the repository's sealed bytes, authenticated."""
        key = f"snapshots/{m['id']}"
        sealed = self.source.store.get(key)
        self.source.sealer.authenticate(sealed, f"manifest:{m['id']}", f"manifest {key}")
        return sealed


def copy_snapshots(copier: ChunkCopier, manifests: list[dict[str, Any]]) -> SnapshotCopy:
    """Copy each manifest's chunks, then the manifest itself, oldest first.

    copier: a ChunkCopier (shared key: objects travel as stored) or a ResealingCopier (the
    copy's own keys: re-encrypted, crmops.copy.reseal).
    """
    result = SnapshotCopy()
    dest = copier.dest_repo
    present = {key.rsplit("/", 1)[1] for key, _ in dest.store.list("snapshots/")}
    for m in sorted(manifests, key=lambda m: m["time"]):
        sid = m["id"]
        if sid in present:
            result.already.append(sid)
            if copier.dest_quarantined:  # the copy's check found chunks damaged: bring them whole again
                copier.copy(manifest_chunks(m), result)
            continue
        bad = copier.copy(manifest_chunks(m), result)
        if bad:
            result.failed[sid] = f"chunk {bad[0]} is damaged in the repository: {copier.bad[bad[0]]}"
            for cid in bad:
                result.damaged_chunks[cid] = copier.bad[cid]
            log.warning("snapshot %s not copied: %s", sid, result.failed[sid])
            continue
        sealed = copier.manifest(m)
        dest.store.put(f"snapshots/{sid}", sealed)  # last: the snapshot now exists in the copy
        result.copied.append(sid)
    return result
