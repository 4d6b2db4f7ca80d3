"""The schedule: generated systemd units and cron file, and the scheduled run end to end.

The end-to-end tests run the command the generated service would run, with the
environment the unit gives it, against a real PostgreSQL CRM, a real S3 server, a local
HTTP receiver (webhooks and Pushgateway) and a local SMTP server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmops.config import apply_env_file, read_env_file
from crmops.democrm.load import create
from crmops.errors import ConfigError
from crmops.services.schedule import MARKER, parse_when
from tests.receivers import HttpReceiver, SmtpReceiver, http_receiver, smtp_receiver

PASSPHRASE = "scheduled passphrase 9d2e"
S3_SECRET = "s3-secret-key-b71c04"
HOOK_TOKEN = "hooktoken4c1d"


def crmops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "crmops", *args], capture_output=True, text=True, env=full,
                          timeout=120)


@pytest.mark.parametrize(("text", "calendar", "cron"), [
    ("02:30", "*-*-* 02:30:00", "30 2 * * *"),
    ("daily 2:05", "*-*-* 02:05:00", "5 2 * * *"),
    ("sun 04:00", "Sun *-*-* 04:00:00", "0 4 * * 0"),
    ("mon-fri 22:00", "Mon,Tue,Wed,Thu,Fri *-*-* 22:00:00", "0 22 * * 1,2,3,4,5"),
    ("thu,mon 03:15", "Mon,Thu *-*-* 03:15:00", "15 3 * * 1,4"),
])
def test_when_becomes_systemd_calendar_and_cron(text: str, calendar: str, cron: str) -> None:
    when = parse_when(text)
    assert when.on_calendar() == calendar and when.cron() == cron
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        nxt = next(ln for ln in r.stdout.splitlines() if "Next elapse:" in ln).split()
        assert nxt[-2] == f"{when.hour:02d}:{when.minute:02d}:00"
        assert nxt[2].lower() in (when.days or [nxt[2].lower()])


def test_bad_schedule_is_a_usage_error_naming_the_option(tmp_path: Path) -> None:
    config = tmp_path / "crmops.yaml"
    config.write_text("database:\n  url: sqlite:///crm.db\nrepository:\n  url: file://repo\nstate_dir: state\n")
    for bad in ("25:00", "someday 02:00", "fri-mon 01:00", "0230"):
        r = crmops("--config", str(config), "schedule", "install", "--backup", bad, "--unit-dir", str(tmp_path))
        assert r.returncode == 2 and "Invalid value for '--backup'" in r.stderr and "Traceback" not in r.stderr
    r = crmops("schedule", "install", "--unit-dir", str(tmp_path), env={"HOME": str(tmp_path)})
    assert r.returncode == 3 and "needs a configuration file" in r.stderr  # the demo default is never scheduled
    assert not list(tmp_path.glob("crmops-*"))


def test_env_file_reads_as_systemd_does(tmp_path: Path) -> None:
    f = tmp_path / "crmops.env"
    f.write_text("# secrets\nCRMOPS_PASSPHRASE=two words $HOME\nexport A='quoted value'\n\nB=\"x=y\"\n")
    assert read_env_file(f) == {"CRMOPS_PASSPHRASE": "two words $HOME", "A": "quoted value", "B": "x=y"}
    environ = {"CRMOPS_ENV_FILE": str(f), "A": "already set"}
    apply_env_file(environ)
    assert environ["A"] == "already set" and environ["CRMOPS_PASSPHRASE"] == "two words $HOME"
    apply_env_file({"CRMOPS_ENV_FILE": str(tmp_path / "absent")})  # optional, like EnvironmentFile=-
    f.write_text("not a variable\n")
    with pytest.raises(ConfigError, match="line 1 is not NAME=value"):
        read_env_file(f)


def service_command(unit: Path, key: str = "ExecStart") -> tuple[list[str], dict[str, str]]:
    """ExecStart= (or another Exec key) and the environment systemd would give it."""
    env: dict[str, str] = {"PATH": os.environ["PATH"], "HOME": "/root", "LANG": "C.UTF-8"}
    command: list[str] = []
    want = key
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "Environment":
            name, _, val = shlex.split(value)[0].partition("=")
            env[name] = val.replace("%%", "%")
        elif key == "EnvironmentFile":
            path = Path(value.lstrip("-").strip('"'))
            if path.is_file():
                env.update(dict(ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln))
        elif line.startswith(f"{want}="):
            command = [w.replace("%%", "%") for w in shlex.split(value)]
    return command, env


def write_config(tmp_path: Path, name: str, *, endpoint: str, bucket: str, rec: HttpReceiver, smtp: SmtpReceiver,
                 s3_attempts: int = 8) -> Path:
    cfg: dict[str, Any] = {
        "database": {"url": "${CRM_DB_URL}"},
        "repository": {"url": f"s3://{bucket}/crm", "chunk_avg_kib": 256,
                       "s3": {"endpoint_url": endpoint, "access_key_id": "crmops", "secret_access_key": "${S3_SECRET}",
                              "max_attempts": s3_attempts, "timeout_seconds": 2}},
        "state_dir": str(tmp_path / f"{name}-state"),
        "notify": {"on_success": True, "attempts": 2, "timeout_seconds": 5,
                   "metrics_file": str(tmp_path / f"{name}-textfile" / "crmops.prom"),
                   "pushgateway_url": f"{rec.url}/pushgateway",
                   "webhooks": [{"kind": "generic", "url": f"{rec.url}/generic/{HOOK_TOKEN}"},
                                {"kind": "slack", "url": f"{rec.url}/slack/T0/{HOOK_TOKEN}"},
                                {"kind": "dingtalk", "url": f"{rec.url}/ding?access_token={HOOK_TOKEN}"},
                                {"kind": "wecom", "url": f"{rec.url}/wecom?key={HOOK_TOKEN}"}],
                   "email": {"host": smtp.host, "port": smtp.port, "sender": "crmops@crm.example",
                             "to": ["it@crm.example"]}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def install(config: Path, units: Path, env_file: Path, *extra: str) -> dict[str, Any]:
    r = crmops("--config", str(config), "--json", "schedule", "install", "--unit-dir", str(units),
               "--env-file", str(env_file), "--verify", "sun 04:00", *extra, env=dict(secrets_of(env_file)))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def secrets_of(env_file: Path) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in env_file.read_text().splitlines())


def test_units_verify_and_show_and_remove_touch_only_their_own_files(tmp_path: Path) -> None:
    config = tmp_path / "crmops.yaml"
    config.write_text("database:\n  url: sqlite:///crm.db\nrepository:\n  url: file://repo\nstate_dir: state\n")
    units = tmp_path / "units"
    units.mkdir()
    (units / "crmops-mine.service").write_text("[Service]\nExecStart=/bin/true\n")  # someone else's
    r = crmops("--config", str(config), "--json", "schedule", "install", "--unit-dir", str(units), "--backup",
               "02:30", "--verify", "sun 04:00", "--prune", "sun 05:00", "--timeout", "3h", "--lock-wait", "20m")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["enabled"] is False and out["to_run"][-1].startswith("systemctl enable --now crmops-backup.timer")
    service = (units / "crmops-backup.service").read_text()
    assert service.startswith(MARKER)
    assert f"Environment=CRMOPS_CONFIG={config}" in service and "TimeoutStartSec=10800" in service
    assert "Environment=CRMOPS_JOB_LOCK_WAIT=1200" in service and "Type=oneshot" in service
    assert f"--config {config} --quiet --log-format json backup --tag scheduled" in service
    assert "OnCalendar=Sun *-*-* 04:00:00" in (units / "crmops-verify.timer").read_text()
    assert "drill" in (units / "crmops-verify.service").read_text()
    assert "forget --prune" in (units / "crmops-prune.service").read_text()
    # the check is scheduled by default: a daily share of the data (check.read_data_days), in rotation
    assert "check --read-data-subset auto" in (units / "crmops-check.service").read_text()
    files = sorted(str(p) for p in units.glob("crmops-*.*") if p.name != "crmops-mine.service")
    assert len(files) == 8
    if shutil.which("systemd-analyze"):
        v = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True, timeout=60)
        assert v.returncode == 0 and v.stderr.strip() == "", v.stderr
    shown = json.loads(crmops("--json", "schedule", "show", "--unit-dir", str(units)).stdout)["jobs"]
    assert {j["job"]: j["when"] for j in shown} == {"backup": "*-*-* 02:30:00", "prune": "Sun *-*-* 05:00:00",
                                                    "verify": "Sun *-*-* 04:00:00", "check": "*-*-* 03:30:00"}
    # switching to cron drops the units (and the links `systemctl enable` made), so nothing runs twice
    (units / "timers.target.wants").mkdir()
    (units / "timers.target.wants" / "crmops-backup.timer").symlink_to(units / "crmops-backup.timer")
    cron = tmp_path / "cron.d" / "crmops"
    r = crmops("--config", str(config), "--json", "schedule", "install", "--cron", "--cron-file", str(cron),
               "--unit-dir", str(units), "--backup", "mon-fri 22:00", "--check", "off")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["removed"]) == 8 and (units / "crmops-mine.service").exists()
    assert not list((units / "timers.target.wants").iterdir())
    assert out["to_run"] == ["systemctl stop crmops-backup.timer crmops-check.timer crmops-prune.timer "
                             "crmops-verify.timer",
                             "systemctl daemon-reload"]
    line = next(ln for ln in cron.read_text().splitlines() if ln.startswith("0 22 * * 1,2,3,4,5 root "))
    assert "timeout --kill-after=120 14400 " in line and line.endswith("# crmops-job=backup")
    assert f"CRMOPS_CONFIG={config}" in cron.read_text() and oct(cron.stat().st_mode & 0o777) == "0o644"
    shown = json.loads(crmops("--json", "schedule", "show", "--unit-dir", str(units), "--cron-file",
                              str(cron)).stdout)["jobs"]
    assert [(j["job"], j["kind"], j["when"]) for j in shown] == [("backup", "cron", "0 22 * * 1,2,3,4,5")]
    r = crmops("--json", "schedule", "remove", "--unit-dir", str(units), "--cron-file", str(cron))
    assert json.loads(r.stdout)["removed"] == [str(cron)]
    assert not cron.exists() and (units / "crmops-mine.service").exists()


def test_scheduled_run_backs_up_measures_and_notifies(pg_url: str, s3_endpoint: str, s3_bucket: str,
                                                      tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    db_password = make_url(pg_url).password
    assert db_password
    create(pg_url, size="small")
    env_file = tmp_path / "crmops.env"
    env_file.write_text(f"CRM_DB_URL={pg_url}\nS3_SECRET={S3_SECRET}\nCRMOPS_PASSPHRASE={PASSPHRASE}\n")
    with http_receiver() as rec, smtp_receiver() as smtp:
        config = write_config(tmp_path, "good", endpoint=s3_endpoint, bucket=s3_bucket, rec=rec, smtp=smtp)
        r = crmops("--config", str(config), "repo", "init", env=secrets_of(env_file))
        assert r.returncode == 0, r.stderr
        install(config, tmp_path / "units", env_file)
        command, env = service_command(tmp_path / "units" / "crmops-backup.service")
        ran = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "" and ran.stderr == ""  # --quiet: a good night is silent

        state = tmp_path / "good-state"
        (record,) = [json.loads(ln) for ln in (state / "runs.jsonl").read_text().splitlines()]
        run_id = record["run_id"]
        assert record["result"] == "success" and record["command"] == "backup"
        snaps = json.loads(crmops("--config", str(config), "--json", "snapshots", env=secrets_of(env_file)).stdout)
        assert [s["id"] for s in snaps] == [record["figures"]["snapshot_id"]] and snaps[0]["tags"] == ["scheduled"]

        prom = (tmp_path / "good-textfile" / "crmops.prom").read_text()
        assert 'crmops_last_run_success{command="backup"} 1' in prom
        assert f'crmops_last_run_info{{command="backup",run_id="{run_id}",result="success"}} 1' in prom
        assert "crmops_repository_snapshots 1" in prom and "crmops_backup_new_bytes " in prom
        (pushed,) = rec.to("/pushgateway")
        assert pushed.body.decode() == prom

        for path in ("/generic", "/slack", "/ding", "/wecom"):
            (req,) = rec.to(path)
            assert run_id in req.body.decode() and "crmops backup ok on" in req.body.decode()
        assert json.loads(rec.to("/generic")[0].body)["ok"] is True
        (mail,) = smtp.messages
        assert mail["X-Crmops-Run-Id"] == run_id and " ok on " in mail["Subject"]

        status = crmops("--config", str(config), "--json", "status", env=secrets_of(env_file))
        assert status.returncode == 0 and json.loads(status.stdout)["level"] == "amber"  # not verified yet
        everything = [ran.stdout, ran.stderr, prom, status.stdout, (state / "runs.jsonl").read_text()]
        everything += [r.body.decode() for r in rec.requests] + [m.decode() for m in smtp.raw]
    assert_no_secret(everything, db_password)


def test_scheduled_run_against_an_unreachable_bucket_fails_loudly(pg_url: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    db_password = make_url(pg_url).password
    env_file = tmp_path / "crmops.env"
    env_file.write_text(f"CRM_DB_URL={pg_url}\nS3_SECRET={S3_SECRET}\nCRMOPS_PASSPHRASE={PASSPHRASE}\n")
    with http_receiver() as rec, smtp_receiver() as smtp:
        config = write_config(tmp_path, "bad", endpoint="http://127.0.0.1:9", bucket="gone", rec=rec, smtp=smtp,
                              s3_attempts=1)
        install(config, tmp_path / "units", env_file)
        command, env = service_command(tmp_path / "units" / "crmops-backup.service")
        ran = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert ran.returncode == 20, ran.stderr
        reason = "cannot reach S3"
        errors = [json.loads(ln) for ln in ran.stderr.splitlines() if ln.startswith("{")]
        (end,) = [e for e in errors if e.get("event") == "job-end"]
        assert end["level"] == "error" and end["result"] == "failure" and reason in end["msg"]
        last = ran.stderr.splitlines()[-1]
        assert last.startswith("crmops: error: s3://gone/crm/ at http://127.0.0.1:9: ") and reason in last

        (record,) = [json.loads(ln) for ln in (tmp_path / "bad-state" / "runs.jsonl").read_text().splitlines()]
        assert record["result"] == "failure" and record["exit_code"] == 20 and record["run_id"] == end["run_id"]
        line = record["error"]
        assert reason in line and "\n" not in line
        for path in ("/generic", "/slack", "/ding", "/wecom"):
            (req,) = rec.to(path)
            assert line in req.body.decode().replace("\\n", "\n") or line in json.loads(req.body).__repr__()
            assert record["run_id"] in req.body.decode()
        generic = json.loads(rec.to("/generic")[0].body)
        assert generic["ok"] is False and generic["error"] == line and generic["exit_code"] == 20
        (mail,) = smtp.messages
        assert "FAILED" in mail["Subject"] and reason in mail["Subject"]
        prom = (tmp_path / "bad-textfile" / "crmops.prom").read_text()
        assert 'crmops_last_run_success{command="backup"} 0' in prom
        assert 'crmops_last_run_exit_code{command="backup"} 20' in prom

        status = crmops("--config", str(config), "status", env=secrets_of(env_file))
        assert status.returncode == 61 and status.stderr.count("\n") == 1
        assert "RED   repository" in status.stdout and "last backup failed" in status.stdout
        page = tmp_path / "status.html"
        report = crmops("--config", str(config), "report", "--html", str(page), env=secrets_of(env_file))
        assert report.returncode == 0, report.stderr
        html = page.read_text()
        assert 'id="warnings"' in html and reason in html and record["run_id"] in html
        everything = [ran.stdout, ran.stderr, prom, status.stdout, status.stderr, html, mail.as_string(),
                      (tmp_path / "bad-state" / "runs.jsonl").read_text()]
        everything += [r.body.decode() for r in rec.requests] + [m.decode() for m in smtp.raw]
    assert_no_secret(everything, db_password)


def assert_no_secret(texts: list[str], db_password: str) -> None:
    for text in texts:
        for secret in (PASSPHRASE, S3_SECRET, db_password, HOOK_TOKEN):
            assert secret not in text, f"secret {secret[:4]}… leaked into: {text[:300]}"


def test_weekly_drill_and_status_page_from_the_units_and_from_cron(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'crm.db'}"
    create(db, size="small")
    cfg = {"database": {"url": db}, "repository": {"url": f"file://{tmp_path / 'repo'}", "chunk_avg_kib": 256},
           "state_dir": str(tmp_path / "state"), "notify": {"metrics_file": str(tmp_path / "crmops.prom")}}
    config = tmp_path / "crmops.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env_file = tmp_path / "crmops.env"
    env_file.write_text(f"CRMOPS_PASSPHRASE={PASSPHRASE}\n")
    assert crmops("--config", str(config), "repo", "init", env=secrets_of(env_file)).returncode == 0
    page, units = tmp_path / "www" / "status.html", tmp_path / "units"
    install(config, units, env_file, "--status-page", str(page))
    if shutil.which("systemd-analyze"):
        v = subprocess.run(["systemd-analyze", "verify", *map(str, units.iterdir())], capture_output=True, text=True)
        assert v.returncode == 0 and v.stderr.strip() == "", v.stderr
    for job in ("backup", "verify"):
        for key in ("ExecStart", "ExecStopPost"):
            command, env = service_command(units / f"crmops-{job}.service", key)
            r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
            assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (job, key, r.stderr)
    prom = (tmp_path / "crmops.prom").read_text()
    assert "crmops_verify_success 1" in prom and 'crmops_last_run_success{command="drill"} 1' in prom
    assert float(re.search(r"^crmops_verify_restore_seconds (\S+)$", prom, re.M)[1]) > 0
    assert "restored and matched" in page.read_text()
    assert list((tmp_path / "state" / "drills").glob("drill-*.html"))  # the drill's own report for auditors

    # the same schedule from cron: run the line as cron would (sh -c, the file's variables)
    cron = tmp_path / "crmops.cron"
    r = crmops("--config", str(config), "schedule", "install", "--cron", "--cron-file", str(cron), "--unit-dir",
               str(units), "--env-file", str(env_file), "--status-page", str(page), env=secrets_of(env_file))
    assert r.returncode == 0, r.stderr
    variables = dict(ln.split("=", 1) for ln in cron.read_text().splitlines() if "=" in ln and " " not in ln)
    line = next(ln for ln in cron.read_text().splitlines() if ln.endswith("# crmops-job=backup"))
    page.unlink()
    ran = subprocess.run(["/bin/sh", "-c", line.split(" root ", 1)[1].replace("\\%", "%")], capture_output=True,
                         text=True, env={"HOME": str(tmp_path), **variables}, timeout=120)
    assert ran.returncode == 0 and ran.stderr == "", ran.stderr
    assert page.is_file() and (tmp_path / "state" / "crmops.log").read_text() == ""  # quiet: nothing logged
    records = [json.loads(ln) for ln in (tmp_path / "state" / "runs.jsonl").read_text().splitlines()]
    assert [(x["command"], x["result"]) for x in records] == [("backup", "success"), ("drill", "success"),
                                                               ("backup", "success")]


def test_streamers_are_services_that_show_and_remove_like_the_jobs(tmp_path: Path) -> None:
    pg = tmp_path / "pg.yaml"
    pg.write_text(yaml.safe_dump({"database": {"url": "postgresql://crm@127.0.0.1:5432/crm"}, "state_dir": "state",
                                 "repository": {"url": "file://repo"}}))
    units = tmp_path / "units"
    env_file = tmp_path / "crmops.env"
    env_file.write_text("CRMOPS_PASSPHRASE=x\nCRMOPS_STREAM_URL=postgresql://repl:streampw@127.0.0.1/postgres\n")
    r = crmops("--config", str(pg), "--json", "schedule", "install", "--unit-dir", str(units), "--env-file",
               str(env_file), "--wal-stream", "--user", "postgres", "--no-systemctl")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["services"] == ["wal-stream"] and out["jobs"]["wal-stream"]["unit"] == "crmops-wal-stream.service"
    assert "systemctl enable --now crmops-backup.timer crmops-check.timer crmops-wal-stream.service" in out["to_run"]
    assert out["to_run"][-1] == "systemctl restart crmops-wal-stream.service"
    service = (units / "crmops-wal-stream.service").read_text()
    assert service.startswith(MARKER) and not (units / "crmops-wal-stream.timer").exists()
    for line in ("Type=simple", "Restart=always", "RestartSec=10", "StartLimitIntervalSec=0", "KillMode=mixed",
                 "User=postgres", f"EnvironmentFile=-{env_file}", "WantedBy=multi-user.target"):
        assert line in service.splitlines(), line
    assert "streampw" not in service and "CRMOPS_PASSPHRASE" not in service  # secrets stay in the env file
    command, env = service_command(units / "crmops-wal-stream.service")
    assert command[-2:] == ["wal", "stream"] and env["CRMOPS_STREAM_URL"].startswith("postgresql://repl:")
    if shutil.which("systemd-analyze"):
        v = subprocess.run(["systemd-analyze", "verify", str(units / "crmops-wal-stream.service")],
                           capture_output=True, text=True, timeout=60)
        assert v.returncode == 0 and "crmops-wal-stream" not in v.stderr, v.stderr
    shown = json.loads(crmops("--json", "schedule", "show", "--unit-dir", str(units)).stdout)["jobs"]
    stream = next(j for j in shown if j["job"] == "wal-stream")
    assert stream["kind"] == "systemd" and stream["when"] == "always" and stream["service"] is True
    assert stream["command"].endswith("wal stream") and stream["next"] is None

    # an install without it stops and removes the service: the schedule is the whole set
    (units / "multi-user.target.wants").mkdir()
    (units / "multi-user.target.wants" / "crmops-wal-stream.service").symlink_to(units / "crmops-wal-stream.service")
    r = crmops("--config", str(pg), "--json", "schedule", "install", "--unit-dir", str(units), "--no-systemctl")
    out = json.loads(r.stdout)
    assert out["removed"] == [str(units / "crmops-wal-stream.service")] and out["services"] == []
    assert "systemctl disable --now crmops-wal-stream.service" in out["to_run"]
    assert not list((units / "multi-user.target.wants").iterdir())

    # the wrong engine is refused before anything is written
    r = crmops("--config", str(pg), "--json", "schedule", "install", "--unit-dir", str(tmp_path / "u2"),
               "--binlog-follow", "--no-systemctl")
    assert r.returncode == 3 and "--binlog-follow follows MariaDB/MySQL" in r.stderr
    assert json.loads(r.stdout)["ok"] is False and not (tmp_path / "u2").exists()


def test_cron_restarts_a_streamer_every_minute_behind_a_lock(tmp_path: Path) -> None:
    my = tmp_path / "my.yaml"
    from tests.ports import free_port

    # a port nothing listens on: a MariaDB of the host's own on 3306 must not answer the streamer
    url = f"mysql+pymysql://crm@127.0.0.1:{free_port()}/crm"
    my.write_text(yaml.safe_dump({"database": {"url": url}, "state_dir": "st", "repository": {"url": "file://repo"}}))
    cron = tmp_path / "cron.d" / "crmops"
    log = tmp_path / "crmops.log"
    r = crmops("--config", str(my), "--json", "schedule", "install", "--cron", "--cron-file", str(cron),
               "--unit-dir", str(tmp_path / "units"), "--binlog-follow", "--log-file", str(log))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in cron.read_text().splitlines() if ln.endswith("# crmops-job=binlog-follow"))
    assert line.startswith("* * * * * root { flock -n /run/lock/crmops-binlog-follow.lock ")
    assert "binlog follow; }" in line and f">>{log} 2>&1" in line
    r = crmops("--config", str(my), "--json", "schedule", "install", "--cron", "--cron-file", str(cron),
               "--unit-dir", str(tmp_path / "units"), "--wal-stream")
    assert r.returncode == 3 and "--wal-stream streams PostgreSQL WAL" in r.stderr
    shown = json.loads(crmops("--json", "schedule", "show", "--unit-dir", str(tmp_path / "units"), "--cron-file",
                              str(cron)).stdout)["jobs"]
    follow = next(j for j in shown if j["job"] == "binlog-follow")
    assert follow["kind"] == "cron" and follow["when"] == "* * * * *" and follow["service"] is True
    assert "binlog follow" in follow["command"] and follow["next"] is None
    # the line itself, as cron's sh runs it (the lock moved into this test's folder): the first start runs,
    # the next minute's start finds the lock held and leaves at once, and the lock's holders stop on SIGTERM
    run = line.split(" root ", 1)[1].rsplit(" # ", 1)[0].replace("/run/lock/", f"{tmp_path}/")
    header = dict(ln.split("=", 1) for ln in cron.read_text().splitlines()[1:6])
    env = {**os.environ, **header}
    first = subprocess.Popen(["sh", "-c", run], env=env)
    try:
        lock = tmp_path / "crmops-binlog-follow.lock"
        deadline = time.monotonic() + 30
        while not (log.exists() and "does not answer" in log.read_text()):  # its first round ran
            assert time.monotonic() < deadline and first.poll() is None, "the first start did not run"
            time.sleep(0.2)
        second = subprocess.run(["sh", "-c", run], env=env, timeout=30)
        assert second.returncode != 0 and first.poll() is None  # flock -n: one streamer at a time
        subprocess.run(["fuser", "-k", "-TERM", str(lock)], capture_output=True, timeout=30)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    r = crmops("--json", "schedule", "remove", "--unit-dir", str(tmp_path / "units"), "--cron-file", str(cron))
    out = json.loads(r.stdout)
    assert out["removed"] == [str(cron)] and not cron.exists()
    # cron cannot stop what it started: the one command that does (the processes holding the lock) is named
    assert out["to_run"] == ["fuser -k -TERM /run/lock/crmops-binlog-follow.lock"]
