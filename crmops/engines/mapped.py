"""Searching a staged dump through mmap without its pages counting as the process's memory.

A forward search through a mapped file leaves every page it read mapped into the process, so
the restore's resident size grew by the staged dump's size (169 MB at a 125 MB dump, and so
on up to the 1 GiB staging limit). The pages stay in the page cache; dropping them from the
mapping behind the search keeps the resident size near WINDOW.
"""

from __future__ import annotations

import mmap

#: how far a search runs before the pages behind it are dropped from the mapping
WINDOW = 16 << 20


class Scan:
    """find() over a shared file mapping, a window at a time, dropping the pages it has passed."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.dropped = 0  # the pages below this were dropped since the search last passed them

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: slice) -> bytes:
        return self.data[index]

    def find(self, pattern: bytes, start: int = 0, stop: int | None = None) -> int:
        """What data.find(pattern, start, stop) gives."""
        stop = len(self.data) if stop is None else min(stop, len(self.data))
        at = start
        while at < stop:
            upto = min(at + WINDOW, stop)
            found = self.data.find(pattern, at, min(upto + len(pattern) - 1, stop))
            self._behind(upto if found == -1 else found)
            if found != -1:
                return found
            at = upto
        return -1

    def _behind(self, pos: int) -> None:
        aligned = pos - pos % mmap.PAGESIZE
        if aligned < self.dropped:  # a new pass from further back: drop again once it has gone a window
            self.dropped = aligned
        elif aligned - self.dropped >= WINDOW:
            self.data.madvise(mmap.MADV_DONTNEED, 0, aligned)
            self.dropped = aligned
