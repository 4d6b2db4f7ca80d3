"""A drill from the copy on a timer: `schedule install --drill-from-copy NAME WHEN`, its unit and cron
line run as systemd and cron would, and status shows the last verified restore from the copy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.copy.helpers import PASSPHRASE, crm, doc, run, write_config
from tests.test_schedule import service_command


def _verdict(config: Path) -> dict:  # type: ignore[type-arg]
    return next(v for v in doc(run(config, "status", check=False))["verdicts"] if v["name"] == "copy usb")


def test_a_scheduled_drill_from_the_copy_runs_and_status_shows_it(tmp_path: Path) -> None:
    crm(tmp_path, attachment_mib=1)
    config = write_config(tmp_path, [{"name": "usb", "url": f"file://{tmp_path / 'usb'}"}])
    env_file = tmp_path / "crmops.env"
    env_file.write_text(f"TEST_PASSPHRASE={PASSPHRASE}\n")
    env_file.chmod(0o600)
    run(config, "repo", "init")
    units = tmp_path / "units"
    plan = doc(run(config, "schedule", "install", "--unit-dir", str(units), "--env-file", str(env_file),
                   "--no-systemctl", "--check", "off", "--copy", "03:00", "--drill-from-copy", "usb", "sun 05:00"))
    job = plan["jobs"]["drill-from-usb"]
    assert job["when"] == "Sun *-*-* 05:00:00" and job["command"][-3:] == ["drill", "--repository", "usb"]
    timer = (units / "crmops-drill-from-usb.timer").read_text()
    assert "OnCalendar=Sun *-*-* 05:00:00" in timer and "Unit=crmops-drill-from-usb.service" in timer

    for name in ("backup", "copy", "drill-from-usb"):  # the night, then Sunday's drill, as systemd runs them
        if name == "drill-from-usb":
            assert "no verified restore from the copy yet" in _verdict(config)["summary"]
        command, env = service_command(units / f"crmops-{name}.service")
        r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0 and r.stderr == "", (name, r.stderr)
    v = _verdict(config)
    assert v["level"] == "green" and "last verified restore from the copy" in v["summary"], v
    assert v["summary"].endswith("(drill): success")
    runs = [json.loads(x) for x in (tmp_path / "state" / "runs.jsonl").read_text().splitlines()]
    assert [r["command"] for r in runs] == ["backup", "copy", "drill@usb"]
    shown = doc(run(config, "schedule", "show", "--unit-dir", str(units)))["jobs"]
    assert any(j["job"] == "drill-from-usb" and "drill --repository usb" in j["command"] for j in shown)

    # the same from cron: the line run as cron would
    cron = tmp_path / "crmops.cron"
    run(config, "schedule", "install", "--cron", "--cron-file", str(cron), "--unit-dir", str(units),
        "--env-file", str(env_file), "--check", "off", "--drill-from-copy", "usb", "mon 06:00")
    assert not (units / "crmops-drill-from-usb.timer").exists()  # systemd's units gave way to the cron file
    line = next(ln for ln in cron.read_text().splitlines() if ln.endswith("# crmops-job=drill-from-usb"))
    assert line.startswith("0 6 * * 1 root ")
    variables = dict(ln.split("=", 1) for ln in cron.read_text().splitlines() if "=" in ln and " " not in ln)
    ran = subprocess.run(["/bin/sh", "-c", line.split(" root ", 1)[1].replace("\\%", "%")], capture_output=True,
                         text=True, env={"HOME": str(tmp_path), **variables}, timeout=300)
    assert ran.returncode == 0 and ran.stderr == "", ran.stderr
    runs = [json.loads(x) for x in (tmp_path / "state" / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["command"] == "drill@usb" and runs[-1]["result"] == "success"


def test_drill_from_an_unknown_copy_or_at_a_bad_time_is_refused(tmp_path: Path) -> None:
    crm(tmp_path, attachment_mib=1)
    config = write_config(tmp_path, [{"name": "usb", "url": f"file://{tmp_path / 'usb'}"}])
    units = tmp_path / "units"
    r = run(config, "schedule", "install", "--unit-dir", str(units), "--no-systemctl", "--drill-from-copy",
            "offsite", "sun 05:00", check=False)
    assert r.returncode == 3 and "no copy named 'offsite'" in r.stderr and not units.exists()
    r = run(config, "schedule", "install", "--unit-dir", str(units), "--no-systemctl", "--drill-from-copy",
            "usb", "sunday", check=False)
    assert r.returncode == 2 and "--drill-from-copy" in r.stderr and not units.exists()
