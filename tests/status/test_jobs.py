"""The job lock and the run record: overlapping runs wait or fail loudly; a SIGTERM (a timeout) is recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from crmops.config import load_config
from crmops.democrm.load import create
from crmops.status.jobs import JobRun
from tests.receivers import http_receiver


def setup(tmp_path: Path, hook: str) -> tuple[Path, dict[str, str]]:
    db = f"sqlite:///{tmp_path / 'crm.db'}"
    create(db, size="small")
    cfg = {"database": {"url": db}, "repository": {"url": f"file://{tmp_path / 'repo'}", "chunk_avg_kib": 256},
           "encryption": {"passphrase": "${TEST_PASSPHRASE}"}, "state_dir": str(tmp_path / "state"),
           "notify": {"attempts": 1, "webhooks": [{"kind": "generic", "url": hook}]}}
    config = tmp_path / "crmops.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["TEST_PASSPHRASE"] = "job lock passphrase"
    r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "repo", "init"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return config, env


def hold(config: Path, env: dict[str, str], command: str) -> JobRun:
    """This process holds the job lock, as a running `crmops <command>` would."""
    os.environ["TEST_PASSPHRASE"] = env["TEST_PASSPHRASE"]
    holder = JobRun(command)
    holder.acquire(load_config(config))
    return holder


def records(tmp_path: Path) -> list[dict]:
    return [json.loads(ln) for ln in (tmp_path / "state" / "runs.jsonl").read_text().splitlines()]


def test_a_job_waits_for_the_running_one_or_fails_with_27(tmp_path: Path) -> None:
    with http_receiver() as rec:
        config, env = setup(tmp_path, f"{rec.url}/hook")
        holder = hold(config, env, "drill")
        cmd = [sys.executable, "-m", "crmops", "--config", str(config), "backup"]
        r = subprocess.run(cmd, env={**env, "CRMOPS_JOB_LOCK_WAIT": "1"}, capture_output=True, text=True, timeout=60)
        assert r.returncode == 27 and r.stderr.count("\n") == 1
        assert f"crmops drill (pid {os.getpid()}" in r.stderr and "is still running" in r.stderr
        (failed,) = records(tmp_path)
        assert failed["exit_code"] == 27 and "is still running" in failed["error"]
        assert json.loads(rec.to("/hook")[0].body)["error"] == failed["error"]
        # released while the next one waits: it runs
        threading.Timer(1.0, holder.lock_file.close).start()  # type: ignore[union-attr]
        r = subprocess.run(cmd, env={**env, "CRMOPS_JOB_LOCK_WAIT": "30"}, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert [x["result"] for x in records(tmp_path)] == ["failure", "success"]


def test_a_job_stopped_by_sigterm_is_recorded_and_notified(tmp_path: Path) -> None:
    with http_receiver() as rec:
        config, env = setup(tmp_path, f"{rec.url}/hook")
        holder = hold(config, env, "backup")
        proc = subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(config), "--log-format", "json",
                                 "check"], env={**env, "CRMOPS_JOB_LOCK_WAIT": "60"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lock = str(tmp_path / "state" / "jobs.lock")
        deadline = time.monotonic() + 30
        # it is waiting once it has the lock file open (the signal handler is installed before)
        while time.monotonic() < deadline and proc.poll() is None:
            fds = Path(f"/proc/{proc.pid}/fd")
            try:
                if any(os.readlink(fd) == lock for fd in fds.iterdir()):
                    break
            except OSError:
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # what systemd's TimeoutStartSec or cron's timeout sends
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        (stopped,) = records(tmp_path)
        assert stopped["command"] == "check" and stopped["exit_code"] == 130
        assert stopped["error"].startswith("stopped by SIGTERM (a timeout or shutdown)")
        assert err.splitlines()[-1].startswith("crmops: error: stopped by SIGTERM")
        event = json.loads(rec.to("/hook")[0].body)
        assert event["ok"] is False and event["run_id"] == stopped["run_id"] and event["command"] == "check"
        holder.lock_file.close()  # type: ignore[union-attr]
