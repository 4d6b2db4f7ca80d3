"""Writing a snapshot: chunks uploaded in parallel, deduplicated, the manifest written last.

An interrupted backup leaves only chunks, which the next one finds and re-uses; a chunk
that replaces a quarantined one is read back before it leaves quarantine.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crmops import __version__
from crmops.repository.chunker import Chunker
from crmops.repository.paths import chunk_key, now

if TYPE_CHECKING:
    from crmops.repository.repo import Repository

log = logging.getLogger("crmops.repository")


@dataclass
class WriteStats:
    bytes_read: int = 0
    chunks: int = 0
    chunks_new: int = 0
    bytes_new: int = 0  # after dedup and compression+encryption, i.e. what had to be stored
    bytes_uploaded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"bytes_read": self.bytes_read, "chunks": self.chunks, "chunks_new": self.chunks_new,
                "bytes_new": self.bytes_new, "bytes_uploaded": self.bytes_uploaded,
                "dedup_ratio": round(self.bytes_read / self.bytes_new, 2) if self.bytes_new else None}


class SnapshotWriter:
    """Streams and files into chunks; commit() writes the manifest, the only thing that makes a snapshot."""

    def __init__(self, repo: Repository, tags: list[str], threads: int, refresh: Callable[[], None]) -> None:
        self.repo = repo
        self.tags = tags
        self.stats = WriteStats()
        self.stats_lock = threading.Lock()
        self.refresh = refresh
        self.known, self.stored, self.quarantined = repo.reusable()
        #: chunk id -> stored size of every chunk this snapshot uses, so `check` catches truncation from a listing
        self.sizes: dict[str, int] = {}
        self.healed: list[str] = []
        self.chunker = Chunker(repo.config["chunker"]["avg"])
        self.pool = ThreadPoolExecutor(threads)
        self.inflight: deque[Future[None]] = deque()
        self.limit = threads * 2
        self.streams: dict[str, dict[str, Any]] = {}
        self.files: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def _upload(self, cid: str, data: bytes) -> None:
        sealed = self.repo.sealer.seal(data, cid)
        self.repo.store.put(chunk_key(cid), sealed)
        if cid in self.quarantined or cid in self.stored:
            # it replaces a damaged object: read it back (authenticated) before it leaves quarantine
            self.repo.read_chunk(cid)
            self.repo.release(cid)
            self.healed.append(cid)
            log.info("chunk %s stored again and read back: it leaves quarantine", cid)
        with self.stats_lock:
            self.sizes[cid] = len(sealed)
            self.stats.bytes_new += len(sealed)
            self.stats.bytes_uploaded += len(sealed)

    def _chunks(self, pieces: Iterable[bytes], progress: Callable[[int], None] | None,
                digest: Any = None) -> tuple[list[str], int]:
        ids: list[str] = []
        size = 0
        for data in self.chunker.chunks(pieces):
            cid = self.repo.sealer.chunk_id(data)
            ids.append(cid)
            size += len(data)
            if digest is not None:
                digest.update(data)
            self.stats.chunks += 1
            self.stats.bytes_read += len(data)
            if cid not in self.known:
                self.known.add(cid)
                self.stats.chunks_new += 1
                self.inflight.append(self.pool.submit(self._upload, cid, data))
                while len(self.inflight) >= self.limit:
                    self.inflight.popleft().result()
            elif cid in self.stored:
                with self.stats_lock:
                    self.sizes.setdefault(cid, self.stored[cid])
            while self.inflight and self.inflight[0].done():
                self.inflight.popleft().result()
            if progress:
                progress(len(data))
            self.refresh()
        return ids, size

    def add_stream(self, name: str, pieces: Iterable[bytes], *, format: str,
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        # no digest of the whole stream: the authenticated manifest lists the chunks in order and
        # each chunk's id is a keyed hash of its content, which already pins every byte (and a
        # second hash over gigabytes of dump cost the backup ~2 CPU-seconds per 3 GB)
        ids, size = self._chunks(pieces, progress)
        self.streams[name] = {"format": format, "size": size, "chunks": ids}
        return self.streams[name]

    def add_file(self, meta: dict[str, Any], pieces: Iterable[bytes] | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        entry = dict(meta)
        if pieces is not None:
            digest = hashlib.sha256()  # attachments keep theirs: it is compared with the CRM's own records
            entry["chunks"], entry["size"] = self._chunks(pieces, progress, digest)
            entry["sha256"] = digest.hexdigest()
        self.files.append(entry)

    def _drain(self) -> None:
        while self.inflight:
            self.inflight.popleft().result()

    def commit(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Wait for every chunk to be stored, then write the manifest (last)."""
        self._drain()
        snapshot_id = uuid.uuid4().hex[:16]
        manifest = {"id": snapshot_id, "time": now().isoformat(timespec="microseconds"),
                    "hostname": socket.gethostname(), "tool": f"crmops {__version__}", "tags": self.tags, **meta,
                    "streams": self.streams, "files": self.files, "stats": {**self.stats.to_dict(),
                                                   "seconds": round(time.monotonic() - self.started, 2),
                                                   "chunks_healed": len(self.healed)},
                    "chunk_sizes": self.sizes}
        self.repo.save_manifest(manifest)
        return manifest

    def close(self) -> None:
        for f in self.inflight:
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
