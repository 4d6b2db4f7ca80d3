"""Append-only, hash-chained journals kept on disk outside the database.

Migrations and upgrades record every step here, because restoring a backup of the
database must not erase the record of the attempt that made the restore necessary.
Each line is one JSON record carrying the SHA-256 of the previous line, so an edited,
reordered or deleted line shows as a broken chain; each append is fsynced, so a crash
loses at most the step that was running.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmops.errors import IntegrityError

GENESIS = "0" * 64


def _digest(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def actor() -> str:
    """Who ran it: user@host, as an auditor would ask."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class Journal:
    """One journal file; safe for one writer at a time (callers hold their own lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    def _last_hash(self) -> str:
        """The hash of the last whole line; a torn line left by a crash is cut off first."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return GENESIS
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            os.truncate(self.path, cut)
            data = data[:cut]
            if not data:
                return GENESIS
        return _digest(data[data.rfind(b"\n", 0, len(data) - 1) + 1:])

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one record (time, event, fields, prev) and fsync it before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"ts": now_iso(), "event": event, **fields, "prev": self._last_hash()}
        line = json.dumps(record, sort_keys=True, default=str, ensure_ascii=False).encode() + b"\n"
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:  # the file's directory entry must survive a power cut too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return record

    def records(self, *, verify: bool = True) -> Iterator[dict[str, Any]]:
        """Every record in order; IntegrityError naming the line where the chain breaks."""
        if not self.path.is_file():
            return
        prev = GENESIS
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    # a crash mid-write leaves a torn last line: it never counted
                    return
                try:
                    record = json.loads(raw)
                except ValueError:
                    raise IntegrityError(f"{self.path}: line {number} is not a journal record",
                                         hint="the journal was edited or damaged") from None
                if verify and record.get("prev") != prev:
                    raise IntegrityError(f"{self.path}: hash chain broken between lines {number - 1} and {number}",
                                         hint="the journal was edited, reordered or truncated") from None
                prev = _digest(raw)
                yield record

    def verify(self) -> int:
        """The number of records, or IntegrityError if the chain is broken."""
        return sum(1 for _ in self.records())
