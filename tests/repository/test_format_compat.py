"""A repository written by an older crmops opens with this one; one from a newer format is refused clearly.

tests/fixtures/repo-format-1 was written by crmops 0.1.0 (format 1, see its MADE.md). The current
code lists, checks, verifies and restores both of its snapshots, then backs up into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crmops.repository.repo import FORMAT_VERSION

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "repo-format-1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def _setup(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE / "repo", tmp_path / "repo")
    shutil.copy(FIXTURE / "repo.key", tmp_path / "repo.key")
    (tmp_path / "crm").mkdir()
    cfg = {"database": {"url": f"sqlite:///{tmp_path / 'crm' / 'crm.db'}"},
           "repository": {"url": f"file://{tmp_path / 'repo'}"},
           "encryption": {"key_file": str(tmp_path / "repo.key")}, "state_dir": str(tmp_path / "state")}
    path = tmp_path / "crmops.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def crmops(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def _tables(db: Path) -> dict[str, list[list[object]]]:
    c = sqlite3.connect(db)
    try:
        names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: [list(r) for r in c.execute(f'SELECT * FROM "{t}" ORDER BY 1')] for t in names}
    finally:
        c.close()


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_fixture_is_format_1_as_the_previous_release_wrote_it() -> None:
    assert json.loads((FIXTURE / "repo" / "config").read_text())["format"] == 1 <= FORMAT_VERSION
    assert len(EXPECTED) == 2


def test_a_format_1_repository_restores_checks_and_takes_new_backups(tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    r = crmops(cfg, "--json", "snapshots", "--all")  # written from another path: another source
    assert r.returncode == 0, r.stderr
    assert sorted(s["id"] for s in json.loads(r.stdout)) == sorted(EXPECTED)
    r = crmops(cfg, "check", "--read-data")
    assert r.returncode == 0, r.stderr + r.stdout
    for snap, want in EXPECTED.items():
        db, files = tmp_path / f"restored-{snap}.db", tmp_path / f"files-{snap}"
        r = crmops(cfg, "--json", "restore", snap, "--to", f"sqlite:///{db}", "--attachments-to", str(files))
        assert r.returncode == 0, r.stderr
        assert _tables(db) == want["tables"]
        assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.iterdir()} == want["attachments"]
        r = crmops(cfg, "--json", "verify", snap)
        assert r.returncode == 0, r.stderr + r.stdout
    # the newer code writes into the old repository beside the old snapshots, re-using their chunks
    shutil.copy(tmp_path / f"restored-{max(EXPECTED)}.db", tmp_path / "crm" / "crm.db")
    r = crmops(cfg, "--json", "backup")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chunks_new"] < json.loads(r.stdout)["chunks"]
    r = crmops(cfg, "check", "--read-data")
    assert r.returncode == 0, r.stderr + r.stdout


@pytest.mark.parametrize("args", [("snapshots",), ("backup",), ("restore", "latest", "--to", "sqlite:///x.db"),
                                  ("check",), ("--json", "snapshots")])
def test_a_repository_from_a_newer_format_gets_one_line_and_exit_23(tmp_path: Path, args: tuple[str, ...]) -> None:
    cfg = _setup(tmp_path)
    (tmp_path / "crm" / "crm.db").touch()
    config = json.loads((tmp_path / "repo" / "config").read_text())
    config["format"] = FORMAT_VERSION + 1
    (tmp_path / "repo" / "config").write_text(json.dumps(config))
    before = _digest(tmp_path / "repo")
    r = crmops(cfg, *args)
    assert r.returncode == 23, r.stderr + r.stdout
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("crmops: error: "), r.stderr
    assert f"uses repository format {FORMAT_VERSION + 1}" in r.stderr and "upgrade crmops" in r.stderr
    assert "Traceback" not in r.stderr
    if "--json" in args:
        doc = json.loads(r.stdout)
        assert doc["ok"] is False and doc["exit_code"] == 23
    assert _digest(tmp_path / "repo") == before  # nothing written into a repository it cannot read


@pytest.mark.parametrize("content", ['{"format": "2"}', "not json", "[1]", '{"id": "x"}'])
def test_an_unreadable_repository_config_is_one_line_not_a_traceback(tmp_path: Path, content: str) -> None:
    cfg = _setup(tmp_path)
    (tmp_path / "repo" / "config").write_text(content)
    r = crmops(cfg, "snapshots")
    assert r.returncode in (23, 26), r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("crmops: error: ") and "config" in r.stderr, r.stderr
