"""The dry run's text report at 80 columns: every line fits and the plan's columns stay in line."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from crmops.cli.upgrade import _dry_human, _wrapping_say


def _step(stage: str, step: str, kind: str, mode: str, summary: str, phase: str = "run") -> dict[str, Any]:
    return {"stage": stage, "phase": phase, "step": step, "type": kind, "params": {}, "ok": True, "error": None,
            "mode": mode, "measured": True, "seconds": 0.26, "summary": summary}


def _report() -> dict[str, Any]:
    """The shape the demo playbook's dry run reports, with its longest names and details."""
    plan = [
        _step("preflight", "preflight-5", "preflight", "production, read-only",
              "disk_free: 70.90 GB free in /tmp/r2up/bed/state, need 0.00 GB (2 x the latest snapshot's 1.7 MB, "
              "for a restore)"),
        _step("maintenance", "maintenance-1", "maintenance", "rehearsed", "maintenance on: exit 0 in the copy"),
        _step("maintenance", "maintenance-rollback-1", "maintenance", "rollback: rehearsed",
              "maintenance off: exit 0 in the copy", phase="rollback"),
        _step("app", "swap", "docker", "rehearsed", "the copy: crmops-demo-app:1.0 -> crmops-demo-app:2.0"),
        _step("engine", "copy", "engine_upgrade", "rehearsed",
              "13.16 -> 17.12 (logical): 11 tables in 1.6s, every table's rows match, smoke SQL holds"),
    ]
    return {
        "snapshot": {"id": "4412dead843f463e"}, "plan": plan,
        "restore": {"seconds": 0.7, "detail": "restored copy matches the snapshot's fingerprint"},
        "row_changes": {"contacts": -4}, "migrate_seconds": 0.74,
        "window": {"detail": "estimated downtime 8s fits the 24.0 h window"}, "warnings": [], "blockers": [],
        "stack": {"started": True, "app": "crmops-sandbox-99f51f3bdf-app", "source": "container crm-app",
                  "network": "crmops-sandbox-99f51f3bdf", "answers_for": ["http://127.0.0.1:59299"],
                  "env_rewritten": ["DATABASE_URL"]},
        "rollback": {"why": "a failure injected after the last stage", "seconds": 7.2, "ok": True,
                     "database": {"detail": "equal to its pre-upgrade fingerprint"},
                     "app": {"detail": "runs crmops-demo-app:1.0 again and passes app_is_1, health"}},
        "forward_seconds": 13.3, "counts": {"rehearsed": 13, "steps": 18, "production_read_only": 5,
                                            "not_rehearsed": 0}, "estimated_downtime_s": 8.1,
        "fidelity": [{"step": None, "type": "load", "reason": "the sandbox has no CRM users: lock waits behind "
                      "their traffic are not measured, and it runs with fsync off"}],
        "reports": {"html": "/var/lib/crmops/state/rehearsals/dryrun-20261201T172706Z-cbd26e.html"},
    }


def test_dry_run_report_fits_80_columns_with_the_plan_in_line() -> None:
    out = io.StringIO()
    _dry_human(_report())(Console(file=out, width=80, highlight=False, soft_wrap=True))  # as crmops prints
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    heads = [line for line in text.splitlines() if re.match(r"    \S", line) and line.rstrip().endswith(
        ("rehearsed", "read-only"))]
    assert len(heads) == 5, text
    assert len({line.index("0.26s") for line in heads}) == 1, text  # the seconds column is one column
    assert "disk_free: 70.90 GB free" in text and "(and .json)" in text
    plan = text.split("snapshot 4412dead84")[0]
    assert [line.strip() for line in plan.splitlines() if re.fullmatch(r"  \S+", line)] == [
        "preflight", "maintenance", "app", "engine"]  # each stage heads its steps


def test_the_narration_wraps_under_its_step(monkeypatch: Any, capsys: Any) -> None:
    class App:
        quiet = json = False

        def say(self, message: str) -> None:
            print(message)

    monkeypatch.setenv("COLUMNS", "80")
    line = ("  ok   preflight-5 (preflight, production, read-only, 0.85s): disk_free: 70.90 GB free in "
            "/tmp/r2up/bed/state, need 0.00 GB (2 x the latest snapshot's 1.7 MB, for a restore)")
    _wrapping_say(App())(line)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 1 and max(len(x) for x in lines) <= 80
    assert lines[0].startswith("  ok   preflight-5") and all(x.startswith("       ") for x in lines[1:])


def test_check_lists_every_mistake_with_its_line(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "playbooks" / "democrm-1-to-2.yaml"
    text = shipped.read_text()
    assert text.count("expect_body:") >= 3
    pb = tmp_path / "typo.yaml"
    pb.write_text(text.replace("expect_body:", "expect_bdy:"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["COLUMNS"] = "80"

    def crmops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crmops", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)

    r = crmops("upgrade", pb.name, "--check")  # as typed in the playbook's folder
    assert r.returncode == 52 and r.stderr.count("\n") == 1 and "(+2 more)" in r.stderr, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("typo.yaml line ")]
    assert len(lines) == 3 and all(" line " in line and "expect_bdy" in line for line in lines), r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    doc = json.loads(crmops("--json", "upgrade", str(pb), "--check").stdout)
    assert doc["exit_code"] == 52 and len(doc["result"]["mistakes"]) == 3, doc
    dry = crmops("--json", "upgrade", str(pb), "--dry-run")  # refused before anything is contacted
    assert dry.returncode == 52 and len(json.loads(dry.stdout)["result"]["mistakes"]) == 3, dry.stderr
