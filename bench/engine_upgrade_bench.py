"""Engine upgrade rehearsal: the dry run's estimate against the real run, PostgreSQL 13 -> 17.

    .venv/bin/python bench/engine_upgrade_bench.py --size medium
    .venv/bin/python bench/engine_upgrade_bench.py --size small --rounds 1   # a quick look
    .venv/bin/python bench/engine_upgrade_bench.py --method pg_upgrade       # one half only

The dry run's `engine_upgrade` step copies the database into a throwaway sandbox of the
target version (postgres:17, the verify sandbox's limits) and reports the copy's time for
the downtime forecast; the real run copies into the new server. Both read the same old
server, so this compares what the forecast promises with what production gets. Each round
does the estimate, then the real copy into a fresh empty database on a PostgreSQL 17
server container. The old and new servers are containers from scripts/images (postgres:13,
postgres:17); the old server keeps its data on tmpfs like the matrix tests', the new one
(the "real" side) on the container's disk with fsync on, as production has.

The pg_upgrade half: "production" is PostgreSQL 13 in crmops-pg-upgrade:13-17 (the matrix
tests' upgrade host, data on tmpfs). Per round and mode (link, copy; clone needs reflinks,
which tmpfs has not) the rehearsal upgrades the database's copy in a throwaway box of the
same image, then the real step upgrades production in place; the host's 13 cluster is then
put back from a pristine copy taken before the first round. Both times run from initdb of
the new cluster to the new server answering (pg_upgrade --check included).

Writes engine_upgrade_* keys into bench/results.json, leaving the other keys alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crmops.config import Config  # noqa: E402
from crmops.engine_upgrade.logical import rehearse, upgrade_logical  # noqa: E402
from tests.matrix.servers import BY_ID, UpgradeHost, run_server, run_upgrade_host  # noqa: E402

TOLERANCE = 0.25


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="medium",
                    choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--method", default="all", choices=["all", "logical", "pg_upgrade"])
    args = ap.parse_args()
    import docker

    client = docker.from_env(timeout=300)
    results: dict[str, object] = {}
    if args.method in ("all", "logical"):
        results.update(logical(client, args.size, args.rounds))
    if args.method in ("all", "pg_upgrade"):
        results.update(pg_upgrade(client, args.size, args.rounds))
    # a smoke run (tests/test_bench_smoke.py) writes elsewhere
    path = Path(os.environ.get("CRMOPS_BENCH_RESULTS") or ROOT / "bench" / "results.json")
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(results)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _build(url: str, size: str, label: str) -> int:
    import psycopg

    from crmops.democrm.load import create

    t0 = time.monotonic()
    create(url, size=size)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    print(f"demo CRM {size} on PostgreSQL 13 ({label}): {db_size / 1e6:.0f} MB, built in "
          f"{time.monotonic() - t0:.0f}s", flush=True)
    return int(db_size)


def _summary(key: str, size: int, rows: list[tuple[float, float]]) -> dict[str, object]:
    est_m = statistics.median(r[0] for r in rows)
    real_m = statistics.median(r[1] for r in rows)
    off = est_m / real_m - 1
    verdict = "within" if abs(off) <= TOLERANCE else "OUTSIDE"
    print(f"{key} median: estimate {est_m:.1f}s, real {real_m:.1f}s: {off:+.0%} ({verdict} {TOLERANCE:.0%})",
          flush=True)
    return {key: {"database_mb": round(size / 1e6), "estimate_s": round(est_m, 2), "real_s": round(real_m, 2),
                  "off": round(off, 3), "rounds": [[round(a, 2), round(b, 2)] for a, b in rows]}}


def logical(client: object, size_name: str, rounds: int) -> dict[str, object]:
    with run_server(client, BY_ID["pg13"]) as old, run_server(client, BY_ID["pg17"], durable=True) as new:
        url = old.create_database()
        size = _build(url, size_name, "logical")
        cfg = Config.model_validate({"database": {"url": url}, "repository": {"url": "file:///nonexistent"}})
        rows = []
        for i in range(rounds):
            est = rehearse(cfg, url, "17", smoke=[])
            real = upgrade_logical(cfg, url, new.create_database(), "17", smoke=[])
            assert not est["differences"] and not real["differences"] and not est["incompatibilities"]
            rows.append((est["seconds"], real["seconds"]))
            print(f"logical round {i + 1}: estimate {est['seconds']:.1f}s (dump {est['dump_seconds']:.1f}s + "
                  f"restore {est['restore_seconds']:.1f}s), real {real['seconds']:.1f}s: "
                  f"{est['seconds'] / real['seconds'] - 1:+.0%}", flush=True)
    return _summary(f"engine_upgrade_pg13_to_17_{size_name}", size, rows)


def _layout(host: UpgradeHost, mode: str) -> object:
    from crmops.engine_upgrade.pg_upgrade import Layout

    return Layout(old_datadir="/var/lib/postgresql/13/data", new_datadir="/var/lib/postgresql/17/data",
                  old_bindir="/usr/lib/postgresql/13/bin", new_bindir="/usr/lib/postgresql/17/bin",
                  exec_prefix=host.prefix(), mode=mode, stop_old=host.pg_ctl("13", "stop"),
                  start_old=host.pg_ctl("13", "start"), start_new=host.pg_ctl("17", "start"))


def _sh(host: UpgradeHost, script: str) -> None:
    r = host.exec("sh", "-c", script)
    assert r.returncode == 0, r.stderr


def pg_upgrade(client: object, size_name: str, rounds: int) -> dict[str, object]:
    from crmops.engine_upgrade import box
    from crmops.engine_upgrade import pg_upgrade as pgu
    from crmops.playbooks.steps import StepContext

    out: dict[str, object] = {}
    with run_upgrade_host(client) as host:
        url = host.server.create_database()
        size = _build(url, size_name, "pg_upgrade host")
        stop13, start13 = " ".join(host.pg_ctl("13", "stop")[5:]), host.pg_ctl("13", "start")[5:]
        _sh(host, f"{stop13} >/dev/null && cp -a /var/lib/postgresql/13/data /var/lib/postgresql/13-pristine")
        assert host.exec(*start13).returncode == 0
        cfg = Config.model_validate({"database": {"url": url}, "repository": {"url": "file:///nonexistent"}})
        ctx = StepContext("bench", url)
        for mode in ("link", "copy"):
            rows = []
            for i in range(rounds):
                est = box.rehearse(cfg, url, "17", {"mode": mode}, smoke=[], ctx=ctx, timeout=3600)
                real = pgu.upgrade(cfg, url, url, "17", _layout(host, mode), smoke=[], ctx=ctx,  # type: ignore[arg-type]
                                   timeout=3600)
                assert not est["differences"] and not real["differences"] and not est["incompatibilities"]
                assert real["target_version"].startswith("17.")
                rows.append((est["seconds"], real["seconds"]))
                print(f"pg_upgrade --{mode} round {i + 1}: estimate {est['seconds']:.1f}s (pg_upgrade --check "
                      f"{est['check_seconds']:.1f}s, downtime {est['upgrade_seconds']:.1f}s), real "
                      f"{real['seconds']:.1f}s (--check {real['check_seconds']:.1f}s, downtime "
                      f"{real['upgrade_seconds']:.1f}s): {est['seconds'] / real['seconds'] - 1:+.0%}", flush=True)
                # back to the pristine 13 cluster for the next round
                _sh(host, "/usr/lib/postgresql/17/bin/pg_ctl -D /var/lib/postgresql/17/data -m fast -w stop "
                    ">/dev/null && rm -rf /var/lib/postgresql/17/data && cd /var/lib/postgresql/13/data && "
                    "find . -mindepth 1 -delete && cp -a /var/lib/postgresql/13-pristine/. .")
                assert host.exec(*start13).returncode == 0
            out.update(_summary(f"engine_upgrade_pg_upgrade_{mode}_pg13_to_17_{size_name}", size, rows))
    return out


if __name__ == "__main__":
    main()
