"""Verify vs a bare restore: what proving a snapshot costs over restoring it by hand.

    .venv/bin/python bench/verify_bench.py --size large     # the issue's target size
    .venv/bin/python bench/verify_bench.py --size medium    # ~120 MB, a few minutes

Both sides start the same kind of container (the postgres:15 sandbox, same limits and
settings). The bare side is what an administrator's drill script does by hand: start a
container, `pg_restore -j 2` a `pg_dump -Fc` file into it, remove the container.
`crmops verify` does that from the encrypted repository and also fingerprints every
table, restores and hashes the attachments and runs the checks. Both timings include
removing the container: a drill is over when its container is gone, and leaving it out
of one side only would count 1.5-2 s of Docker's work against crmops alone.
`--rounds N` alternates the two N times (medians; both sides meet the same load).
Writes verify_* keys into bench/results.json, with the load average beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PASS, ROOT, bed_env, crmops, ensure_database, pg_env, timed, write_config  # noqa: E402

from crmops.config import VerifyConfig  # noqa: E402
from crmops.engines.postgres import PostgresEngine  # noqa: E402
from crmops.sandbox.docker import DockerSandbox  # noqa: E402


def bare_restore(dump: Path, server_version: str) -> tuple[float, float, float]:
    """(seconds to a ready container, seconds of pg_restore, seconds to remove it) into a sandbox-like container."""
    t0 = time.monotonic()
    with DockerSandbox(VerifyConfig(), "postgresql", server_version) as sb:
        ready = time.monotonic() - t0
        tool = PostgresEngine(sb.url)._tool("pg_restore")
        env = pg_env(sb.url.replace("postgresql://", "postgresql+psycopg://"))
        # the tool may run on the host or in a container of the server's version: its argv says how
        seconds, _ = timed(tool.argv(["--no-owner", "--no-acl", "--exit-on-error", "-j", "2", "-d",
                                      env["PGDATABASE"], str(dump)], mounts=[str(dump.parent)]), env=env)
        t1 = time.monotonic()
    return ready, seconds, time.monotonic() - t1


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_verify(config: Path, env: dict[str, str]) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of crmops and its children, the --json report) of one `crmops verify`."""
    cpu0, t0 = child_cpu(), time.monotonic()
    out = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", "verify"],
                         env=env, capture_output=True, text=True)
    wall, cpu = time.monotonic() - t0, child_cpu() - cpu0
    if out.returncode != 0:
        raise SystemExit(f"verify failed: {out.stderr}")
    return wall, cpu, json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default=os.environ.get("BENCH_SIZE", "large"),
                    choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--results", type=Path,
                    default=Path(os.environ.get("CRMOPS_BENCH_RESULTS") or ROOT / "bench" / "results.json"),
                    help="where the figures are merged in (a smoke run writes elsewhere)")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("VERIFY_BENCH_ROUNDS", "1")),
                    help="bare restore and verify alternated this many times; medians are kept")
    args = ap.parse_args()
    env = bed_env()
    url, meta = ensure_database(env["CRMOPS_TEST_PG_URL"], args.size)
    with tempfile.TemporaryDirectory(prefix="crmops-verify-bench-") as tmp:
        folder = Path(tmp)
        config = write_config(folder, url, f"file://{folder / 'repo'}")
        run_env = {**os.environ, "BENCH_PASSPHRASE": PASS}
        subprocess.run(crmops(config, "repo", "init"), env=run_env, check=True)
        subprocess.run(crmops(config, "backup"), env=run_env, check=True)
        dump = folder / "crm.pgc"
        pg_dump = PostgresEngine(url)._tool("pg_dump")
        with open(dump, "wb") as out_file:  # to stdout: a container's mounts are read-only
            subprocess.run(pg_dump.argv(["-Fc"]), env=pg_env(url), check=True, stdout=out_file)
        version = PostgresEngine(url).server_version()
        bare, verified, reports, loads = [], [], [], []
        for _ in range(args.rounds):  # alternating: both sides meet the same load
            loads.append(os.getloadavg()[0])
            bare.append(bare_restore(dump, version))
            wall, cpu, report = run_verify(config, run_env)
            verified.append((wall, cpu))
            reports.append(report)
    med = statistics.median
    bare_total = med(sum(b) for b in bare)
    verify_s = med(v[0] for v in verified)
    report = min(zip(verified, reports, strict=True), key=lambda vr: abs(vr[0][0] - verify_s))[1]  # the median run's
    steps = report["timeline"]
    removed = [b["at_s"] - a["at_s"] for a, b in zip(steps, steps[1:], strict=False) if b["step"] == "sandbox removed"]
    results = {
        "verify_size": args.size,
        "verify_db_size_mb": meta.get("database_mb"),
        "verify_rounds": args.rounds,
        "verify_s": round(verify_s, 2),
        "verify_cpu_s": round(med(v[1] for v in verified), 2),
        "verify_restore_s": report["restore_seconds"],
        "verify_sandbox_start_s": report["sandbox_start_seconds"],
        "verify_remove_s": round(removed[0], 2) if removed else None,
        "bare_restore_s": round(bare_total, 2),
        "bare_ready_s": round(med(b[0] for b in bare), 2),
        "bare_pg_restore_s": round(med(b[1] for b in bare), 2),
        "bare_remove_s": round(med(b[2] for b in bare), 2),
        "verify_vs_bare_restore": round(verify_s / bare_total, 2),
        "verify_load": round(med(loads), 1),
    }
    for a, b in zip(steps, steps[1:], strict=False):
        print(f"  {b['at_s'] - a['at_s']:7.1f} s  {b['step']}")
    for k, v in results.items():
        print(f"{k:26} {v}")
    path = args.results
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(results)
    path.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
