"""Prometheus metrics: the text format for node_exporter's textfile collector, or a Pushgateway.

The metrics are derived from the whole run history (state_dir/runs.jsonl), not from the
run that just ended, so the file always carries every series: a failed backup does not
erase the time of the last good one. The file is replaced atomically (write, fsync,
rename), as the textfile collector requires. The label is `command`, not `job`,
because Prometheus and the Pushgateway own `job`.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from crmops import __version__
from crmops.notify.http import request

VERIFY_COMMANDS = ("verify", "drill")

#: name -> (type, help); the order they are written in
METRICS: dict[str, tuple[str, str]] = {
    "crmops_last_run_timestamp_seconds": ("gauge", "When the command's last run ended (Unix time)."),
    "crmops_last_success_timestamp_seconds": ("gauge", "When the command last ended successfully (Unix time)."),
    "crmops_last_run_success": ("gauge", "1 if the command's last run succeeded, else 0."),
    "crmops_last_run_exit_code": ("gauge", "Exit code of the command's last run."),
    "crmops_last_run_duration_seconds": ("gauge", "Duration of the command's last run."),
    "crmops_last_run_info": ("gauge", "Run id and result of the command's last run (always 1)."),
    "crmops_runs_total": ("counter", "Runs recorded in the run history, by command and result."),
    "crmops_backup_read_bytes": ("gauge", "Bytes read (database dump and attachments) by the last good backup."),
    "crmops_backup_new_bytes": ("gauge", "Bytes the last good backup had to store after deduplication."),
    "crmops_backup_uploaded_bytes": ("gauge", "Bytes the last good backup uploaded."),
    "crmops_backup_dedup_ratio": ("gauge", "Bytes read per byte stored, last good backup."),
    "crmops_verify_success": ("gauge", "1 if the last verification (verify or drill) passed, else 0."),
    "crmops_verify_restore_seconds": ("gauge", "Restore time (RTO) measured by the last completed verification."),
    "crmops_verify_snapshot_age_seconds": ("gauge", "Age of the snapshot (RPO) when last verified."),
    "crmops_verify_last_timestamp_seconds": ("gauge", "When the last verification ended (Unix time)."),
    "crmops_repository_snapshots": ("gauge", "Snapshots in the repository, as last counted."),
    "crmops_repository_size_bytes": ("gauge", "Bytes stored in the repository, as last measured."),
    "crmops_build_info": ("gauge", "crmops version (always 1)."),
    "crmops_archive_lag_seconds": ("gauge", "How old the oldest write not yet archived can be, when last measured "
                                            "(RPO; 0 while the server is idle with everything archived)."),
    "crmops_archive_last_push_timestamp_seconds": ("gauge", "When the newest WAL segment or binary log was archived "
                                                            "(Unix time)."),
    "crmops_copy_lag_seconds": ("gauge", "How far the copy's newest snapshot lags the repository's, at the last copy."),
    "crmops_copy_archive_lag_seconds": ("gauge", "How far the copy's WAL/binlog archive lags the repository's, "
                                                 "at the last copy."),
    "crmops_copy_newest_snapshot_timestamp_seconds": ("gauge", "Time of the copy's newest snapshot (Unix time)."),
    "crmops_copy_success": ("gauge", "1 if the last copy run brought this copy everything, else 0."),
    "crmops_pitr_window_start_timestamp": ("gauge", "Oldest moment a point-in-time restore can reach (Unix time)."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float | int) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def samples(history: Iterable[dict[str, Any]]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every metric's samples, from the run records in order (oldest first)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in METRICS}
    last: dict[str, dict[str, Any]] = {}
    last_ok: dict[str, dict[str, Any]] = {}
    counts: dict[tuple[str, str], int] = {}
    last_verify: dict[str, Any] | None = None
    repo_figures: dict[str, Any] = {}
    pitr_figures: dict[str, Any] = {}
    copy_figures: dict[str, dict[str, Any]] = {}
    for run in history:
        cmd = run.get("command", "?")
        last[cmd] = run
        counts[(cmd, run.get("result", "?"))] = counts.get((cmd, run.get("result", "?")), 0) + 1
        figures = run.get("figures") or {}
        if run.get("result") == "success":
            last_ok[cmd] = run
        if cmd in VERIFY_COMMANDS:
            last_verify = run
        if "repository_snapshots" in figures:
            repo_figures = figures
        if "archive_last_push_timestamp" in figures:
            pitr_figures = figures
        for c in figures.get("copies") or [] if cmd == "copy" else []:
            copy_figures[c["name"]] = c
    for cmd, run in sorted(last.items()):
        lab = {"command": cmd}
        out["crmops_last_run_timestamp_seconds"].append((lab, run["finished"]))
        out["crmops_last_run_success"].append((lab, 1 if run.get("result") == "success" else 0))
        out["crmops_last_run_exit_code"].append((lab, run.get("exit_code", 1)))
        out["crmops_last_run_duration_seconds"].append((lab, run.get("duration_s", 0.0)))
        out["crmops_last_run_info"].append(({**lab, "run_id": run.get("run_id", ""),
                                             "result": run.get("result", "")}, 1))
        if cmd in last_ok:
            out["crmops_last_success_timestamp_seconds"].append((lab, last_ok[cmd]["finished"]))
    for (cmd, result), n in sorted(counts.items()):
        out["crmops_runs_total"].append(({"command": cmd, "result": result}, n))
    good = (last_ok.get("backup") or {}).get("figures") or {}
    for key, name in (("bytes_read", "read_bytes"), ("bytes_new", "new_bytes"),
                      ("bytes_uploaded", "uploaded_bytes"), ("dedup_ratio", "dedup_ratio")):
        if good.get(key) is not None:
            out[f"crmops_backup_{name}"].append(({}, good[key]))
    if last_verify is not None:
        f = last_verify.get("figures") or {}
        out["crmops_verify_success"].append(({}, 1 if last_verify.get("result") == "success" else 0))
        out["crmops_verify_last_timestamp_seconds"].append(({}, last_verify["finished"]))
        if f.get("restore_seconds") is not None:
            out["crmops_verify_restore_seconds"].append(({}, f["restore_seconds"]))
        if f.get("snapshot_age_hours") is not None:
            out["crmops_verify_snapshot_age_seconds"].append(({}, round(f["snapshot_age_hours"] * 3600, 1)))
    if repo_figures:
        out["crmops_repository_snapshots"].append(({}, repo_figures["repository_snapshots"]))
        out["crmops_repository_size_bytes"].append(({}, repo_figures["repository_size_bytes"]))
    for key, name in (("archive_lag_seconds", "crmops_archive_lag_seconds"),
                      ("archive_last_push_timestamp", "crmops_archive_last_push_timestamp_seconds"),
                      ("pitr_window_start_timestamp", "crmops_pitr_window_start_timestamp")):
        if pitr_figures.get(key) is not None:
            out[name].append(({}, pitr_figures[key]))
    for name, c in sorted(copy_figures.items()):
        lab = {"copy": name}
        out["crmops_copy_success"].append((lab, 1 if c.get("ok") else 0))
        for key, metric in (("lag_seconds", "crmops_copy_lag_seconds"),
                            ("archive_lag_seconds", "crmops_copy_archive_lag_seconds")):
            if c.get(key) is not None:
                out[metric].append((lab, c[key]))
        if c.get("newest_snapshot_time"):
            out["crmops_copy_newest_snapshot_timestamp_seconds"].append(
                (lab, round(datetime.fromisoformat(c["newest_snapshot_time"]).timestamp(), 3)))
    out["crmops_build_info"].append(({"version": __version__}, 1))
    return out


def render(history: Iterable[dict[str, Any]]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines = []
    for name, values in samples(history).items():
        if not values:
            continue
        kind, help_text = METRICS[name]
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in values:
            lab = ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}")
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Replace path atomically: the collector never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def push(url: str, text: str, *, timeout: float, attempts: int, instance: str | None = None) -> None:
    """PUT the metrics to a Pushgateway, grouped as job="crmops", instance=<host>."""
    target = f"{url.rstrip('/')}/metrics/job/crmops/instance/{instance or socket.gethostname()}"
    request("PUT", target, text.encode(), "text/plain; version=0.0.4; charset=utf-8", timeout=timeout,
            attempts=attempts)
