"""Listing snapshots: every readable manifest, the damaged ones named, `latest` per source.

One unreadable manifest never hides the others; manifests are fetched a few at a
time, since S3 round trips add up.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from crmops.errors import IntegrityError, SnapshotNotFound
from crmops.repository.objects import Sealer
from crmops.repository.source import is_safety, safety_tag, source_of_manifest
from crmops.storage.base import Store

log = logging.getLogger("crmops.repository")


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


def in_order(fn: Callable[[str], Any], ids: list[str], threads: int = 4) -> Iterator[Any]:
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



class Manifests:
    """Reading manifests (a mixin of Repository: needs self.store and self.sealer)."""

    store: Store
    sealer: Sealer

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
        for m in in_order(load, ids):  # fetched a few at a time: S3 round trips add up
            (damaged if isinstance(m, DamagedManifest) else readable).append(m)
        readable.sort(key=lambda m: m["time"])
        return Listing(readable, damaged)

    def snapshots(self) -> list[SnapshotInfo]:
        return [SnapshotInfo.from_manifest(m) for m in self.listing().manifests]

    def readable_manifests(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The manifests that open, and snapshot id -> problem for those that do not."""
        listing = self.listing()
        return listing.manifests, {d.id: d.problem for d in listing.damaged}
