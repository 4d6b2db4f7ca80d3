"""The runner with real shell steps: order, rollback in reverse, signals, crashes, resume, journal.

No database work happens in these playbooks (the CRM is a small SQLite demo, only read for
the row-count baseline), so they run in seconds and exercise every path of the runner.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmops.democrm.load import create
from crmops.journal import Journal
from tests.verify.verify_helpers import first_json

LOG = "events.log"


@pytest.fixture
def bed(tmp_path: Path) -> Path:
    """A config with a small SQLite demo CRM and a state directory."""
    create(f"sqlite:///{tmp_path / 'crm.db'}", size="small")
    (tmp_path / "crmops.yaml").write_text(yaml.safe_dump({
        "database": {"url": f"sqlite:///{tmp_path / 'crm.db'}"}, "state_dir": str(tmp_path / "state"),
        "repository": {"url": f"file://{tmp_path / 'repo'}"}, "encryption": {"passphrase": "${TEST_PASSPHRASE}"}}))
    return tmp_path


def _note(word: str) -> dict[str, Any]:
    return {"type": "shell", "command": f"echo {word} >> {LOG}"}


def playbook(bed: Path, *, b_extra: list[dict[str, Any]] | None = None, c_steps: list[dict[str, Any]] | None = None,
             **top: Any) -> Path:
    doc = {"name": "shell only", "from_version": "1", "to_version": "2", "vars": {"who": "b"},
           "post_checks": {"drift": False},
           "stages": [
               {"name": "a", "steps": [_note("a")], "rollback": [_note("undo-a")]},
               {"name": "b", "steps": [{"id": "b1", "type": "shell", "command": "echo {{ vars.who }} >> " + LOG},
                                       *(b_extra or [])],
                "rollback": [{"type": "shell", "command": "echo undo-{{ steps.b1.exit_code }} >> " + LOG}]},
               {"name": "c", "steps": c_steps or [_note("c")], "rollback": [_note("undo-c")]},
           ], **top}
    path = bed / "pb.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def crmops(bed: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    full.update({"TEST_PASSPHRASE": "runner test passphrase", **(env or {})})
    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(bed / "crmops.yaml"), *args],
                          capture_output=True, text=True, cwd=bed, env=full, timeout=timeout)


def spawn(bed: Path, *args: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    full["TEST_PASSPHRASE"] = "runner test passphrase"
    return subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(bed / "crmops.yaml"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=bed, env=full)


def events(bed: Path) -> list[str]:
    return (bed / LOG).read_text().split()


def journals(bed: Path) -> list[Journal]:
    return [Journal(p) for p in sorted((bed / "state" / "upgrades").glob("*.jsonl"))]


def records(bed: Path) -> list[dict[str, Any]]:
    (j,) = journals(bed)
    assert j.verify() > 0  # the hash chain holds
    return list(j.records())


def wait_for_step(bed: Path, step: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for j in journals(bed):
            if any(r["event"] == "step_start" and r.get("step") == step for r in j.records()):
                return
        time.sleep(0.05)
    pytest.fail(f"step {step} never started")


def test_success_journals_every_step_between_start_and_end(bed: Path) -> None:
    r = crmops(bed, "--json", "upgrade", str(playbook(bed)))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["result"] == "success" and [s["step"] for s in report["steps"]] == ["a-1", "b1", "c-1"]
    assert events(bed) == ["a", "b", "c"]
    recs = records(bed)
    assert recs[0]["event"] == "start" and recs[-1] == {**recs[-1], "event": "end", "result": "success"}
    assert {k: recs[0][k] for k in ("playbook", "from_version", "to_version", "dry_run")} == {
        "playbook": str(bed / "pb.yaml"), "from_version": "1", "to_version": "2", "dry_run": False}
    assert recs[0]["run_id"] == report["run_id"]
    ends = [x for x in recs if x["event"] == "step_end"]
    assert all(x["ok"] and x["seconds"] >= 0 and x["summary"].startswith("exit 0") for x in ends)
    hist = json.loads(crmops(bed, "--json", "upgrade", "history").stdout)
    assert [(h["run_id"], h["result"]) for h in hist] == [(report["run_id"], "success")]


def test_failure_rolls_back_every_started_stage_newest_first(bed: Path) -> None:
    pb = playbook(bed, c_steps=[_note("c"), {"type": "shell", "command": "echo boom >&2; exit 3"}])
    r = crmops(bed, "upgrade", str(pb))
    assert r.returncode == 50, r.stdout + r.stderr
    assert "c-2 failed (exit code 3, expected 0; last output: boom); rolled back" in r.stderr
    assert events(bed) == ["a", "b", "c", "undo-c", "undo-0", "undo-a"]
    recs = records(bed)
    assert [x["stage"] for x in recs if x["event"] == "stage_rolled_back"] == ["c", "b", "a"]
    assert recs[-1]["event"] == "end" and recs[-1]["result"] == "rolled-back"
    fail = next(x for x in recs if x["event"] == "failure")
    assert fail["step"] == "c-2" and "exit code 3" in fail["error"]


def test_retries_and_timeouts_are_per_step(bed: Path) -> None:
    flaky = {"type": "shell", "command": "n=$(cat n 2>/dev/null || echo 0); echo $((n+1)) > n; [ $n -ge 2 ]",
             "retries": 2, "retry_delay": 0}
    slow = {"type": "shell", "command": "sleep 20", "timeout": 1}
    started = time.monotonic()
    r = crmops(bed, "--json", "upgrade", str(playbook(bed, b_extra=[flaky], c_steps=[slow])))
    assert r.returncode == 50 and time.monotonic() - started < 15
    steps = {s["step"]: s for s in first_json(r.stdout)["steps"]}
    assert steps["b-2"]["ok"] and (bed / "n").read_text().strip() == "3"
    assert steps["c-1"]["ok"] is False and steps["c-1"]["error"].startswith("timed out after 1s")
    end = [x for x in records(bed) if x["event"] == "step_end" and x["step"] == "b-2"][0]
    assert end["attempts"] == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_signal_mid_step_rolls_back_then_exits_130(bed: Path, sig: int) -> None:
    proc = spawn(bed, "upgrade", str(playbook(bed, b_extra=[{"type": "shell", "command": "sleep 60"}])))
    wait_for_step(bed, "b-2")
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert time.monotonic() - started < 20
    assert events(bed) == ["a", "b", "undo-0", "undo-a"]  # c never started, so it is not undone
    recs = records(bed)
    assert any(x["event"] == "interrupted" for x in recs)
    assert recs[-1]["event"] == "end" and recs[-1]["result"] == "rolled-back"


def test_a_crash_blocks_new_runs_until_resumed(bed: Path) -> None:
    gate = {"type": "shell", "command": "[ -f go ] || sleep 60"}
    pb = playbook(bed, b_extra=[gate])
    proc = spawn(bed, "upgrade", str(pb))
    wait_for_step(bed, "b-2")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    refused = crmops(bed, "upgrade", str(pb))
    assert refused.returncode == 51 and "did not finish" in refused.stderr and "--resume" in refused.stderr
    (bed / "go").touch()
    r = crmops(bed, "--json", "upgrade", "--resume")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "success"
    assert events(bed) == ["a", "b", "c"]  # a and b1 ended before the crash: not repeated
    recs = records(bed)
    assert [x["event"] for x in recs].count("start") == 1 and recs[-1]["result"] == "success"
    assert any(x["event"] == "resume" and x["interrupted"] == ["b-2"] for x in recs)


def test_rollback_after_a_crash_undoes_what_the_journal_says_ran(bed: Path) -> None:
    pb = playbook(bed, b_extra=[{"type": "shell", "command": "sleep 60"}])
    proc = spawn(bed, "upgrade", str(pb))
    wait_for_step(bed, "b-2")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    r = crmops(bed, "--json", "upgrade", "--rollback")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "rolled-back"
    assert events(bed) == ["a", "b", "undo-0", "undo-a"]
    again = crmops(bed, "upgrade", "--rollback")
    assert again.returncode == 51 and "no unfinished upgrade" in again.stderr


def test_window_secrets_and_lock(bed: Path) -> None:
    today = time.strftime("%a", time.gmtime()).lower()[:3]
    other = [d for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun") if d != today]
    secret = {"type": "shell", "command": "echo token=$TOKEN >> " + LOG, "env": {"TOKEN": "${SECRET_TOKEN}"}}
    pb = playbook(bed, b_extra=[secret], window={"days": other, "timezone": "UTC"})
    r = crmops(bed, "upgrade", str(pb), env={"SECRET_TOKEN": "s3cr3t-value"})
    assert r.returncode == 51 and "outside the window" in r.stderr
    assert not (bed / LOG).exists()
    r = crmops(bed, "upgrade", str(pb), "--ignore-window", env={"SECRET_TOKEN": "s3cr3t-value"})
    assert r.returncode == 0, r.stderr
    assert "token=s3cr3t-value" in events(bed)  # the step got the value …
    text = journals(bed)[0].path.read_text()
    assert "s3cr3t-value" not in text and "${SECRET_TOKEN}" in text  # … the journal never did
    assert "s3cr3t-value" not in r.stdout + r.stderr


def _hop(bed: Path, name: str, frm: str, to: str, stages: list[dict[str, Any]], **top: Any) -> Path:
    path = bed / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "from_version": frm, "to_version": to, "stages": stages,
                                    "post_checks": {"drift": False}, **top}, sort_keys=False))
    return path


@pytest.mark.parametrize("on_failure", ["rollback_to_checkpoint", "rollback_to_start"])
def test_a_chain_checkpoints_each_hop_and_rolls_back_as_the_playbook_says(bed: Path, on_failure: str) -> None:
    assert crmops(bed, "repo", "init").returncode == 0
    first = _hop(bed, "one", "1", "1.5", [{"name": "h1", "steps": [_note("h1")], "rollback": [_note("undo-h1")]}])
    second = _hop(bed, "two", "1.5", "2", [
        {"name": "h2", "steps": [_note("h2")], "rollback": [_note("undo-h2")]},
        {"name": "h2b", "steps": [{"type": "shell", "command": "exit 1"}], "rollback": [_note("undo-h2b")]},
    ], on_failure=on_failure)
    r = crmops(bed, "--json", "upgrade", str(first), str(second))
    assert r.returncode == 50, r.stderr
    recs = records(bed)
    (cp,) = [x for x in recs if x["event"] == "checkpoint"]
    assert cp["stage"] == "h1" and cp["version"] == "1.5" and cp["snapshot_id"]
    snaps = json.loads(crmops(bed, "--json", "snapshots").stdout)
    tags = next(s["tags"] for s in snaps if s["id"] == cp["snapshot_id"])
    assert "checkpoint" in tags and "version:1.5" in tags
    if on_failure == "rollback_to_checkpoint":
        assert events(bed) == ["h1", "h2", "undo-h2b", "undo-h2"]  # back to the good hop 1.5, not further
        assert recs[-1]["version"] == "1.5"
    else:
        assert events(bed) == ["h1", "h2", "undo-h2b", "undo-h2", "undo-h1"]
        assert recs[-1]["version"] == "1"
    assert recs[-1]["result"] == "rolled-back" and recs[0]["playbooks"] == [str(first), str(second)]


def test_the_rehearsed_estimate_must_fit_the_window(bed: Path) -> None:
    """A SQLite CRM rehearses without Docker: the plan's estimate (2 h) against a 70-minute window."""
    assert crmops(bed, "repo", "init").returncode == 0 and crmops(bed, "backup").returncode == 0
    # the window opened ten minutes ago and closes in an hour
    start, end = (time.strftime("%H:%M", time.gmtime(time.time() + d)) for d in (-600, 3600))
    long = {"type": "shell", "command": "echo long >> " + LOG, "expected_seconds": 7200}
    check = {"id": "count", "type": "sql", "sql": "SELECT count(*) FROM contacts", "expect": 600}
    pb = playbook(bed, b_extra=[long, check], window={"start": start, "end": end, "timezone": "UTC"})
    before = (bed / "crm.db").read_bytes()
    dry = crmops(bed, "--json", "upgrade", str(pb), "--dry-run")
    assert dry.returncode == 51, dry.stderr
    assert "does NOT fit" in dry.stderr
    report = first_json(dry.stdout)
    assert report["estimated_downtime_s"] >= 7200 and report["window"]["fits"] is False
    count = next(p for p in report["plan"] if p["step"] == "count")
    assert count["mode"] == "rehearsed" and count["ok"] and count["measured"]
    assert {f["step"] for f in report["fidelity"] if f["type"] == "shell"} == {
        "a-1", "b1", "b-2", "c-1", "a-rollback-1", "b-rollback-1", "c-rollback-1"}
    assert not (bed / LOG).exists() and (bed / "crm.db").read_bytes() == before  # nothing ran in production
    (dry_journal,) = journals(bed)
    end = list(dry_journal.records())[-1]
    assert end["result"] == "failed" and "would refuse" in end["error"]  # history shows the blocker
    refused = crmops(bed, "upgrade", str(pb))
    assert refused.returncode == 51 and "does not fit" in refused.stderr
    r = crmops(bed, "--json", "upgrade", str(pb), "--ignore-window")
    assert r.returncode == 0, r.stderr
    real = next(recs for recs in (list(j.records()) for j in journals(bed)) if not recs[0]["dry_run"])
    assert real[0]["rehearsal"] == report["run_id"] and real[0]["estimated_downtime_s"] >= 7200
    assert real[0]["window"].startswith("ignored: ") and real[-1]["result"] == "success"


