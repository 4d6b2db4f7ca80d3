"""`crmops migrate …` through the real command line: JSON, exit codes, one-line errors; edited scripts;
several heads; the journal's hash chain. SQLite demo CRMs, so it needs no server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from crmops.cli.main import main
from crmops.democrm import SCRIPT_LOCATION
from crmops.democrm.load import create


def setup(tmp_path: Path, *, scripts: Path | None = None, version: str = "1.0") -> Path:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create(url, size="small", version=version)
    cfg = {"database": {"url": url}, "state_dir": str(tmp_path / "state"),
           "repository": {"url": f"file://{tmp_path / 'repo'}", "chunk_avg_kib": 64},
           "encryption": {"passphrase": "${TEST_PASSPHRASE}"}}
    if scripts is not None:
        cfg["migrations"] = {"script_location": str(scripts)}
    path = tmp_path / "crmops.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PASSPHRASE", "cli test passphrase")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def crmops(config: Path, *args: str) -> Run:
    """The real entry point, in this process (a fresh interpreter per call would triple the run time)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--config", str(config), *args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return Run(code, out.getvalue(), err.getvalue())


def test_one_subprocess_run_has_no_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(setup(tmp_path)), "migrate", "up", "--to",
                        "nope"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "revision 'nope' is not in" in r.stderr


def copy_scripts(tmp_path: Path) -> Path:
    target = tmp_path / "scripts"
    shutil.copytree(SCRIPT_LOCATION, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_status_up_history_as_json_with_a_safety_snapshot(tmp_path: Path) -> None:
    config = setup(tmp_path)
    status = json.loads(crmops(config, "--json", "migrate", "status").stdout)
    assert status["current"] == "d1_0003" and len(status["pending"]) == 3
    plan = crmops(config, "migrate", "plan", "--to", "2.0", "--sql")
    assert plan.returncode == 0 and "CREATE TABLE customer_feedback" in plan.stdout
    assert "pre-check: revision d2_0003 (line 17) adds unique (email) on contacts" in plan.stdout
    refused = crmops(config, "migrate", "up")
    assert refused.returncode == 22 and refused.stderr.count("\n") == 1  # no repository: no snapshot, no migration
    assert "--no-safety-backup" in refused.stderr and "Traceback" not in refused.stderr
    assert crmops(config, "repo", "init").returncode == 0
    up = crmops(config, "--json", "migrate", "up", "--to", "2.0")
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    assert result["to"] == "d2_0003" and result["safety_snapshot"]
    snapshots = json.loads(crmops(config, "--json", "snapshots").stdout)
    assert [s["tags"] for s in snapshots] == [["pre-migrate"]]
    history = json.loads(crmops(config, "--json", "migrate", "history").stdout)
    assert [r["result"] for r in history["runs"]] == ["failed", "ok"]
    assert history["runs"][1]["safety_snapshot"] == result["safety_snapshot"] and history["chain"] == "intact"
    text = crmops(config, "migrate", "history").stdout
    assert "d2_0001" in text and "hash chain intact" in text


def test_tampered_journal_is_reported(tmp_path: Path) -> None:
    config = setup(tmp_path)
    # a real process: Alembic writes to the interpreter's own stdout, past any redirection
    first = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", "migrate", "up",
                            "--to", "d2_0001", "--no-safety-backup"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and json.loads(first.stdout)["to"] == "d2_0001"  # stdout is the JSON alone
    assert crmops(config, "migrate", "up", "--to", "d2_0002", "--no-safety-backup").returncode == 0
    journal = tmp_path / "state" / "migrations" / "journal.jsonl"
    text = journal.read_text()
    assert text.count('"result": "ok"') == 2
    journal.write_text(text.replace('"result": "ok"', '"result": "failed"', 1))  # the first run's outcome
    r = crmops(config, "migrate", "history")
    assert r.returncode == 26 and "hash chain broken" in r.stderr


def test_edited_applied_script_is_reported_and_blocks_until_accepted(tmp_path: Path) -> None:
    scripts = copy_scripts(tmp_path)
    config = setup(tmp_path, scripts=scripts)
    assert crmops(config, "migrate", "up", "--to", "d2_0002", "--no-safety-backup").returncode == 0
    script = scripts / "versions" / "d2_0001_customer_feedback.py"
    script.write_text(script.read_text().replace("(6, 'feedback', 45)", "(6, 'feedback', 46)"))
    status = json.loads(crmops(config, "--json", "migrate", "status").stdout)
    assert [m["revision"] for m in status["modified"]] == ["d2_0001"]
    up = crmops(config, "migrate", "up", "--no-safety-backup")
    assert up.returncode == 41 and "edited since they ran: d2_0001" in up.stderr
    assert crmops(config, "migrate", "validate").returncode == 41
    assert crmops(config, "migrate", "validate", "--accept").returncode == 0
    assert crmops(config, "migrate", "validate").returncode == 0
    assert crmops(config, "migrate", "up", "--no-safety-backup").returncode == 0


def test_several_heads_are_an_error_with_the_fix(tmp_path: Path) -> None:
    scripts = copy_scripts(tmp_path)
    branch = (scripts / "versions" / "d2_0003_unique_contact_email.py").read_text()
    (scripts / "versions" / "x_0001_branch.py").write_text(
        branch.replace('revision = "d2_0003"', 'revision = "x_0001"'))
    config = setup(tmp_path, scripts=scripts)
    for args in (("migrate", "status"), ("migrate", "up", "--no-safety-backup")):
        r = crmops(config, *args)
        assert r.returncode == 41, r.stderr
        assert "2 heads (d2_0003, x_0001)" in r.stderr and "merge -m 'merge heads' d2_0003 x_0001" in r.stderr


def test_lint_and_drift_exit_codes(tmp_path: Path) -> None:
    scripts = copy_scripts(tmp_path)
    (scripts / "versions" / "x_0001_drop.py").write_text(
        '"""drop leads"""\nfrom alembic import op\n\nrevision = "x_0001"\ndown_revision = "d2_0003"\n\n\n'
        'def upgrade() -> None:\n    op.drop_table("leads")\n')
    config = setup(tmp_path, scripts=scripts, version="2.0")
    lint = crmops(config, "--json", "migrate", "lint")
    assert lint.returncode == 42
    findings = json.loads(lint.stdout)["result"]["findings"]
    assert {(f["revision"], f["rule"], f["line"]) for f in findings} == {("x_0001", "drop-table", 9),
                                                                         ("x_0001", "missing-downgrade", 1)}
    assert "lint finding(s) fail the check" in lint.stderr
    assert crmops(config, "migrate", "drift").returncode == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "crm.db") as conn:
        conn.execute("ALTER TABLE leads ADD COLUMN wechat VARCHAR(40)")
    drift = crmops(config, "migrate", "drift")
    assert drift.returncode == 43 and "leads.wechat" in drift.stdout


@pytest.mark.parametrize(("args", "code", "text"), [
    (("migrate", "up", "--to", "nope"), 3, "revision 'nope' is not in"),
    (("migrate", "down", "--to", "head"), 41, "`down` only goes down"),
    (("migrate", "baseline", "--rev", "1.0"), 41, "already managed by Alembic (at d1_0003)"),
])
def test_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...], code: int, text: str) -> None:
    r = crmops(setup(tmp_path), *args)
    assert r.returncode == code and text in r.stderr and r.stderr.count("\n") == 1, r.stderr
