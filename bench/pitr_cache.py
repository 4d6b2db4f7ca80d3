"""A PostgreSQL 15 data directory holding the demo CRM, built once and copied for each benchmark run.

Building `large` (3.7 GB, millions of rows generated in Python) took 22.5 minutes on a busy
2-core machine, longer than all the measurements, so the loaded cluster is kept, cleanly shut
down, under $CRMOPS_BENCH_CACHE (default /var/tmp/crmops-bench), keyed by size and seed.
A run copies it into its own folder, so the copy's WAL and archive are the run's alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.pitr.conftest import PG_BIN, Cluster, as_postgres

CACHE = Path(os.environ.get("CRMOPS_BENCH_CACHE", "/var/tmp/crmops-bench"))


def template_dir(size: str) -> Path:
    return CACHE / f"pg15-democrm-{size}-seed1"


def build_template(size: str) -> dict[str, object]:
    """Load the demo CRM into a fresh cluster without archiving, shut it down, keep its data directory."""
    from crmops.democrm.load import create

    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"building-{size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    work.chmod(0o755)
    c = Cluster(work)
    c.init()
    with open(c.data / "postgresql.auto.conf", "a") as f:
        f.write("archive_mode = off\n")  # later lines win: the build is not what is measured
    c.start()
    try:
        t0 = time.monotonic()
        r = create(c.url, size=size)
        meta = {"size": size, "build_seconds": round(time.monotonic() - t0, 1), "database_mb": r.database_mb,
                "rows": r.rows}
    finally:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(c.data), "-m", "fast", "-w", "stop"], capture_output=True)
    (c.data / "postgresql.auto.conf").unlink()
    dest = template_dir(size)
    shutil.rmtree(dest, ignore_errors=True)
    (c.data).rename(dest)
    (CACHE / f"{dest.name}.json").write_text(json.dumps(meta))
    shutil.rmtree(work, ignore_errors=True)
    return meta


def load_into(c: Cluster, size: str) -> dict[str, object]:
    """Replace the initdb'd data directory of c (before its start) with a copy of the template,
    keeping c's own settings (port, socket, archive_command); builds the template first if absent."""
    dest = template_dir(size)
    meta_file = CACHE / f"{dest.name}.json"
    built_now = False
    if not (meta_file.exists() and (dest / "PG_VERSION").exists()):
        build_template(size)
        built_now = True
    meta = json.loads(meta_file.read_text())
    settings = (c.data / "postgresql.auto.conf").read_text()
    shutil.rmtree(c.data)
    t0 = time.monotonic()
    subprocess.run(["cp", "-a", str(dest), str(c.data)], check=True)
    (c.data / "postgresql.auto.conf").write_text(settings)
    shutil.chown(c.data / "postgresql.auto.conf", "postgres", "postgres")
    meta["copy_seconds"] = round(time.monotonic() - t0, 1)
    meta["built_in_this_run"] = built_now
    return meta


if __name__ == "__main__":
    import sys

    print(json.dumps(build_template(sys.argv[1] if len(sys.argv) > 1 else "large")))