def test_a_pause_needs_a_person_or_yes(bed: Path) -> None:
    pause = {"id": "ask", "type": "pause", "message": "does the CRM look right?"}
    pb = playbook(bed, b_extra=[pause])
    r = crmops(bed, "upgrade", str(pb))  # no terminal, no --yes: nobody can confirm, so it stops and undoes
    assert r.returncode == 50 and "needs a person at a terminal (or --yes)" in r.stderr
    assert events(bed) == ["a", "b", "undo-0", "undo-a"]
    (bed / LOG).unlink()
    r = crmops(bed, "--json", "upgrade", str(pb), "--yes")
    assert r.returncode == 0, r.stderr
    assert next(s for s in json.loads(r.stdout)["steps"] if s["step"] == "ask")["summary"] == \
        "confirmed in advance by --yes"


def test_a_run_killed_while_rolling_back_can_only_finish_the_rollback(bed: Path) -> None:
    slow_undo = {"type": "shell", "command": "echo undo-c >> " + LOG + "; [ -f go ] || sleep 60"}
    pb = playbook(bed, c_steps=[{"type": "shell", "command": "exit 1"}])
    doc = yaml.safe_load(pb.read_text())
    doc["stages"][2]["rollback"] = [slow_undo]
    pb.write_text(yaml.safe_dump(doc, sort_keys=False))
    original = pb.read_bytes()
    proc = spawn(bed, "upgrade", str(pb))
    wait_for_step(bed, "c-rollback-1")
    deadline = time.monotonic() + 30  # the journal says the step started before its shell runs: wait for it
    while "undo-c" not in events(bed) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    r = crmops(bed, "upgrade", "--resume")
    assert r.returncode == 51 and "stopped while rolling back" in r.stderr
    pb.write_text(pb.read_text().replace("sleep 60", "sleep 1"))
    r = crmops(bed, "upgrade", "--rollback")
    assert r.returncode == 51 and "changed since" in r.stderr  # the journal pins the playbook's digest
    pb.write_bytes(original)
    (bed / "go").touch()
    r = crmops(bed, "--json", "upgrade", "--rollback")
    assert r.returncode == 0, r.stderr
    assert events(bed) == ["a", "b", "undo-c", "undo-c", "undo-0", "undo-a"]  # c's undo ran again, then the rest


