"""The snapshot repository: deduplicated, encrypted chunks and the manifests naming them.

A snapshot exists if and only if its manifest exists, and the manifest is written
last: an interrupted backup leaves only chunks, which the next backup finds and
re-uses. The byte layout is documented in docs/FORMAT.md.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from crmops import __version__
from crmops.errors import (
    ConfigError,
    IntegrityError,
    RepositoryExists,
    RepositoryNotFound,
    RepositoryTooNew,
    WrongKey,
)
from crmops.repository.cache import ObjectCache
from crmops.repository.keys import Credential, MasterKey, unwrap, wrap
from crmops.repository.listing import Manifests, in_order
from crmops.repository.locks import Locks
from crmops.repository.objects import Sealer
from crmops.repository.paths import chunk_key, now
from crmops.repository.quarantine import ChunkHealth
from crmops.repository.writer import SnapshotWriter
from crmops.storage.base import Store

FORMAT_VERSION = 1


def _read_config(store: Store, raw: bytes | None = None) -> dict[str, Any]:
    """The plain `config` object (raw: its bytes, already read), its format checked first: a newer
    format is refused before anything else."""
    try:
        config = json.loads(store.get("config") if raw is None else raw)
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


class Repository(Locks, ChunkHealth, Manifests):
    """A repository opened with a key: keys, chunks, snapshots; locks, quarantine and listing via its mixins."""

    def __init__(self, store: Store, config: dict[str, Any], key: MasterKey, slot_id: str) -> None:
        self.store = store
        self.config = config
        self.id: str = config["id"]
        self.key = key
        self.slot_id = slot_id
        self.sealer = Sealer(key, config.get("compression_level", 1))
        self._quarantined_here: set[str] = set()
        #: copies of a remote repository's manifests and records (crmops.repository.cache); none by default
        self.cache = ObjectCache()
        #: objects fetched or stored at once: S3 requests of small objects wait on round trips
        self.concurrency: int = getattr(store, "concurrency", 4)

    # -- creating and opening -----------------------------------------------------------

    @classmethod
    def init(cls, store: Store, cred: Credential, *, chunk_avg: int = 1 << 20, compression_level: int = 1,
             label: str = "initial", extra: dict[str, Any] | None = None) -> Repository:
        """A new repository with one key slot; extra: more fields for its plain `config` (a copy's origin)."""
        if store.exists("config"):
            raise RepositoryExists(f"{store.url} already holds a crmops repository")
        config = {"format": FORMAT_VERSION, "id": uuid.uuid4().hex, "created": now().isoformat(timespec="seconds"),
                  "chunker": {"algorithm": "fastcdc", "avg": chunk_avg, "min": chunk_avg // 4, "max": chunk_avg * 4},
                  "compression": "zstd", "compression_level": compression_level, "cipher": "aes-256-gcm",
                  "chunk_id": "hmac-sha256", **(extra or {})}
        master = MasterKey.generate()
        slot_id = uuid.uuid4().hex[:12]
        slot = wrap(master, cred, repo_id=config["id"], slot_id=slot_id, label=label)
        store.put(f"keys/{slot_id}", json.dumps(slot, indent=1).encode())
        store.put("config", json.dumps(config, indent=1).encode())  # last: the repository now exists
        return cls(store, config, master, slot_id)

    @classmethod
    def open(cls, store: Store, cred: Credential, cache: ObjectCache | None = None) -> Repository:
        """The repository, opened by the first key slot cred unwraps.

        cache (a remote repository's local copies) serves the key slots as well, each still
        named by the listing of keys/ at its listed size: a removed slot never opens it again.
        """
        cache = cache or ObjectCache()
        try:  # one GET, where a HEAD first cost S3 a round trip more
            raw = store.get("config")
        except IntegrityError:
            raise RepositoryNotFound(f"no crmops repository at {store.url}",
                                     hint="create one with `crmops repo init`") from None
        config = _read_config(store, raw)
        if cred.passphrase is None and cred.key_file is None:
            raise ConfigError("no passphrase or key file given",
                              hint="set CRMOPS_PASSPHRASE or encryption.passphrase, or encryption.key_file")
        if cred.key_file is not None:
            cred.key_file_secret()  # a missing key file is its own error, not a wrong key
        listed = list(store.list("keys/"))
        folder = cache.folder / config["id"] if cache.folder else None
        cache = ObjectCache(folder)
        cache.prune("keys/", {k for k, _ in listed})
        for key, size in listed:
            slot = cache.read(store, key, size, json.loads)
            if (slot["kind"] == "keyfile") != (cred.kind == "keyfile"):
                continue
            try:
                repo = cls(store, config, unwrap(slot, cred, repo_id=config["id"]), slot["id"])
            except WrongKey:
                continue
            repo.cache = cache
            return repo
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

    # -- writing ------------------------------------------------------------------------

    @contextmanager
    def writer(self, *, tags: Iterable[str] = (), threads: int | None = None) -> Iterator[SnapshotWriter]:
        with self.lock(exclusive=False, purpose="backup") as refresh:
            w = SnapshotWriter(self, list(tags), threads or self.concurrency, refresh)
            try:
                yield w
            finally:
                w.close()

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        name, key = f"manifest:{manifest['id']}", f"snapshots/{manifest['id']}"
        sealed = self.sealer.seal(json.dumps(manifest).encode(), name)
        self.store.put(key, sealed)
        self.cache.keep(key, sealed)  # stored: the next run's listing names it, and reads the copy

    # -- reading ------------------------------------------------------------------------

    def read_chunk(self, chunk_id: str) -> bytes:
        """The chunk's plaintext; a chunk that is missing or fails authentication is quarantined."""
        key = chunk_key(chunk_id)
        try:
            return self.sealer.open_chunk(self.store.get(key), chunk_id, f"chunk {key}")
        except IntegrityError as e:
            self.quarantine(chunk_id, e.message)
            raise

    def read_chunks(self, ids: list[str], threads: int | None = None) -> Iterator[bytes]:
        """The chunks' plaintext in order, fetched ahead in parallel, each authenticated."""
        return in_order(self.read_chunk, ids, threads or self.concurrency)

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
        for n in in_order(check, list(dict.fromkeys(ids)), self.concurrency):
            total += n
            if progress:
                progress(n)
        return total

    # -- verification and other records -------------------------------------------------

    def put_record(self, snapshot_id: str, kind: str, data: dict[str, Any]) -> str:
        # to the microsecond: records sort by name, and the newest must come last even within a
        # second (a failed verification must never hide behind an earlier passing one)
        record_id = f"{now().strftime('%Y%m%dT%H%M%S%f')}-{kind}-{uuid.uuid4().hex[:6]}"
        key = f"records/{snapshot_id}/{record_id}"
        sealed = self.sealer.seal(json.dumps({"kind": kind, **data}).encode(), f"record:{key}")
        self.store.put(key, sealed)
        self.cache.keep(key, sealed)
        return record_id

    def _record(self, key: str, size: int | None) -> dict[str, Any]:
        return self.cache.read(self.store, key, size, lambda data: json.loads(self.sealer.open(
            data, f"record:{key}", key)))

    def records(self, snapshot_id: str) -> list[dict[str, Any]]:
        return [self._record(key, size) for key, size in sorted(self.store.list(f"records/{snapshot_id}/"))]

    def all_records(self) -> dict[str, list[dict[str, Any] | IntegrityError]]:
        """snapshot id -> its records in order, from one listing of records/ (not one per snapshot);
        a record that fails to open stands as its IntegrityError."""
        listed = sorted(self.store.list("records/"))
        self.cache.prune("records/", {k for k, _ in listed})

        def load(item: tuple[str, int]) -> dict[str, Any] | IntegrityError:
            try:
                return self._record(*item)
            except IntegrityError as e:
                return e

        out: dict[str, list[dict[str, Any] | IntegrityError]] = {}
        for (key, _), rec in zip(listed, in_order(load, listed, self.concurrency), strict=True):
            out.setdefault(key.split("/")[1], []).append(rec)
        return out
