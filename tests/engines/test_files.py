"""The attachments folder as entries and back: links and FIFOs recorded, never followed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from crmops.engines.files import FileEntry, finish_dirs, read_pieces, restore_entry, walk
from crmops.errors import ConfigError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "uploads"
    (root / "2024" / "合同").mkdir(parents=True)
    (root / "2024" / "合同" / "报价单 🚀.pdf").write_bytes(b"%PDF-1.4\n\x00\xff" * 1000)
    (root / "2024" / "empty.txt").write_bytes(b"")
    big = root / "2024" / "scan.tif"
    big.write_bytes(os.urandom(3 * (1 << 20) + 17))  # more than one piece
    big.chmod(0o640)
    (root / "cache").mkdir()
    (root / "cache" / "thumb.tmp").write_bytes(b"x")
    (root / "notes.swp").write_bytes(b"x")
    os.symlink("/etc/passwd", root / "outside-link")
    os.symlink("2024/empty.txt", root / "inside-link")
    os.mkfifo(root / "pipe")
    os.utime(big, (1_600_000_000, 1_600_000_000))
    return root


def test_walk_records_links_and_fifos_without_following(folder: Path) -> None:
    entries = {e.path: e for e in walk(folder, exclude=["cache", "*.swp"])}
    assert set(entries) == {"2024", "2024/合同", "2024/合同/报价单 🚀.pdf", "2024/empty.txt", "2024/scan.tif",
                            "outside-link", "inside-link", "pipe"}
    assert entries["outside-link"].kind == "symlink" and entries["outside-link"].target == "/etc/passwd"
    assert entries["outside-link"].size == 0 and entries["outside-link"].sha256 is None
    assert entries["pipe"].kind == "special"  # reading it would hang the nightly job
    scan = entries["2024/scan.tif"]
    assert (scan.kind, scan.mode, scan.mtime, scan.size) == ("file", 0o640, 1_600_000_000, 3 * (1 << 20) + 17)
    # a stable order: identical folders give identical streams
    assert [e.path for e in walk(folder)] == [e.path for e in walk(folder)]


def test_files_are_read_in_pieces_and_hashed(folder: Path) -> None:
    entry = next(e for e in walk(folder) if e.path == "2024/scan.tif")
    pieces = list(read_pieces(folder, entry))
    assert len(pieces) == 4 and max(map(len, pieces)) == 1 << 20
    assert entry.sha256 == hashlib.sha256((folder / entry.path).read_bytes()).hexdigest()


def test_restore_rebuilds_files_links_modes_and_mtimes(folder: Path, tmp_path: Path) -> None:
    entries = list(walk(folder, exclude=["cache", "*.swp"]))
    target = tmp_path / "restored"
    target.mkdir()
    for e in entries:
        restore_entry(target, e, read_pieces(folder, e) if e.kind == "file" else ())
    finish_dirs(target, entries)
    again = {e.path: e for e in walk(target)}
    for e in entries:
        if e.kind == "special":
            assert e.path not in again  # recorded only
            continue
        got = again[e.path]
        assert (got.kind, got.target) == (e.kind, e.target), e.path
        if e.kind != "symlink":
            assert (got.mode, got.size, got.mtime) == (e.mode, e.size, e.mtime), e.path
    assert (target / "2024" / "合同" / "报价单 🚀.pdf").read_bytes() == b"%PDF-1.4\n\x00\xff" * 1000
    assert os.readlink(target / "outside-link") == "/etc/passwd"


def test_restore_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    evil = FileEntry("../escaped.txt", "file", 0o644, 0.0, size=1)
    with pytest.raises(ConfigError, match="outside"):
        restore_entry(tmp_path / "target", evil, [b"x"])
    assert not (tmp_path / "escaped.txt").exists()
    # nor through a link restored a moment earlier
    (tmp_path / "elsewhere").mkdir()
    restore_entry(tmp_path / "target", FileEntry("link", "symlink", 0o777, 0.0, target=str(tmp_path / "elsewhere")))
    with pytest.raises(ConfigError, match="outside"):
        restore_entry(tmp_path / "target", FileEntry("link/planted.sh", "file", 0o755, 0.0, size=1), [b"x"])
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_missing_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="attachments folder not found"):
        list(walk(tmp_path / "nowhere"))
