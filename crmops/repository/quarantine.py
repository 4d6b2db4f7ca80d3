"""Damage contained: chunks found damaged or missing are quarantined, and never re-used.

A listing and the sizes the manifests recorded show truncation without reading a byte;
a bit flipped in place needs a read (`check`), which quarantines too.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterable
from typing import Any

from crmops.errors import CrmopsError, IntegrityError
from crmops.repository.objects import Sealer
from crmops.repository.paths import SEALED_MIN, now, quarantine_key
from crmops.storage.base import Store

log = logging.getLogger("crmops.repository")


class ChunkHealth:
    """Which stored chunks a backup may re-use, and the quarantine.

    A mixin of Repository, whose Manifests part provides readable_manifests().
    """

    store: Store
    sealer: Sealer
    _quarantined_here: set[str]

    def stored_chunks(self) -> dict[str, int]:
        """chunk id -> stored size, from one listing (nothing read)."""
        return {key.rsplit("/", 1)[1]: size for key, size in self.store.list("data/")}

    @staticmethod
    def expected_sizes(manifests: Iterable[dict[str, Any]]) -> dict[str, int]:
        """chunk id -> stored size recorded by the snapshots that wrote or re-used it (newer formats only)."""
        sizes: dict[str, int] = {}
        for m in manifests:
            sizes.update(m.get("chunk_sizes", {}))
        return sizes

    def size_problems(self, stored: dict[str, int], expected: dict[str, int],
                      ids: Iterable[str]) -> dict[str, str]:
        """chunk id -> what a listing alone shows wrong with it (missing, truncated, wrong size)."""
        out = {}
        for cid in ids:
            size = stored.get(cid)
            if size is None:
                out[cid] = "missing"
            elif size < SEALED_MIN:
                out[cid] = f"truncated ({size} bytes)"
            elif cid in expected and size != expected[cid]:
                out[cid] = f"stored size {size} bytes, expected {expected[cid]} (truncated or overwritten)"
        return out

    def known_chunks(self) -> set[str]:
        """Chunks a backup may re-use: stored, not quarantined, and of the size recorded for them."""
        return self.reusable()[0]

    def reusable(self) -> tuple[set[str], dict[str, int], set[str]]:
        """(re-usable chunk ids, stored chunk sizes, quarantined ids); a wrong size quarantines a chunk here.

        Sizes come from one listing and the manifests, so a backup never re-uses a chunk a
        listing alone shows to be damaged; a bit flipped in place needs a read (`check`).
        """
        stored = self.stored_chunks()
        quarantined = self.quarantined()
        manifests, _ = self.readable_manifests()
        expected = self.expected_sizes(manifests)
        wrong = self.size_problems(stored, expected, [c for c in stored if c in expected])
        for cid, problem in wrong.items():
            if cid not in quarantined:
                self.quarantine(cid, problem, by="backup")
        quarantined |= set(wrong)
        return set(stored) - quarantined, stored, quarantined

    def quarantined(self) -> set[str]:
        """Chunk ids found damaged or missing and not stored again since (a listing, nothing read)."""
        return {key.rsplit("/", 1)[1] for key, _ in self.store.list("quarantine/")}

    def quarantined_here(self) -> set[str]:
        """Chunk ids this process quarantined (and did not release)."""
        return set(self._quarantined_here)

    def quarantine_markers(self) -> dict[str, dict[str, Any]]:
        """chunk id -> its marker (reason, time, by); a marker that fails to open still quarantines."""
        out = {}
        for cid in sorted(self.quarantined()):
            key = quarantine_key(cid)
            try:
                out[cid] = json.loads(self.sealer.open(self.store.get(key), f"quarantine:{cid}", key))
            except IntegrityError as e:
                out[cid] = {"chunk": cid, "reason": f"marker unreadable: {e.message}", "time": None, "by": None}
        return out

    def quarantine(self, chunk_id: str, reason: str, *, by: str = "read") -> None:
        """Record a damaged or missing chunk, so no backup re-uses it; never fails the caller."""
        if chunk_id in self._quarantined_here:
            return
        self._quarantined_here.add(chunk_id)
        key = quarantine_key(chunk_id)
        doc = {"chunk": chunk_id, "reason": reason, "time": now().isoformat(timespec="seconds"), "by": by,
               "host": socket.gethostname()}
        try:
            self.store.put(key, self.sealer.seal(json.dumps(doc).encode(), f"quarantine:{chunk_id}"))
            log.warning("chunk %s quarantined: %s", chunk_id, reason)
        except CrmopsError as e:  # e.g. read-only credentials: the damage is still reported by the caller
            log.warning("could not quarantine chunk %s (%s): %s", chunk_id, reason, e.message)

    def release(self, chunk_id: str) -> None:
        """The chunk is whole again (stored anew and read back, or deleted by prune)."""
        self.store.delete(quarantine_key(chunk_id))
        self._quarantined_here.discard(chunk_id)
