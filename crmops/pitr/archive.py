"""The WAL archive: every segment PostgreSQL hands to `archive_command`, sealed like a chunk.

Layout (docs/FORMAT.md): wal/<system id>/<timeline>/<file name>, one sealed object per
file, the file name bound as associated data ("wal:<system id>/<name>"), so a segment
swapped for another fails authentication. The system identifier keeps two clusters
archiving into one repository apart. A put is atomic in every store (local: temporary
name, fsync, rename; S3: one PUT), so a push killed at any point leaves either nothing
or the whole segment, and PostgreSQL simply retries it.

Partial segments (`crmops wal stream`): the segment pg_receivewal is still filling is
stored as <name>.partial, replaced as it grows (a new copy must extend the stored one),
and deleted once the full segment of that name arrives. restore_command asks for the
name without .partial, so `fetch` serves a partial in its place only as the very last
segment: no full copy, nothing newer on its timeline, no later timeline (a promoted
standby's old-timeline partial must not be replayed). Barman's `get-wal --partial` does
the same; pg_receivewal leaves the renaming to the administrator.
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
        """'stored' or 'already' (same content); WalConflict when the archive holds other bytes.

        A .partial file goes through push_partial: 'stored', 'already' or 'superseded'.
        """
        name = path.name
        validate_name(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        if name.endswith(".partial"):
            return self.push_partial(name[:-len(".partial")], data)
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
            partial = wal_key(self.system_id, name + ".partial")
            if self.store.exists(partial):  # the full segment supersedes what was streamed of it
                self.store.delete(partial)
        return "stored"

    def push_partial(self, segment: str, data: bytes) -> str:
        """Store the growing segment as <segment>.partial: 'stored', 'already' or 'superseded'.

        pg_receivewal pads the file with zeros to the segment size, so what counts is the
        content before the trailing zeros: a new copy must extend the stored one (a shorter
        copy of the same WAL is 'already'); anything else is WalConflict, as for segments.
        """
        if not SEGMENT_RE.match(segment):
            raise ConfigError(f"{segment!r} is not a WAL segment name")
        if self.store.exists(wal_key(self.system_id, segment)):
            return "superseded"
        name = segment + ".partial"
        key = wal_key(self.system_id, name)
        if self.store.exists(key):
            stored = self.sealer.open(self.store.get(key), _aad(self.system_id, name), key)
            old, new = stored.rstrip(b"\0"), data.rstrip(b"\0")
            if new == old or old.startswith(new):
                return "already"
            if not new.startswith(old):
                raise WalConflict(f"{name} is already archived at {key} with content this copy does not extend; "
                                  "refusing to overwrite",
                                  hint="two clusters with the same system identifier, or a restored copy still "
                                       "streaming on the old timeline: stop it and investigate")
        self.store.put(key, self.sealer.seal(data, _aad(self.system_id, name)))
        self._note_latest(segment, partial=True)
        return "stored"

    def _note_latest(self, name: str, partial: bool = False) -> None:
        """The newest segment and the push times of the last day (the status page charts the lag from them)."""
        from crmops.pitr.pushlog import record

        now = datetime.now(UTC)
        try:
            before = self.latest() or {}
        except Exception:  # a damaged state must not stop archiving: the next push writes a whole one
            before = {}
        doc: dict[str, Any] = {"segment": name, "pushed_at": now.isoformat(timespec="milliseconds"),
                               "pushes": record(before.get("pushes"), now)}
        if partial:
            doc["partial"] = True
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

    def read_for_replay(self, name: str) -> tuple[bytes, bool]:
        """(content, from a partial): the full file, else a streamed partial that is the last segment."""
        try:
            return self.read(name), False
        except WalMissing:
            if not SEGMENT_RE.match(name) or name + ".partial" not in last_partials(self.files()):
                raise
        return self.read(name + ".partial"), True

    def fetch(self, name: str, dest: Path) -> int:
        """Write the file to dest atomically (restore_command must never see half a segment)."""
        data, _partial = self.read_for_replay(name)
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


def last_partials(files: list[ArchivedFile], seg_size: int = DEFAULT_SEGMENT_SIZE) -> set[str]:
    """The .partial files replay may use in place of their segment: the last one of their timeline.

    A partial is usable when no full copy of it, no newer full segment of its timeline
    and no history file of a later timeline is archived.
    """
    names = {f.name for f in files}
    newest: dict[int, int] = {}
    for n in names:
        if SEGMENT_RE.match(n):
            tli, segno = parse_segment(n, seg_size)
            newest[tli] = max(newest.get(tli, -1), segno)
    histories = [int(n[:8], 16) for n in names if n.endswith(".history")]
    out = set()
    for n in names:
        if not n.endswith(".partial"):
            continue
        seg = n[:-len(".partial")]
        tli, segno = parse_segment(seg, seg_size)
        if seg not in names and newest.get(tli, -1) < segno and not any(h > tli for h in histories):
            out.add(n)
    return out


def segment_system_id(data: bytes) -> str | None:
    """The system identifier in a segment's first page (its long header), or None if unreadable.

    XLogLongPageHeaderData: magic, info, timeline, page address, remaining length, then
    the system identifier at byte 24, in the server's byte order.
    """
    if len(data) < 32:
        return None
    info = struct.unpack_from("=H", data, 2)[0]
    if not info & 0x0002:  # XLP_LONG_HEADER
        return None
    return str(struct.unpack_from("=Q", data, 24)[0])


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
