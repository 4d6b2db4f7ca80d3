"""Backup and restore end to end, through the CLI, on real PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crmops.config import load_config
from crmops.democrm.load import create
from crmops.engines import Fingerprint, open_engine
from crmops.repository import open_repository

PASSPHRASE = "night-shift passphrase 42"


def write_config(tmp_path: Path, db_url: str, attachments: Path | None = None) -> Path:
    cfg = {"database": {"url": db_url}, "repository": {"url": f"file://{tmp_path / 'repo'}", "chunk_avg_kib": 256},
           "encryption": {"passphrase": "${TEST_PASSPHRASE}"}, "state_dir": str(tmp_path / "state")}
    if attachments:
        cfg["attachments"] = {"path": str(attachments)}
    path = tmp_path / "crmops.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["TEST_PASSPHRASE"] = PASSPHRASE
    r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", *args],
                       capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("kind", ["sqlite", "pg", "mysql"])
def test_backup_restore_fingerprint_equal(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if kind == "sqlite":
        src, dst = f"sqlite:///{tmp_path / 'crm.db'}", f"sqlite:///{tmp_path / 'restored.db'}"
    else:
        factory = request.getfixturevalue(f"{'pg' if kind == 'pg' else 'mysql'}_url_factory")
        src, dst = factory(), factory()
    create(src, size="small", attachments_dir=tmp_path / "files")
    config = write_config(tmp_path, src, tmp_path / "files")
    run(config, "repo", "init")
    result = json.loads(run(config, "backup", "--tag", "nightly").stdout)
    assert result["chunks_new"] > 0 and result["files"] > 60
    again = json.loads(run(config, "backup").stdout)
    # nothing changed: at most the chunk holding pg_dump's archive header (it records the dump time)
    assert again["chunks_new"] <= 1 and again["bytes_uploaded"] < result["bytes_uploaded"] / 5
    run(config, "restore", result["snapshot_id"], "--to", dst, "--attachments-to", str(tmp_path / "back"))
    manifest = open_repository(_cfg(config)).manifest(result["snapshot_id"])
    assert Fingerprint.from_dict(manifest["fingerprint"]).compare(open_engine(dst).fingerprint()) == []
    for f in (tmp_path / "files").rglob("*.pdf"):
        assert (tmp_path / "back" / f.relative_to(tmp_path / "files")).read_bytes() == f.read_bytes()
    listed = json.loads(run(config, "snapshots").stdout)
    assert [s["tags"] for s in listed] == [["nightly"], []]
    assert listed[0]["schema_revision"] == "d1_0003"


def _cfg(path: Path):  # type: ignore[no-untyped-def]
    os.environ["TEST_PASSPHRASE"] = PASSPHRASE
    return load_config(path)


def _live_target_and_a_snapshot(pg_url_factory, tmp_path: Path) -> tuple[str, Fingerprint, Path, str]:  # type: ignore[no-untyped-def]
    """A target holding someone's live data, its fingerprint, and a snapshot of another CRM."""
    src, dst = pg_url_factory(), pg_url_factory()
    create(src, size="small")
    create(dst, size="small", seed=99)  # someone's live data
    before = open_engine(dst).fingerprint()
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]
    return dst, before, config, snap


def test_restore_refuses_non_empty_target_then_force_keeps_a_safety_snapshot(pg_url_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dst, before, config, snap = _live_target_and_a_snapshot(pg_url_factory, tmp_path)
    r = run(config, "restore", snap, "--to", dst, check=False)
    assert r.returncode == 60 and "not empty" in r.stderr
    assert open_engine(dst).fingerprint().compare(before) == []  # untouched
    out = json.loads(run(config, "restore", snap, "--to", dst, "--force").stdout)
    safety = open_repository(_cfg(config)).manifest(out["safety_snapshot"])
    assert safety["tags"] == ["pre-restore"]
    assert Fingerprint.from_dict(safety["fingerprint"]).compare(before) == []


def test_tampered_chunk_writes_nothing_to_the_target(tmp_path: Path) -> None:
    src, dst = f"sqlite:///{tmp_path / 'crm.db'}", f"sqlite:///{tmp_path / 'restored.db'}"
    create(src, size="small")
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]
    chunks = sorted((tmp_path / "repo" / "data").rglob("*"))
    victim = [c for c in chunks if c.is_file()][-1]
    raw = bytearray(victim.read_bytes())
    raw[40] ^= 0x04
    victim.write_bytes(bytes(raw))
    r = run(config, "restore", snap, "--to", dst, check=False)
    assert r.returncode == 26 and victim.name in r.stderr
    assert not (tmp_path / "restored.db").exists()
    r = run(config, "check", "--read-data", check=False)
    assert r.returncode == 26 and victim.name in r.stderr and snap in r.stderr


def test_forced_restore_of_a_tampered_snapshot_leaves_the_live_target_as_it_was(pg_url_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dst, before, config, snap = _live_target_and_a_snapshot(pg_url_factory, tmp_path)
    victim = sorted(p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file())[0]
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x01
    victim.write_bytes(bytes(raw))
    r = run(config, "restore", snap, "--to", dst, "--force", check=False)
    assert r.returncode == 26 and victim.name in r.stderr
    assert open_engine(dst).fingerprint().compare(before) == []  # not emptied, not half-written
    assert len(open_repository(_cfg(config)).snapshots()) == 1  # authentication failed before any safety snapshot


def test_killed_backup_leaves_no_snapshot_and_the_next_reuses_its_chunks(pg_url: str, tmp_path: Path) -> None:
    create(pg_url, size="small", attachments_dir=tmp_path / "files")
    # a large incompressible upload keeps each backup running long enough to be killed mid-way
    with open(tmp_path / "files" / "scan-archive.bin", "wb") as f:
        for _ in range(400):
            f.write(os.urandom(1 << 20))
    config = write_config(tmp_path, pg_url, tmp_path / "files")
    run(config, "repo", "init")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}, "TEST_PASSPHRASE": PASSPHRASE}
    rng = random.Random(4)
    data = tmp_path / "repo" / "data"

    def stored() -> int:
        return len([p for p in data.rglob("*") if p.is_file()]) if data.exists() else 0

    for _ in range(3):
        # kill at a random point: once this run has stored a chosen number of new chunks
        target = stored() + rng.randint(1, 40)
        proc = subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(config), "backup"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while stored() < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the backup finished before it could be killed"
        assert json.loads(run(config, "snapshots").stdout) == []
    stored_before = len([p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()])
    assert stored_before > 0, "the killed runs should have uploaded some chunks"
    assert json.loads(run(config, "check").stdout)["ok"] is True
    result = json.loads(run(config, "backup").stdout)
    assert result["chunks_new"] < result["chunks"]  # what the killed runs uploaded is reused
    assert json.loads(run(config, "check", "--read-data").stdout)["ok"] is True


def test_wrong_passphrase_and_missing_repository(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'crm.db'}")
    create(f"sqlite:///{tmp_path / 'crm.db'}", size="small")
    r = run(config, "backup", check=False)
    assert r.returncode == 22 and "repo init" in r.stderr
    run(config, "repo", "init")
    env_bad = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "snapshots"],
                             capture_output=True, text=True, env={**os.environ, "TEST_PASSPHRASE": "wrong"})
    assert env_bad.returncode == 24 and env_bad.stderr.count("\n") == 1
    assert PASSPHRASE not in env_bad.stderr
