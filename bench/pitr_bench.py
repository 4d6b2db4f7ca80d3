"""Point-in-time recovery on the demo CRM (`large` by default), in one run:

- RPO: what a crash loses with `crmops wal setup`'s defaults (archive_timeout 60 s). A writer
  commits a timestamped marker every 100 ms; at a random moment the server is killed
  (SIGKILL to the postmaster and every process under it) and its data directory deleted,
  so only the repository is left; `restore --at latest --sandbox` recovers, and the RPO is
  the time between the last marker committed and the last one recovered. One trial on the
  big cluster itself, more on small clusters of their own that run beside it (the loss
  depends on the archive's timing, not on the database's size).
- RTO: the physical recovery of that crash (the latest base backup + the WAL written since,
  which holds a batch of updates) in a sandbox and into a data directory started with
  pg_ctl (its WAL spooled by the restore; with --unspooled also through `crmops wal fetch`
  per file, as before the spool existed), against `pg_restore` of a
  `pg_dump -Fc` of the same database and crmops' own logical `restore`, both into an empty
  database of a second cluster that does not archive.
- the archive's cost: stored bytes and `wal push` CPU per GB of WAL.

Every cluster is this run's own (tests/pitr's Cluster: the shared server keeps its settings);
the loaded demo CRM comes from bench/pitr_cache.py (built once, copied per run). Prints a
table on stderr and one JSON document on stdout, and merges pitr_* keys into
bench/results.json (`large` plain, other sizes suffixed, as bench/run.py does).

    PYTHONPATH=. .venv/bin/python -m bench.pitr_bench [--size large] [--rpo-trials 3] [--unspooled]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.pitr_cache import load_into
from crmops.pitr.setup import DEFAULT_ARCHIVE_TIMEOUT
from tests.pitr.conftest import PG_BIN, Cluster, as_postgres

ROOT = Path(__file__).resolve().parent.parent
LOADS: list[tuple[str, list[float]]] = []


#: what a CRM's list views, filters and reports index beyond the demo CRM's keys (--index-heavy)
INDEX_HEAVY = [
    ("activities", "contact_id, occurred_at"), ("activities", "opportunity_id"), ("activities", "user_id, occurred_at"),
    ("activities", "kind, occurred_at"), ("activities", "subject"), ("activities", "occurred_at"),
    ("contacts", "last_name, first_name"), ("contacts", "phone"), ("contacts", "created_at"), ("contacts", "title"),
    ("opportunities", "contact_id"), ("opportunities", "expected_close"), ("opportunities", "title"),
    ("opportunities", "updated_at"), ("accounts", "name"), ("accounts", "industry"),
]


def load(phase: str) -> None:
    """The machine is shared: keep the load average beside every figure."""
    LOADS.append((phase, [round(x, 2) for x in os.getloadavg()]))


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Writer(threading.Thread):
    """Commits one timestamped marker every ~100 ms until the server goes away."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.last: datetime | None = None
        self.count = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self.stop.is_set():
                    self.last = conn.execute("INSERT INTO bench_markers (at) VALUES (clock_timestamp()) "
                                             "RETURNING at").fetchone()[0]
                    self.count += 1
                    time.sleep(0.1)
        except psycopg.Error:
            pass  # the crash


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def crash(c: Cluster) -> None:
    """The server is lost: SIGKILL to the postmaster and everything under it (archiver and its running
    `wal push` included, stopped first so none can fork away), then its data directory deleted."""
    pid = int((c.data / "postmaster.pid").read_text().split()[0])
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for p in _tree(pid):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    shutil.rmtree(c.data, ignore_errors=True)


def archiver_idle(c: Cluster, timeout: float = 900) -> float:
    """Wait until no WAL file waits for archive_command; returns the seconds waited."""
    t0 = time.monotonic()
    status = c.data / "pg_wal" / "archive_status"
    while any(p.suffix == ".ready" for p in status.iterdir()):
        if time.monotonic() - t0 > timeout:
            raise SystemExit("the archiver did not catch up")
        time.sleep(0.5)
    return round(time.monotonic() - t0, 1)


