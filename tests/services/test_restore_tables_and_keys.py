"""Partial restores, rotating check coverage, and key slots through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmops.dburl import parse
from crmops.democrm.load import create
from tests.services.test_backup_restore import PASSPHRASE, run, write_config


@pytest.mark.parametrize("kind", ["sqlite", "pg", "mysql"])
def test_restore_only_chosen_tables(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """One customer's records come back into a scratch database, next to the live data."""
    if kind == "sqlite":
        src, scratch = f"sqlite:///{tmp_path / 'crm.db'}", f"sqlite:///{tmp_path / 'scratch.db'}"
    else:
        factory = request.getfixturevalue(f"{'pg' if kind == 'pg' else 'mysql'}_url_factory")
        src, scratch = factory(), factory()
    create(src, size="small")
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]
    run(config, "restore", snap, "--to", scratch, "--tables", "roles,users")
    eng = sa.create_engine(parse(scratch).to_sqlalchemy())
    tables = set(sa.inspect(eng).get_table_names())
    with eng.connect() as conn:
        users = conn.execute(sa.text("SELECT COUNT(*) FROM users")).scalar_one()
    eng.dispose()
    assert {"roles", "users"} <= tables and "contacts" not in tables and "activities" not in tables
    assert users == 12


def test_check_subset_covers_everything_in_turn(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'crm.db'}"
    create(src, size="small", attachments_dir=tmp_path / "files")
    config = write_config(tmp_path, src, tmp_path / "files")
    run(config, "repo", "init")
    run(config, "backup")
    coverage = []
    for _ in range(4):
        report = json.loads(run(config, "check", "--read-data-subset", "25%").stdout)
        coverage.append(report["coverage_percent"])
    assert coverage[0] < 50 and coverage == sorted(coverage) and coverage[-1] == 100.0
    assert run(config, "check", "--read-data-subset", "150%", check=False).returncode == 2


def test_key_commands(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'crm.db'}"
    create(src, size="small")
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}

    def crmops(*args: str, passphrase: str = PASSPHRASE, new: str | None = None) -> subprocess.CompletedProcess:
        e = {**env, "TEST_PASSPHRASE": passphrase}
        if new:
            e["CRMOPS_NEW_PASSPHRASE"] = new
        return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", *args],
                              capture_output=True, text=True, env=e, timeout=120)

    added = json.loads(crmops("key", "add", "--label", "second admin", new="second-admin-pass").stdout)
    slots = json.loads(crmops("key", "list").stdout)
    assert len(slots) == 2 and [s["in_use"] for s in slots] == [True, False]
    assert crmops("key", "list", passphrase="second-admin-pass").returncode == 0
    # the first administrator changes their passphrase; the old one stops working
    assert crmops("key", "change-passphrase", new="rotated-pass").returncode == 0
    assert crmops("snapshots").returncode == 24
    assert crmops("snapshots", passphrase="rotated-pass").returncode == 0
    # the second administrator leaves: their slot goes, the others keep working
    assert crmops("key", "remove", added["slot"], passphrase="rotated-pass").returncode == 0
    assert crmops("snapshots", passphrase="second-admin-pass").returncode == 24
    last = json.loads(crmops("key", "list", passphrase="rotated-pass").stdout)
    r = crmops("key", "remove", last[0]["id"], passphrase="rotated-pass")
    assert r.returncode == 3 and "last key slot" in r.stderr
    out = crmops("key", "add", "--label", "x", passphrase="rotated-pass")  # no terminal, no variable: refused
    assert out.returncode == 3 and "CRMOPS_NEW_PASSPHRASE" in out.stderr
