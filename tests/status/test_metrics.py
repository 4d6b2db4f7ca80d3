"""Prometheus metrics: the text format, naming conventions, atomic replacement, Pushgateway."""

from __future__ import annotations

import os
import re
from pathlib import Path

from crmops.status import metrics
from tests.receivers import http_receiver

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$')


def run(command: str, result: str, finished: float, **figures: object) -> dict:
    return {"run_id": f"r{int(finished)}", "command": command, "result": result, "finished": finished,
            "exit_code": 0 if result == "success" else 20, "duration_s": 12.5, "figures": figures}


HISTORY = [
    run("backup", "success", 1000.0, bytes_read=5_000_000, bytes_new=400_000, bytes_uploaded=400_000,
        dedup_ratio=12.5, repository_snapshots=3, repository_size_bytes=9_000_000),
    run("drill", "success", 2000.0, ok=True, restore_seconds=41.2, snapshot_age_hours=1.5),
    run("backup", "failure", 3000.0),
]


def parse(text: str) -> dict[str, list[tuple[str, float]]]:
    """A strict reading of the exposition format: HELP and TYPE once per metric, before its samples."""
    seen: dict[str, list[tuple[str, float]]] = {}
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in typed and kind in {"gauge", "counter"}
            typed[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, line
        assert m[1] in typed, f"{m[1]} has no TYPE line before it"
        seen.setdefault(m[1], []).append((m[2] or "", float(m[4])))
    return seen


def test_metrics_follow_prometheus_conventions_and_keep_the_last_success() -> None:
    text = metrics.render(HISTORY)
    assert text.endswith("\n")
    found = parse(text)
    for name, (kind, _) in metrics.METRICS.items():
        assert name.startswith("crmops_") and re.fullmatch(r"[a-z_]+", name)
        assert name.endswith("_total") == (kind == "counter")
    # the failed backup is the last run, but the last good one's figures and time stay
    assert found["crmops_last_run_success"] == [('{command="backup"}', 0.0), ('{command="drill"}', 1.0)]
    assert ('{command="backup"}', 1000.0) in found["crmops_last_success_timestamp_seconds"]
    assert ('{command="backup"}', 3000.0) in found["crmops_last_run_timestamp_seconds"]
    assert found["crmops_backup_new_bytes"] == [("", 400_000.0)]
    assert found["crmops_backup_dedup_ratio"] == [("", 12.5)]
    assert found["crmops_verify_success"] == [("", 1.0)]
    assert found["crmops_verify_restore_seconds"] == [("", 41.2)]
    assert found["crmops_verify_snapshot_age_seconds"] == [("", 5400.0)]
    assert found["crmops_repository_snapshots"] == [("", 3.0)]
    assert found["crmops_repository_size_bytes"] == [("", 9_000_000.0)]
    assert ('{command="backup",result="failure"}', 1.0) in found["crmops_runs_total"]
    assert '{command="backup",run_id="r3000",result="failure"}' in dict(found["crmops_last_run_info"])


def test_textfile_is_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "textfile" / "crmops.prom"
    metrics.write_textfile(target, "old 1\n")
    inode = target.stat().st_ino
    metrics.write_textfile(target, metrics.render(HISTORY))
    assert target.stat().st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert target.stat().st_mode & 0o777 == 0o644
    assert os.listdir(target.parent) == ["crmops.prom"]  # no temporary left behind
    parse(target.read_text())


def test_push_to_a_pushgateway() -> None:
    with http_receiver() as rec:
        metrics.push(f"{rec.url}/", metrics.render(HISTORY), timeout=3, attempts=2, instance="crm-host")
    (req,) = rec.requests
    assert req.method == "PUT" and req.path == "/metrics/job/crmops/instance/crm-host"
    assert req.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    parse(req.body.decode())