def test_one_upgrade_at_a_time(bed: Path) -> None:
    pb = playbook(bed, b_extra=[{"type": "shell", "command": "while [ ! -f go ]; do sleep 0.1; done"}])
    proc = spawn(bed, "upgrade", str(pb))
    try:
        wait_for_step(bed, "b-2")
        for args in (("upgrade", str(pb)), ("upgrade", "--rollback"), ("upgrade", "--resume")):
            r = crmops(bed, *args)
            assert r.returncode == 27 and f"another upgrade is running (pid {proc.pid})" in r.stderr, r.stderr
        (bed / "go").touch()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events(bed) == ["a", "b", "c"]


def test_unrehearsed_steps_are_forecast_from_real_runs_not_guessed(bed: Path) -> None:
    """Issue 24 item 5: a shell step was counted 5 s and maintenance/http 1 s though they took under 0.1 s. Without
    history a step's time is "unknown" (and said so); after a real run, the dry run uses what the step took."""
    assert crmops(bed, "repo", "init").returncode == 0 and crmops(bed, "backup").returncode == 0
    pb = playbook(bed)
    first = first_json(crmops(bed, "--json", "upgrade", str(pb), "--dry-run").stdout)
    b1 = next(p for p in first["plan"] if p["step"] == "b1")
    assert b1["mode"] == "not rehearsed" and b1["basis"] == "unknown" and b1["seconds"] == 0.0, b1
    assert "b1" in first["unknown_steps"]
    human = crmops(bed, "upgrade", str(pb), "--dry-run", env={"COLUMNS": "80"}).stdout
    assert "unknown" in human and "5.00s" not in human, human
    real = crmops(bed, "--json", "upgrade", str(pb))
    assert real.returncode == 0, real.stderr
    took = next(r["seconds"] for recs in (list(j.records()) for j in journals(bed)) if not recs[0]["dry_run"]
                for r in recs if r["event"] == "step_end" and r["step"] == "b1")
    again = first_json(crmops(bed, "--json", "upgrade", str(pb), "--dry-run").stdout)
    b1 = next(p for p in again["plan"] if p["step"] == "b1")
    assert b1["basis"] == "median of 1 earlier real run" and b1["seconds"] == round(took, 3) < 1, b1
    assert "b1" not in again["unknown_steps"]


