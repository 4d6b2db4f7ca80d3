"""Django CRM 2.4.0 -> 3.1.0: the dry run's forecast against the real run, per step, as medians.

    BENCH_REALCRM=1 make bench                                       # part of make bench when asked
    PYTHONPATH=. .venv/bin/python -m bench.realcrm_bench             # both engines, 3 runs each
    PYTHONPATH=. .venv/bin/python -m bench.realcrm_bench --engines postgresql --runs 5

One run of a short migration on a shared host is noise, so the shipped playbook
(playbooks/django-crm-{postgres,mariadb}.yaml, pointed at a CRM container) runs N times per
engine: `upgrade --dry-run`, then the real upgrade. Between runs the database goes back to the
verified 2.4.0 snapshot (`crmops restore --force`) and the container back to the 2.4.0 image,
so every run starts alike. The data is the real CRM's, made by its own ORM (the test fixture:
300 companies, 600 contacts, 300 deals, 150 tasks, 100 files). Prints, per step, the median
forecast and the median real seconds, and the load average before and after, since the machine
may be shared; writes realcrm_* keys into bench/results.json. A measurement, never a pass/fail test.
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
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from crmops.playbooks.dockerswap import swap_image  # noqa: E402
from tests.realcrm.djangocrm import IMAGE, OLD, config_for, crm_container, playbook_for  # noqa: E402

BED = Path(os.environ.get("CRMOPS_TESTBED_DIR", ROOT / ".testbed"))
PASS = "bench passphrase"
ADMIN_KEYS = {"postgresql": "CRMOPS_TEST_PG_URL", "mariadb": "CRMOPS_TEST_MYSQL_URL"}
#: the steps whose forecast is a measurement on the copies (the others are read-only checks or not rehearsed)
STEPS = ("old_app", "migrations_before", "pre_upgrade", "swap", "health", "migrate", "static", "migrations_after")


def bed_env() -> dict[str, str]:
    return dict(line.partition("=")[::2] for line in (BED / "env").read_text().splitlines() if "=" in line)


def new_database(engine: str, crm: str = "djangocrm") -> tuple[str, Any]:
    """An empty database on the test bed's server; (its URL, a function that drops it)."""
    from sqlalchemy.engine import make_url

    admin = bed_env()[ADMIN_KEYS[engine]]
    name = f"crmops_bench_{crm}_{uuid.uuid4().hex[:6]}"
    if engine == "postgresql":
        import psycopg

        def ddl(stmt: str) -> None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(stmt)

        ddl(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    else:
        import pymysql

        u = make_url(admin)

        def ddl(stmt: str) -> None:
            conn = pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password)
            try:
                with conn.cursor() as cur:
                    cur.execute(stmt)
            finally:
                conn.close()

        ddl(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        drop = f"DROP DATABASE IF EXISTS `{name}`"
    return make_url(admin).set(database=name).render_as_string(hide_password=False), lambda: ddl(drop)


def crmops(config: Path, *args: str, timeout: float = 1800, env: dict[str, str] | None = None) -> Any:
    """One crmops command; its --json report, or exit with crmops's own words. env: more variables
    (a database URL goes to `--to` as ${VAR}, never on the command line)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}, **(env or {})}
    env["TEST_PASSPHRASE"] = PASS
    out = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", *args], env=env,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"crmops {args[0]} failed ({out.returncode}): {out.stderr.strip()[-1500:]}\n"
                         f"{out.stdout[-1500:]}")
    return json.loads(out.stdout) if out.stdout.strip() else {}


def real_steps(journal: Path) -> dict[str, float]:
    from crmops.journal import Journal

    return {r["step"]: r["seconds"] for r in Journal(journal).records()
            if r["event"] == "step_end" and r.get("phase") == "run" and r.get("seconds") is not None}


def one_run(config: Path, playbook: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The dry run, then the real run, of the same playbook text: seconds per step, forecast and real."""
    dry = crmops(config, "upgrade", str(playbook), "--dry-run", env=env)
    real = crmops(config, "upgrade", str(playbook), env=env)
    if real.get("result") != "success":
        raise SystemExit(f"the real run ended {real.get('result')}: {real.get('error')}")
    forecast = {p["step"]: p.get("seconds") for p in dry["plan"] if p["phase"] == "run"}
    return {"forecast": forecast, "real": real_steps(Path(real["journal"])),
            "downtime_forecast": dry["estimated_downtime_s"], "real_total": real["seconds"],
            "rollback_rehearsed": (dry.get("rollback") or {}).get("seconds")}


def bench_engine(engine: str, runs: int, companies: int) -> list[dict[str, Any]]:
    import docker

    client = docker.from_env(timeout=300)
    url, drop = new_database(engine)
    out: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="crmops-realcrm-bench-") as tmp:
            folder = Path(tmp)
            media = folder / "media"
            with crm_container(client, url, media) as crm:
                print(f"{engine}: the CRM's data through its ORM ({companies} companies) ...", flush=True)
                made = crm.exec("python3", "/opt/crmops/fixture.py", str(companies)).strip().splitlines()
                print("  " + made[-1], flush=True)  # the counts (setupdata's lines above name the users' passwords)
                crm.wait()
                config = config_for(folder, url, media)
                crmops(config, "repo", "init")
                snap = crmops(config, "backup")["snapshot_id"]
                crmops(config, "verify", snap)
                playbook = playbook_for(folder, crm, engine)
                for i in range(runs):
                    if i:  # back to 2.4.0: the database as in the verified snapshot, the old image
                        crmops(config, "restore", snap, "--to", "${BENCH_CRM_DB}", "--force",
                               env={"BENCH_CRM_DB": url})
                        swap_image(crm.name, IMAGE.format(OLD), stop_timeout=5, client=client)
                        crm.wait()
                    t0 = time.monotonic()
                    out.append(one_run(config, playbook))
                    print(f"{engine} run {i + 1}/{runs}: downtime forecast {out[-1]['downtime_forecast']:.1f}s, "
                          f"real run {out[-1]['real_total']:.1f}s ({time.monotonic() - t0:.0f}s with the dry run), "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        drop()
    return out


def medians(runs: list[dict[str, Any]], names: tuple[str, ...] = STEPS) -> dict[str, Any]:
    def med(values: list[Any]) -> float | None:
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 1) if values else None

    steps = {s: {"forecast_s": med([r["forecast"].get(s) for r in runs]),
                 "real_s": med([r["real"].get(s) for r in runs])} for s in names}
    return {"runs": len(runs), "steps": steps,
            "downtime_forecast_s": med([r["downtime_forecast"] for r in runs]),
            "real_run_s": med([r["real_total"] for r in runs]),
            "rollback_rehearsed_s": med([r["rollback_rehearsed"] for r in runs])}


