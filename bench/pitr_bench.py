"""Point-in-time recovery on the `medium` demo CRM: what the WAL archive costs, and how fast a
physical restore is beside pg_restore of a logical snapshot.

Runs its own PostgreSQL 15 cluster (as tests/pitr do: the shared server must keep its
settings), archiving through `crmops wal push`. Prints one JSON document.

    PYTHONPATH=. .venv/bin/python -m bench.pitr_bench [--size medium] [--rewrites 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.pitr.conftest import Cluster


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="medium")
    ap.add_argument("--rewrites", type=int, default=2, help="full-table UPDATEs of activities, to make more WAL")
    ap.add_argument("--sample-pushes", type=int, default=12)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="crmops-pitr-bench-", dir="/tmp"))
    base.chmod(0o755)
    c = Cluster(base)
    out: dict[str, object] = {"size": args.size}
    try:
        c.init()
        c.start()
        from crmops.democrm.load import create

        lsn0 = c.sql("SELECT pg_current_wal_lsn()")[0][0]
        t0 = time.monotonic()
        create(c.url, size=args.size)
        for _ in range(args.rewrites):
            c.sql("UPDATE activities SET subject = subject")
        out["load_seconds"] = round(time.monotonic() - t0, 1)
        wal_bytes = c.sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", lsn0)[0][0]
        out["wal_generated_mb"] = round(float(wal_bytes) / 1e6, 1)
        out["database_mb"] = round(c.sql("SELECT pg_database_size('postgres')")[0][0] / 1e6, 1)
        c.switch_and_wait(timeout=600)
        sysid = c.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
        stored = sum(p.stat().st_size for p in (c.repo / "wal" / sysid).rglob("*") if p.is_file())
        segs = [p for p in (c.repo / "wal" / sysid / "00000001").iterdir() if len(p.name) == 24]
        out["segments_archived"] = len(segs)
        out["archive_stored_mb"] = round(stored / 1e6, 1)
        out["archive_stored_per_gb_wal_mb"] = round(stored / (len(segs) * 16 * 1024 * 1024) * 1000, 1)

        # CPU of `crmops wal push` per segment (start-up, key derivation, zstd, AES-GCM, fsync):
        # real segments pushed again into a second repository, as the archiver would
        sample = base / "sample"
        sample.mkdir()
        for p in sorted(segs)[-args.sample_pushes:]:
            c.crmops("wal", "fetch", p.name, str(sample / p.name), "--system-id", sysid)
        other = base / "other.yaml"
        cfg = c.config.read_text().replace(str(c.repo), str(base / "repo2"))
        other.write_text(cfg)
        subprocess.run([sys.executable, "-m", "crmops", "--config", str(other), "repo", "init"], env=c.env(),
                       check=True, capture_output=True)
        cpu0, wall0 = _cpu_children(), time.monotonic()
        for p in sorted(sample.iterdir()):
            subprocess.run([sys.executable, "-m", "crmops", "--config", str(other), "--quiet", "wal", "push", str(p),
                            "--system-id", sysid], env=c.env(), check=True)
        n = len(list(sample.iterdir()))
        cpu, wall = _cpu_children() - cpu0, time.monotonic() - wall0
        out["push_cpu_seconds_per_segment"] = round(cpu / n, 3)
        out["push_wall_seconds_per_segment"] = round(wall / n, 3)
        out["archive_cpu_seconds_per_gb_wal"] = round(cpu / n * 1024 / 16, 1)

        # physical: base backup, then recover to now in a sandbox (extract + replay + promote)
        t0 = time.monotonic()
        phys = c.crmops_json("backup", "--physical")
        out["base_backup_seconds"] = round(time.monotonic() - t0, 1)
        out["base_backup_mb"] = round(phys["bytes_read"] / 1e6, 1)
        c.switch_and_wait()
        now = datetime.now(UTC).isoformat(sep=" ")
        time.sleep(1)
        c.switch_and_wait()
        t0 = time.monotonic()
        r = c.crmops_json("restore", "--at", now, "--sandbox")
        out["physical_restore_seconds"] = round(time.monotonic() - t0, 1)
        out["physical_replay_seconds"] = r.get("replay_seconds")

        # logical: crmops backup, then restore into an empty database on the same server
        logical = c.crmops_json("backup")
        c.sql("CREATE DATABASE target")
        t0 = time.monotonic()
        c.crmops_json("restore", logical["snapshot_id"], "--to", c.url.rsplit("/", 1)[0] + "/target")
        out["logical_restore_seconds"] = round(time.monotonic() - t0, 1)
        out["physical_vs_logical_restore"] = round(out["physical_restore_seconds"] / out["logical_restore_seconds"], 2)
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
