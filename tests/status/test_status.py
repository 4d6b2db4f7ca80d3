"""Status verdicts and the status page, on a real SQLite CRM and repository; the page in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from crmops.config import Assertion
from crmops.journal import Journal
from crmops.status.verdicts import gather
from crmops.verify.workflow import verify
from tests.verify.verify_helpers import demo_snapshot, load, ok, run

NO_FILES = {"checks": {"fk_orphans": True}}  # no attachments in these CRMs


def levels(ov) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {v.name: v.level for v in ov.verdicts}


def summary(ov, name: str) -> str:  # type: ignore[no-untyped-def]
    return next(v.summary for v in ov.verdicts if v.name == name)


def upgrade_journal(state: Path, run_id: str, when: str, result: str | None, dry_run: bool = False) -> Path:
    """An upgrade journal as `crmops upgrade` writes it: start, some steps, end."""
    j = Journal(state / "upgrades" / f"{when}-{run_id}.jsonl")
    j.append("start", run_id=run_id, playbook="crm-2.0", from_version="1.0", to_version="2.0", dry_run=dry_run)
    j.append("step", stage="migrate", ok=result == "success")
    if result is not None:
        j.append("end", result=result, error=None if result == "success" else "stage migrate: lock timeout")
    return j.path


def test_verdicts_follow_backups_verifications_upgrades_and_retention(sqlite_url: str, tmp_path: Path) -> None:
    config, snap = demo_snapshot(tmp_path, sqlite_url, attachments=False, verify=NO_FILES)
    ok(run(config, "--json", "verify"))
    cfg = load(config)
    ov = gather(cfg)
    lv = levels(ov)
    assert lv.pop("alerting") == "amber" and "reaches no one" in summary(ov, "alerting")
    assert set(lv.values()) == {"green"}, ov.verdicts
    cfg.notify.metrics_file = tmp_path / "crmops.prom"
    assert summary(gather(cfg), "alerting") == f"failures are reported to metrics file {tmp_path / 'crmops.prom'}"
    ov = gather(cfg)
    assert [r["command"] for r in ov.runs] == ["backup", "verify"] and ov.level == "green"
    now = datetime.now(UTC)
    later = gather(cfg, now=now + timedelta(hours=27))
    assert levels(later)["backup"] == "red" and "no backup in 27.0 hours (limit 26 h)" in summary(later, "backup")
    stale = gather(cfg, now=now + timedelta(days=9, hours=-2))
    assert levels(stale)["verification"] == "amber" and "older than 8 days" in summary(stale, "verification")

    # a verification that fails is red, whatever came before
    cfg.verify.assertions = [Assertion(name="no contacts", sql="SELECT count(*) FROM contacts", expect=0)]
    assert verify(cfg).ok is False
    ov = gather(cfg)
    assert levels(ov)["verification"] == "red" and "assertion 'no contacts' failed" in summary(ov, "verification")

    state = cfg.state_dir
    upgrade_journal(state, "u1", "20261101T0100", "success", dry_run=True)
    assert levels(gather(cfg))["upgrades"] == "green"
    upgrade_journal(state, "u2", "20261102T0100", "rolled-back")
    ov = gather(cfg)
    assert levels(ov)["upgrades"] == "amber"
    assert summary(ov, "upgrades") == "upgrade crm-2.0 1.0 → 2.0 (run u2) was rolled back: stage migrate: lock timeout"
    assert [u["run_id"] for u in ov.upgrades] == ["u2", "u1"]
    crashed = upgrade_journal(state, "u3", "20261103T0100", None)
    assert "no end record" in summary(gather(cfg), "upgrades")
    crashed.unlink()
    upgrade_journal(state, "u4", "20261104T0100", "failed")
    assert levels(gather(cfg))["upgrades"] == "red"
    edited = upgrade_journal(state, "u5", "20261105T0100", "success")
    edited.write_text(edited.read_text().replace('"crm-2.0"', '"crm-9.9"'))
    ov = gather(cfg)
    assert levels(ov)["upgrades"] == "amber" and "hash chain broken" in summary(ov, "upgrades")

    cfg.retention = cfg.retention.model_copy(update={"keep_last": 1, "keep_daily": 0, "keep_weekly": 0,
                                                     "keep_monthly": 0, "keep_yearly": 0})
    ok(run(config, "backup"))
    ov = gather(cfg)
    assert levels(ov)["retention"] == "amber"
    assert "1 snapshot is past the retention policy" in summary(ov, "retention")
    cfg.retention = cfg.retention.model_copy(update={"keep_last": 10})
    cfg.status.repository_quota_bytes = ov.repository_size_bytes + 1000
    ov = gather(cfg)
    assert levels(ov)["retention"] == "amber" and "100% of its" in summary(ov, "retention")


def test_status_exit_code_is_61_only_when_red(sqlite_url: str, tmp_path: Path) -> None:
    config, _ = demo_snapshot(tmp_path, sqlite_url, attachments=False, verify=NO_FILES)
    amber = run(config, "--json", "status")  # never verified: amber, not red
    assert amber.returncode == 0 and json.loads(amber.stdout)["level"] == "amber"
    r = run(config, "status", env={"TEST_PASSPHRASE": "not the passphrase"})
    assert r.returncode == 61 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("crmops: error: status red: repository: cannot open the repository: the passphrase")
    assert "RED   repository" in r.stdout


class _Dom(HTMLParser):
    """Counts the chart marks per SVG and collects the warnings' text, from Chromium's DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.svg: str | None = None
        self.marks: dict[str, list[str]] = {}
        self.in_warnings = False
        self.warnings = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self.svg = a.get("id")
            self.marks[self.svg or ""] = []
        elif self.svg and tag in ("circle", "rect"):
            self.marks[self.svg].append(f"{tag}.{a.get('class') or ''}".strip())
        elif tag == "ul" and a.get("id") == "warnings":
            self.in_warnings = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.svg = None
        elif tag == "ul":
            self.in_warnings = False

    def handle_data(self, data: str) -> None:
        if self.in_warnings:
            self.warnings += data