def show(results: dict[str, dict[str, Any]], load: dict[str, list[float]]) -> None:
    engines = list(results)
    print("\nDjango CRM 2.4.0 -> 3.1.0, medians of " + ", ".join(f"{e} {results[e]['runs']}" for e in engines)
          + " runs: forecast s / real s")
    print(f"{'step':<20}" + "".join(f"{e:>22}" for e in engines))
    for s in STEPS:
        pairs = (_pair(results[e]["steps"][s]["forecast_s"], results[e]["steps"][s]["real_s"]) for e in engines)
        print(f"{s:<20}" + "".join(f"{p:>22}" for p in pairs))
    print(f"{'whole run':<20}" + "".join(f"{_pair(results[e]['downtime_forecast_s'], results[e]['real_run_s']):>22}"
                                         for e in engines))
    print(f"{'rollback rehearsed':<20}" + "".join(f"{results[e]['rollback_rehearsed_s'] or 0:>22.1f}" for e in engines))
    print("load average (1, 5, 15 min): before " + " ".join(f"{x:.2f}" for x in load["before"])
          + ", after " + " ".join(f"{x:.2f}" for x in load["after"]))


def _pair(a: float | None, b: float | None) -> str:
    return f"{'-' if a is None else f'{a:.1f}'} / {'-' if b is None else f'{b:.1f}'}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", nargs="+", default=["postgresql", "mariadb"], choices=list(ADMIN_KEYS))
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_REALCRM_RUNS", "3")))
    ap.add_argument("--companies", type=int, default=300)
    args = ap.parse_args()
    load = {"before": list(os.getloadavg())}
    results = {e: medians(bench_engine(e, args.runs, args.companies)) for e in args.engines}
    load["after"] = list(os.getloadavg())
    show(results, load)
    path = ROOT / "bench" / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update({f"realcrm_djangocrm_{e}": r for e, r in results.items()})
    data["realcrm_djangocrm_load"] = load
    path.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