def test_a_real_run_without_a_rehearsal_forecasts_from_the_same_sources_as_the_dry_run(bed: Path) -> None:
    """Issue 24 item 5: the real run's window check counted fixed per-type guesses (a shell step 5 s, a backup
    30 s). Now: expected_seconds, else earlier real runs, else a timed probe of a step that only reads (a GET), else
    the database's size for a backup, else "unknown", counted 0 and named."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: list[str] = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert crmops(bed, "repo", "init").returncode == 0
        health = {"id": "health", "type": "http", "url": f"http://127.0.0.1:{server.server_port}/health"}
        doc = {"name": "forecast", "from_version": "1", "to_version": "2", "post_checks": {"drift": False},
               "stages": [{"name": "a", "steps": [
                   {"id": "on", "type": "maintenance", "mode": "on", "shell": {"command": f"echo on >> {LOG}"}},
                   {"id": "b1", "type": "shell", "command": f"echo b1 >> {LOG}"},
                   {"id": "long", "type": "shell", "command": "true", "expected_seconds": 3},
                   {"id": "dump", "type": "backup"}, health,
                   {"id": "off", "type": "maintenance", "mode": "off", "shell": {"command": f"echo off >> {LOG}"}}]}]}
        pb = bed / "forecast.yaml"
        pb.write_text(yaml.safe_dump(doc, sort_keys=False))
        runs = []
        for json_out in ([], ["--json"]):
            r = crmops(bed, *json_out, "upgrade", str(pb))
            assert r.returncode == 0, r.stderr
            runs.append((r, next(recs[0] for recs in (list(j.records()) for j in journals(bed)[len(runs):])
                                 if not recs[0]["dry_run"]), len(hits)))
        (first, start, hits_first), (second, again, hits_second) = runs
        basis = {e["step"]: e["basis"] for e in start["forecast"]}
        assert basis == {"on": "unknown", "b1": "unknown", "long": "the playbook's expected_seconds",
                         "dump": "the database's size at ~100 MB/s", "health": "a timed probe (it only reads)",
                         "off": "unknown"}, basis
        seconds = {e["step"]: e["seconds"] for e in start["forecast"]}
        assert seconds["on"] == seconds["b1"] == seconds["off"] == 0.0 and 0 < seconds["health"] < 2
        assert start["estimated_downtime_s"] == round(sum(seconds.values()), 2) < 3 + 2 + 2 + 1
        said = " ".join(first.stdout.split())
        assert "plus 3 step(s) of unknown duration (on, b1, off): run --dry-run to measure them" in said, said
        assert hits_first == 2  # the probe's GET, then the step's: nothing else reached production
        # the second run: every step that ran has a real run to go by, and nothing is probed any more
        basis = {e["step"]: e["basis"] for e in again["forecast"]}
        assert {basis[s] for s in ("on", "b1", "dump", "health", "off")} == {"median of 1 earlier real run"}, basis
        assert "unknown duration" not in second.stdout + second.stderr and hits_second == 3
    finally:
        server.shutdown()


def test_no_step_type_carries_a_fixed_guess() -> None:
    """What a step takes is measured or said to be unknown: no per-type constant is left to fall back on."""
    import re

    from crmops.playbooks import model

    root = Path(model.__file__).resolve().parents[1]
    steps = [c for c in vars(model).values() if isinstance(c, type) and issubclass(c, model.Step)]
    assert steps and not [c for c in steps if any("SECONDS" in name for name in vars(c))]
    guesses = [p for p in root.rglob("*.py") if re.search(r"TYPICAL_SECONDS|typical duration", p.read_text())]
    assert not guesses, guesses
