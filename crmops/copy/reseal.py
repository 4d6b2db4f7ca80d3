"""A copy with its own keys (key: own): every object authenticated, opened and sealed again for the copy.

Chunk ids are keyed hashes (HMAC-SHA256 under a key derived from the master secret), so the
repository's ids mean nothing under the copy's key: keeping them would force the copy to
hold the repository's id key, and a leaked repository key would then let anyone test guessed
content against the copy's ids. The copy therefore names each chunk by its own keyed hash of
the same plaintext, and manifests are rewritten to name the copy's ids. Equal plaintext gets
equal ids on both sides, so the copy deduplicates exactly as the repository does.

Which copy id a repository chunk became is kept in the copy itself (`idmap/` objects, sealed
under the copy's key), written after the chunks and before the manifest that needs them: a
nightly run then fetches only the chunks it has never seen. A lost or damaged map costs
only time (the chunk is fetched, its copy id computed again and found present).
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from typing import Any

import zstandard

from crmops.copy.snapshots import ChunkCopier, SnapshotCopy
from crmops.errors import CrmopsError, IntegrityError
from crmops.repository import Repository
from crmops.repository.objects import MAX_PLAIN, Sealer
from crmops.repository.paths import chunk_key, now

log = logging.getLogger("crmops.copy")
#: more map objects than this are merged into one at the start of a run
MERGE_ABOVE = 16


def reseal(source: Sealer, dest: Sealer | None, sealed: bytes, name: str, where: str) -> bytes:
    """The object as the copy stores it: authenticated by the repository's key, then sealed under the
    copy's (dest None: a shared key, the bytes as they are). IntegrityError when it fails to authenticate."""
    compressed = source.authenticate(sealed, name, where)
    return sealed if dest is None else dest.seal_compressed(compressed, name)


class IdMap:
    """Repository chunk id -> copy chunk id, kept in the copy under its own key."""

    def __init__(self, dest: Repository) -> None:
        self.dest = dest
        self.pairs: dict[str, str] = {}
        self.pending: dict[str, str] = {}
        listed = sorted(k for k, _ in dest.store.list("idmap/"))
        for key in listed:
            try:
                self.pairs.update(json.loads(dest.sealer.open(dest.store.get(key), f"idmap:{key}", key))["pairs"])
            except (IntegrityError, ValueError, KeyError) as e:
                log.warning("copy: id map %s unreadable (%s); its chunks are matched again", key,
                            getattr(e, "message", e))
        if len(listed) > MERGE_ABOVE:
            self.pending = dict(self.pairs)
            self.flush()
            for key in listed:
                try:
                    self.dest.store.delete(key)
                except CrmopsError as e:  # Object Lock keeps it: harmless, the merged map says the same
                    log.info("copy: id map %s stays (%s)", key, e.message)

    def add(self, source_id: str, copy_id: str) -> None:
        self.pairs[source_id] = copy_id
        self.pending[source_id] = copy_id

    def flush(self) -> None:
        """Write the pairs learnt since the last flush as one sealed object."""
        if not self.pending:
            return
        key = f"idmap/{now().strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:6]}"
        self.dest.store.put(key, self.dest.sealer.seal(json.dumps({"pairs": self.pending}).encode(), f"idmap:{key}"))
        self.pending = {}


class ResealingCopier(ChunkCopier):
    """Copies chunks to a copy with its own keys: each opened, its id checked, re-sealed under the copy's id."""

    def __init__(self, source: Repository, dest: Repository, threads: int, progress: Any = None) -> None:
        super().__init__(source, dest, threads, progress)
        self.have = set()  # ids differ between the two: presence goes through the map
        self.map = IdMap(dest)

    def present(self, cid: str) -> bool:
        if cid in self.have:
            return True
        mine = self.map.pairs.get(cid)
        # the re-sealed object is exactly as large as the repository's (same compressed bytes)
        return (mine is not None and mine not in self.dest_quarantined
                and self.dest_sizes.get(mine) == self.source_sizes.get(cid))

    def _one(self, cid: str, result: SnapshotCopy) -> None:
        key = chunk_key(cid)
        try:
            compressed = self.source.sealer.authenticate(self.source.store.get(key), cid, f"chunk {key}")
            plain = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=MAX_PLAIN)
            if not hmac.compare_digest(self.source.sealer.chunk_id(plain), cid):
                raise IntegrityError(f"chunk {key} holds content that does not match its id")
        except IntegrityError as e:
            self._damaged(cid, e)
            return
        except zstandard.ZstdError as e:
            self._damaged(cid, IntegrityError(f"chunk {key} does not decompress ({e})"))
            return
        mine = self.dest_repo.sealer.chunk_id(plain)
        sealed = self.dest_repo.sealer.seal_compressed(compressed, mine)
        written = self.dest_sizes.get(mine) != len(sealed) or mine in self.dest_quarantined
        if written:
            self.dest.put(chunk_key(mine), sealed)
            if mine in self.dest_quarantined:  # found damaged in the copy before: whole again
                self.dest_repo.release(mine)
        with self.lock:
            self.map.add(cid, mine)
            self.dest_sizes[mine] = len(sealed)
        if written:
            self._arrived(cid, len(sealed), result)
        else:  # arrived in a run killed before its map was written
            with self.lock:
                self.have.add(cid)
                result.chunks_present += 1

    def manifest(self, m: dict[str, Any]) -> bytes:
        """The manifest naming the copy's chunk ids, sealed under the copy's key; the map written first."""
        self.map.flush()
        key = f"snapshots/{m['id']}"
        doc = json.loads(self.source.sealer.open(self.source.store.get(key), f"manifest:{m['id']}", f"manifest {key}"))
        ids = self.map.pairs
        for stream in doc.get("streams", {}).values():
            stream["chunks"] = [ids[c] for c in stream["chunks"]]
        for f in doc.get("files", []):
            if "chunks" in f:
                f["chunks"] = [ids[c] for c in f["chunks"]]
        if "chunk_sizes" in doc:  # re-sealed objects keep their size: `check` reads truncation from a listing
            doc["chunk_sizes"] = {ids[c]: n for c, n in doc["chunk_sizes"].items() if c in ids}
        return self.dest_repo.sealer.seal(json.dumps(doc).encode(), f"manifest:{m['id']}")
