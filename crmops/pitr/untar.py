"""Extract a base backup's tar stream without letting a member escape the data directory.

Python 3.11.4 added `extractall(filter="data")`; Debian 12 ships 3.11.2, which lacks it.
There the same rules are applied here, member by member: no absolute path, no `..` out of
the target, no link pointing outside it, no device, FIFO or other special file, no owner
taken from the archive, no setuid or group/other-write bit.
"""

from __future__ import annotations

import copy
import os
import tarfile
from pathlib import Path

from crmops.errors import IntegrityError

#: a tampered base backup: exit code and --json kind of IntegrityError
UnsafeMember = IntegrityError


def extract_all(tar: tarfile.TarFile, dest: Path, *, builtin: bool | None = None) -> None:
    """Extract every member of `tar` (a stream is fine) under `dest` with the "data" filter's rules.

    `builtin` chooses the standard library's filter (None: when this Python has it)."""
    if builtin is None:
        builtin = hasattr(tarfile, "data_filter")
    if builtin:
        try:
            tar.extractall(dest, filter=_data_filter)
        except tarfile.FilterError as e:
            raise UnsafeMember(f"the base backup holds an unsafe member: {e}") from e
        return
    root = os.path.realpath(dest)
    for member in tar:
        tar.extract(_checked(member, root), root, set_attrs=True)


def _data_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """The standard "data" filter, which would strip a leading "/": here an absolute name is refused too."""
    if member.name.startswith(("/", os.sep)):
        raise UnsafeMember(f"the base backup holds an absolute path: {member.name!r}")
    return tarfile.data_filter(member, path)


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _checked(member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    """A copy of `member` fit to extract under `root`, or UnsafeMember."""
    name = member.name
    if name.startswith(("/", os.sep)) or os.path.isabs(name):
        raise UnsafeMember(f"the base backup holds an absolute path: {name!r}")
    target = os.path.realpath(os.path.join(root, name))  # follows links already extracted
    if not _inside(root, target):
        raise UnsafeMember(f"the base backup holds a path outside the data directory: {name!r}")
    if member.issym():
        if os.path.isabs(member.linkname):
            raise UnsafeMember(f"the base backup holds a link to an absolute path: {name!r} -> {member.linkname!r}")
        dest = os.path.realpath(os.path.join(os.path.dirname(target), member.linkname))
        if not _inside(root, dest):
            raise UnsafeMember(f"the base backup holds a link out of the data directory: {name!r}")
    elif member.islnk():
        dest = os.path.realpath(os.path.join(root, member.linkname))
        if os.path.isabs(member.linkname) or not _inside(root, dest):
            raise UnsafeMember(f"the base backup holds a hard link out of the data directory: {name!r}")
    elif not (member.isreg() or member.isdir()):
        raise UnsafeMember(f"the base backup holds a device, FIFO or other special file: {name!r}")
    safe = copy.copy(member)
    safe.uid, safe.gid, safe.uname, safe.gname = os.geteuid(), os.getegid(), "", ""
    mode = member.mode & 0o755
    if member.isreg() or member.islnk():
        if not mode & 0o100:
            mode &= ~0o111
        safe.mode = mode | 0o600
    else:
        safe.mode = 0o700 if member.isdir() else mode
    return safe
