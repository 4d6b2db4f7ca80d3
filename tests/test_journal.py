"""The hash-chained journal: appends survive, edits and reordering show."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmops.errors import IntegrityError
from crmops.journal import Journal


def _journal(tmp_path: Path, n: int = 3) -> Journal:
    j = Journal(tmp_path / "sub" / "journal.jsonl")
    for i in range(n):
        j.append("step", n=i)
    return j


def test_records_come_back_in_order(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    assert [r["n"] for r in j.records()] == [0, 1, 2]
    assert all(r["event"] == "step" and r["ts"] for r in j.records())


@pytest.mark.parametrize("damage", ["edit", "delete", "swap"])
def test_tampering_breaks_the_chain(tmp_path: Path, damage: str) -> None:
    j = _journal(tmp_path, 4)
    lines = j.path.read_text().splitlines()
    if damage == "edit":
        lines[1] = lines[1].replace('"n": 1', '"n": 7')
    elif damage == "delete":
        del lines[1]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    j.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError, match="hash chain broken"):
        j.verify()


def test_a_torn_last_line_is_dropped_and_appends_go_on(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    with j.path.open("ab") as f:
        f.write(b'{"event": "st')  # a crash mid-write
    assert j.verify() == 3
    j.append("step", n=3)
    assert [r["n"] for r in j.records()] == [0, 1, 2, 3]
