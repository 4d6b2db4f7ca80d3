"""crmops verify / drill without Docker (SQLite), records and the HTML report in a real browser."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from crmops.repository import open_repository
from crmops.verify.record import is_verified_ok, latest_verification
from tests.verify.verify_helpers import ATTACHMENTS_QUERY, demo_snapshot, first_json, load, ok, run

NO_DOCKER = {"DOCKER_HOST": "tcp://127.0.0.1:1"}  # proves SQLite never touches Docker


def test_sqlite_verifies_green_without_docker(sqlite_url: str, tmp_path: Path) -> None:
    config, snap = demo_snapshot(tmp_path, sqlite_url)
    record = tmp_path / "record.json"
    out = ok(run(config, "--json", "verify", "--record", str(record), env=NO_DOCKER))
    assert out["ok"] is True and out["snapshot_id"] == snap and out["sandbox"] == "sqlite"
    assert out["tables"] and all(t["ok"] and t["checksum_ok"] for t in out["tables"])
    contacts = next(t for t in out["tables"] if t["name"] == "contacts")
    assert contacts["rows_expected"] == contacts["rows_found"] == 600
    kinds = {c["kind"]: c["ok"] for c in out["checks"]}
    assert kinds == {"attachments": True, "fk_orphans": True, "attachments_pairing": True}
    assert out["files_checked"] == 60 and out["restore_seconds"] is not None and out["snapshot_age_hours"] >= 0
    assert out["fingerprint_expected"] == out["fingerprint_found"]
    assert not Path(out["sandbox_name"]).exists()
    repo = open_repository(load(config))
    assert is_verified_ok(repo, snap)
    assert latest_verification(repo, snap)["ok"] is True
    # the auditor's check: HMAC needs the repository key, i.e. this config
    checked = ok(run(config, "--json", "verify", "--check-record", str(record)))
    assert checked["signature_valid"] and checked["alg"] == "hmac-sha256" and checked["ok"]
    human = ok(run(config, "verify", env=NO_DOCKER))
    assert "VERIFIED" in human and "restore time (RTO)" in human


def test_failing_assertion_is_red_and_the_snapshot_flagged(sqlite_url: str, tmp_path: Path) -> None:
    verify = {"assertions": [{"name": "no contacts at all", "sql": "SELECT count(*) FROM contacts", "expect": 0},
                             {"name": "roles exist", "sql": "SELECT count(*) > 0 FROM roles", "expect": True}]}
    config, snap = demo_snapshot(tmp_path, sqlite_url, verify=verify)
    r = run(config, "verify", snap[:8], env=NO_DOCKER)
    assert r.returncode == 30
    assert "assertion 'no contacts at all' failed: expected 0, got 600" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "ok   assertion 'roles exist'" in r.stdout
    repo = open_repository(load(config))
    assert not is_verified_ok(repo, snap)
    assert "no contacts at all" in latest_verification(repo, snap)["first_failure"]


def test_a_table_that_lost_rows_since_the_previous_backup_is_red(sqlite_url: str, tmp_path: Path) -> None:
    verify = {"checks": {"fk_orphans": False, "shrink": {"tables": ["contacts", "roles"], "max_percent": 5}}}
    config, first = demo_snapshot(tmp_path, sqlite_url, attachments=False, verify=verify)
    out = ok(run(config, "--json", "verify", first, env=NO_DOCKER))
    assert next(c for c in out["checks"] if c["kind"] == "shrink")["detail"].startswith("shrink: no earlier backup")
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:  # 4 % gone: within the 5 % allowed
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DELETE FROM contacts WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 24)")
    second = ok(run(config, "--json", "backup"))["snapshot_id"]
    ok(run(config, "verify", second, env=NO_DOCKER))
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:  # a mass delete: a fifth of the rest
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DELETE FROM contacts WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 115)")
    third = ok(run(config, "--json", "backup"))["snapshot_id"]
    r = run(config, "verify", third, env=NO_DOCKER)
    assert r.returncode == 30, r.stderr
    assert f"shrink: contacts 576 -> 461 rows (-20.0 %) since snapshot {second[:10]}, more than the 5 % allowed" \
        in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_orphans_found_and_samples_masked_unless_asked(sqlite_url: str, tmp_path: Path) -> None:
    from crmops.democrm.load import create

    create(sqlite_url, size="small", attachments_dir=tmp_path / "files")
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:  # SQLite enforces no keys unless told: a realistic broken reference
        email = conn.execute("SELECT email FROM contacts WHERE account_id = 7 LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM accounts WHERE id = 7")
    from tests.verify.verify_helpers import write_config

    config = write_config(tmp_path, sqlite_url)
    ok(run(config, "repo", "init"))
    ok(run(config, "backup"))
    r = run(config, "verify", env=NO_DOCKER)
    assert r.returncode == 30
    assert "foreign key " in r.stderr and "-> accounts(id)" in r.stderr and "orphan rows" in r.stderr
    assert email not in r.stdout + r.stderr and '"account_id": 7' in r.stdout  # ids shown, personal data masked
    shown = run(config, "verify", "--show-data", env=NO_DOCKER)
    assert shown.returncode == 30 and email in shown.stdout


def test_missing_attachment_breaks_the_pairing(sqlite_url: str, tmp_path: Path) -> None:
    from crmops.democrm.load import create
    from tests.verify.verify_helpers import write_config

    create(sqlite_url, size="small", attachments_dir=tmp_path / "files")
    victim = sorted(p for p in (tmp_path / "files").rglob("*") if p.is_file())[3]
    victim.unlink()  # the database still references it
    config = write_config(tmp_path, sqlite_url, verify={"checks": {"attachments_query": ATTACHMENTS_QUERY}})
    ok(run(config, "repo", "init"))
    ok(run(config, "backup"))
    r = run(config, "--json", "verify", env=NO_DOCKER)
    assert r.returncode == 30
    out = first_json(r.stdout)
    pairing = next(c for c in out["checks"] if c["kind"] == "attachments_pairing")
    assert not pairing["ok"] and "1 of 60 referenced attachments missing" in pairing["detail"]
    assert victim.stem not in pairing["detail"]  # file names can be personal: masked


def test_ed25519_record_checks_offline_and_detects_tampering(sqlite_url: str, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "signing.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / "public.pem").write_bytes(key.public_key().public_bytes(Encoding.PEM,
                                                                        PublicFormat.SubjectPublicKeyInfo))
    config, snap = demo_snapshot(tmp_path, sqlite_url, verify={"signing_key_file": str(tmp_path / "signing.pem")})
    record = tmp_path / "record.json"
    ok(run(config, "verify", "--record", str(record), env=NO_DOCKER))
    # offline: an empty folder, no configuration, no repository, only the public key
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(record, auditor / "record.json")
    shutil.copy(tmp_path / "public.pem", auditor / "public.pem")
    r = subprocess.run(["python", "-m", "crmops", "--json", "verify", "--check-record", "record.json",
                        "--public-key", "public.pem"], cwd=auditor, capture_output=True, text=True,
                       env={"PATH": str(Path(__import__("sys").executable).parent), **NO_DOCKER})
    checked = ok(r)
    assert checked["alg"] == "ed25519" and checked["trusted_key"] and checked["ok"] and checked["snapshot_id"] == snap
    signed = json.loads(record.read_text())
    signed["record"]["restore_seconds"] = 0.001  # a prettier RTO
    (auditor / "record.json").write_text(json.dumps(signed))
    r = subprocess.run(["python", "-m", "crmops", "verify", "--check-record", "record.json", "--public-key",
                        "public.pem"], cwd=auditor, capture_output=True, text=True,
                       env={"PATH": str(Path(__import__("sys").executable).parent)})
    assert r.returncode == 26 and "does not match its content" in r.stderr
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (auditor / "other.pem").write_bytes(other)
    shutil.copy(record, auditor / "record.json")
    r = run(config, "verify", "--check-record", str(auditor / "record.json"), "--public-key",
            str(auditor / "other.pem"))
    assert r.returncode == 26 and "was signed by key" in r.stderr


class _Verdict(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inside = self.inside or ("id", "verdict") in attrs

    def handle_endtag(self, tag: str) -> None:
        self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text += data


def rendered_verdict(html: Path, tmp_path: Path) -> str:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed: run `scripts/testbed.sh up`")
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom",
                        html.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    parser = _Verdict()
    parser.feed(r.stdout)
    return parser.text.strip()


def test_drill_reports_render_in_chromium(sqlite_url: str, tmp_path: Path) -> None:
    verify = {"checks": {"attachments_query": ATTACHMENTS_QUERY},
              "assertions": [{"name": "few contacts", "sql": "SELECT count(*) < 10 FROM contacts", "expect": True}]}
    config, snap = demo_snapshot(tmp_path, sqlite_url, verify=verify)
    r = run(config, "--json", "drill", "--report-dir", str(tmp_path / "reports"), env=NO_DOCKER)
    assert r.returncode == 30
    out = first_json(r.stdout)
    html = Path(out["reports"]["html"])
    text = html.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text
    assert rendered_verdict(html, tmp_path) == "FAIL"
    report = json.loads(Path(out["reports"]["json"]).read_text())
    assert report["ok"] is False and "few contacts" in report["first_failure"]
    # the same snapshot, with the assertion fixed, passes
    cfg = load(config)
    cfg_text = config.read_text().replace("count(*) < 10", "count(*) > 10")
    config.write_text(cfg_text)
    assert cfg.verify.assertions
    out = ok(run(config, "--json", "drill", env=NO_DOCKER))
    assert Path(out["reports"]["html"]).parent == tmp_path / "state" / "drills"
    assert rendered_verdict(Path(out["reports"]["html"]), tmp_path) == "PASS"
    assert [s["step"] for s in out["timeline"]][-1] == "sandbox removed"


def test_a_flipped_bit_in_a_stored_chunk_is_red(sqlite_url: str, tmp_path: Path) -> None:
    config, snap = demo_snapshot(tmp_path, sqlite_url, attachments=False)
    manifest = open_repository(load(config)).manifest(snap)
    chunk = manifest["streams"]["database"]["chunks"][0]
    stored = tmp_path / "repo" / "data" / chunk[:2] / chunk
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x10
    stored.write_bytes(bytes(data))
    r = run(config, "verify", env=NO_DOCKER)
    assert r.returncode == 30
    assert "restore failed" in r.stderr and chunk in r.stderr and "fails authentication" in r.stderr
    assert not is_verified_ok(open_repository(load(config)), snap)