def sandbox_markers(name: str) -> tuple[datetime | None, int]:
    from crmops.sandbox.docker import docker_client

    code, out = docker_client().containers.get(name).exec_run(
        ["psql", "-h", "/run/postgresql", "-U", "postgres", "-d", "postgres", "-XAtqc",
         "SELECT max(at), count(*) FROM bench_markers"], user="postgres")
    if code != 0:
        raise SystemExit(f"could not read the recovered markers: {out.decode()[-300:]}")
    at, n = out.decode().strip().split("|")
    return (datetime.fromisoformat(at) if at else None), int(n)


def remove_sandbox(result: dict[str, Any]) -> None:
    from crmops.sandbox.docker import docker_client, remove_by_name

    remove_by_name(docker_client(), result["sandbox"])
    shutil.rmtree(result["sandbox_info"]["folder"], ignore_errors=True)


def recover_latest(c: Cluster, writer: Writer) -> dict[str, Any]:
    """`restore --at latest --sandbox`, timed; the markers lost: the RPO of this crash."""
    t0 = time.monotonic()
    r = json.loads(c.crmops("restore", "--at", "latest", "--sandbox", "--keep", timeout=3600).stdout)
    seconds = round(time.monotonic() - t0, 1)
    try:
        last, n = sandbox_markers(r["sandbox"])
    finally:
        remove_sandbox(r)
    assert writer.last is not None and last is not None, "no marker written or recovered"
    return {"restore_seconds": seconds, "replay_seconds": r.get("replay_seconds"), "wal_files": r.get("wal_files"),
            "rpo_seconds": round((writer.last - last).total_seconds(), 2), "markers_lost": writer.count - n,
            "markers_written": writer.count}


def new_cluster(base: Path, name: str, *, archive: bool, archive_timeout: int = DEFAULT_ARCHIVE_TIMEOUT) -> Cluster:
    folder = base / name
    folder.mkdir()
    folder.chmod(0o755)
    c = Cluster(folder)
    c.init()
    with open(c.data / "postgresql.auto.conf", "a") as f:  # later lines win over Cluster's test settings
        f.write(f"archive_timeout = {archive_timeout}\n" if archive else "archive_mode = off\n")
    return c


class SmallTrial(threading.Thread):
    """A small cluster of its own: base backup, a writer, a crash after `delay` seconds."""

    def __init__(self, base: Path, i: int, delay: float) -> None:
        super().__init__(daemon=True)
        self.c = new_cluster(base, f"rpo{i}", archive=True)
        self.delay = delay
        self.writer: Writer | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.c.start()
            self.c.sql("CREATE TABLE bench_markers (id bigserial PRIMARY KEY, at timestamptz NOT NULL)")
            self.c.crmops("backup", "--physical")
            self.writer = Writer(self.c.url)
            self.writer.start()
            time.sleep(self.delay)
            crash(self.c)
            self.writer.join()
        except Exception as e:  # reported in the results, never hides the other trials
            self.error = f"{type(e).__name__}: {e}"[:300]


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return round(time.monotonic() - t0, 1)


