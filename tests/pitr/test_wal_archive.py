"""The WAL archive on a real PostgreSQL 15 cluster: push, fetch, idempotence, conflicts, base backups."""

from __future__ import annotations

import json

from tests.pitr.conftest import Cluster


def test_archive_command_stores_segments_and_base_backup_records_lsns(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
    name = cluster.switch_and_wait()
    status = cluster.crmops_json("wal", "status")
    assert status["configured"] and status["segments"] >= 1 and status["newest_segment"] >= name
    sysid = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    assert status["system_id"] == sysid

    first = cluster.crmops_json("backup", "--physical")
    assert first["kind"] == "physical" and first["system_id"] == sysid and first["timeline"] == 1
    cluster.sql("INSERT INTO t VALUES (0, 'one more')")
    second = cluster.crmops_json("backup", "--physical")
    # the data directory barely changed: the second base backup stores a fraction of the first
    assert second["bytes_new"] < first["bytes_new"] / 3, (first, second)
    status = cluster.crmops_json("wal", "status")
    assert status["base_backups"] == 2 and status["start"] is not None and status["gap"] is None
    # a physical base backup is never "the latest snapshot" of the logical path
    listed = cluster.crmops_json("snapshots")
    assert listed


def test_push_is_idempotent_and_refuses_other_content(cluster: Cluster) -> None:
    name = cluster.switch_and_wait()
    sysid = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    segment = cluster.data / "pg_wal" / name
    if not segment.exists():  # recycled already: fetch it back to push it again
        fetched = cluster.base / "fetched"
        cluster.crmops("wal", "fetch", name, str(fetched), "--system-id", sysid)
        segment = fetched
    copy = cluster.base / name
    copy.write_bytes(segment.read_bytes())
    again = cluster.crmops("wal", "push", str(copy), "--system-id", sysid)
    assert json.loads(again.stdout)["outcome"] == "already"

    altered = bytearray(copy.read_bytes())
    altered[1000] ^= 0xFF
    copy.write_bytes(bytes(altered))
    clash = cluster.crmops("wal", "push", str(copy), "--system-id", sysid, check=False)
    assert clash.returncode == 80, clash.stderr
    assert f"{name} is already archived" in clash.stderr and "Traceback" not in clash.stderr

    out = cluster.base / "out"
    fetched = cluster.crmops("wal", "fetch", name, str(out), "--system-id", sysid)
    assert json.loads(fetched.stdout)["bytes"] == 16 * 1024 * 1024
    assert out.read_bytes() != bytes(altered)
    missing = cluster.crmops("wal", "fetch", "0000000100000099000000AA", str(out), "--system-id", sysid, check=False)
    assert missing.returncode == 81 and "not in the archive" in missing.stderr


def test_setup_prints_settings_without_secrets(cluster: Cluster) -> None:
    r = cluster.crmops_json("wal", "setup", "--env-file", str(cluster.env_file))
    s = r["settings"]
    assert s["archive_mode"] == "on" and s["wal_level"] == "replica" and s["archive_timeout"] == "60"
    assert "wal push %p" in s["archive_command"] and str(cluster.config) in s["archive_command"]
    assert "CRMOPS_ENV_FILE=" in s["archive_command"] and "passphrase" not in s["archive_command"].lower()
    assert "wal fetch %f %p" in r["restore_command"]
    assert not r["applied"]

    # --apply writes them with ALTER SYSTEM (last: this cluster's own archive_command is replaced)
    cluster.sql("ALTER SYSTEM SET archive_timeout = 5")
    applied = cluster.crmops_json("wal", "setup", "--apply", "--env-file", str(cluster.env_file),
                                  "--crmops", str(cluster.exe))
    # this cluster's archive_command is already what `wal setup --crmops bin/crmops` writes
    assert applied["applied"] and applied["changed"] == ["archive_timeout"]
    assert applied["needs_restart"] == []  # archive_mode and wal_level were already right
    # proven: checked as postgres, then a switched segment reached the archive through the new command
    assert applied["checked_as"] == "postgres" and applied["checks"] == [] and applied["proven"]
    s = {**s, "archive_command": cluster.wal_command("push") + " %p"}
    assert cluster.sql("SHOW archive_command")[0][0] == s["archive_command"]
    assert cluster.sql("SHOW archive_timeout")[0][0] == "1min"
