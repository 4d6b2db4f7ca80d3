"""A repository in a local (or mounted) directory: one file per object.

Puts are atomic (temporary name, fsync, rename, fsync of the folder), so a crash
or a power cut never leaves a half-written object under its real name.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from crmops.errors import FolderNotWritable, IntegrityError, StorageUnreachable
from crmops.storage.base import Temporary


def write_atomic(path: Path, data: bytes, *, prefix: str = ".tmp-") -> None:
    """Write data under a temporary name, fsync, rename: a reader or a crash sees the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise IntegrityError(f"invalid object name {key!r}")
        return self.root / key

    def _adopt(self, paths: list[Path]) -> None:
        """Root writing into a repository folder another user owns (postgres, whose archive_command
        pushes WAL there) gives what it creates to that user: otherwise its next push fails."""
        if os.geteuid() != 0:
            return
        st = os.stat(self.root)
        if st.st_uid != 0:
            for p in paths:
                os.chown(p, st.st_uid, st.st_gid)

    def put(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> None:
        path = self._path(key)
        try:
            missing = []
            folder = path.parent
            while not folder.exists() and folder != self.root and self.root in folder.parents:
                missing.append(folder)
                folder = folder.parent
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
            self._adopt([*reversed(missing), path])
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
                raise FolderNotWritable(f"{self.url}: cannot write {key}: {e.strerror}") from None
            raise StorageUnreachable(f"{self.url}: cannot write {key}: {e.strerror}") from None

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"object {key} is missing from {self.url}") from None
        except OSError as e:
            raise StorageUnreachable(f"{self.url}: cannot read {key}: {e.strerror}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        yield key, full.stat().st_size
                    except FileNotFoundError:
                        continue

    def temporaries(self) -> list[Temporary]:
        """Temp files of puts that never finished (a crmops killed mid-write)."""
        out = []
        if not self.root.is_dir():
            return out
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    full = Path(dirpath) / name
                    try:
                        st = full.stat()
                    except FileNotFoundError:
                        continue
                    out.append(Temporary(full.relative_to(self.root).as_posix(), st.st_size,
                                         datetime.fromtimestamp(st.st_mtime, UTC)))
        return out

    def remove_temporary(self, name: str) -> None:
        if not Path(name).name.startswith(".tmp-"):
            raise IntegrityError(f"{name!r} is not a temporary object")
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
