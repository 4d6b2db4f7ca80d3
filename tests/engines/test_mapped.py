"""Searching a staged dump through mmap: the same answers as mmap.find, without the file in the RSS."""

from __future__ import annotations

import mmap
import os
import random
from pathlib import Path

import pytest

from crmops.engines import mapped
from crmops.engines.mapped import Scan


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture()
def small_window(monkeypatch: pytest.MonkeyPatch) -> int:
    window = 2 * mmap.PAGESIZE
    monkeypatch.setattr(mapped, "WINDOW", window)
    return window


def test_it_finds_what_mmap_finds_across_window_edges(tmp_path: Path, small_window: int) -> None:
    rng = random.Random(7)
    body = bytearray(rng.choice(b"abc\n") for _ in range(40 * mmap.PAGESIZE))
    spots = [0, small_window - 4, 2 * small_window + 7, 3 * small_window - 5, len(body) - 9]
    for at in spots:
        body[at:at + 9] = b"\nUNLOCK;\n"  # planted where a window ends, and at both ends of the file
    path = tmp_path / "dump"
    path.write_bytes(bytes(body))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        scan = Scan(data)
        for pattern in (b"\nUNLOCK;\n", b"abca", b"cc\nb", b"not there"):
            for start, stop in ((0, None), (5, len(body) - 3), (small_window + 1, 5 * small_window), (100, 90)):
                assert scan.find(pattern, start, stop) == data.find(pattern, start, *(() if stop is None else (stop,)))
        at, seen = scan.find(b"\nUNLOCK;\n"), []
        while at != -1:  # a forward pass, as the callers make it
            seen.append(at)
            at = scan.find(b"\nUNLOCK;\n", at + 1)
        assert seen == spots


def test_a_search_through_a_large_file_leaves_it_out_of_the_resident_size(tmp_path: Path) -> None:
    size = 96 << 20
    path = tmp_path / "dump"
    with open(path, "wb") as f:
        block = os.urandom(1 << 20).replace(b"\n--", b"\n++")
        for _ in range(size >> 20):
            f.write(block)
        f.write(b"\n-- the end\n")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        before = _rss()
        assert Scan(data).find(b"\n-- the end") == size
        grew_scan = _rss() - before
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        before = _rss()
        assert data.find(b"\n-- the end") == size
        grew_plain = _rss() - before
    assert grew_plain > size // 2  # the plain search maps the file in: the measure can tell
    assert grew_scan < 3 * mapped.WINDOW, grew_scan
