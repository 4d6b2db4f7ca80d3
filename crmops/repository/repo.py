"""The snapshot repository: deduplicated, encrypted chunks and the manifests naming them.

A snapshot exists if and only if its manifest exists, and the manifest is written
last: an interrupted backup leaves only chunks, which the next backup finds and
re-uses. The byte layout is documented in docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
    CrmopsError,
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
from crmops.repository.source import is_safety, safety_tag, source_of_manifest
from crmops.storage.base import Store

log = logging.getLogger("crmops.repository")

FORMAT_VERSION = 1
#: a lock not refreshed for this long belongs to a crashed run
LOCK_STALE = timedelta(minutes=30)
LOCK_REFRESH = 60.0


def _now() -> datetime:
    return datetime.now(UTC)


#: a sealed object is at least its version byte, nonce and tag
SEALED_MIN = 1 + 12 + 16


def chunk_key(chunk_id: str) -> str:
    return f"data/{chunk_id[:2]}/{chunk_id}"


def quarantine_key(chunk_id: str) -> str:
    return f"quarantine/{chunk_id}"


def manifest_chunks(manifest: dict[str, Any]) -> list[str]:
    """Every chunk id a snapshot needs (database streams, then attachments), in order, repeats kept."""
    ids = [c for s in manifest.get("streams", {}).values() for c in s["chunks"]]
    ids += [c for f in manifest.get("files", []) for c in f.get("chunks", [])]
    return ids


def process_start(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22); None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[19])


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def holder() -> dict[str, Any]:
    """Who holds a lock: enough for anyone on this host to tell whether that process still runs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": process_start(pid), "boot_id": boot_id()}


def lock_stale(lock: dict[str, Any], now: datetime | None = None) -> str | None:
    """Why a lock no longer protects anything, or None while its holder may still run."""
    try:
        refreshed = datetime.fromisoformat(lock["refreshed"])
        age = (now or _now()) - refreshed
    except (KeyError, TypeError, ValueError):
        age = LOCK_STALE * 2  # an unreadable lock counts as old
    if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
        here = boot_id()
        if lock.get("boot_id") and here and lock["boot_id"] != here:
            return "written before this host last booted"
        started = process_start(lock["pid"])
        if started is None:
            return f"process {lock['pid']} no longer runs on this host"
        if lock.get("process_start") is not None and started != lock["process_start"]:
            return f"pid {lock['pid']} now belongs to another process"
        if lock.get("process_start") is not None:
            return None  # the very process still runs, however long since its last refresh
    if age > LOCK_STALE:
        return f"not refreshed for {int(age.total_seconds() // 60)} minutes"
    return None


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
    source: str = ""

    @classmethod
    def from_manifest(cls, m: dict[str, Any]) -> SnapshotInfo:
        size = sum(s["size"] for s in m.get("streams", {}).values())
        size += sum(f.get("size", 0) for f in m.get("files", []))
        return cls(m["id"], m["time"], m.get("tags", []), m.get("engine"), m.get("server_version"),
                   m.get("database"), m.get("schema_revision"), size,
                   m.get("stats", {}).get("bytes_new", 0), m.get("hostname", ""), source_of_manifest(m))


@dataclass
class DamagedManifest:
    """A snapshot whose manifest cannot be read (tampered, truncated, vanished): listed, never guessed at."""

    id: str
    problem: str


@dataclass
class Listing:
    """Every snapshot the repository names: the readable manifests (oldest first) and the damaged ones."""

    manifests: list[dict[str, Any]]
    damaged: list[DamagedManifest]

    def of_source(self, source: str | None) -> list[dict[str, Any]]:
        return [m for m in self.manifests if source is None or source_of_manifest(m) == source]

    def sources(self) -> list[str]:
        return sorted({source_of_manifest(m) for m in self.manifests})

    def latest(self, source: str | None = None) -> dict[str, Any]:
        """The newest readable backup of source (any source if None), passing over safety snapshots.

        Safety snapshots (pre-restore, pre-migrate, pre-undo) are named by id; damaged manifests
        are passed over with a warning, since any of them may have been newer.
        """
        mine = self.of_source(source)
        # physical base backups are restored with --at, never as "the latest snapshot"
        backups = [m for m in mine if not is_safety(m) and m.get("kind") != "physical"]
        if self.damaged:
            log.warning("passing over %d damaged snapshot manifest%s: %s (`crmops check` shows the damage)",
                        len(self.damaged), "" if len(self.damaged) == 1 else "s",
                        ", ".join(d.id for d in self.damaged))
        if backups:
            return backups[-1]
        where = f" of source {source}" if source else ""
        if mine:
            tags = sorted({safety_tag(m.get("tags") or []) or "" for m in mine})
            what = f"{len(mine)} safety snapshot{'' if len(mine) == 1 else 's'}"
            raise SnapshotNotFound(f"no backup{where}: only {what} ({', '.join(tags)})",
                                   hint="name one by id; `crmops snapshots --all` lists them")
        others = self.sources()
        if others:
            raise SnapshotNotFound(f"no snapshot{where} yet; the repository holds other sources: {', '.join(others)}",
                                   hint="run `crmops backup`, or name a snapshot by id or with --source")
        if self.damaged:
            raise IntegrityError(f"no readable snapshot: every manifest is damaged ({len(self.damaged)})",
                                 hint="`crmops check` names the damage")
        raise SnapshotNotFound("the repository has no snapshots yet", hint="run `crmops backup`")


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