def physical_into_datadir(c: Cluster, base: Path, *, spool: bool = True) -> dict[str, Any]:
    """What an administrator does: `restore --at latest --to-datadir`, then start PostgreSQL on it,
    which copies the WAL spooled at restore time; without the spool (as before it existed) every
    WAL file comes through restore_command's `crmops wal fetch`, one process each."""
    datadir = c.base / "recovered"  # c.base belongs to the postgres user, who writes the log beside it
    t0 = time.monotonic()
    r = json.loads(c.crmops("restore", "--at", "latest", "--to-datadir", str(datadir), timeout=3600).stdout)
    extract = round(time.monotonic() - t0, 1)
    if not spool:
        shutil.rmtree(datadir / "crmops_wal_spool")
    port = Cluster(base).port
    auto = (datadir / "postgresql.auto.conf").read_text()
    # the postgres user runs crmops through the system python with the venv's packages, as tests/pitr do
    ours = r["restore_command"].split(" || ")[-1].split(" wal fetch")[0]
    theirs = c.wal_command("fetch").split(" wal fetch")[0]
    # its socket beside its log: the copy's own pg_hba.conf lets the postgres user in there (peer), and asks
    # for a password on loopback
    auto = auto.replace(ours, theirs) + f"port = {port}\nunix_socket_directories = '{c.base}'\narchive_mode = off\n"
    (datadir / "postgresql.auto.conf").write_text(auto)
    t1 = time.monotonic()
    subprocess.run(["chown", "-R", "postgres:postgres", str(datadir)], check=True)
    log = c.base / "recovered.log"
    try:
        if as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-l", str(log), "-w", "-t", "3600", "start"],
                       capture_output=True).returncode != 0:
            raise SystemExit(f"the recovered data directory did not start: {log.read_text()[-1500:]}")
        ask = [str(PG_BIN / "psql"), "-X", "-qAt", "-h", str(c.base), "-p", str(port), "-U", "postgres", "-c",
               "SELECT pg_is_in_recovery()"]
        deadline = time.monotonic() + 3600
        while as_postgres(ask, capture_output=True, text=True).stdout.strip() != "f":
            if time.monotonic() > deadline:
                raise SystemExit(f"the recovered data directory did not leave recovery: {log.read_text()[-1500:]}")
            time.sleep(0.2)
        started = round(time.monotonic() - t1, 1)
        fetches = log.read_text().count("restored log file")
    finally:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                    capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)
    return {"extract_seconds": extract, "start_and_replay_seconds": started, "seconds": round(extract + started, 1),
            "wal_files_restored": fetches, "spooled": spool}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="large")
    ap.add_argument("--rpo-trials", type=int, default=3, help="small clusters crashed beside the big one")
    ap.add_argument("--update-share", type=float, default=0.05,
                    help="share of activities, contacts and opportunities updated after the base backup")
    ap.add_argument("--sample-pushes", type=int, default=8)
    ap.add_argument("--archive-timeout", type=int, default=DEFAULT_ARCHIVE_TIMEOUT,
                    help="the main cluster's archive_timeout, and the crash comes within one of it (default: "
                         "`wal setup`'s, whose RPO is measured; a smoke run says 2)")
    ap.add_argument("--index-heavy", action="store_true",
                    help="add the indexes a CRM's list views and reports need (INDEX_HEAVY) before the base backup: "
                         "pg_restore must rebuild them, a physical restore copies them")
    ap.add_argument("--unspooled", action="store_true",
                    help="also recover a data directory whose WAL all comes through `wal fetch`, one process per "
                         "file, as before restore spooled it (minutes on `large`)")
    args = ap.parse_args()
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="crmops-pitr-bench-", dir="/var/tmp"))
    base.chmod(0o755)
    out: dict[str, Any] = {"size": args.size, "cores": os.cpu_count(), "archive_timeout": args.archive_timeout}
    clusters: list[Cluster] = []
    load("start")
    try:
        rng = random.Random()
        trials = [SmallTrial(base, i, rng.uniform(70, 130)) for i in range(args.rpo_trials)]
        clusters += [t.c for t in trials]
        for t in trials:
            t.start()

        c = new_cluster(base, "main", archive=True, archive_timeout=args.archive_timeout)
        clusters.append(c)
        out["demo_crm"] = load_into(c, args.size)
        c.start()
        sysid = c.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
        load("demo CRM copied")
        out["index_heavy"] = args.index_heavy
        if args.index_heavy:
            t0 = time.monotonic()
            for i, (table, columns) in enumerate(INDEX_HEAVY):
                c.sql(f"CREATE INDEX bench_ix_{i} ON {table} ({columns})")
            out["index_build_seconds"] = round(time.monotonic() - t0, 1)
            load("indexes built")
        out["database_mb"] = round(c.sql("SELECT pg_database_size('postgres')")[0][0] / 1e6, 1)
        out["index_mb"] = round(float(c.sql("SELECT sum(pg_indexes_size(oid)) FROM pg_class WHERE relkind = 'r' "
                                      "AND relnamespace = 'public'::regnamespace")[0][0]) / 1e6, 1)
        c.sql("CREATE TABLE bench_markers (id bigserial PRIMARY KEY, at timestamptz NOT NULL)")
        t0 = time.monotonic()
        phys = c.crmops_json("backup", "--physical")
        out["base_backup_seconds"] = round(time.monotonic() - t0, 1)
        out["base_backup_mb"] = round(phys["bytes_read"] / 1e6, 1)
        load("base backup")

        # after the base backup: a writer, and a batch of updates the replay must redo
        writer = Writer(c.url)
        writer.start()
        writer_started = time.monotonic()
        lsn0 = c.sql("SELECT pg_current_wal_lsn()")[0][0]
        t0 = time.monotonic()
        modulo = max(1, round(1 / args.update_share))
        for table, column in (("activities", "subject"), ("contacts", "email"), ("opportunities", "title")):
            c.sql(f"UPDATE {table} SET {column} = {column} || '' WHERE id % {modulo} = 0")
        out["updates_seconds"] = round(time.monotonic() - t0, 1)
        out["wal_after_base_mb"] = round(float(c.sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)",
                                                     lsn0)[0][0]) / 1e6, 1)
        load("updates")

        # the logical backups of the same database (they run while the writer goes on)
        dump = base / "crm.dump"
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(c.port), "PGUSER": "postgres"}
        out["pg_dump_fc_seconds"] = timed([str(PG_BIN / "pg_dump"), "-Fc", "-f", str(dump), "postgres"], env)
        out["pg_dump_fc_mb"] = round(dump.stat().st_size / 1e6, 1)
        load("pg_dump -Fc")
        t0 = time.monotonic()
        logical = c.crmops_json("backup")
        out["crmops_backup_seconds"] = round(time.monotonic() - t0, 1)
        load("crmops backup")

        # the crash: once the archiver has caught up with the burst, at a random moment within one
        # archive_timeout, so the loss reflects the setting rather than a backlog
        # a recovery can only find markers once a segment holding some was switched and archived:
        # archive_timeout switches a written segment, so the writer runs two of them at least
        # (a small cluster's backups can end sooner than that)
        time.sleep(max(0.0, 2 * args.archive_timeout - (time.monotonic() - writer_started)))
        out["archiver_catch_up_seconds"] = archiver_idle(c)
        time.sleep(rng.uniform(0, args.archive_timeout))
        crash(c)
        writer.join()
        load("crash")

        # RTO, physical: the sandbox (the proof), and a data directory started by pg_ctl (a real recovery)
        big = recover_latest(c, writer)
        out["physical_sandbox"] = big
        load("physical restore, sandbox")
        out["physical_datadir"] = physical_into_datadir(c, base)
        load("physical restore, data directory")
        if args.unspooled:
            out["physical_datadir_unspooled"] = physical_into_datadir(c, base, spool=False)
            load("physical restore, data directory, one wal fetch per file")

        # RTO, logical: into an empty database of a cluster that does not archive
        target = new_cluster(base, "target", archive=False)
        clusters.append(target)
        target.start()
        target.sql("CREATE DATABASE from_dump")
        target.sql("CREATE DATABASE from_crmops")
        tenv = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(target.port), "PGUSER": "postgres"}
        out["pg_restore_seconds"] = timed([str(PG_BIN / "pg_restore"), "--no-owner", "-d", "from_dump", str(dump)],
                                          tenv)
        load("pg_restore")
        dump.unlink()
        t0 = time.monotonic()
        c.crmops("restore", logical["snapshot_id"], "--to", target.url.rsplit("/", 1)[0] + "/from_crmops",
                 timeout=3600)
        out["crmops_restore_seconds"] = round(time.monotonic() - t0, 1)
        load("crmops restore")
        target.stop()

        # the archive's cost per GB of WAL, on this run's archive
        # (segments closed by archive_timeout are mostly zeros and cost little: the busy ones, the
        # largest stored, give the cost of WAL a CRM really writes)
        segs = sorted((p for p in (c.repo / "wal" / sysid).rglob("*") if p.is_file() and len(p.name) == 24),
                      key=lambda p: p.stat().st_size, reverse=True)
        stored = sum(p.stat().st_size for p in segs)
        busy = segs[:args.sample_pushes]
        out["segments_archived"] = len(segs)
        out["archive_stored_mb"] = round(stored / 1e6, 1)
        out["archive_stored_per_gb_wal_mb"] = round(stored / (len(segs) * 16 * 1024 * 1024) * 1000, 1)
        out["archive_stored_per_gb_busy_wal_mb"] = round(
            sum(p.stat().st_size for p in busy) / (len(busy) * 16 * 1024 * 1024) * 1000, 1)
        out.update(push_cost(c, base, sysid, [p.name for p in busy]))
        load("wal push sample")

        # RPO: the small clusters' crashes
        rpo = [{"cluster": args.size, **{k: big[k] for k in ("rpo_seconds", "markers_lost", "markers_written")}}]
        for t in trials:
            t.join()
            if t.error or t.writer is None:
                rpo.append({"cluster": "small", "error": t.error})
                continue
            r = recover_latest(t.c, t.writer)
            rpo.append({"cluster": "small", "crash_after_s": round(t.delay, 1),
                        **{k: r[k] for k in ("rpo_seconds", "markers_lost", "markers_written")}})
        load("RPO trials recovered")
        good = [r["rpo_seconds"] for r in rpo if "rpo_seconds" in r]
        out["rpo_trials"] = rpo
        out["rpo_median_seconds"] = round(statistics.median(good), 1) if good else None
        out["rpo_max_seconds"] = round(max(good), 1) if good else None
        out["physical_sandbox_seconds"] = big["restore_seconds"]
        out["physical_datadir_seconds"] = out["physical_datadir"]["seconds"]
        if args.unspooled:
            out["physical_datadir_unspooled_seconds"] = out["physical_datadir_unspooled"]["seconds"]
        out["pg_restore_vs_physical_sandbox"] = round(out["pg_restore_seconds"] / big["restore_seconds"], 2)
        out["pg_restore_vs_physical_datadir"] = round(out["pg_restore_seconds"] / out["physical_datadir_seconds"], 2)
        out["crmops_restore_vs_physical_sandbox"] = round(out["crmops_restore_seconds"] / big["restore_seconds"], 2)
    finally:
        for cl in clusters:
            cl.stop()
        shutil.rmtree(base, ignore_errors=True)
    out["bench_seconds"] = round(time.monotonic() - started, 1)
    out["load_average"] = {phase: v for phase, v in LOADS}
    print_table(out)
    save(out)
    print(json.dumps(out, indent=2, default=str))


