"""The WAL archive: every segment PostgreSQL hands to `archive_command`, sealed like a chunk.

Layout (docs/FORMAT.md): wal/<system id>/<timeline>/<file name>, one sealed object per
file, the file name bound as associated data ("wal:<system id>/<name>"), so a segment
swapped for another fails authentication. The system identifier keeps two clusters
archiving into one repository apart. A put is atomic in every store (local: temporary
name, fsync, rename; S3: one PUT), so a push killed at any point leaves either nothing
or the whole segment, and PostgreSQL simply retries it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmops.errors import ConfigError, WalConflict, WalMissing
from crmops.storage.local import write_atomic

SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
FILE_RE = re.compile(r"^([0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$")
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024


def validate_name(name: str) -> None:
    if not FILE_RE.match(name):
        raise ConfigError(f"{name!r} is not a WAL file name (a segment, .history, .backup or .partial file)",
                          hint="archive_command passes %p (the path), restore_command %f (the name) and %p")


def wal_key(system_id: str, name: str) -> str:
    return f"wal/{system_id}/{name[:8]}/{name}"


def state_key(system_id: str) -> str:
    return f"walstate/{system_id}"


def _aad(system_id: str, name: str) -> str:
    return f"wal:{system_id}/{name}"


def read_system_id(datadir: Path) -> str | None:
    """The cluster's system identifier from global/pg_control (its first 8 bytes, native order).

    archive_command and restore_command run in the data directory, so this costs one small read.
    """
    try:
        with open(datadir / "global" / "pg_control", "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return str(struct.unpack("=Q", head)[0]) if len(head) == 8 else None


# -- segment arithmetic ---------------------------------------------------------------

def parse_lsn(text: str) -> int:
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segno_of(lsn: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return lsn // seg_size


def segment_name(timeline: int, segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_segment(name: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """(timeline, segment number) of a segment file name."""
    per_id = 0x100000000 // seg_size
    return int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:24], 16)


@dataclass
class ArchivedFile:
    name: str
    size: int  # sealed size in the store


class WalArchive:
    """One cluster's archive (by system identifier) inside an open repository."""

    def __init__(self, repo: Any, system_id: str) -> None:
        if not system_id.isdigit():
            raise ConfigError(f"system identifier {system_id!r} is not a number")
        self.repo = repo
        self.store = repo.store
        self.sealer = repo.sealer
        self.system_id = system_id

    # -- push and fetch -----------------------------------------------------------

    def push(self, path: Path) -> str:
        """'stored' or 'already' (same content); WalConflict when the archive holds other bytes."""
        name = path.name
        validate_name(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        key = wal_key(self.system_id, name)
        if self.store.exists(key):
            stored = self.sealer.open(self.store.get(key), _aad(self.system_id, name), key)
            if stored == data:
                return "already"
            raise WalConflict(f"{name} is already archived at {key} with different content "
                              f"({len(stored)} bytes stored, {len(data)} offered); refusing to overwrite",
                              hint="two clusters with the same system identifier, or a restored copy still "
                                   "archiving on the old timeline: stop its archiving and investigate")
        self.store.put(key, self.sealer.seal(data, _aad(self.system_id, name)))  # atomic: whole or absent
        if SEGMENT_RE.match(name):
            self._note_latest(name)
        return "stored"

    def _note_latest(self, name: str) -> None:
        """The newest segment and the push times of the last day (the status page charts the lag from them)."""
        from crmops.pitr.pushlog import record

        now = datetime.now(UTC)
        try:
            before = self.latest() or {}
        except Exception:  # a damaged state must not stop archiving: the next push writes a whole one
            before = {}
        doc = {"segment": name, "pushed_at": now.isoformat(timespec="seconds"),
               "pushes": record(before.get("pushes"), now)}
        key = state_key(self.system_id)
        self.store.put(key, self.sealer.seal(json.dumps(doc).encode(), f"walstate:{self.system_id}"))

    def latest(self) -> dict[str, Any] | None:
        """{segment, pushed_at, pushes} of the newest push, or None before the first."""
        key = state_key(self.system_id)
        if not self.store.exists(key):
            return None
        return json.loads(self.sealer.open(self.store.get(key), f"walstate:{self.system_id}", key))

    def read(self, name: str) -> bytes:
        validate_name(name)
        key = wal_key(self.system_id, name)
        if not self.store.exists(key):
            raise WalMissing(f"{name} is not in the archive of cluster {self.system_id}")
        return self.sealer.open(self.store.get(key), _aad(self.system_id, name), key)

    def fetch(self, name: str, dest: Path) -> int:
        """Write the file to dest atomically (restore_command must never see half a segment)."""
        data = self.read(name)
        write_atomic(dest, data, prefix=".crmops-")
        return len(data)

    # -- listing --------------------------------------------------------------------

    def files(self) -> list[ArchivedFile]:
        out = []
        for key, size in self.store.list(f"wal/{self.system_id}/"):
            name = key.rsplit("/", 1)[1]
            if FILE_RE.match(name):
                out.append(ArchivedFile(name, size))
        return sorted(out, key=lambda f: f.name)

    def segments(self) -> list[str]:
        return [f.name for f in self.files() if SEGMENT_RE.match(f.name)]


def first_gap(segments: list[str], start_segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> int | None:
    """The first segment number missing between start_segno and the newest archived one (any timeline)."""
    have = {parse_segment(s, seg_size)[1] for s in segments}
    if not have:
        return None
    for segno in range(start_segno, max(have) + 1):
        if segno not in have:
            return segno
    return None


def timeline_of(segments: list[str], segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The newest timeline known near segno, to name a missing segment as PostgreSQL would ask for it."""
    best = 1
    for s in segments:
        tli, n = parse_segment(s, seg_size)
        if n <= segno + 1:
            best = max(best, tli)
    return best
