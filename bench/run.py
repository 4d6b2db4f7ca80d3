"""Benchmarks, side by side in one run, against what administrators would otherwise use.

    make bench                      # BENCH_SIZES="small medium" by default; add large when asked
    .venv/bin/python bench/run.py --size small
    .venv/bin/python bench/run.py --size large --no-everyday

Needs the test bed (scripts/testbed.sh up). Builds a demo CRM of the chosen size in a
dedicated PostgreSQL database once (re-used by later runs), then times each contender
as a separate process and reads its peak RSS from the kernel (wait4). Prints a table
and writes bench/results.json. Beside PostgreSQL's tools it runs MariaDB's (mysqldump,
mysql; bench/mariadb_bench.py) and the everyday commands (`snapshots`, `status`,
`check` on local and S3, `undo --dry-run` on a wide schema; bench/everyday.py), and
records the load average, since the machine may be shared. These are measurements,
never pass/fail tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BED = Path(os.environ.get("CRMOPS_TESTBED_DIR", ROOT / ".testbed"))
PY = sys.executable
PASS = "bench passphrase"


def bed_env() -> dict[str, str]:
    env = {}
    for line in (BED / "env").read_text().splitlines():
        k, _, v = line.partition("=")
        env[k] = v
    return env


#: forks the measured command from a small process: Linux starts a child's peak RSS at
#: the RSS of the process it was forked from, so forking from this (large) benchmark
#: process would put a floor of its own size under every figure
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed(argv: list[str] | str, *, env: dict[str, str] | None = None, shell: bool = False,
          stdin: int | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB of the process tree's largest member) for one command."""
    if shell:
        argv = ["/bin/sh", "-c", str(argv)]
    with tempfile.NamedTemporaryFile("r", prefix="crmops-bench-rss-") as rss:
        t0 = time.monotonic()
        proc = subprocess.run([PY, "-S", "-c", _LAUNCHER, rss.name, *argv], env=env, stdin=stdin,
                              stdout=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"benchmark step failed ({proc.returncode}): {argv}")
        return wall, int(rss.read() or 0) / 1024


def pg_env(url: str) -> dict[str, str]:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return {**os.environ, "PGHOST": u.host, "PGPORT": str(u.port), "PGUSER": u.username, "PGPASSWORD": u.password,
            "PGDATABASE": u.database}


def ensure_database(admin_url: str, size: str) -> tuple[str, dict]:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"crmops_bench_{size}"
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    meta = Path(tempfile.gettempdir()) / f"{name}.json"
    if not exists or not meta.exists():
        from crmops.democrm.load import create

        print(f"building the {size} demo CRM once (kept as database {name}) ...", flush=True)
        result = create(url, size=size, force=True)
        meta.write_text(json.dumps(result.to_dict()))
    return url, json.loads(meta.read_text())


def write_config(folder: Path, db_url: str, repo_url: str, s3_endpoint: str | None = None) -> Path:
    import yaml

    cfg = {"database": {"url": db_url}, "repository": {"url": repo_url},
           "encryption": {"passphrase": "${BENCH_PASSPHRASE}"}, "state_dir": str(folder / "state")}
    if s3_endpoint:
        cfg["repository"]["s3"] = {"endpoint_url": s3_endpoint}
    path = folder / f"crmops-{abs(hash(repo_url))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def crmops(config: Path, *args: str) -> list[str]:
    return [PY, "-m", "crmops", "--config", str(config), "--quiet", *args]


