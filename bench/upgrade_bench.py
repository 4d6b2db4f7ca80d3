"""Upgrade rehearsal: the dry run's migration estimate and downtime forecast against the real run.

    .venv/bin/python bench/upgrade_bench.py --size medium            # the issue's target size
    .venv/bin/python bench/upgrade_bench.py --size small --rounds 1  # a quick look

Issue 7 asks that the dry run's estimated migration time be within 25% of the real run's
on the medium demo CRM. How close a sub-second to few-second migration comes on a shared
host is a measurement, not a pass/fail test, so it lives here. Each round runs the
shipped playbook (playbooks/democrm-1-to-2.yaml, pointed at a demo app container) as
`crmops upgrade --dry-run` and then for real, and compares the dry run's `migrate_seconds`
with the real run's `schema` step, and the dry run's downtime forecast (built from the steps
the rehearsal stack measured: maintenance, backup, migration, swap, health check) with the
real run's downtime (maintenance on to off, from its journal), next to the migration-only
figure that was the whole forecast before the rehearsal stack. Between rounds the database is recreated from a
pristine 1.0 copy (CREATE DATABASE ... TEMPLATE: byte for byte the same data, statistics
included) and the app goes back to crmops-demo-app:1.0, so every round starts alike; the
2.0 migration merges duplicate contacts, so `migrate down` could not give that back.

The 1.0 copy (database crmops_bench_upgrade_<size>_1_0) is built once and kept; the working
database crmops_bench_upgrade_<size> is dropped at the end. Writes upgrade_* keys into
bench/results.json, leaving the other keys alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PASS, ROOT, bed_env, crmops, fresh_db, write_config  # noqa: E402

sys.path.insert(0, str(ROOT))
from crmops.playbooks.dockerswap import swap_image  # noqa: E402
from tests.upgrade.upgrade_helpers import App, app_container, playbook_for, wait_http  # noqa: E402

#: the issue's bound on |estimate / real - 1|
TOLERANCE = 0.25
#: marks a finished 1.0 copy, so one left half-built by an interrupted run is rebuilt
READY = "crmops demo CRM 1.0, size {size}, complete"


def pristine_copy(admin_url: str, size: str) -> str:
    """The name of the demo CRM 1.0 kept to copy each round from; built (about a minute on medium) when missing."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"crmops_bench_upgrade_{size}_1_0"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        comment = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                               (name,)).fetchone()
        if comment and comment[0] == READY.format(size=size):
            return name
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    from crmops.democrm.load import create

    print(f"building the {size} demo CRM 1.0 once (kept as database {name}) ...", flush=True)
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    create(url, size=size, force=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # a CRM that has been running: statistics and visibility map in place
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{READY.format(size=size)}'")
    return name


def drop(admin_url: str, name: str) -> None:
    """Remove the working copy: rebuilt from the 1.0 copy in a second, it is not worth its disk space."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade(config: Path, playbook: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """One `crmops --json upgrade` (dry or real); its report, or exit with crmops's own words."""
    out = subprocess.run(crmops(config, "--json", "upgrade", str(playbook), *extra), env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"upgrade {' '.join(extra)} failed ({out.returncode}): {out.stderr.strip()}\n"
                         f"{out.stdout[-2000:]}")
    return json.loads(out.stdout)


def one_round(config: Path, playbook: Path, env: dict[str, str]) -> dict[str, Any]:
    """The dry run, then the real run, of the same playbook text; the figures to compare."""
    dry = upgrade(config, playbook, env, "--dry-run")
    real = upgrade(config, playbook, env)
    if real["result"] != "success":
        raise SystemExit(f"the real run ended {real['result']}: {real.get('error')}")
    schema = next(p for p in dry["plan"] if p["step"] == "schema")
    measured = next(s["seconds"] for s in real["steps"] if s["step"] == "schema")
    downtime = real_downtime(Path(real["journal"]))
    return {"estimate_s": dry["migrate_seconds"], "timings": schema.get("timings") or [],
            "real_s": measured, "ratio": dry["migrate_seconds"] / measured,
            "downtime_s": dry["estimated_downtime_s"], "real_run_s": real["seconds"],
            "real_downtime_s": downtime, "forecast_ratio": dry["estimated_downtime_s"] / downtime,
            "migrate_only_ratio": dry["migrate_seconds"] / downtime,
            "rollback_rehearsed_s": (dry.get("rollback") or {}).get("seconds"),
            "not_rehearsed": (dry.get("counts") or {}).get("not_rehearsed"),
            # per step inside the downtime: (forecast, real) seconds, to see where they part
            "per_step": {p["step"]: (p["seconds"], next((x["seconds"] for x in real["steps"] if x["step"] == p["step"]
                                                         and x["phase"] == "run"), None))
                         for p in dry["plan"] if p.get("in_downtime")}}


def real_downtime(journal: Path) -> float:
    """From the start of the real run's maintenance-on step to the end of its maintenance-off step."""
    from datetime import datetime

    from crmops.journal import Journal

    records = list(Journal(journal).records())
    steps = [r for r in records if r["event"] in ("step_start", "step_end") and r.get("phase") == "run"]
    on = next(r for r in steps if r["event"] == "step_start" and r["type"] == "maintenance"
              and r["params"].get("mode") == "on")
    off = next(r for r in reversed(steps) if r["event"] == "step_end" and r["type"] == "maintenance")
    return (datetime.fromisoformat(off["ts"]) - datetime.fromisoformat(on["ts"])).total_seconds()


def back_to_1_0(admin_url: str, name: str, template: str, app: App) -> None:
    """The state every round starts from: the database and the app container at 1.0 again."""
    fresh_db(admin_url, name, template)
    swap_image(app.name, "crmops-demo-app:1.0", stop_timeout=2)
    wait_http(app)


def main() -> None:
    import docker

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default=os.environ.get("BENCH_SIZE", "medium"),
                    choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    admin = bed_env()["CRMOPS_TEST_PG_URL"]
    template = pristine_copy(admin, args.size)
    name = f"crmops_bench_upgrade_{args.size}"
    # the database URL, password included, reaches crmops through the environment only
    run_env = {**os.environ, "BENCH_PASSPHRASE": PASS, "BENCH_DB_URL": fresh_db(admin, name, template)}
    rounds: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="crmops-upgrade-bench-") as tmp, \
                app_container(docker.from_env(timeout=120)) as app:
            folder = Path(tmp)
            config = write_config(folder, "${BENCH_DB_URL}", f"file://{folder / 'repo'}")
            subprocess.run(crmops(config, "repo", "init"), env=run_env, check=True)
            subprocess.run(crmops(config, "backup"), env=run_env, check=True)
            # as in the medium test: the dry run restores (and so proves) the newest snapshot, the one
            # taken just now or the previous round's pre-upgrade one; verifying it first adds nothing here
            playbook = playbook_for(folder, app, edit=lambda doc: next(
                s for s in doc["stages"][0]["steps"] if s.get("check") == "snapshot_fresh"
            ).update(require_verified=False))
            for i in range(args.rounds):
                if i:
                    back_to_1_0(admin, name, template, app)
                t0 = time.monotonic()
                rounds.append(one_round(config, playbook, run_env))
                print(f"round {i + 1}/{args.rounds}: estimate {rounds[-1]['estimate_s']:.3f}s, real "
                      f"{rounds[-1]['real_s']:.3f}s ({time.monotonic() - t0:.0f}s)", flush=True)
    finally:
        drop(admin, name)
    results = summary(args.size, rounds)
    show(args.size, rounds, results)
    # a smoke run (tests/test_bench_smoke.py) writes elsewhere
    path = Path(os.environ.get("CRMOPS_BENCH_RESULTS") or ROOT / "bench" / "results.json")
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(results)
    path.write_text(json.dumps(data, indent=2))


