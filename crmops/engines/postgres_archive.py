"""A custom-format archive written through a pipe, given the data offsets pg_dump gives a file.

pg_dump records where each table's data starts in the archive's table of contents only when
it can seek back to rewrite it, that is when it writes a file. crmops's dump goes through a
pipe, so every data item of its archives says "position not set". `pg_restore -j` reading
such an archive has no sizes to order its jobs by (it starts the largest tables first only
when it knows their sizes) and each worker scans the archive for every item it restores.

Once the dump is staged whole in a file (restore, verify, undo), the positions are written
into the staged copy, as pg_dump writes them into a file: the data blocks follow the table
of contents in its order, each opened by its block type and dump id, and a table's data,
COPY text, holds no NUL byte, so the five NUL bytes that end one block come right before
the next block's header. Every header found is checked against the entry it belongs to;
anything unexpected (another archive version, compression, a large objects block, whose
content may hold anything) leaves the rest as it was: pg_restore then finds those items
by scanning, as it does today. Only the offset fields change; the authenticated dump's
statements and data stay byte for byte as they were.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from crmops.engines.mapped import Scan

#: archive versions whose table of contents this reads (PostgreSQL 12 to 17's pg_dump)
KNOWN = ((1, 14, 0), (1, 16, 0))
_POS_NOT_SET, _POS_SET = 1, 2
_BLK_DATA, _BLK_BLOBS = 1, 3
_CUSTOM = 1


class _Unreadable(Exception):
    """The archive is not laid out as this module reads it."""


class _Toc:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0
        self.int_size = 4

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Unreadable("ends early")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def int(self) -> int:
        sign = self.byte()
        raw = self.data[self.pos:self.pos + self.int_size]
        if len(raw) != self.int_size:
            raise _Unreadable("ends early")
        self.pos += self.int_size
        value = int.from_bytes(raw, "little")
        return -value if sign else value

    def str(self) -> bytes | None:
        n = self.int()
        if n < 0:
            return None
        if n > len(self.data) - self.pos:
            raise _Unreadable("a string runs past the end")
        value = self.data[self.pos:self.pos + n]
        self.pos += n
        return value


def add_data_offsets(path: Path) -> int:
    """Write the data offsets into the staged archive at path; how many items got theirs (0: none)."""
    with open(path, "r+b") as f:
        if f.seek(0, 2) < 16:
            return 0
        with mmap.mmap(f.fileno(), 0) as data:
            try:
                patches = _patches(data)
            except (_Unreadable, IndexError, ValueError):
                return 0
            for at, value in patches:
                data[at:at + len(value)] = value
            # no msync: pg_restore reads the same page cache, and msync would write every page
            # of the freshly staged file to disk first (47 ms of a 100 MB restore)
    return len(patches)


def _patches(data: mmap.mmap) -> list[tuple[int, bytes]]:
    toc = _Toc(data)
    if data[0:5] != b"PGDMP":
        raise _Unreadable("not a custom-format archive")
    toc.pos = 5
    version = (toc.byte(), toc.byte(), toc.byte())
    if not KNOWN[0] <= version <= KNOWN[1]:
        raise _Unreadable(f"archive version {version}")
    toc.int_size, off_size, fmt = toc.byte(), toc.byte(), toc.byte()
    if fmt != _CUSTOM or not 4 <= toc.int_size <= 8 or not 4 <= off_size <= 8:
        raise _Unreadable("another format")
    compression = toc.byte() if version >= (1, 15, 0) else toc.int()
    if compression != 0:
        raise _Unreadable("compressed data: its blocks may hold any byte")
    for _ in range(7):  # the time it was made
        toc.int()
    for _ in range(3):  # database name, server and pg_dump versions
        toc.str()
    items: list[tuple[int, int, int, bytes]] = []  # (dump id, where its offset field is, its state, desc)
    for _ in range(toc.int()):
        dump_id = toc.int()
        toc.int()  # has a data dumper
        toc.str()  # table oid
        toc.str()  # oid
        toc.str()  # tag
        desc = toc.str() or b""
        toc.int()  # section
        for _field in range(5):  # definition, drop statement, copy statement, namespace, tablespace
            toc.str()
        toc.str()  # table access method
        if version >= (1, 16, 0):
            toc.int()  # relkind
        toc.str()  # owner
        toc.str()  # with oids ("false")
        while toc.str() is not None:  # dependencies
            pass
        field = toc.pos
        state = toc.byte()
        if state not in (1, 2, 3):
            raise _Unreadable("an offset field holds no known state")
        toc.pos += off_size
        items.append((dump_id, field, state, desc))
    if any(state == _POS_SET for _, _, state, _ in items):
        return []  # written to a file: pg_dump gave the offsets itself
    end = b"\0" * (1 + toc.int_size)  # the length 0 that ends a block's data
    at = toc.pos  # the first data block starts right after the table of contents
    patches: list[tuple[int, bytes]] = []
    previous = b""
    scan = Scan(data)
    for dump_id, field, state, desc in items:
        if state != _POS_NOT_SET:
            continue
        if previous[:1] == bytes([_BLK_BLOBS]):
            break  # large objects' content may hold any byte: no safe way past it
        kind = _BLK_BLOBS if desc in (b"BLOBS", b"LARGE OBJECTS") else _BLK_DATA
        header = bytes([kind]) + b"\0" + dump_id.to_bytes(toc.int_size, "little")
        if previous:  # the previous block's end, then this one's header
            found = scan.find(end + header, at + len(previous))
            if found == -1:
                break  # leave the rest to pg_restore's scan
            at = found + len(end)
        elif data[at:at + len(header)] != header:
            break
        patches.append((field, bytes([_POS_SET]) + at.to_bytes(off_size, "little")))
        previous = header
    return patches