def push_cost(c: Cluster, base: Path, sysid: str, names: list[str]) -> dict[str, float]:
    """CPU of `crmops wal push` per segment (start-up, key derivation, zstd, AES-GCM, fsync): real
    segments of this run pushed again into a second repository, one process each, as the archiver does."""
    sample = base / "sample"
    sample.mkdir()
    for name in names:
        c.crmops("wal", "fetch", name, str(sample / name), "--system-id", sysid)
    other = base / "other.yaml"
    other.write_text(c.config.read_text().replace(str(c.repo), str(base / "repo2")))
    subprocess.run([sys.executable, "-m", "crmops", "--config", str(other), "repo", "init"], env=c.env(),
                   check=True, capture_output=True)
    cpu0, wall0 = _cpu_children(), time.monotonic()
    for name in names:
        subprocess.run([sys.executable, "-m", "crmops", "--config", str(other), "--quiet", "wal", "push",
                        str(sample / name), "--system-id", sysid], env=c.env(), check=True)
    cpu, wall = _cpu_children() - cpu0, time.monotonic() - wall0
    n = len(names)
    return {"push_cpu_seconds_per_segment": round(cpu / n, 3), "push_wall_seconds_per_segment": round(wall / n, 3),
            "archive_cpu_seconds_per_gb_wal": round(cpu / n * 1024 / 16, 1)}


