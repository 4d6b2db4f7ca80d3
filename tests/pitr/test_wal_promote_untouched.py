"""`wal promote` changes exactly two objects of the repository: production's timeline record and the new
timeline's history file. Every other object (snapshots, chunks, keys, the archive's segments, another cluster's
archive) stays byte for byte as it was, and a refused promote changes nothing at all.

The promote is driven through the archive's API, as `crmops wal promote` does once it has read the promoted
server's timeline and history (tests/pitr/test_real_host.py promotes a real server end to end).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crmops.errors import ConfigError, WalConflict

PASSPHRASE = "promote test passphrase"
SYSTEM_ID = "7300000000000000001"
OTHER_SYSTEM = "7300000000000000002"  # another cluster archiving into the same repository
SEGMENT = 16 * 1024 * 1024


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every object under the repository folder, by its path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _history(*switches: tuple[int, str]) -> bytes:
    return "".join(f"{tli}\t{lsn}\tno recovery target specified\n" for tli, lsn in switches).encode()


@pytest.fixture
def archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A repository with a snapshot, production's archive on timeline 1 and another cluster's archive."""
    from crmops.config import load_config
    from crmops.democrm.load import create
    from crmops.pitr.timeline import GuardedArchive
    from crmops.repository import open_repository

    create(f"sqlite:///{tmp_path / 'crm.db'}", size="tiny")
    cfg = tmp_path / "crmops.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": f"sqlite:///{tmp_path / 'crm.db'}"},
                                   "repository": {"url": f"file://{tmp_path / 'repo'}"},
                                   "state_dir": str(tmp_path / "state")}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}, "CRMOPS_PASSPHRASE": PASSPHRASE}
    for args in (("repo", "init"), ("backup",)):
        subprocess.run([sys.executable, "-m", "crmops", "--config", str(cfg), *args], env=env, check=True,
                       capture_output=True, timeout=120)
    monkeypatch.setenv("CRMOPS_PASSPHRASE", PASSPHRASE)
    repo = open_repository(load_config(cfg, environ=env))
    prod, other = GuardedArchive(repo, SYSTEM_ID), GuardedArchive(repo, OTHER_SYSTEM)
    wal = tmp_path / "wal"
    wal.mkdir()
    for archive, names in ((prod, ["000000010000000000000001", "000000010000000000000002",
                                   "000000010000000000000003"]), (other, ["000000010000000000000007"])):
        for i, name in enumerate(names):
            (wal / name).write_bytes(os.urandom(4096) + bytes([i]) * 4096)
            assert archive.push(wal / name) == "stored"
    return tmp_path / "repo", prod, wal


def test_promote_changes_only_the_timeline_record_and_its_history(archives) -> None:  # type: ignore[no-untyped-def]
    from crmops.pitr.archive import WalArchive, wal_key
    from crmops.pitr.timeline import promote, read_line, timeline_key

    folder, prod, wal = archives
    # a history file of timeline 4 that is not the one a promote will offer (set up before the digest)
    (wal / "00000004.history").write_bytes(_history((1, "0/2800000"), (3, "0/4000000")))
    assert WalArchive.push(prod, wal / "00000004.history") == "stored"  # as an older version let a copy
    before = _digest(folder)
    assert len(before) > 10 and any(k.startswith("snapshots") or "manifest" in k for k in before), sorted(before)

    refusals = [
        # not on production's line: its parent is timeline 2, production is on 1
        (ConfigError, 3, _history((2, "0/5000000"))),
        # production's line, but another history of the same timeline is archived already
        (WalConflict, 4, _history((1, "0/3000000"))),
    ]
    for error, timeline, history in refusals:
        with pytest.raises(error):
            promote(prod, timeline, history, segment_size=SEGMENT, server="copy")
        assert _digest(folder) == before, (timeline, error)

    result = promote(prod, 2, _history((1, "0/3000000")), segment_size=SEGMENT, server="copy")
    assert result["tip_before"] == 1 and not result["already"]
    after = _digest(folder)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    history_object = next(k for k in after if k.endswith(wal_key(SYSTEM_ID, "00000002.history")))
    record = next(k for k in after if k.endswith(timeline_key(SYSTEM_ID)))
    assert changed == {history_object, record}, sorted(changed)
    assert history_object not in before and record in before  # one added, one rewritten, nothing removed
    assert read_line(prod)["tip"] == 2

    # from now on the old line is refused, and the refusal changes nothing either
    (wal / "000000010000000000000004").write_bytes(os.urandom(8192))
    with pytest.raises(Exception) as refused:
        prod.push(wal / "000000010000000000000004")
    assert getattr(refused.value, "exit_code", None) in (80, 84), refused.value
    assert _digest(folder) == after
    again = promote(prod, 2, _history((1, "0/3000000")), segment_size=SEGMENT, server="copy")
    assert again["already"] and _digest(folder) == after
