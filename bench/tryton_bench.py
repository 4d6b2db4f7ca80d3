"""Tryton 7.0 -> 8.0, staged: the dry run's forecast against the real run, per step, as medians.

    BENCH_REALCRM=1 make bench                                       # part of make bench when asked
    PYTHONPATH=. .venv/bin/python -m bench.tryton_bench --runs 3

The shipped staged playbook (playbooks/tryton-7.0-to-8.0.yaml, one stage per series, pointed at
a Tryton container) runs N times: `upgrade --dry-run` (every series' trytond-admin rehearsed on
copies), then the real upgrade through 7.2, 7.4, 7.6, 7.8 and 8.0. Between runs the database goes
back to the verified 7.0 snapshot (`crmops restore --force`) and the container back to the 7.0
image. The data is Tryton's own, made by its ORM (the test fixture: 300 parties, 150
opportunities, 100 sales, 30 attachments). Prints, per step that takes time, the median forecast
and the median real seconds, and the load average before and after; writes realcrm_tryton into
bench/results.json. A measurement, never a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.realcrm_bench import ROOT, crmops, medians, new_database, one_run
from crmops.playbooks.dockerswap import swap_image
from tests.realcrm.tryton import AUTH, IMAGE, config_for, install, playbook_for, tryton_container

#: steps shorter than this (checks, queries) in both forecast and real are left out of the table
SHOWN_FROM_S = 0.5


def bench(runs: int, parties: int) -> list[dict[str, Any]]:
    import docker

    client = docker.from_env(timeout=300)
    url, drop = new_database("postgresql", "tryton")
    drops = [drop]

    def scratch() -> str:  # trytond-admin's own database, when its dump is not cached yet
        scratch_url, scratch_drop = new_database("postgresql", "tryton_admin")
        drops.append(scratch_drop)
        return scratch_url

    env = {"TRYTON_CHECK_AUTH": AUTH}
    out: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="crmops-tryton-bench-") as tmp:
            folder = Path(tmp)
            with tryton_container(client, url, folder / "filestore") as app:
                print(f"Tryton 7.0: its modules and {parties} parties through its ORM ...", flush=True)
                install(app, url, scratch)
                print("  " + app.exec("python3", "/opt/crmops/fixture.py", app.database, str(parties)).strip(),
                      flush=True)
                app.wait()
                config = config_for(folder, url, app.filestore)
                crmops(config, "repo", "init")
                snap = crmops(config, "backup")["snapshot_id"]
                crmops(config, "verify", snap)
                playbook = playbook_for(folder, app)
                for i in range(runs):
                    if i:  # back to 7.0: the database as in the verified snapshot, the 7.0 image
                        crmops(config, "restore", snap, "--to", "${BENCH_CRM_DB}", "--force",
                               env={"BENCH_CRM_DB": url})
                        swap_image(app.name, IMAGE.format("7.0"), stop_timeout=5, client=client)
                        app.wait()
                    t0 = time.monotonic()
                    out.append(one_run(config, playbook, env))
                    print(f"run {i + 1}/{runs}: downtime forecast {out[-1]['downtime_forecast']:.1f}s, real run "
                          f"{out[-1]['real_total']:.1f}s ({time.monotonic() - t0:.0f}s with the dry run), "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        for each in drops:
            each()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_REALCRM_RUNS", "3")))
    ap.add_argument("--parties", type=int, default=300)
    args = ap.parse_args()
    load = {"before": list(os.getloadavg())}
    runs = bench(args.runs, args.parties)
    load["after"] = list(os.getloadavg())
    names = tuple(dict.fromkeys(s for r in runs for s in [*r["forecast"], *r["real"]]))
    result = medians(runs, names)
    result["steps"] = {s: v for s, v in result["steps"].items()
                       if max(v["forecast_s"] or 0, v["real_s"] or 0) >= SHOWN_FROM_S}
    print(f"\nTryton 7.0 -> 8.0, medians of {result['runs']} runs: forecast s / real s")
    for s, v in result["steps"].items():
        print(f"{s:<28}{_pair(v['forecast_s']):>10} /{_pair(v['real_s']):>8}")
    print(f"{'whole run':<28}{_pair(result['downtime_forecast_s']):>10} /{_pair(result['real_run_s']):>8}")
    print(f"{'rollback rehearsed':<28}{_pair(result['rollback_rehearsed_s']):>10}")
    print("load average (1, 5, 15 min): before " + " ".join(f"{x:.2f}" for x in load["before"])
          + ", after " + " ".join(f"{x:.2f}" for x in load["after"]))
    path = ROOT / "bench" / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update({"realcrm_tryton": result, "realcrm_tryton_load": load})
    path.write_text(json.dumps(data, indent=2))


def _pair(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main()