def touch_one_percent(url: str) -> None:
    """A day of CRM work: 1% of the rows edited, the recent ones, as users work on current deals."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("activities", "contacts", "opportunities"):
            top = conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
            conn.execute(f"UPDATE {table} SET updated_at = updated_at WHERE id > %s" if table == "opportunities"
                         else f"UPDATE {table} SET {'subject' if table == 'activities' else 'notes'} = "
                         f"COALESCE({'subject' if table == 'activities' else 'notes'}, '') || ' (edited)' "
                         "WHERE id > %s", (top - top // 100,))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default=os.environ.get("BENCH_SIZE", "medium"),
                    choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--no-everyday", dest="everyday", action="store_false",
                    help="skip snapshots/status/check and the wide undo (they do not depend on the size)")
    ap.add_argument("--no-mariadb", dest="mariadb", action="store_false", help="skip the MariaDB comparison")
    ap.add_argument("--undo-tables", type=int, default=700, help="tables in the undo --dry-run schema (0: skip)")
    ap.add_argument("--everyday-rounds", type=int, default=5,
                    help="runs of each everyday command, median taken (1: the smoke's look that they run)")
    args = ap.parse_args()
    from everyday import commands, load_average, undo_dry_run

    env = bed_env()
    url, built = ensure_database(env["CRMOPS_TEST_PG_URL"], args.size)
    penv = pg_env(url)
    run_env = {**os.environ, "BENCH_PASSPHRASE": PASS, "RESTIC_PASSWORD": PASS, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing"}
    rows: list[tuple[str, float, float | None, str]] = []
    results: dict[str, float | int | str | None] = {"size": args.size, "cores": os.cpu_count(),
                                                    "demo_rows_per_second": built.get("rows_per_second"),
                                                    "load_at_start": load_average()}
    import psycopg

    with psycopg.connect(url) as conn:
        results["db_size_mb"] = round(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 1e6)
    work = Path(tempfile.mkdtemp(prefix="crmops-bench-"))
    try:
        floor, _ = timed("pg_dump -Fc -Z0 > /dev/null", env=penv, shell=True)
        rows.append(("pg_dump -Fc -Z0 > /dev/null (the floor)", floor, None, ""))
        gz, _ = timed("pg_dump -Fc > /dev/null", env=penv, shell=True)
        rows.append(("pg_dump -Fc (default gzip)", gz, None, ""))
        script = f"pg_dump -Fc | openssl enc -aes-256-cbc -pbkdf2 -pass env:BENCH_PASSPHRASE > {work}/dump.enc"
        scripted, _ = timed(script, env={**penv, **run_env}, shell=True)
        rows.append(("pg_dump -Fc | openssl enc > file (the usual script)", scripted, None, ""))

        # crmops: the engine's dump alone, to /dev/null, for its memory
        dump_code = ("import sys; from crmops.engines import open_engine\n"
                     f"with open_engine({url!r}).dump() as d:\n    [None for _ in d.chunks()]\n    d.fingerprint")
        dump_t, dump_rss = timed([PY, "-c", dump_code], env=run_env)
        rows.append(("crmops engine dump + fingerprint -> /dev/null", dump_t, dump_rss, ""))
        results["peak_rss_mb_dump"] = round(dump_rss)

        local = write_config(work, url, f"file://{work}/repo")
        subprocess.run(crmops(local, "repo", "init"), env=run_env, check=True)
        full, rss = timed(crmops(local, "backup"), env=run_env)
        rows.append(("crmops backup, local disk (full)", full, rss, ""))
        results.update(backup_vs_floor=round(full / floor, 2), backup_vs_pg_dump_fc=round(full / gz, 2),
                       backup_vs_script=round(full / scripted, 2), peak_rss_mb_backup=round(rss))
        first_bytes = _stored(work / "repo")

        restic = shutil.which("restic")
        if restic:
            repo = work / "restic"
            subprocess.run([restic, "init", "-q", "-r", str(repo)], env=run_env, check=True)
            rt, rrss = timed(f"pg_dump -Fc -Z0 | {restic} backup -q -r {repo} --stdin --stdin-filename crm.dump",
                             env={**penv, **run_env}, shell=True)
            rows.append(("restic backup --stdin of pg_dump -Fc -Z0, local disk", rt, rrss, ""))
            results["backup_vs_restic"] = round(full / rt, 2)
            restic_first = _stored(repo)

        touch_one_percent(url)
        incr, _ = timed(crmops(local, "backup"), env=run_env)
        share = (_stored(work / "repo") - first_bytes) / first_bytes
        rows.append(("crmops backup after changing 1% of rows", incr, None, f"uploaded {share:.1%} of the first"))
        results["incremental_upload_share"] = round(share, 4)
        if restic:
            subprocess.run(f"pg_dump -Fc -Z0 | {restic} backup -q -r {repo} --stdin --stdin-filename crm.dump",
                           env={**penv, **run_env}, shell=True, check=True)
            rshare = (_stored(repo) - restic_first) / restic_first
            rows.append(("restic, the same second dump", 0.0, None, f"uploaded {rshare:.1%} of its first"))
            results["incremental_restic_share"] = round(rshare, 4)

        # restores: pg_restore -j 2 of a plain archive vs crmops restore from the repository
        archive = work / "plain.dump"
        subprocess.run(["pg_dump", "-Fc", "-Z0", "-f", str(archive)], env=penv, check=True)
        target = fresh_db(env["CRMOPS_TEST_PG_URL"], "crmops_bench_restore_a")
        bare, _ = timed(["pg_restore", "-j", "2", "-d", "crmops_bench_restore_a", str(archive)], env=penv)
        rows.append(("pg_restore -j 2 of the same dump", bare, None, ""))
        target = fresh_db(env["CRMOPS_TEST_PG_URL"], "crmops_bench_restore_b")
        # the target's URL comes through the environment: no password on a command line
        rest, rrss = timed(crmops(local, "restore", "latest", "--to", "${BENCH_TARGET_URL}"),
                           env={**run_env, "BENCH_TARGET_URL": target})
        rows.append(("crmops restore (check every tag, then stream into pg_restore)", rest, rrss, ""))
        results.update(restore_vs_pg_restore=round(rest / bare, 2), peak_rss_mb_restore=round(rrss),
                       backup_s=round(full, 2), pg_dump_floor_s=round(floor, 2), restore_s=round(rest, 2),
                       pg_restore_j2_s=round(bare, 2))

        s3 = env.get("CRMOPS_TEST_S3_ENDPOINT")
        if s3:
            import boto3

            bucket = f"crmops-bench-{int(time.time())}"
            boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key="testing").create_bucket(Bucket=bucket)
            s3cfg = write_config(work, url, f"s3://{bucket}/crm", s3)
            subprocess.run(crmops(s3cfg, "repo", "init"), env=run_env, check=True)
            s3t, _ = timed(crmops(s3cfg, "backup"), env=run_env)
            rows.append(("crmops backup, S3 (moto on loopback)", s3t, None, ""))
            results["backup_s3_vs_script"] = round(s3t / scripted, 2)
            if restic:
                rs3 = f"s3:{s3}/{bucket}/restic"
                subprocess.run([restic, "init", "-q", "-r", rs3], env=run_env, check=True)
                rst, _ = timed(f"pg_dump -Fc -Z0 | {restic} backup -q -r {rs3} --stdin --stdin-filename crm.dump",
                               env={**penv, **run_env}, shell=True)
                rows.append(("restic backup --stdin, S3 (moto on loopback)", rst, None, ""))
                results["backup_s3_vs_restic"] = round(s3t / rst, 2)
        if args.mariadb and env.get("CRMOPS_TEST_MYSQL_URL"):
            from mariadb_bench import compare

            compare(args.size, env["CRMOPS_TEST_MYSQL_URL"], work, run_env, rows, results)
        if args.everyday:
            configs = {"local": local, **({"s3": s3cfg} if s3 else {})}
            commands(crmops, configs, run_env, rows, results, rounds=args.everyday_rounds)
            if args.undo_tables:
                undo_dry_run(crmops, work, env["CRMOPS_TEST_PG_URL"], args.undo_tables, run_env, rows, results)
        results["load_at_end"] = load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print(rows, results)
    save_results(results, args.size)


def save_results(results: dict, size: str) -> None:
    """Merge into bench/results.json: `large` keeps the plain keys, other sizes sit beside them
    with their size as a suffix (backup_vs_restic_medium), so one file holds both runs."""
    # a smoke run (tests/test_bench_smoke.py) writes elsewhere
    path = Path(os.environ.get("CRMOPS_BENCH_RESULTS") or ROOT / "bench" / "results.json")
    try:
        merged = json.loads(path.read_text())
    except (OSError, ValueError):
        merged = {}
    merged.update(results if size == "large" else {f"{k}_{size}": v for k, v in results.items()})
    path.write_text(json.dumps(merged, indent=2))


def _stored(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def fresh_db(admin_url: str, name: str, template: str | None = None) -> str:
    """name as a new database (empty, or a copy of template); returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    from crmops.upgrade.measure import copy_database

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if template is None:
            conn.execute(f'CREATE DATABASE "{name}"')
        elif not copy_database(conn, template, name):
            raise SystemExit(f"could not copy {template}: something else keeps it open")
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _print(rows: list[tuple[str, float, float | None, str]], results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"crmops benchmarks: demo CRM {results['size']} ({results['db_size_mb']} MB on PostgreSQL 15), "
                    f"{results['cores']} cores")
    t.add_column("what")
    t.add_column("seconds", justify="right")
    t.add_column("peak RSS MB", justify="right")
    t.add_column("note")
    for what, secs, rss, note in rows:
        t.add_row(what, f"{secs:.1f}" if secs else "", f"{rss:.0f}" if rss else "", note)
    Console().print(t)
    Console().print({k: v for k, v in results.items()})


if __name__ == "__main__":
    main()