def print_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    heavy = ", index-heavy" if out["index_heavy"] else ""
    t = Table(title=f"point-in-time recovery: demo CRM {out['size']}{heavy} ({out.get('database_mb')} MB, "
                    f"{out.get('index_mb')} MB of it indexes), {out['cores']} cores")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_column("load avg 1 min", justify="right")
    loads = out["load_average"]

    def row(what: str, value: object, phase: str | None = None) -> None:
        t.add_row(what, "" if value is None else str(value), str(loads[phase][0]) if phase in loads else "")

    row(f"RPO median / max (s), archive_timeout {out['archive_timeout']} s", f"{out.get('rpo_median_seconds')} / "
        f"{out.get('rpo_max_seconds')}", "RPO trials recovered")
    for r in out.get("rpo_trials", []):
        row(f"  crash of a {r['cluster']} cluster: seconds lost", r.get("rpo_seconds", r.get("error")))
    row("base backup (s)", out.get("base_backup_seconds"), "base backup")
    ps, pd = out.get("physical_sandbox", {}), out.get("physical_datadir", {})
    row("physical restore --at latest, sandbox (s)", ps.get("restore_seconds"), "physical restore, sandbox")
    row("  of which container start + replay + promote (s)", ps.get("replay_seconds"))
    row("physical restore --at latest --to-datadir + pg_ctl start (s)", pd.get("seconds"),
        "physical restore, data directory")
    row("  extract + spool WAL / start + replay (s)",
        f"{pd.get('extract_seconds')} / {pd.get('start_and_replay_seconds')}")
    pu = out.get("physical_datadir_unspooled")
    if pu:
        row("  the same, every WAL file through `wal fetch` (s)", pu.get("seconds"),
            "physical restore, data directory, one wal fetch per file")
        row("    extract / start + replay (s)", f"{pu.get('extract_seconds')} / {pu.get('start_and_replay_seconds')}")
    row("pg_restore of pg_dump -Fc (s)", out.get("pg_restore_seconds"), "pg_restore")
    row("crmops restore (logical) (s)", out.get("crmops_restore_seconds"), "crmops restore")
    row("pg_restore ÷ physical (sandbox / datadir)", f"{out.get('pg_restore_vs_physical_sandbox')} / "
        f"{out.get('pg_restore_vs_physical_datadir')}")
    row("archive stored per GB of WAL, all / busy segments (MB)",
        f"{out.get('archive_stored_per_gb_wal_mb')} / {out.get('archive_stored_per_gb_busy_wal_mb')}")
    row("wal push CPU per GB of WAL (s)", out.get("archive_cpu_seconds_per_gb_wal"), "wal push sample")
    row("whole benchmark (s)", out.get("bench_seconds"))
    Console(stderr=True).print(t)