def summary(size: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    within = sum(abs(r["ratio"] - 1) <= TOLERANCE for r in rounds)
    forecast_within = sum(abs(r["forecast_ratio"] - 1) <= TOLERANCE for r in rounds)
    return {
        "upgrade_size": size,
        "upgrade_estimate_s": round(statistics.median(r["estimate_s"] for r in rounds), 3),
        "upgrade_real_migrate_s": round(statistics.median(r["real_s"] for r in rounds), 3),
        "upgrade_estimate_vs_real": round(statistics.median(r["ratio"] for r in rounds), 2),
        "upgrade_estimate_within_25pct": f"{within}/{len(rounds)}",
        "upgrade_rounds": len(rounds),
        # the downtime forecast built from the rehearsal's measured steps, against the real maintenance window
        "upgrade_downtime_forecast_s": round(statistics.median(r["downtime_s"] for r in rounds), 2),
        "upgrade_real_downtime_s": round(statistics.median(r["real_downtime_s"] for r in rounds), 2),
        "upgrade_forecast_vs_real_downtime": round(statistics.median(r["forecast_ratio"] for r in rounds), 2),
        "upgrade_forecast_within_25pct": f"{forecast_within}/{len(rounds)}",
        # what the forecast was before the rehearsal stack: the migration alone
        "upgrade_migrate_only_vs_real_downtime": round(statistics.median(r["migrate_only_ratio"] for r in rounds), 2),
        "upgrade_rollback_rehearsed_s": round(statistics.median(r["rollback_rehearsed_s"] or 0 for r in rounds), 2),
        "upgrade_steps_not_rehearsed": rounds[-1]["not_rehearsed"],
    }


def show(size: str, rounds: list[dict[str, Any]], results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"upgrade rehearsal, demo CRM {size}: dry-run migration estimate vs the real migration")
    for col in ("round", "estimate s", "real s", "ratio", "dry-run runs s", "forecast downtime s",
                "real downtime s", "ratio", "migrate-only ratio", "rollback s", "real run s"):
        t.add_column(col, justify="right")
    for i, r in enumerate(rounds, 1):
        t.add_row(str(i), f"{r['estimate_s']:.3f}", f"{r['real_s']:.3f}", f"{r['ratio']:.2f}",
                  " ".join(f"{s:.2f}" for s in r["timings"]), f"{r['downtime_s']:.1f}", f"{r['real_downtime_s']:.1f}",
                  f"{r['forecast_ratio']:.2f}", f"{r['migrate_only_ratio']:.2f}",
                  f"{r['rollback_rehearsed_s'] or 0:.1f}", f"{r['real_run_s']:.1f}")
    console = Console(width=160)
    console.print(t)
    steps = Table(title="inside the downtime, per step: forecast s / real s")
    steps.add_column("round", justify="right")
    names = list(rounds[0]["per_step"]) if rounds else []
    for name in names:
        steps.add_column(name, justify="right")
    for i, r in enumerate(rounds, 1):
        steps.add_row(str(i), *(f"{r['per_step'][n][0]:.2f} / {r['per_step'][n][1] or 0:.2f}" for n in names))
    console.print(steps)
    console.print(results)


if __name__ == "__main__":
    main()
