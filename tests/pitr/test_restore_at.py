"""Point-in-time restore end to end: a live writer, a base backup mid-way, a disaster, recovery to T-1s."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import psycopg
import pytest

from tests.pitr.conftest import PG_BIN, Cluster, as_postgres, copy_sql, result_of, start_as_printed
from tests.ports import free_port

pytestmark = pytest.mark.usefixtures("docker_client")


class Writer(threading.Thread):
    """Inserts one marker row per transaction until stopped."""

    def __init__(self, url: str, table: str = "markers") -> None:
        super().__init__(daemon=True)
        self.url, self.table = url, table
        self.stop = threading.Event()
        self.count = 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                conn.execute(f"INSERT INTO {self.table} (note) VALUES ('marker')")
                self.count += 1
                time.sleep(0.01)


def _sandbox_rows(docker_client, name: str, sql: str) -> list[str]:  # type: ignore[no-untyped-def]
    code, out = docker_client.containers.get(name).exec_run(
        ["psql", "-h", "/run/postgresql", "-U", "postgres", "-d", "postgres", "-XAtqc", sql], user="postgres")
    assert code == 0, out
    return out.decode().split()


def _remove(docker_client, name: str) -> None:  # type: ignore[no-untyped-def]
    from crmops.sandbox.docker import remove_by_name

    remove_by_name(docker_client, name)


def test_restore_at_one_second_before_the_disaster_has_exactly_the_markers(cluster: Cluster, docker_client,
                                                                            ) -> None:
    cluster.sql("ALTER SYSTEM SET track_commit_timestamp = on")
    cluster.stop()
    cluster.start()
    cluster.sql("CREATE TABLE markers (id bigserial PRIMARY KEY, note text, at timestamptz DEFAULT clock_timestamp())")
    writer = Writer(cluster.url)
    writer.start()
    try:
        time.sleep(1.5)
        base = cluster.crmops_json("backup", "--physical")
        time.sleep(3)
        disaster_at = cluster.sql("SELECT now()")[0][0]
    finally:
        writer.stop.set()
        writer.join()
    cutoff = disaster_at - timedelta(seconds=1)
    expected = [str(r[0]) for r in cluster.sql(
        "SELECT id FROM markers WHERE pg_xact_commit_timestamp(xmin) <= %s ORDER BY id", cutoff)]
    later = cluster.sql("SELECT count(*) FROM markers WHERE pg_xact_commit_timestamp(xmin) > %s", cutoff)[0][0]
    assert later > 10 and len(expected) > 100  # the writer was busy on both sides of the cutoff
    cluster.sql("DELETE FROM markers")  # the disaster
    time.sleep(1.1)  # the archive's end (the push time, to the second) comes after the DELETE
    cluster.switch_and_wait()

    target = cutoff.isoformat(sep=" ")
    r = cluster.crmops("restore", "--at", target, "--sandbox", "--keep")
    result = json.loads(r.stdout)
    name = result["sandbox"]
    try:
        assert result["base_snapshot"] == base["snapshot_id"]
        got = _sandbox_rows(docker_client, name, "SELECT id FROM markers ORDER BY id")
        assert got == expected
        assert _sandbox_rows(docker_client, name, "SELECT pg_is_in_recovery()") == ["f"]
    finally:
        _remove(docker_client, name)
        import shutil

        shutil.rmtree(result["sandbox_info"]["folder"], ignore_errors=True)

    # drill --at: the same recovery, with the configured checks run on it
    import yaml

    cfg = yaml.safe_load(cluster.config.read_text())
    cfg["verify"]["assertions"] = [{"name": "markers", "sql": "SELECT count(*) FROM markers",
                                    "expect": len(expected)}]
    cluster.config.write_text(yaml.safe_dump(cfg))
    drill = json.loads(cluster.crmops("drill", "--at", target, "--report-dir", str(cluster.base / "drills")).stdout)
    assert drill["ok"] and [c["ok"] for c in drill["checks"]] == [True, True], drill["checks"]
    assert drill["restore_seconds"] > 0 and (cluster.base / "drills").is_dir()
    # at the very end of the window no commit follows the target: recovery replays the whole archive
    # (the DELETE included), and the assertion written for T-1s now fails
    end = cluster.crmops_json("wal", "status")["end"]
    failed = cluster.crmops("verify", "--at", end, check=False)
    assert failed.returncode == 30 and f"expected {len(expected)}, got 0" in failed.stderr, failed.stderr
    assert result_of(failed.stdout)["ended_at_archive_end"] is True

    # outside the window: one clear line naming it, exit 82
    before = (cutoff - timedelta(hours=1)).isoformat(sep=" ")
    refused = cluster.crmops("restore", "--at", before, "--sandbox", check=False)
    assert refused.returncode == 82 and "recoverable window is" in refused.stderr, refused.stderr
    naive = cluster.crmops("restore", "--at", "2026-12-01 14:05:00", "--sandbox", check=False)
    assert naive.returncode == 3 and "no UTC offset" in naive.stderr


def test_tables_at_a_point_in_time_bring_back_a_dropped_table_only(cluster: Cluster, tmp_path) -> None:
    cluster.sql("CREATE TABLE contacts (id int PRIMARY KEY, name text)")
    cluster.sql("CREATE TABLE deals (id int PRIMARY KEY, amount int)")
    cluster.sql("INSERT INTO contacts SELECT g, 'person ' || g FROM generate_series(1, 500) g")
    cluster.sql("INSERT INTO deals SELECT g, g * 10 FROM generate_series(1, 300) g")
    cluster.crmops_json("backup", "--physical")
    cluster.sql("INSERT INTO contacts VALUES (501, 'added after the base backup')")
    time.sleep(1.2)
    good = cluster.sql("SELECT now()")[0][0]
    time.sleep(1.2)
    cluster.sql("DROP TABLE contacts")  # the disaster
    cluster.sql("INSERT INTO deals VALUES (301, 3010)")  # work that goes on after it must stay
    cluster.sql("UPDATE deals SET amount = amount + 1 WHERE id <= 5")
    # a newer base backup, taken after the target: the older one is used, and the WAL read stops at this one's start
    later = cluster.crmops_json("backup", "--physical")
    cluster.switch_and_wait()
    deals_digest = "SELECT md5(string_agg(id || ':' || amount, ',' ORDER BY id)) FROM deals"
    before = cluster.sql(deals_digest)[0][0]

    # the database is live (not empty): bringing a table back needs --force, as for plain restore --tables
    refused = cluster.crmops("restore", "--at", good.isoformat(sep=" "), "--tables", "contacts", "--to",
                             cluster.url, check=False)
    assert refused.returncode == 60 and "--force" in refused.stderr
    r = cluster.crmops("restore", "--at", good.isoformat(sep=" "), "--tables", "contacts", "--to", cluster.url,
                       "--force")
    result = json.loads(r.stdout)
    assert result["created"] == ["public.contacts"] and result["replaced"] == []
    assert result["safety_snapshot"] and result["base_snapshot"] != later["snapshot_id"]
    assert result["wal_files"] < cluster.crmops_json("wal", "status")["segments"]  # not the whole archive
    assert cluster.sql("SELECT count(*), max(id) FROM contacts")[0] == (501, 501)
    assert cluster.sql(deals_digest)[0][0] == before
    assert cluster.sql("SELECT count(*) FROM deals")[0][0] == 301

    # the table exists now: its rows are replaced, and nothing else is touched
    cluster.sql("DELETE FROM contacts WHERE id > 100")  # a second disaster, a mass DELETE this time
    schema = "SELECT string_agg(column_name || data_type, ',' ORDER BY table_name, ordinal_position) " \
             "FROM information_schema.columns WHERE table_schema = 'public'"
    schema_before = cluster.sql(schema)[0][0]
    cluster.switch_and_wait()
    r = cluster.crmops("restore", "--at", good.isoformat(sep=" "), "--tables", "contacts", "--to", cluster.url,
                       "--force")
    result = json.loads(r.stdout)
    assert result["replaced"] == ["public.contacts"] and result["safety_snapshot"]
    assert cluster.sql("SELECT count(*), max(id) FROM contacts")[0] == (501, 501)
    assert cluster.sql(deals_digest)[0][0] == before and cluster.sql(schema)[0][0] == schema_before


def test_to_datadir_writes_a_data_directory_that_recovers_on_start(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE notes (id int)")
    cluster.crmops_json("backup", "--physical")
    cluster.sql("INSERT INTO notes SELECT generate_series(1, 50)")
    time.sleep(1.1)
    good = cluster.sql("SELECT now()")[0][0]
    time.sleep(1.1)
    cluster.sql("DELETE FROM notes WHERE id > 10")
    cluster.switch_and_wait()

    busy = cluster.base / "busy"
    busy.mkdir()
    (busy / "PG_VERSION").write_text("15\n")
    refused = cluster.crmops("restore", "--at", good.isoformat(sep=" "), "--to-datadir", str(busy), check=False)
    assert refused.returncode == 60 and "not empty" in refused.stderr

    datadir = cluster.base / "recovered"
    r = json.loads(cluster.crmops("restore", "--at", good.isoformat(sep=" "), "--to-datadir", str(datadir),
                                   "--port", str(free_port())).stdout)
    assert (datadir / "recovery.signal").exists() and "wal fetch --system-id" in r["restore_command"]
    assert any("chown -R postgres:postgres" in line and "wal wait-promoted" in line for line in r["lines"])
    # the archived WAL is spooled inside the data directory; the newest file is left to `wal fetch`
    spool = sorted((datadir / "crmops_wal_spool").iterdir())
    segments = [p for p in spool if len(p.name) == 24]
    assert r["wal_files"] == len(spool) and len(segments) >= 2
    segments[-1].unlink()
    # the restore_command runs the crmops production's archive_command names (postgres can run it)
    auto = (datadir / "postgresql.auto.conf").read_text()
    assert cluster.wal_command("fetch").split(" wal fetch")[0] in auto and "crmops_wal_spool/%f %p ||" in auto
    log = datadir / "crmops-recovery.log"
    try:
        started = start_as_printed(r)
        assert started.returncode == 0, started.stderr + log.read_text()[-2000:]
        assert copy_sql(cluster, r["port"], "SELECT count(*) FROM notes") == "50"
        restored = log.read_text()
        assert f'restored log file "{segments[-1].name}" from archive' in restored  # through crmops
        assert f'restored log file "{segments[0].name}" from archive' in restored  # from the spool
    finally:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"], capture_output=True)


def test_to_datadir_recovers_from_its_spool_without_the_repository(cluster: Cluster, tmp_path) -> None:
    """Replay copies the WAL spooled at restore time: it needs no `crmops wal fetch` process per file
    (and not even the repository) for what was archived before the restore."""
    cluster.sql("CREATE TABLE notes (id int)")
    cluster.crmops_json("backup", "--physical")
    cluster.sql("INSERT INTO notes SELECT generate_series(1, 70)")
    cluster.switch_and_wait()
    cluster.stop()
    datadir = cluster.base / "recovered"
    r = json.loads(cluster.crmops("restore", "--at", "latest", "--to-datadir", str(datadir),
                                   "--port", str(free_port())).stdout)
    cluster.repo.rename(tmp_path / "repo-away")  # any `wal fetch` fails now
    log = datadir / "crmops-recovery.log"
    try:
        started = start_as_printed(r)
        assert started.returncode == 0, started.stderr + log.read_text()[-2000:]
        assert copy_sql(cluster, r["port"], "SELECT count(*) FROM notes") == "70"
    finally:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"], capture_output=True)
        (tmp_path / "repo-away").rename(cluster.repo)


def test_restore_at_latest_replays_every_archived_commit(cluster: Cluster, docker_client, tmp_path) -> None:
    """`--at latest` sets no recovery target: even a commit in the last second before the archive's
    push time comes back (a time target at the archive's end, to the second, may stop before it)."""
    cluster.sql("CREATE TABLE markers (id bigserial PRIMARY KEY, note text)")
    cluster.crmops_json("backup", "--physical")
    for _ in range(20):
        cluster.sql("INSERT INTO markers (note) VALUES ('marker')")
    cluster.switch_and_wait()
    cluster.sql("INSERT INTO markers (note) VALUES ('last')")
    cluster.switch_and_wait()
    cluster.stop()  # the server is gone: only the repository is left
    r = cluster.crmops("restore", "--at", "latest", "--sandbox", "--keep")
    result = json.loads(r.stdout)
    try:
        assert result["target"] == {"kind": "latest", "value": "latest"}
        assert _sandbox_rows(docker_client, result["sandbox"], "SELECT count(*), max(note) FROM markers") \
            == ["21|marker"]
        assert _sandbox_rows(docker_client, result["sandbox"], "SELECT note FROM markers ORDER BY id DESC LIMIT 1") \
            == ["last"]
    finally:
        _remove(docker_client, result["sandbox"])
        import shutil

        shutil.rmtree(result["sandbox_info"]["folder"], ignore_errors=True)
    datadir = tmp_path / "recovered"
    r = json.loads(cluster.crmops("restore", "--at", "LATEST", "--to-datadir", str(datadir),
                                   "--port", str(free_port())).stdout)
    auto = (datadir / "postgresql.auto.conf").read_text()
    assert "restore_command" in auto and "recovery_target_time =" not in auto
    assert any("replays the archive to its end" in line for line in r["lines"])


def test_at_latest_is_refused_for_mariadb_before_anything_starts(tmp_path) -> None:
    from crmops.config import load_config
    from crmops.errors import ConfigError
    from crmops.pitr.restore import recovery_settings, restore_at

    assert "recovery_target_time" not in recovery_settings({"kind": "latest", "value": "latest"}, "cp %f %p")
    (tmp_path / "c.yaml").write_text(f"database:\n  url: mysql://root@127.0.0.1:1/crm\n"
                                     f"repository:\n  url: file://{tmp_path}/repo\n")
    cfg = load_config(tmp_path / "c.yaml", environ={})
    with pytest.raises(ConfigError, match="--at latest is for PostgreSQL"):
        restore_at(cfg, {"time": "latest"}, sandbox=True)
