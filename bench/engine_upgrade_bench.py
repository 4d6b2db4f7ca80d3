"""Engine upgrade rehearsal: the dry run's copy estimate against the real copy, PostgreSQL 13 -> 17.

    .venv/bin/python bench/engine_upgrade_bench.py --size medium
    .venv/bin/python bench/engine_upgrade_bench.py --size small --rounds 1   # a quick look

The dry run's `engine_upgrade` step copies the database into a throwaway sandbox of the
target version (postgres:17, the verify sandbox's limits) and reports the copy's time for
the downtime forecast; the real run copies into the new server. Both read the same old
server, so this compares what the forecast promises with what production gets. Each round
does the estimate, then the real copy into a fresh empty database on a PostgreSQL 17
server container. The old and new servers are containers from scripts/images (postgres:13,
postgres:17) with their data on tmpfs, like the matrix tests'. Writes engine_upgrade_* keys
into bench/results.json, leaving the other keys alone.

Only the logical method exists; pg_upgrade is not measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crmops.config import Config  # noqa: E402
from crmops.services.engine_upgrade import rehearse, upgrade_logical  # noqa: E402
from tests.matrix.servers import BY_ID, run_server  # noqa: E402

TOLERANCE = 0.25


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="medium", choices=["small", "medium", "large"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import docker

    from crmops.democrm.load import create

    client = docker.from_env(timeout=300)
    with run_server(client, BY_ID["pg13"]) as old, run_server(client, BY_ID["pg17"]) as new:
        url = old.create_database()
        t0 = time.monotonic()
        create(url, size=args.size)
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        print(f"demo CRM {args.size} on PostgreSQL 13: {size / 1e6:.0f} MB, built in {time.monotonic() - t0:.0f}s",
              flush=True)
        cfg = Config.model_validate({"database": {"url": url}, "repository": {"url": "file:///nonexistent"}})
        rows = []
        for i in range(args.rounds):
            est = rehearse(cfg, url, "17", smoke=[])
            real = upgrade_logical(cfg, url, new.create_database(), "17", smoke=[])
            assert not est["differences"] and not real["differences"] and not est["incompatibilities"]
            ratio = est["seconds"] / real["seconds"]
            rows.append((est["seconds"], real["seconds"], ratio))
            print(f"round {i + 1}: estimate {est['seconds']:.1f}s (dump {est['dump_seconds']:.1f}s + restore "
                  f"{est['restore_seconds']:.1f}s), real {real['seconds']:.1f}s: {ratio - 1:+.0%}", flush=True)
    est_m = statistics.median(r[0] for r in rows)
    real_m = statistics.median(r[1] for r in rows)
    off = est_m / real_m - 1
    verdict = "within" if abs(off) <= TOLERANCE else "OUTSIDE"
    print(f"median: estimate {est_m:.1f}s, real {real_m:.1f}s: {off:+.0%} ({verdict} {TOLERANCE:.0%})")
    path = ROOT / "bench" / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[f"engine_upgrade_pg13_to_17_{args.size}"] = {
        "database_mb": round(size / 1e6), "estimate_s": round(est_m, 2), "real_s": round(real_m, 2),
        "off": round(off, 3), "rounds": [[round(a, 2), round(b, 2)] for a, b, _ in rows]}
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
