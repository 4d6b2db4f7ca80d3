"""The snapshot repository: deduplicated, encrypted chunks and the manifests naming them.

A snapshot exists if and only if its manifest exists, and the manifest is written
last: an interrupted backup leaves only chunks, which the next backup finds and
re-uses. The byte layout is documented in docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pyfastcdc import FastCDC

from crmops import __version__
from crmops.errors import (
    ConfigError,
    IntegrityError,
    LockBusy,
    RepositoryExists,
    RepositoryNotFound,
    RepositoryTooNew,
    SnapshotNotFound,
    WrongKey,
)
from crmops.repository.keys import Credential, MasterKey, unwrap, wrap
from crmops.repository.objects import Sealer
from crmops.storage.base import Store

FORMAT_VERSION = 1
#: a lock not refreshed for this long belongs to a crashed run
LOCK_STALE = timedelta(minutes=30)
LOCK_REFRESH = 60.0


def _now() -> datetime:
    return datetime.now(UTC)


def chunk_key(chunk_id: str) -> str:
    return f"data/{chunk_id[:2]}/{chunk_id}"


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


@dataclass
class SnapshotInfo:
    id: str
    time: str
    tags: list[str]
    engine: str | None
    server_version: str | None
    database: str | None
    schema_revision: str | None
    size: int
    bytes_new: int
    hostname: str

    @classmethod
    def from_manifest(cls, m: dict[str, Any]) -> SnapshotInfo:
        size = sum(s["size"] for s in m.get("streams", {}).values())
        size += sum(f.get("size", 0) for f in m.get("files", []))
        return cls(m["id"], m["time"], m.get("tags", []), m.get("engine"), m.get("server_version"),
                   m.get("database"), m.get("schema_revision"), size,
                   m.get("stats", {}).get("bytes_new", 0), m.get("hostname", ""))


def _in_order(fn: Callable[[str], Any], ids: list[str], threads: int = 4) -> Iterator[Any]:
    """fn of each id, in order, computed ahead in a few threads (storage waits overlap)."""
    with ThreadPoolExecutor(threads) as pool:
        ahead: deque[Future[Any]] = deque()
        it = iter(ids)
        for cid in it:
            ahead.append(pool.submit(fn, cid))
            if len(ahead) >= threads * 2:
                break
        for cid in it:
            yield ahead.popleft().result()
            ahead.append(pool.submit(fn, cid))
        while ahead:
            yield ahead.popleft().result()


class _PieceReader:
    """A stream of pieces seen as a file: the chunker reads straight into its own buffer."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._rest = memoryview(b"")

    def readinto(self, out: memoryview) -> int:
        n = 0
        while n < len(out):
            if not self._rest:
                piece = next(self._pieces, None)
                if piece is None:
                    break
                self._rest = memoryview(piece)
            k = min(len(self._rest), len(out) - n)
            out[n:n + k] = self._rest[:k]
            self._rest = self._rest[k:]
            n += k
        return n


