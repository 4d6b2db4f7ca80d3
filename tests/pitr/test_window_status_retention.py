"""The recoverable window seen by status, check, the metrics and retention; a gap in the archive."""

from __future__ import annotations

import yaml

from tests.pitr.conftest import Cluster, result_of


def _first(stdout: str) -> dict:  # type: ignore[type-arg]
    """The status document (a red status is inside the error envelope)."""
    return result_of(stdout)


def test_gap_status_metrics_and_retention(cluster: Cluster) -> None:
    cfg = yaml.safe_load(cluster.config.read_text())
    cfg["notify"] = {"metrics_file": str(cluster.base / "metrics.prom")}
    cfg["retention"] = {"pitr_days": 0}
    cluster.config.write_text(yaml.safe_dump(cfg))
    cluster.sql("CREATE TABLE t (id int)")
    old = cluster.crmops_json("backup", "--physical")
    cluster.sql("INSERT INTO t SELECT generate_series(1, 1000)")
    middle = cluster.switch_and_wait()
    cluster.switch_and_wait()
    new = cluster.crmops_json("backup", "--physical")

    status = _first(cluster.crmops("status", check=False).stdout)
    (w,) = status["pitr"]
    assert w["start"] == old["stop_time"] and w["gap"] is None and w["archive_lag_seconds"] < 120
    verdict = next(v for v in status["verdicts"] if v["name"] == "wal archive")
    assert verdict["level"] == "green" and "recoverable from" in verdict["summary"]

    # a segment between the two base backups disappears: check and status name it
    sysid = old["system_id"]
    (cluster.repo / "wal" / sysid / middle[:8] / middle).unlink()
    bad = cluster.crmops("check", check=False)
    assert bad.returncode == 26 and f"WAL segment {middle} is missing" in bad.stderr, bad.stderr
    assert old["snapshot_id"] in bad.stderr
    status = _first(cluster.crmops("status", check=False).stdout)
    verdict = next(v for v in status["verdicts"] if v["name"] == "wal archive")
    assert verdict["level"] == "red" and middle in verdict["summary"]
    assert status["pitr"][0]["start"] == new["stop_time"]  # the newer base backup still has a window

    # the metrics file (written when a job ends) exports the lag and the window
    metrics = (cluster.base / "metrics.prom").read_text()
    assert "crmops_archive_lag_seconds " in metrics and "crmops_pitr_window_start_timestamp " in metrics

    # retention with pitr_days=0 keeps the newest base backup and the WAL from its start on
    dry = cluster.crmops_json("forget", "--dry-run")
    assert old["snapshot_id"] in dry["forget"] and new["snapshot_id"] in dry["keep"]
    assert dry["pitr"]["wal_files_deleted"] >= 1
    assert dry["pitr"]["window_start_after"][sysid] == new["stop_time"]
    cluster.crmops_json("forget", "--prune")
    segments = {p.name for p in (cluster.repo / "wal" / sysid / "00000001").iterdir()}
    start_segment = min(s for s in segments if len(s) == 24)
    assert start_segment >= middle
    ok = cluster.crmops_json("check")
    assert ok["ok"] and ok["wal"][0]["gap"] is None
