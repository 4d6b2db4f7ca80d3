"""Everyday commands timed the way a person meets them: `snapshots`, `status`, `check` on a
local and an S3 repository, and `undo --dry-run` on a schema of several hundred tables.

Called by bench/run.py on the repositories it just wrote; runnable alone for the wide
undo case:

    .venv/bin/python bench/everyday.py --tables 700

Each command runs `ROUNDS` times as its own process; the figures are the median wall
time and the median CPU time (user + system of the process and its children). On a
shared, loaded machine the wall time follows the load; CPU time is the figure that
survives it, and an idle machine's wall time is about its CPU time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 5


def load_average() -> float:
    """The 1-minute load average now, printed beside every figure (the machine is shared)."""
    return round(os.getloadavg()[0], 1)


def cpu_timed(argv: list[str], env: dict[str, str], *, ok_codes: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of one run; ok_codes: exits that are results."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok_codes:
        raise SystemExit(f"benchmark step failed ({proc.returncode}): {argv}\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_of(argv: list[str], env: dict[str, str], rounds: int = ROUNDS,
              ok_codes: tuple[int, ...] = (0,)) -> tuple[float, float, float]:
    """(median wall, median CPU, load average at the start) over rounds runs."""
    load = load_average()
    runs = [cpu_timed(argv, env, ok_codes=ok_codes) for _ in range(rounds)]
    return (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs), load)


def commands(crmops_argv, configs: dict[str, Path], env: dict[str, str], rows: list, results: dict,
             rounds: int = ROUNDS) -> None:
    """snapshots, status and check on each repository (local, s3): rows for the table, keys for results.json.

    status exits 3 (red) on a repository whose database was never verified; that is its
    answer, not a failure, so it counts. rounds: runs of each (the smoke needs one).
    """
    for where, config in configs.items():
        for name, args, codes in (("snapshots", ["snapshots"], (0,)), ("status", ["status"], (0, 3, 4)),
                                  ("check", ["check"], (0,))):
            wall, cpu, load = median_of(crmops_argv(config, *args), env, rounds=rounds, ok_codes=codes)
            rows.append((f"crmops {name}, {where} repository (median of {rounds})", wall, None,
                         f"CPU {cpu:.2f} s, load {load}"))
            results[f"{name}_{where}_s"] = round(wall, 3)
            results[f"{name}_{where}_cpu_s"] = round(cpu, 3)
            results[f"{name}_{where}_load"] = load


# -- undo --dry-run on a wide schema --------------------------------------------------------

WIDE_DB = "crmops_bench_wide"


def build_wide(admin_url: str, tables: int, rows: int = 50) -> str:
    """A schema of `tables` tables: a small closure around `customers` (orders -> items, notes)
    and hundreds of unrelated tables, as a CRM with many modules has. Built once, kept."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url).set(database=f"{WIDE_DB}_{tables}").render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (f"{WIDE_DB}_{tables}",)).fetchone():
            return url
        conn.execute(f'CREATE DATABASE "{WIDE_DB}_{tables}"')
    print(f"building the {tables}-table schema once (kept as database {WIDE_DB}_{tables}) ...", flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers(id), "
                     "total numeric)")
        conn.execute("CREATE TABLE order_items (id int PRIMARY KEY, order_id int REFERENCES orders(id), "
                     "sku text)")
        conn.execute("CREATE TABLE customer_notes (id int PRIMARY KEY, customer_id int REFERENCES customers(id), "
                     "body text)")
        conn.execute(f"INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, {rows}) g")
        conn.execute(f"INSERT INTO orders SELECT g, 1 + g % {rows}, g * 1.5 FROM generate_series(1, {rows * 2}) g")
        conn.execute(f"INSERT INTO order_items SELECT g, 1 + g % {rows * 2}, 'sku' || g "
                     f"FROM generate_series(1, {rows * 4}) g")
        conn.execute(f"INSERT INTO customer_notes SELECT g, 1 + g % {rows}, 'note ' || g "
                     f"FROM generate_series(1, {rows}) g")
        for i in range(tables - 4):
            conn.execute(f"CREATE TABLE module_{i:04d} (id int PRIMARY KEY, label text, created timestamptz "
                         f"DEFAULT now()); INSERT INTO module_{i:04d} (id, label) "
                         f"SELECT g, 'row ' || g FROM generate_series(1, {rows}) g")
    return url


def undo_dry_run(crmops_argv, work: Path, admin_url: str, tables: int, env: dict[str, str],
                 rows: list, results: dict) -> None:
    """Back up the wide schema into a local repository, then time `undo --dry-run` of one customer."""
    from run import write_config

    url = build_wide(admin_url, tables)
    config = write_config(work, url, f"file://{work}/wide-repo")
    subprocess.run(crmops_argv(config, "repo", "init"), env=env, check=True)
    subprocess.run(crmops_argv(config, "backup"), env=env, check=True)
    load = load_average()
    wall, cpu = cpu_timed(crmops_argv(config, "undo", "--table", "customers", "--where", "id = 7", "--dry-run"), env)
    rows.append((f"crmops undo --dry-run, {tables}-table schema", wall, None, f"CPU {cpu:.2f} s, load {load}"))
    results.update({f"undo_dry_run_{tables}_tables_s": round(wall, 2),
                    f"undo_dry_run_{tables}_tables_cpu_s": round(cpu, 2),
                    f"undo_dry_run_{tables}_tables_load": load})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=700)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import PASS, bed_env, crmops

    env = {**os.environ, "BENCH_PASSPHRASE": PASS}
    rows: list = []
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="crmops-bench-wide-") as tmp:
        undo_dry_run(crmops, Path(tmp), bed_env()["CRMOPS_TEST_PG_URL"], args.tables, env, rows, results)
    for what, secs, _, note in rows:
        print(f"{secs:8.2f} s  {what}  ({note})")
    print(results)


if __name__ == "__main__":
    main()