def chromium(html: Path, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.fail("chromium is not installed: run `scripts/testbed.sh up`")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium'}", *mode, html.as_uri()],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_status_page_shows_charts_and_warnings_in_chromium(sqlite_url: str, tmp_path: Path) -> None:
    config, _ = demo_snapshot(tmp_path, sqlite_url, attachments=False, verify=NO_FILES)
    ok(run(config, "verify"))
    ok(run(config, "backup"))
    cfg = load(config)
    cfg.verify.assertions = [Assertion(name="no contacts", sql="SELECT count(*) FROM contacts", expect=0)]
    assert verify(cfg).ok is False
    html = tmp_path / "site" / "status.html"
    out = ok(run(config, "--json", "report", "--html", str(html)))
    assert out["level"] == "red" and out["html"] == str(html)
    text = html.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<link" not in text and "<script" not in text and "<img" not in text

    r = chromium(html, tmp_path, "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = _Dom()
    dom.feed(r.stdout)
    assert dom.marks["chart-size"] == ["circle."] * 2  # one point per snapshot
    assert dom.marks["chart-new"] == ["rect.col"] * 2
    assert dom.marks["chart-rto"] == ["circle.", "circle.bad"]  # the failed verification is drawn red
    assert dom.marks["chart-rpo"] == ["rect.col", "rect.col bad"]
    assert "RED verification: the last verification failed" in " ".join(dom.warnings.split())
    assert "assertion 'no contacts' failed" in dom.warnings
    shot = chromium(html, tmp_path, "--screenshot", "--window-size=1000,2400")
    assert shot.returncode == 0 and (tmp_path / "screenshot.png").stat().st_size > 20_000
