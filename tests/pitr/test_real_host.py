"""Point-in-time recovery as it runs on a real host: the cluster and archive_command run as the
postgres OS user, crmops from a console script, the folders made by root.

- crmops where postgres cannot run it: `wal setup --apply` names the cause and changes nothing;
  with such an archive_command set by hand, `wal setup --check` names the server's own error and
  `backup --physical` stops with one line instead of waiting for ever.
- a `restore --to-datadir` copy started beside production (as printed) writes nothing into
  production's archive, even with archiving turned back on, and `restore --at latest` still
  recovers production's newest row; `wal promote` is the one way a copy's timeline gets in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.pitr.conftest import PG_BIN, Cluster, as_postgres, copy_sql, result_of, start_as_printed


def _archive_listing(cluster: Cluster) -> set[str]:
    return {p.name for p in (cluster.repo / "wal").rglob("*") if p.is_file()}


def _stop(datadir: Path) -> None:
    if (datadir / "postmaster.pid").exists():
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                    capture_output=True)


def test_crmops_postgres_cannot_run_is_named_and_the_base_backup_does_not_hang(cluster: Cluster) -> None:
    private = cluster.base / "private"
    exe = cluster.console_script(private / "crmops")
    os.chmod(private, 0o700)  # root's alone, as a venv under /root
    before = cluster.sql("SHOW archive_command")[0][0]

    r = cluster.crmops("wal", "setup", "--apply", "--env-file", str(cluster.env_file), "--crmops", str(exe),
                       check=False)
    assert r.returncode == 85, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert f"postgres (the user PostgreSQL runs archive_command as) cannot run {exe}: cannot enter {private} " \
           "(drwx------ root:root)" in line and "nothing was changed" in line
    assert "install crmops where postgres can run it" in line
    checks = result_of(r.stdout)["checks"]
    assert [c["what"] for c in checks] == ["crmops"]
    assert cluster.sql("SHOW archive_command")[0][0] == before  # validated before the first change

    # the host: such an archive_command written by hand, the server failing in its log only
    bad = before.replace(str(cluster.exe), str(exe))
    cluster.sql(f"ALTER SYSTEM SET archive_command = '{bad}'")
    cluster.sql("SELECT pg_reload_conf()")
    time.sleep(1)
    r = cluster.crmops("wal", "setup", "--check", "--proof-timeout", "30", check=False)
    assert r.returncode == 85, r.stderr
    line = r.stderr.strip()
    assert "did not archive" in line and "archive_command failed" in line and "pg_stat_archiver:" in line, line
    assert "run as postgres, it exits 126" in line and "Permission denied" in line, line
    assert f"archive_command = {bad}" in line

    started = time.monotonic()
    r = cluster.crmops("backup", "--physical", "--wal-timeout", "8", check=False, timeout=120)
    took = time.monotonic() - started
    assert r.returncode == 85, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "the WAL this base backup needs was not archived within 8 s" in line
    assert "run as postgres, it exits 126" in line and f"archive_command = {bad}" in line, line
    assert took < 60, took
    # nothing recorded, and no walsender left waiting on the server
    assert "physical" not in cluster.crmops("snapshots").stdout
    deadline = time.monotonic() + 20
    while cluster.sql("SELECT count(*) FROM pg_stat_progress_basebackup")[0][0]:
        assert time.monotonic() < deadline
        time.sleep(0.5)

    cluster.sql(f"ALTER SYSTEM SET archive_command = '{before}'")
    cluster.sql("SELECT pg_reload_conf()")
    proven = cluster.crmops_json("wal", "setup", "--check", "--proof-timeout", "120", "--crmops", str(cluster.exe),
                                 "--env-file", str(cluster.env_file))
    assert proven["proven"] and proven["checked_as"] == "postgres"


def test_a_copy_beside_production_never_writes_into_its_archive(cluster: Cluster, tmp_path: Path) -> None:
    cluster.sql("CREATE TABLE rows (id serial PRIMARY KEY, note text)")
    base = cluster.crmops_json("backup", "--physical")
    status = cluster.crmops_json("wal", "status")
    assert status["start"] <= status["end"], status  # right after the first base backup too
    assert base["timeline"] == 1
    cluster.sql("INSERT INTO rows (note) VALUES ('before the copy')")
    cluster.switch_and_wait()

    copy = cluster.base / "copy"
    r = cluster.crmops_json("restore", "--at", "latest", "--to-datadir", str(copy))
    # the env file and crmops production's archive_command names, not a default
    assert r["env_file"] == str(cluster.env_file) and str(cluster.exe) in r["restore_command"]
    assert r["port"] != cluster.port
    hba = (copy / "pg_hba.conf").read_text()
    assert "scram-sha-256" in hba and "127.0.0.1/32" in hba and "local" in hba
    auto = (copy / "postgresql.auto.conf").read_text()
    assert auto.rindex("archive_mode = 'off'") > auto.rindex("archive_mode = 'on'") \
        if "archive_mode = 'on'" in auto else "archive_mode = 'off'" in auto
    assert any("wal promote" in ln and "wal setup --apply" in ln for ln in r["lines"])

    listed = _archive_listing(cluster)
    try:
        started = start_as_printed(r)
        assert started.returncode == 0, started.stderr + started.stdout
        assert "promoted" in started.stdout
        port = r["port"]
        assert copy_sql(cluster, port, "SELECT pg_is_in_recovery()") == "f"
        copy_sql(cluster, port, "INSERT INTO rows (note) VALUES ('written in the restored copy')")
        copy_sql(cluster, port, "SELECT pg_switch_wal()")
        timeline = int(copy_sql(cluster, port, "SELECT pg_walfile_name(pg_current_wal_lsn())")[:8], 16)
        assert timeline >= 2

        # archiving turned back on by hand: production's archive_command (from the base) is refused
        copy_sql(cluster, port, "ALTER SYSTEM SET archive_mode = on")
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(copy), "-l", str(copy / "crmops-recovery.log"), "-w",
                     "restart"], check=True, capture_output=True, timeout=120)
        copy_sql(cluster, port, "INSERT INTO rows (note) VALUES ('written in the restored copy, archiving')")
        copy_sql(cluster, port, "SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while copy_sql(cluster, port, "SELECT failed_count FROM pg_stat_archiver") == "0":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        log = (copy / "crmops-recovery.log").read_text()
        assert "which is not production's" in log and "exit code 84" in log, log[-3000:]

        cluster.sql("INSERT INTO rows (note) VALUES ('production newest')")
        cluster.switch_and_wait()
        after = _archive_listing(cluster)
        new = after - listed
        assert all(n.startswith("00000001") and not n.endswith(".history") for n in new), new
        assert not any(n.endswith(".history") for n in after)

        # production's line is followed, not the copy's
        again = cluster.base / "again"
        r2 = cluster.crmops_json("restore", "--at", "latest", "--to-datadir", str(again))
        assert "recovery_target_timeline = '1'" in (again / "postgresql.auto.conf").read_text()
        try:
            started = start_as_printed(r2)
            assert started.returncode == 0, started.stderr + started.stdout
            notes = copy_sql(cluster, r2["port"], "SELECT string_agg(note, ',' ORDER BY id) FROM rows")
            assert notes == "before the copy,production newest"
        finally:
            _stop(again)

        # the copy becomes production: `wal promote` lets its timeline in, and then refuses the old line
        copy_sql(cluster, port, "ALTER ROLE postgres PASSWORD 'copy-pw'")
        url = f"postgresql://postgres:copy-pw@127.0.0.1:{port}/postgres"
        promoted = cluster.crmops_json("wal", "promote", "--url", url)
        assert promoted["timeline"] == timeline and promoted["tip_before"] == 1
        assert f"{timeline:08X}.history" in _archive_listing(cluster)
        cluster.sql("INSERT INTO rows (note) VALUES ('old production after the promotion')")
        name = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + 60
        while cluster.sql("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver")[0][0] < name:
            assert time.monotonic() < deadline, cluster.log_tail()
            time.sleep(0.5)
        assert name not in _archive_listing(cluster)
        log = (cluster.base / "server.log").read_text()
        assert re.search(r"continues timeline 1 past .*former primary", log), log[-3000:]
    finally:
        _stop(copy)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_postgres_streamer_works_in_a_state_folder_root_made_first(cluster: Cluster) -> None:
    import pwd
    import shlex
    import signal

    state = cluster.base / "state"
    cluster.crmops_json("backup", "--physical")  # root's nightly job runs first and makes state_dir
    assert state.stat().st_uid == 0 and not (state / "wal-spool").exists()
    env = {**cluster.env(), "CRMOPS_ENV_FILE": str(cluster.env_file),
           "CRMOPS_STREAM_URL": f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"}
    env.pop("CRMOPS_PASSPHRASE")
    pg = pwd.getpwnam("postgres")
    denied = subprocess.run([str(cluster.exe), "--config", str(cluster.config), "wal", "stream", "--slot", "crmops_t"],
                            env=env, cwd=cluster.base, user=pg.pw_uid, group=pg.pw_gid, extra_groups=[],
                            capture_output=True, text=True, timeout=120)
    assert denied.returncode == 3, denied.stderr
    assert f"the spool {state}/wal-spool is not writable by postgres: {state} belongs to root (mode 755)" \
        in denied.stderr and "Traceback" not in denied.stderr

    units = cluster.base / "units"
    plan = cluster.crmops_json("schedule", "install", "--wal-stream", "--user", "postgres", "--interval", "2",
                               "--unit-dir", str(units), "--no-systemctl", "--env-file", str(cluster.env_file))
    assert plan["folders_made"] == [str(state / "wal-spool")]
    spool = (state / "wal-spool").stat()
    assert spool.st_uid == pg.pw_uid and spool.st_mode & 0o777 == 0o700
    unit = (units / "crmops-wal-stream.service").read_text()
    assert "User=postgres" in unit
    argv = shlex.split(re.search(r"^ExecStart=(.+)$", unit, re.M)[1])
    assert argv[-4:] == ["wal", "stream", "--interval", "2"]
    argv[0] = str(cluster.exe)  # the console script postgres can run, where the unit names this test's venv
    proc = subprocess.Popen(argv, env=env, cwd=cluster.base, user=pg.pw_uid, group=pg.pw_gid, extra_groups=[],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def spooled() -> list[str]:
        return [p.name for p in (state / "wal-spool").iterdir() if p.name.startswith("0000000")]

    try:
        deadline = time.monotonic() + 90
        while not spooled():  # pg_receivewal writes into the spool root made for postgres
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.5)
        cluster.sql("CREATE TABLE streamed AS SELECT 1 AS x")
        name = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        while name not in _archive_listing(cluster) or name in spooled()[-1:]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
