"""Only one upgrade at a time per state directory: an exclusive advisory file lock.

flock is released by the kernel when the holder dies, even by SIGKILL, so a crashed
run never blocks the `--resume` or `--rollback` that must follow it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crmops.errors import LockBusy


@contextmanager
def upgrade_lock(folder: Path) -> Iterator[None]:
    """Hold the upgrade lock for the block; LockBusy naming the holder's pid if taken."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "upgrade.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockBusy(f"another upgrade is running (pid {holder})",
                           hint="wait for it to end; `crmops upgrade history` shows it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