def _read_config(store: Store) -> dict[str, Any]:
    """The plain `config` object, its format checked first: a newer format is refused before anything else."""
    try:
        config = json.loads(store.get("config"))
    except ValueError:
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        raise IntegrityError(f"{store.url}/config is not a crmops repository configuration",
                             hint="restore it from a copy of the repository; see docs/FORMAT.md")
    fmt = config.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise IntegrityError(f"{store.url}/config names no repository format this crmops knows ({fmt!r})",
                             hint="restore it from a copy of the repository; see docs/FORMAT.md")
    if fmt > FORMAT_VERSION:
        raise RepositoryTooNew(f"{store.url} uses repository format {fmt}; this crmops {__version__} reads "
                               f"formats up to {FORMAT_VERSION}", hint="upgrade crmops")
    return config


class Repository:
    def __init__(self, store: Store, config: dict[str, Any], key: MasterKey, slot_id: str) -> None:
        self.store = store
        self.config = config
        self.id: str = config["id"]
        self.key = key
        self.slot_id = slot_id
        self.sealer = Sealer(key, config.get("compression_level", 1))
        self._quarantined_here: set[str] = set()

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
        config = _read_config(store)
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
            if not isinstance(lock, dict) or "id" not in lock:
                continue
            lock["key"] = key
            out.append(lock)
        return out

    def locks(self) -> list[dict[str, Any]]:
        """Every lock with "stale": why it no longer protects anything (None while its holder lives)."""
        return [{**lock, "stale": lock_stale(lock)} for lock in self._locks()]

    def remove_lock(self, lock: dict[str, Any], why: str) -> None:
        """Delete a lock (as listed by locks()), with a log line saying whose it was and why."""
        self.store.delete(lock["key"])
        log.warning("removed the lock of %s on %s (pid %s): %s", lock.get("purpose"), lock.get("host"),
                    lock.get("pid"), why)

    @contextmanager
    def lock(self, exclusive: bool, purpose: str) -> Iterator[Callable[[], None]]:
        """Backups share; prune is exclusive. Yields refresh() (kept for callers; a thread refreshes anyway).

        The lock names host, pid and the process's start time, so a lock left by a killed run
        on this host is recognised as stale at once; one from another host only once its
        holder has stopped refreshing it for LOCK_STALE.
        """
        lock_id = uuid.uuid4().hex[:12]
        key = f"locks/{lock_id}"
        doc = {"id": lock_id, "exclusive": exclusive, "purpose": purpose, **holder()}

        def write() -> None:
            self.store.put(key, json.dumps({**doc, "refreshed": _now().isoformat()}).encode())

        def conflicts() -> list[dict[str, Any]]:
            live = []
            for lock in self.locks():
                if lock["id"] == lock_id:
                    continue
                if lock["stale"]:
                    self.remove_lock(lock, f"stale: {lock['stale']}")
                    continue
                if exclusive or lock.get("exclusive"):
                    live.append(lock)
            return live

        for attempt in range(2):
            busy = conflicts()
            if busy:
                if attempt == 1:
                    self.store.delete(key)
                b = busy[0]
                raise LockBusy(f"the repository is locked by {b.get('purpose')} on {b.get('host')} "
                               f"(pid {b.get('pid')})",
                               hint="wait for it to finish; a lock whose process is gone on this host is removed "
                                    "at once, one from another host after "
                                    f"{int(LOCK_STALE.total_seconds() // 60)} minutes without refresh; "
                                    "`crmops unlock` removes stale locks")
            if attempt == 0:
                write()
        stop = threading.Event()

        def keep_fresh() -> None:
            while not stop.wait(LOCK_REFRESH):
                try:
                    write()
                except CrmopsError as e:  # the next refresh tries again; LOCK_STALE is many refreshes away
                    log.warning("could not refresh the repository lock: %s", e.message)

        refresher = threading.Thread(target=keep_fresh, name="crmops-lock-refresh", daemon=True)
        refresher.start()
        try:
            yield lambda: None
        finally:
            stop.set()
            refresher.join()
            self.store.delete(key)

    # -- writing ------------------------------------------------------------------------

    def stored_chunks(self) -> dict[str, int]:
        """chunk id -> stored size, from one listing (nothing read)."""
        return {key.rsplit("/", 1)[1]: size for key, size in self.store.list("data/")}

    def readable_manifests(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The manifests that open, and snapshot id -> problem for those that do not."""
        listing = self.listing()
        return listing.manifests, {d.id: d.problem for d in listing.damaged}

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

    # -- quarantine -----------------------------------------------------------------------

    def quarantined(self) -> set[str]:
        """Chunk ids found damaged or missing and not stored again since (a listing, nothing read)."""
        return {key.rsplit("/", 1)[1] for key, _ in self.store.list("quarantine/")}

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
        doc = {"chunk": chunk_id, "reason": reason, "time": _now().isoformat(timespec="seconds"), "by": by,
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

    def manifest(self, ref: str = "latest", *, source: str | None = None) -> dict[str, Any]:
        """ref by id or unique prefix, or `latest`: the newest readable backup of source (None: any source)."""
        if ref == "latest":
            return self.listing().latest(source)
        ids = self.snapshot_ids()
        matches = [i for i in ids if i.startswith(ref)]
        if len(matches) != 1:
            raise SnapshotNotFound(f"no snapshot {ref!r}" if not matches else f"{ref!r} matches several snapshots",
                                   hint="`crmops snapshots` lists them")
        return self._load_manifest(matches[0])

    def _load_manifest(self, snapshot_id: str) -> dict[str, Any]:
        key = f"snapshots/{snapshot_id}"
        return json.loads(self.sealer.open(self.store.get(key), f"manifest:{snapshot_id}", f"manifest {key}"))

    def manifests(self) -> list[dict[str, Any]]:
        """Every manifest, oldest first; IntegrityError if one is damaged (listing() tolerates that)."""
        return sorted((self._load_manifest(i) for i in self.snapshot_ids()), key=lambda m: m["time"])

    def listing(self) -> Listing:
        """Every readable manifest (oldest first) and every damaged one, so one bad object hides nothing."""
        def load(sid: str) -> dict[str, Any] | DamagedManifest:
            try:
                m = self._load_manifest(sid)
                if not isinstance(m, dict) or m.get("id") != sid or "time" not in m:
                    raise IntegrityError(f"manifest snapshots/{sid} does not describe snapshot {sid}")
            except IntegrityError as e:
                return DamagedManifest(sid, e.message)
            except (ValueError, UnicodeDecodeError):  # authenticated but not JSON: written by something else
                return DamagedManifest(sid, f"manifest snapshots/{sid} is not a crmops manifest")
            return m

        readable: list[dict[str, Any]] = []
        damaged: list[DamagedManifest] = []
        ids = self.snapshot_ids()
        for m in _in_order(load, ids):  # fetched a few at a time: S3 round trips add up
            (damaged if isinstance(m, DamagedManifest) else readable).append(m)
        readable.sort(key=lambda m: m["time"])
        return Listing(readable, damaged)

    def snapshots(self) -> list[SnapshotInfo]:
        return [SnapshotInfo.from_manifest(m) for m in self.listing().manifests]

    def read_chunk(self, chunk_id: str) -> bytes:
        """The chunk's plaintext; a chunk that is missing or fails authentication is quarantined."""
        key = chunk_key(chunk_id)
        try:
            return self.sealer.open_chunk(self.store.get(key), chunk_id, f"chunk {key}")
        except IntegrityError as e:
            self.quarantine(chunk_id, e.message)
            raise

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
            try:
                return len(self.sealer.authenticate(self.store.get(key), cid, f"chunk {key}"))
            except IntegrityError as e:
                self.quarantine(cid, e.message)
                raise

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
        manifest = {"id": snapshot_id, "time": _now().isoformat(timespec="microseconds"),
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