class Chunker:
    """Content-defined chunking over a stream of pieces, holding at most ~2 max-size chunks.

    pyfastcdc's stream chunker cuts in its own buffer without the GIL; each chunk is
    copied out once, where a sliding buffer of our own copied every byte four times.
    """

    def __init__(self, avg: int) -> None:
        self.cdc = FastCDC(avg_size=avg, min_size=avg // 4, max_size=avg * 4)

    def chunks(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        for c in self.cdc.cut_stream(_PieceReader(pieces)):
            yield bytes(c.data)  # the view is only valid until the next chunk


class Repository:
    def __init__(self, store: Store, config: dict[str, Any], key: MasterKey, slot_id: str) -> None:
        self.store = store
        self.config = config
        self.id: str = config["id"]
        self.key = key
        self.slot_id = slot_id
        self.sealer = Sealer(key, config.get("compression_level", 1))

    # -- creating and opening -----------------------------------------------------------

    @classmethod
    def init(cls, store: Store, cred: Credential, *, chunk_avg: int = 1 << 20, compression_level: int = 1,
             label: str = "initial") -> Repository:
        if store.exists("config"):
            raise RepositoryExists(f"{store.url} already holds a crmops repository")
        config = {"format": FORMAT_VERSION, "id": uuid.uuid4().hex, "created": _now().isoformat(timespec="seconds"),
                  "chunker": {"algorithm": "fastcdc", "avg": chunk_avg, "min": chunk_avg // 4, "max": chunk_avg * 4},
                  "compression": "zstd", "compression_level": compression_level, "cipher": "aes-256-gcm",
                  "chunk_id": "hmac-sha256"}
        master = MasterKey.generate()
        slot_id = uuid.uuid4().hex[:12]
        slot = wrap(master, cred, repo_id=config["id"], slot_id=slot_id, label=label)
        store.put(f"keys/{slot_id}", json.dumps(slot, indent=1).encode())
        store.put("config", json.dumps(config, indent=1).encode())  # last: the repository now exists
        return cls(store, config, master, slot_id)

    @classmethod
    def open(cls, store: Store, cred: Credential) -> Repository:
        if not store.exists("config"):
            raise RepositoryNotFound(f"no crmops repository at {store.url}", hint="create one with `crmops repo init`")
        config = json.loads(store.get("config"))
        if config.get("format", 0) > FORMAT_VERSION:
            raise RepositoryTooNew(f"{store.url} uses repository format {config['format']}; this crmops "
                                   f"{__version__} reads format {FORMAT_VERSION}", hint="upgrade crmops")
        if cred.passphrase is None and cred.key_file is None:
            raise ConfigError("no passphrase or key file given",
                              hint="set CRMOPS_PASSPHRASE or encryption.passphrase, or encryption.key_file")
        if cred.key_file is not None:
            cred.key_file_secret()  # a missing key file is its own error, not a wrong key
        for key, _size in store.list("keys/"):
            slot = json.loads(store.get(key))
            if (slot["kind"] == "keyfile") != (cred.kind == "keyfile"):
                continue
            try:
                return cls(store, config, unwrap(slot, cred, repo_id=config["id"]), slot["id"])
            except WrongKey:
                continue
        what = "key file" if cred.kind == "keyfile" else "passphrase"
        raise WrongKey(f"the {what} does not open the repository at {store.url}",
                       hint="check CRMOPS_PASSPHRASE / encryption settings; `crmops key list` shows the slots")

    # -- key slots ----------------------------------------------------------------------

    def key_slots(self) -> list[dict[str, Any]]:
        slots = []
        for key, _ in self.store.list("keys/"):
            s = json.loads(self.store.get(key))
            slots.append({"id": s["id"], "label": s.get("label", ""), "kind": s["kind"], "created": s["created"],
                          "in_use": s["id"] == self.slot_id})
        return sorted(slots, key=lambda s: s["created"])

    def add_key(self, cred: Credential, label: str) -> str:
        slot_id = uuid.uuid4().hex[:12]
        slot = wrap(self.key, cred, repo_id=self.id, slot_id=slot_id, label=label)
        self.store.put(f"keys/{slot_id}", json.dumps(slot, indent=1).encode())
        return slot_id

    def remove_key(self, slot_id: str) -> None:
        slots = {s["id"]: s for s in self.key_slots()}
        if slot_id not in slots:
            raise ConfigError(f"no key slot {slot_id!r}", hint="`crmops key list` shows the slots")
        if len(slots) == 1:
            raise ConfigError("refusing to remove the last key slot: the repository would be unreadable forever")
        self.store.delete(f"keys/{slot_id}")

    # -- locks --------------------------------------------------------------------------

    def _locks(self) -> list[dict[str, Any]]:
        out = []
        for key, _ in self.store.list("locks/"):
            try:
                lock = json.loads(self.store.get(key))
            except (IntegrityError, ValueError):
                continue
            lock["key"] = key
            out.append(lock)
        return out

    @contextmanager
    def lock(self, exclusive: bool, purpose: str) -> Iterator[Callable[[], None]]:
        """Backups share; prune is exclusive. Yields refresh(), to call during long work."""
        lock_id = uuid.uuid4().hex[:12]
        key = f"locks/{lock_id}"
        doc = {"id": lock_id, "exclusive": exclusive, "purpose": purpose, "host": socket.gethostname(),
               "pid": os.getpid()}

        def write() -> None:
            self.store.put(key, json.dumps({**doc, "refreshed": _now().isoformat()}).encode())

        def conflicts() -> list[dict[str, Any]]:
            live = []
            for lock in self._locks():
                if lock["id"] == lock_id:
                    continue
                if _now() - datetime.fromisoformat(lock["refreshed"]) > LOCK_STALE:
                    continue  # a crashed run's lock
                if exclusive or lock["exclusive"]:
                    live.append(lock)
            return live

        for attempt in range(2):
            busy = conflicts()
            if busy:
                b = busy[0]
                raise LockBusy(f"the repository is locked by {b['purpose']} on {b['host']} (pid {b['pid']})",
                               hint="wait for it to finish; a crashed run's lock expires after "
                                    f"{int(LOCK_STALE.total_seconds() // 60)} minutes")
            if attempt == 0:
                write()
        last = [time.monotonic()]

        def refresh() -> None:
            if time.monotonic() - last[0] > LOCK_REFRESH:
                write()
                last[0] = time.monotonic()

        try:
            yield refresh
        finally:
            self.store.delete(key)

    # -- writing ------------------------------------------------------------------------

    def known_chunks(self) -> set[str]:
        return {key.rsplit("/", 1)[1] for key, _ in self.store.list("data/")}

    @contextmanager
    def writer(self, *, tags: Iterable[str] = (), threads: int = 4) -> Iterator[SnapshotWriter]:
        with self.lock(exclusive=False, purpose="backup") as refresh:
            w = SnapshotWriter(self, list(tags), threads, refresh)
            try:
                yield w
            finally:
                w.close()

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        name = f"manifest:{manifest['id']}"
        self.store.put(f"snapshots/{manifest['id']}", self.sealer.seal(json.dumps(manifest).encode(), name))

    # -- reading ------------------------------------------------------------------------

    def snapshot_ids(self) -> list[str]:
        return sorted(key.rsplit("/", 1)[1] for key, _ in self.store.list("snapshots/"))

    def manifest(self, ref: str = "latest") -> dict[str, Any]:
        ids = self.snapshot_ids()
        if ref == "latest":
            # physical base backups are restored with --at, never as "the latest snapshot"
            manifests = [m for m in (self._load_manifest(i) for i in ids) if m.get("kind") != "physical"]
            if not manifests:
                raise SnapshotNotFound(f"the repository at {self.store.url} has no snapshots yet")
            return max(manifests, key=lambda m: m["time"])
        matches = [i for i in ids if i.startswith(ref)]
        if len(matches) != 1:
            raise SnapshotNotFound(f"no snapshot {ref!r}" if not matches else f"{ref!r} matches several snapshots",
                                   hint="`crmops snapshots` lists them")
        return self._load_manifest(matches[0])

    def _load_manifest(self, snapshot_id: str) -> dict[str, Any]:
        key = f"snapshots/{snapshot_id}"
        return json.loads(self.sealer.open(self.store.get(key), f"manifest:{snapshot_id}", f"manifest {key}"))

    def manifests(self) -> list[dict[str, Any]]:
        return sorted((self._load_manifest(i) for i in self.snapshot_ids()), key=lambda m: m["time"])

    def snapshots(self) -> list[SnapshotInfo]:
        return [SnapshotInfo.from_manifest(m) for m in self.manifests()]

    def read_chunk(self, chunk_id: str) -> bytes:
        key = chunk_key(chunk_id)
        return self.sealer.open_chunk(self.store.get(key), chunk_id, f"chunk {key}")

    def read_chunks(self, ids: list[str], threads: int = 4) -> Iterator[bytes]:
        """The chunks' plaintext in order, fetched ahead in parallel, each authenticated."""
        return _in_order(self.read_chunk, ids, threads)

    def read_stream(self, manifest: dict[str, Any], name: str = "database") -> Iterator[bytes]:
        return self.read_chunks(manifest["streams"][name]["chunks"])

    def authenticate(self, manifest: dict[str, Any], progress: Callable[[int], None] | None = None) -> int:
        """Fetch every chunk the snapshot needs and check its tag; IntegrityError names the first bad one.

        Tags only (no decompression, no content hash): a pass that costs little beside the
        restore that follows, which opens every chunk fully again as it streams.
        """
        ids = [c for s in manifest["streams"].values() for c in s["chunks"]]
        ids += [c for f in manifest.get("files", []) for c in f.get("chunks", [])]

        def check(cid: str) -> int:
            key = chunk_key(cid)
            return len(self.sealer.authenticate(self.store.get(key), cid, f"chunk {key}"))

        total = 0
        for n in _in_order(check, list(dict.fromkeys(ids))):
            total += n
            if progress:
                progress(n)
        return total

    # -- verification and other records -------------------------------------------------

    def put_record(self, snapshot_id: str, kind: str, data: dict[str, Any]) -> str:
        # to the microsecond: records sort by name, and the newest must come last even within a
        # second (a failed verification must never hide behind an earlier passing one)
        record_id = f"{_now().strftime('%Y%m%dT%H%M%S%f')}-{kind}-{uuid.uuid4().hex[:6]}"
        key = f"records/{snapshot_id}/{record_id}"
        self.store.put(key, self.sealer.seal(json.dumps({"kind": kind, **data}).encode(), f"record:{key}"))
        return record_id

    def records(self, snapshot_id: str) -> list[dict[str, Any]]:
        out = []
        for key, _ in sorted(self.store.list(f"records/{snapshot_id}/")):
            out.append(json.loads(self.sealer.open(self.store.get(key), f"record:{key}", key)))
        return out


class SnapshotWriter:
    """Streams and files into chunks; commit() writes the manifest, the only thing that makes a snapshot."""

    def __init__(self, repo: Repository, tags: list[str], threads: int, refresh: Callable[[], None]) -> None:
        self.repo = repo
        self.tags = tags
        self.stats = WriteStats()
        self.stats_lock = threading.Lock()
        self.refresh = refresh
        self.known = repo.known_chunks()
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
        with self.stats_lock:
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
        manifest = {"id": snapshot_id, "time": _now().isoformat(timespec="microseconds"),
                    "hostname": socket.gethostname(), "tool": f"crmops {__version__}", "tags": self.tags, **meta,
                    "streams": self.streams, "files": self.files, "stats": {**self.stats.to_dict(),
                                                   "seconds": round(time.monotonic() - self.started, 2)}}
        self.repo.save_manifest(manifest)
        return manifest

    def close(self) -> None:
        for f in self.inflight:
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