def save(out: dict[str, Any]) -> None:
    # a smoke run (tests/test_bench_smoke.py) writes elsewhere
    path = Path(os.environ.get("CRMOPS_BENCH_RESULTS") or ROOT / "bench" / "results.json")
    try:
        merged = json.loads(path.read_text())
    except (OSError, ValueError):
        merged = {}
    keys = ["rpo_median_seconds", "rpo_max_seconds", "physical_sandbox_seconds", "physical_datadir_seconds",
            "physical_datadir_unspooled_seconds", "pg_restore_seconds", "crmops_restore_seconds",
            "pg_restore_vs_physical_sandbox",
            "pg_restore_vs_physical_datadir", "crmops_restore_vs_physical_sandbox", "archive_stored_per_gb_wal_mb",
            "archive_stored_per_gb_busy_wal_mb",
            "archive_cpu_seconds_per_gb_wal", "bench_seconds"]
    suffix = ("" if out["size"] == "large" else f"_{out['size']}") + ("_index_heavy" if out["index_heavy"] else "")
    merged.update({f"pitr_{k}{suffix}": out.get(k) for k in keys})
    merged[f"pitr_load_average{suffix}"] = out["load_average"]
    path.write_text(json.dumps(merged, indent=2))


if __name__ == "__main__":
    main()
