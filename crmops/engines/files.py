"""The CRM's attachments folder as a stream of entries, and back into a folder.

Symlinks and special files (sockets, FIFOs, devices) are recorded, never followed
or read: following a link could back up /etc or loop forever, and reading a FIFO
would hang the nightly job.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crmops.errors import ConfigError

PIECE = 1 << 20


@dataclass
class FileEntry:
    path: str  # relative, '/'-separated
    kind: str  # file | dir | symlink | special
    mode: int
    mtime: float
    size: int = 0
    sha256: str | None = None  # filled in for files once read
    target: str | None = None  # symlinks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(os.path.basename(rel), p) for p in patterns)


def walk(root: Path, exclude: Iterable[str] = ()) -> Iterator[FileEntry]:
    """Entries in a stable (sorted) order, so identical folders give identical streams."""
    if not root.is_dir():
        raise ConfigError(f"{root}: attachments folder not found", hint="check attachments.path")
    patterns = list(exclude)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            raise ConfigError(f"{folder}: cannot list attachments folder: {e.strerror}") from None
        subdirs = []
        for name in names:
            full = folder / name
            rel = full.relative_to(root).as_posix()
            if _excluded(rel, patterns):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                yield FileEntry(rel, "symlink", stat.S_IMODE(st.st_mode), st.st_mtime, target=os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                yield FileEntry(rel, "dir", stat.S_IMODE(st.st_mode), st.st_mtime)
                subdirs.append(full)
            elif stat.S_ISREG(st.st_mode):
                yield FileEntry(rel, "file", stat.S_IMODE(st.st_mode), st.st_mtime, size=st.st_size)
            else:
                yield FileEntry(rel, "special", stat.S_IMODE(st.st_mode), st.st_mtime)
        stack.extend(reversed(subdirs))


def read_pieces(root: Path, entry: FileEntry) -> Iterator[bytes]:
    """A file's content in pieces; sets entry.sha256 and entry.size to what was actually read."""
    h = hashlib.sha256()
    size = 0
    with open(root / entry.path, "rb") as f:
        while piece := f.read(PIECE):
            h.update(piece)
            size += len(piece)
            yield piece
    entry.sha256 = h.hexdigest()
    entry.size = size


def restore_entry(root: Path, entry: FileEntry, pieces: Iterable[bytes] = ()) -> None:
    """Write one entry under root; paths that would escape root are refused."""
    target = (root / entry.path).resolve()
    if not str(target).startswith(str(root.resolve()) + os.sep):
        raise ConfigError(f"refusing to write outside {root}: {entry.path}")
    if entry.kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, entry.mode)
    elif entry.kind == "symlink":
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(entry.target or "", target)
        return
    elif entry.kind == "file":
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.crmops-tmp")
        with open(tmp, "wb") as f:
            for piece in pieces:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, entry.mode)
        os.replace(tmp, target)
    else:
        return  # special files are recorded, not recreated
    os.utime(target, (entry.mtime, entry.mtime))


def finish_dirs(root: Path, entries: Iterable[FileEntry]) -> None:
    """Directory mtimes change as files land in them: set them once everything is written."""
    for e in entries:
        if e.kind == "dir":
            os.utime(root / e.path, (e.mtime, e.mtime))


#: pseudo file systems: nothing a restore writes belongs there
VIRTUAL = ("/proc", "/sys", "/dev")


def check_writable_folder(folder: Path, option: str, *, needed: int = 0) -> None:
    """Refuse (exit 3) a folder a restore could not write, before anything changes.

    The folder may not exist yet: its nearest existing parent must then be a folder that
    can be written. A read-only mount, a pseudo file system (/proc, /sys, /dev) or a file in
    the path is named with the option that gave it; so is too little free space for needed bytes.
    """
    full = Path(os.path.abspath(folder))
    real = Path(os.path.realpath(full))
    if any(real == Path(v) or Path(v) in real.parents for v in VIRTUAL):
        raise ConfigError(f"{option} {folder}: {real} is on a pseudo file system; nothing was changed",
                          hint="choose a folder on a disk")
    probe = real
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{option} {folder}: {probe} is a file, not a folder; nothing was changed",
                          hint="choose another folder")
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        free = os.statvfs(probe).f_bavail * os.statvfs(probe).f_frsize
    except OSError as e:
        raise ConfigError(f"{option} {folder}: {probe}: {e.strerror}; nothing was changed") from None
    if read_only:
        raise ConfigError(f"{option} {folder}: {probe} is on a read-only file system; nothing was changed",
                          hint="choose a folder on a writable disk")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {folder}: {probe} cannot be written by this user; nothing was changed",
                          hint="choose a folder this user may write, or fix its permissions")
    if needed and free < needed:
        raise ConfigError(f"{option} {folder}: {probe} has {free // 2**20} MiB free, the attachments need "
                          f"{-(-needed // 2**20)} MiB; nothing was changed", hint="free space or choose another folder")
