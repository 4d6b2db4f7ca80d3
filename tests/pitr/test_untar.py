"""A base backup's tar is extracted with the "data" filter's rules, also on Python 3.11.2 (no `filter=`).

Both paths run here: the standard library's filter where this Python has it, and crmops's own
member check (what Debian 12's python3 uses) always. A hostile tar changes nothing outside the target.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from crmops.errors import IntegrityError
from crmops.pitr.untar import extract_all

PATHS = [False] + ([True] if hasattr(tarfile, "data_filter") else [])


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o600, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.uid, info.gid, info.uname, info.gname = 4242, 4242, "nobody-here", "nobody-here"
    return info


def _extract(raw: bytes, dest: Path, builtin: bool) -> None:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tar:  # a stream, as restore reads it
        extract_all(tar, dest, builtin=builtin)


@pytest.mark.parametrize("builtin", PATHS)
def test_a_data_directory_extracts_with_links_inside_and_safe_modes(tmp_path: Path, builtin: bool) -> None:
    raw = _tar([
        (_info("base", tarfile.DIRTYPE, 0o777), None),
        (_info("base/1", mode=0o4777), b"page"),
        (_info("PG_VERSION", mode=0o400), b"15\n"),
        (_info("same", tarfile.LNKTYPE, link="PG_VERSION"), None),
        (_info("here", tarfile.SYMTYPE, link="base/1"), None),
    ])
    dest = tmp_path / "data"
    dest.mkdir()
    _extract(raw, dest, builtin)
    assert (dest / "base" / "1").read_bytes() == b"page"
    assert (dest / "same").read_bytes() == b"15\n"
    assert os.readlink(dest / "here") == "base/1"
    mode = stat.S_IMODE((dest / "base" / "1").stat().st_mode)
    assert mode & (stat.S_ISUID | stat.S_IWGRP | stat.S_IWOTH) == 0
    assert stat.S_IMODE((dest / "PG_VERSION").stat().st_mode) & 0o600 == 0o600
    assert (dest / "base" / "1").stat().st_uid == os.geteuid()


HOSTILE = {
    "absolute": [(_info("/tmp/crmops-untar-abs"), b"x")],
    "dotdot": [(_info("../escaped"), b"x")],
    "symlink-out": [(_info("out", tarfile.SYMTYPE, link="../.."), None)],
    "symlink-absolute": [(_info("etc", tarfile.SYMTYPE, link="/etc"), None)],
    "through-a-link": [(_info("up", tarfile.SYMTYPE, link="."), None),
                       (_info("sub", tarfile.DIRTYPE, 0o700), None),
                       (_info("sub/back", tarfile.SYMTYPE, link=".."), None),
                       (_info("sub/back/../escaped", mode=0o600), b"x")],
    "hardlink-out": [(_info("hl", tarfile.LNKTYPE, link="../victim"), None)],
    "device": [(_info("null", tarfile.CHRTYPE), None)],
    "fifo": [(_info("pipe", tarfile.FIFOTYPE), None)],
}


@pytest.mark.parametrize("builtin", PATHS)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_member_is_refused_and_nothing_outside_changes(tmp_path: Path, case: str, builtin: bool) -> None:
    (tmp_path / "victim").write_bytes(b"untouched")
    dest = tmp_path / "data"
    dest.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(IntegrityError) as err:
        _extract(_tar(HOSTILE[case]), dest, builtin)
    assert "base backup" in err.value.line()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "victim").read_bytes() == b"untouched"
    assert not Path("/tmp/crmops-untar-abs").exists()
    assert not (tmp_path.parent / "escaped").exists()
